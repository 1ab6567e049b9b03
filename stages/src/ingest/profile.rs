//! What ingest counts while it reads: rows kept and dropped (by reason, with
//! example rows), labels, and text lengths. Written out as `profile.json`.
//!
//! Memory is bounded by the number of distinct labels and distinct text
//! lengths (a histogram), never by the number of rows.

use std::collections::BTreeMap;

use serde::Serialize;

/// Example row numbers kept per drop reason.
const EXAMPLES: usize = 5;

/// Why a row was dropped. A row counts under the first reason that applies,
/// in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Wrong number of fields, invalid UTF-8, or a line that is not a JSON object.
    Malformed,
    /// The text cell is missing, empty or whitespace only.
    EmptyText,
    /// The label cell is missing or blank.
    MissingLabel,
    /// The same text with the same labels was already kept.
    Duplicate,
}

impl DropReason {
    /// The reason as written in `profile.json`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::EmptyText => "empty_text",
            DropReason::MissingLabel => "missing_label",
            DropReason::Duplicate => "duplicate",
        }
    }
}

/// `profile.json`:
///
/// ```json
/// {
///   "source": "data/questions.csv", "format": "csv", "delimiter": ",",
///   "text": "question", "label": "label", "multi_label": false, "separator": null,
///   "rows_read": 1000, "rows_kept": 990,
///   "dropped": { "empty_text": { "count": 10, "examples": [4, 17, 52, 60, 99] } },
///   "labels": { "math": 500, "physics": 490 },
///   "text_chars": { "min": 3, "p50": 78, "p90": 120, "p99": 180, "max": 400, "mean": 80.2 }
/// }
/// ```
///
/// Row numbers are those of the source (1-based lines of CSV/TSV/JSONL, the
/// header being line 1; 1-based rows of Parquet). Label counts count a
/// multi-label row once per label. Text lengths are in characters.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The source file, relative to the manifest.
    pub source: String,
    /// The format read.
    pub format: super::read::Format,
    /// The delimiter of CSV/TSV.
    pub delimiter: Option<String>,
    /// The text column.
    pub text: String,
    /// The label column.
    pub label: String,
    /// Whether a label cell holds several labels.
    pub multi_label: bool,
    /// The separator of labels within a cell, for multi-label CSV/TSV.
    pub separator: Option<String>,
    /// Data rows read (malformed ones included).
    pub rows_read: u64,
    /// Rows written to `dataset`.
    pub rows_kept: u64,
    /// Dropped rows by reason.
    pub dropped: BTreeMap<DropReason, Dropped>,
    /// Kept rows per label.
    pub labels: BTreeMap<String, u64>,
    /// Text length statistics of the kept rows.
    pub text_chars: Option<Lengths>,
    #[serde(skip)]
    histogram: BTreeMap<usize, u64>,
}

/// Rows dropped for one reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dropped {
    /// How many.
    pub count: u64,
    /// The first few row numbers.
    pub examples: Vec<u64>,
}

/// Text length statistics, in characters.
#[derive(Debug, Clone, Serialize)]
pub struct Lengths {
    /// Shortest.
    pub min: usize,
    /// Median.
    pub p50: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest.
    pub max: usize,
    /// Mean, rounded to 0.1.
    pub mean: f64,
}

impl Profile {
    /// A profile with nothing counted yet; the descriptive fields are filled
    /// by the caller.
    pub fn new(source: String, format: super::read::Format) -> Self {
        Profile {
            source,
            format,
            delimiter: None,
            text: String::new(),
            label: String::new(),
            multi_label: false,
            separator: None,
            rows_read: 0,
            rows_kept: 0,
            dropped: BTreeMap::new(),
            labels: BTreeMap::new(),
            text_chars: None,
            histogram: BTreeMap::new(),
        }
    }

    /// Counts a dropped row.
    pub fn drop_row(&mut self, reason: DropReason, row: u64) {
        let entry = self.dropped.entry(reason).or_default();
        entry.count += 1;
        if entry.examples.len() < EXAMPLES {
            entry.examples.push(row);
        }
    }

    /// Counts a kept row.
    pub fn keep_row(&mut self, text: &str, labels: &[String]) {
        self.rows_kept += 1;
        *self.histogram.entry(text.chars().count()).or_default() += 1;
        for label in labels {
            match self.labels.get_mut(label) {
                Some(n) => *n += 1,
                None => {
                    self.labels.insert(label.clone(), 1);
                }
            }
        }
    }

    /// Dropped rows over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().map(|d| d.count).sum()
    }

    /// Dropped rows by reason, as `3 empty_text, 1 duplicate`.
    pub fn dropped_summary(&self) -> String {
        let parts: Vec<String> = self
            .dropped
            .iter()
            .map(|(reason, d)| format!("{} {}", d.count, reason.name()))
            .collect();
        parts.join(", ")
    }

    /// Computes the length statistics from the histogram.
    pub fn finish(&mut self) {
        let total: u64 = self.histogram.values().sum();
        if total == 0 {
            return;
        }
        let percentile = |p: f64| {
            let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (&len, &n) in &self.histogram {
                seen += n;
                if seen >= rank {
                    return len;
                }
            }
            0
        };
        let sum: f64 = self
            .histogram
            .iter()
            .map(|(&len, &n)| len as f64 * n as f64)
            .sum();
        self.text_chars = Some(Lengths {
            min: self.histogram.keys().next().copied().unwrap_or(0),
            p50: percentile(0.5),
            p90: percentile(0.9),
            p99: percentile(0.99),
            max: self.histogram.keys().next_back().copied().unwrap_or(0),
            mean: (sum / total as f64 * 10.0).round() / 10.0,
        });
    }
}
