//! Looking at the first rows of a source to describe its columns and to pick
//! the text and label columns. Shared by `ingest` (when `text:` or `label:`
//! is left out) and `pipe init` (which shows the description and asks).

use std::collections::HashMap;
use std::path::Path;

use anyhow::bail;

use super::read::{Cell, Format, Malformed, ReadOptions, Record, Table};

/// Rows read to describe a source.
pub const SAMPLE_ROWS: usize = 2000;

/// Column names that suggest the text column, tried when lengths alone don't decide.
const TEXT_NAMES: &[&str] = &[
    "text", "question", "sentence", "content", "body", "review", "comment", "message", "document",
];
/// Column names that suggest the label column.
const LABEL_NAMES: &[&str] = &[
    "label",
    "labels",
    "class",
    "category",
    "categories",
    "target",
    "tag",
    "tags",
    "intent",
    "topic",
];

/// What the first rows of a source look like.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The format read.
    pub format: Format,
    /// The delimiter of CSV/TSV.
    pub delimiter: Option<u8>,
    /// One summary per column, in file order.
    pub columns: Vec<ColumnSummary>,
    /// Rows looked at (malformed records are skipped).
    pub rows: usize,
    /// The first malformed record met while looking, if any.
    pub first_malformed: Option<Malformed>,
}

/// A summary of one column over the rows looked at.
#[derive(Debug, Clone)]
pub struct ColumnSummary {
    /// The column's name.
    pub name: String,
    /// Cells that are present and not blank.
    pub filled: usize,
    /// Mean length in characters of the filled cells.
    pub mean_chars: f64,
    /// Whether every filled cell is a number.
    pub numeric: bool,
    /// Distinct values with their counts, most frequent first (ties by value).
    pub values: Vec<(String, usize)>,
    /// Whether some cell is a list (JSON array, Parquet list).
    pub has_lists: bool,
}

impl ColumnSummary {
    /// The first few filled values, for showing.
    pub fn samples(&self, n: usize) -> impl Iterator<Item = &str> {
        self.values.iter().take(n).map(|(v, _)| v.as_str())
    }

    /// The separator that seems to split this column's cells into several
    /// labels: `;` if some cell holds one, else `,`, else none.
    pub fn label_separator(&self) -> Option<char> {
        [';', ',', '|']
            .into_iter()
            .find(|&sep| self.values.iter().any(|(v, _)| v.contains(sep)))
    }

    fn looks_like_label(&self) -> bool {
        let distinct = self.values.len();
        distinct >= 2 && distinct < self.filled && (distinct <= 20 || distinct * 10 <= self.filled)
    }
}

/// Reads up to [`SAMPLE_ROWS`] rows of `path` and summarises each column.
pub fn inspect(path: &Path, shown: &str, options: &ReadOptions) -> anyhow::Result<Inspection> {
    let mut table = Table::open(path, shown, options)?;
    let all: Vec<usize> = (0..table.columns().len()).collect();
    let mut counts: Vec<HashMap<String, usize>> = vec![HashMap::new(); all.len()];
    let mut chars = vec![0usize; all.len()];
    let mut numeric = vec![true; all.len()];
    let mut has_lists = vec![false; all.len()];
    let mut rows = 0;
    let mut first_malformed = None;
    while rows < SAMPLE_ROWS {
        let cells = match table.next(&all)? {
            None => break,
            Some(Record::Row { cells, .. }) => cells,
            Some(Record::Malformed(bad)) => {
                first_malformed.get_or_insert(bad);
                continue;
            }
        };
        rows += 1;
        for (i, cell) in cells.into_iter().enumerate() {
            let value = match cell {
                Cell::Missing => continue,
                Cell::Text(text) => text,
                Cell::List(items) => {
                    has_lists[i] = true;
                    items.join(";")
                }
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            chars[i] += value.chars().count();
            numeric[i] &= value.parse::<f64>().is_ok();
            *counts[i].entry(value.to_string()).or_default() += 1;
        }
    }
    let columns = table
        .columns()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut values: Vec<(String, usize)> = counts[i].drain().collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let filled: usize = values.iter().map(|(_, n)| n).sum();
            ColumnSummary {
                name: name.clone(),
                filled,
                mean_chars: if filled == 0 {
                    0.0
                } else {
                    chars[i] as f64 / filled as f64
                },
                numeric: numeric[i] && filled > 0,
                values,
                has_lists: has_lists[i],
            }
        })
        .collect();
    Ok(Inspection {
        format: table.format(),
        delimiter: table.delimiter(),
        columns,
        rows,
        first_malformed,
    })
}

impl Inspection {
    /// The text column: the non-numeric column with the longest mean length,
    /// other than `not`. When the runner-up comes within 20% and column names
    /// don't decide, the error lists the candidates.
    pub fn text_column(&self, not: Option<usize>) -> anyhow::Result<usize> {
        let mut candidates: Vec<usize> = (0..self.columns.len())
            .filter(|&i| Some(i) != not && !self.columns[i].numeric && self.columns[i].filled > 0)
            .collect();
        candidates.sort_by(|&a, &b| {
            self.columns[b]
                .mean_chars
                .total_cmp(&self.columns[a].mean_chars)
                .then(a.cmp(&b))
        });
        let Some(&best) = candidates.first() else {
            if let (0, Some(bad)) = (self.rows, &self.first_malformed) {
                bail!(
                    "no record could be read to find the text column: every one is malformed \
                     (the first, row {}: the record {}); check the file's delimiter and quoting",
                    bad.row,
                    bad.reason
                );
            }
            bail!("no column holds text; {}", self.column_list())
        };
        let close: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.columns[i].mean_chars >= 0.8 * self.columns[best].mean_chars)
            .collect();
        self.decide(&close, TEXT_NAMES, "text", |c| {
            format!("{:.0} characters on average", c.mean_chars)
        })
    }

    /// The label column: a low-cardinality column other than `not` (the
    /// text column). Names like `label` or `category` decide between several.
    pub fn label_column(&self, not: usize) -> anyhow::Result<usize> {
        let candidates: Vec<usize> = (0..self.columns.len())
            .filter(|&i| i != not && self.columns[i].looks_like_label())
            .collect();
        if candidates.is_empty() {
            bail!(
                "no column looks like a label (a column with few distinct values); \
                 name it with `label: <column>`; {}",
                self.column_list()
            );
        }
        self.decide(&candidates, LABEL_NAMES, "label", |c| {
            format!("{} distinct values", c.values.len())
        })
    }

    fn decide(
        &self,
        candidates: &[usize],
        names: &[&str],
        role: &str,
        describe: impl Fn(&ColumnSummary) -> String,
    ) -> anyhow::Result<usize> {
        if let [one] = candidates {
            return Ok(*one);
        }
        let named: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| names.contains(&self.columns[i].name.to_lowercase().as_str()))
            .collect();
        if let [one] = named[..] {
            return Ok(one);
        }
        let listed: Vec<String> = candidates
            .iter()
            .map(|&i| {
                format!(
                    "`{}` ({})",
                    self.columns[i].name,
                    describe(&self.columns[i])
                )
            })
            .collect();
        bail!(
            "cannot tell which column holds the {role}: candidates are {}; choose one with `{role}: <column>`",
            listed.join(", ")
        )
    }

    fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        format!("the columns are: {}", names.join(", "))
    }
}

/// The index of column `name` among `columns`, or an error listing them and
/// suggesting the closest. Callers add the file name as context.
pub fn find_column(columns: &[String], name: &str) -> anyhow::Result<usize> {
    if let Some(i) = columns.iter().position(|c| c == name) {
        return Ok(i);
    }
    let closest = columns
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&c.to_lowercase(), &name.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = match closest {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    };
    bail!(
        "there is no column `{name}` (the columns are: {}){hint}",
        columns.join(", ")
    )
}
