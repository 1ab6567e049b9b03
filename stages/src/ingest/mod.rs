//! `ingest`: reads a CSV, TSV, JSON Lines or Parquet file into a clean
//! `dataset` table of text and label(s).
//!
//! ```yaml
//! ingest:
//!   source: data/questions.csv   # relative to the manifest
//!   format: csv                  # csv | tsv | jsonl | parquet; by default from the extension
//!   delimiter: ","               # CSV/TSV only; sniffed when left out ("tab" for a tab)
//!   text: question               # detected when left out: the longest text column
//!   label: topic                 # detected when left out: a column with few distinct values
//!   multi_label: false           # true: a label cell holds several labels ("physics;math")
//!   separator: ";"               # multi-label only; `;`, `,` or `|` detected when left out
//!   on_error: fail               # fail | skip: what to do with a malformed row
//! ```
//!
//! Outputs: `dataset.parquet` (see [`crate::table`] for the schema; labels of
//! a multi-label row are trimmed, sorted and deduplicated), `labels.json`
//! (the sorted list of labels) and `profile.json` (see [`profile::Profile`]).
//!
//! Cleaning drops rows with empty or whitespace-only text, rows without a
//! label, and exact duplicates (same text, same labels); each is counted by
//! reason in `profile.json`. A malformed record (wrong number of fields,
//! invalid UTF-8 in the text or label column, a line that is not a JSON
//! object) fails the stage, naming the file, the line and the column, unless
//! `on_error: skip`, which drops and counts it.
//!
//! # Memory
//!
//! The source is streamed: one record at a time is read, and rows are written
//! to Parquet in row groups of [`ROW_GROUP_ROWS`](crate::table::ROW_GROUP_ROWS)
//! rows, so the table itself never sits in memory. What grows with the input is
//! the duplicate detector, which keeps a 128-bit hash of each kept row (16
//! bytes a row, about 32 with the hash set's overhead: ~320 MB for 10 million
//! rows), plus one counter per distinct label and per distinct text length.
//! Column detection reads the first [`SAMPLE_ROWS`](detect::SAMPLE_ROWS) rows
//! once more.

pub(crate) mod detect;
mod profile;
pub(crate) mod read;
mod texts;

use std::collections::HashSet;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use pipe_engine::{Checked, Outcome, ParamError, RunContext, Stage, parse_params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::table::{
    DatasetBuilder, ROW_GROUP_ROWS, dataset_schema, write_in_background, write_json,
};
use detect::{Inspection, find_column, inspect};
use profile::{DropReason, Profile};
use read::{Cell, Format, Malformed, ReadOptions, Record, Table};
pub use texts::{Texts, read_texts};

/// The `ingest` stage kind.
pub struct Ingest;

/// Parameters of `ingest`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// The data file, relative to the manifest's folder.
    pub source: String,
    /// The file format; by default from the extension (.csv, .tsv, .jsonl, .parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The field delimiter of CSV/TSV (one character, or `tab`); sniffed when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// The column holding the text; by default the one with the longest values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The column holding the label; by default one with few distinct values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether a label cell may hold several labels.
    #[serde(default)]
    pub multi_label: bool,
    /// What separates labels within a cell (multi-label only); `;`, `,` or `|`
    /// is detected when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// What to do with a malformed record: `fail` the stage, or `skip` it.
    #[serde(default)]
    pub on_error: OnError,
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop with an error naming the row.
    #[default]
    Fail,
    /// Drop the row and count it in `profile.json`.
    Skip,
}

impl Params {
    fn parse(value: &serde_json::Value) -> Result<Params, ParamError> {
        let mut params: Params = parse_params(value)?;
        if let Some(delimiter) = &params.delimiter {
            let canonical = match delimiter.as_str() {
                "tab" | "\\t" => "\t",
                d => d,
            };
            if canonical.len() != 1 {
                return Err(ParamError::new(
                    &["delimiter"],
                    "the delimiter must be one ASCII character",
                )
                .with_help("write e.g. `delimiter: \";\"` or `delimiter: tab`"));
            }
            params.delimiter = Some(canonical.to_string());
        }
        if let Some(separator) = &params.separator {
            if !params.multi_label {
                return Err(ParamError::new(
                    &["separator"],
                    "`separator` only applies to multi-label data",
                )
                .with_help("add `multi_label: true`, or remove `separator`"));
            }
            if separator.is_empty() {
                return Err(ParamError::new(
                    &["separator"],
                    "the separator cannot be empty",
                ));
            }
        }
        Ok(params)
    }

    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            delimiter: self.delimiter.as_ref().map(|d| d.as_bytes()[0]),
        }
    }
}

impl Stage for Ingest {
    fn kind(&self) -> &'static str {
        "ingest"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Read a CSV, TSV, JSON Lines or Parquet file into a clean table of text and labels"
    }

    fn params_schema(&self) -> serde_json::Value {
        pipe_engine::schema_of::<Params>()
    }

    fn output_names(&self, _key_params: &serde_json::Value) -> Option<Vec<String>> {
        Some(["dataset", "labels", "profile"].map(String::from).to_vec())
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        let key_params = pipe_engine::key_params_of(&params)?;
        Ok(Checked {
            key_params,
            workspace_deps: vec![params.source],
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let params = Params::parse(ctx.params)?;
        let path = ctx.workspace.join(&params.source);
        let shown = params.source.as_str();
        let options = params.read_options();
        let table = Table::open(&path, shown, &options)?;
        let columns = Columns::choose(ctx, &params, &table, || inspect(&path, shown, &options))
            .with_context(|| format!("{shown}: choosing the text and label columns"))?;

        let mut profile = Profile::new(params.source.clone(), table.format());
        profile.delimiter = table.delimiter().map(|d| (d as char).to_string());
        profile.text = table.columns()[columns.text].clone();
        profile.label = table.columns()[columns.label].clone();
        profile.multi_label = params.multi_label;
        profile.separator = columns.separator.clone();

        let (_, total) = table.progress();
        let bar = ctx.reporter.progress(total, table.progress_unit());
        let out = ctx.out_dir.join("dataset.parquet");
        let schema = dataset_schema(params.multi_label);
        let mut reading = Reading {
            table,
            columns: &columns,
            params: &params,
            profile: &mut profile,
            bar: &bar,
        };
        write_in_background(&out, schema, |emit| reading.rows(emit))?;
        bar.finish_and_clear();
        profile.finish();
        check_result(&profile, shown)?;

        let labels: Vec<&String> = profile.labels.keys().collect();
        write_json(&ctx.out_dir.join("labels.json"), &labels)?;
        write_json(&ctx.out_dir.join("profile.json"), &profile)?;
        if profile.dropped_total() > 0 {
            ctx.reporter.note(&format!(
                "dropped {} of {} rows: {} (see profile.json)",
                profile.dropped_total(),
                profile.rows_read,
                profile.dropped_summary()
            ));
        }
        let dropped: serde_json::Map<String, serde_json::Value> = profile
            .dropped
            .iter()
            .map(|(reason, d)| (reason.name().to_string(), json!(d.count)))
            .collect();
        let mut metrics = serde_json::Map::new();
        metrics.insert("rows_read".into(), json!(profile.rows_read));
        metrics.insert("rows".into(), json!(profile.rows_kept));
        metrics.insert("dropped".into(), json!(dropped));
        metrics.insert("labels".into(), json!(profile.labels));
        Ok(Outcome {
            metrics,
            headline: Some(format!(
                "{} rows · {} labels · {} dropped",
                profile.rows_kept,
                profile.labels.len(),
                profile.dropped_total()
            )),
        })
    }
}

/// The columns ingest reads, named or detected.
struct Columns {
    text: usize,
    label: usize,
    /// The label separator (multi-label only).
    separator: Option<String>,
}

impl Columns {
    fn choose(
        ctx: &RunContext<'_>,
        params: &Params,
        table: &Table,
        inspect: impl FnOnce() -> anyhow::Result<Inspection>,
    ) -> anyhow::Result<Columns> {
        let find = |name: &String| find_column(table.columns(), name);
        let text = params.text.as_ref().map(find).transpose()?;
        let label = params.label.as_ref().map(find).transpose()?;
        if let (Some(t), Some(l)) = (text, label)
            && t == l
        {
            bail!(
                "`text` and `label` both name column `{}`; they must differ",
                table.columns()[t]
            );
        }
        let needs_inspection =
            text.is_none() || label.is_none() || (params.multi_label && params.separator.is_none());
        let inspection = if needs_inspection {
            Some(inspect()?)
        } else {
            None
        };
        let detected = |what: &str, index: usize, why: String| {
            ctx.reporter.note(&format!(
                "{what} column `{}` ({why}); set `{what}: <column>` to choose another",
                table.columns()[index]
            ));
        };
        let (text, label) = match (text, label, &inspection) {
            (Some(t), Some(l), _) => (t, l),
            (None, label, Some(insp)) => {
                let t = insp.text_column(label)?;
                detected(
                    "text",
                    t,
                    format!(
                        "detected: {:.0} characters on average",
                        insp.columns[t].mean_chars
                    ),
                );
                let l = match label {
                    Some(l) => l,
                    None => detect_label(insp, t, &detected)?,
                };
                (t, l)
            }
            (Some(t), None, Some(insp)) => (t, detect_label(insp, t, &detected)?),
            _ => bail!("internal error: columns left undetected"),
        };
        let separator = match (&params.separator, &inspection) {
            _ if !params.multi_label => None,
            (Some(sep), _) => Some(sep.clone()),
            (None, Some(insp)) => {
                let sep = insp.columns[label]
                    .label_separator()
                    .unwrap_or(';')
                    .to_string();
                ctx.reporter.note(&format!(
                    "labels within a cell are separated by `{sep}`; set `separator:` to change it"
                ));
                Some(sep)
            }
            (None, None) => bail!("internal error: separator left undetected"),
        };
        Ok(Columns {
            text,
            label,
            separator,
        })
    }
}

/// The main pass: reads every record, cleans and counts it, and emits the
/// kept rows in batches of [`ROW_GROUP_ROWS`].
struct Reading<'a> {
    table: Table,
    columns: &'a Columns,
    params: &'a Params,
    profile: &'a mut Profile,
    bar: &'a indicatif::ProgressBar,
}

impl Reading<'_> {
    fn rows(
        &mut self,
        emit: &mut dyn FnMut(RecordBatch) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let shown = self.params.source.as_str();
        let mut builder = DatasetBuilder::new(self.params.multi_label);
        let mut seen: HashSet<u128> = HashSet::new();
        let wanted = [self.columns.text, self.columns.label];
        let row_word = if self.table.format() == Format::Parquet {
            "row"
        } else {
            "line"
        };
        while let Some(record) = self.table.next(&wanted)? {
            self.profile.rows_read += 1;
            if self.profile.rows_read.is_multiple_of(4096) {
                self.bar.set_position(self.table.progress().0);
            }
            let (row, cells) = match record {
                Record::Row { row, cells } => (row, cells),
                Record::Malformed(bad) => {
                    malformed(self.profile, self.params.on_error, shown, row_word, bad)?;
                    continue;
                }
            };
            let [text, label] = <[Cell; 2]>::try_from(cells).map_err(|_| {
                anyhow::anyhow!("internal error: a reader returned the wrong number of cells")
            })?;
            let text = match text {
                Cell::Missing => String::new(),
                Cell::Text(text) => text,
                Cell::List(_) => {
                    let bad = Malformed {
                        row,
                        column: Some(self.profile.text.clone()),
                        reason: "holds a list, not text".to_string(),
                    };
                    malformed(self.profile, self.params.on_error, shown, row_word, bad)?;
                    continue;
                }
            };
            let labels = match split_labels(label, self.columns.separator.as_deref()) {
                Ok(labels) => labels,
                Err(reason) => {
                    let bad = Malformed {
                        row,
                        column: Some(self.profile.label.clone()),
                        reason,
                    };
                    malformed(self.profile, self.params.on_error, shown, row_word, bad)?;
                    continue;
                }
            };
            if text.trim().is_empty() {
                self.profile.drop_row(DropReason::EmptyText, row);
            } else if labels.is_empty() {
                self.profile.drop_row(DropReason::MissingLabel, row);
            } else if !seen.insert(row_hash(&text, &labels)) {
                self.profile.drop_row(DropReason::Duplicate, row);
            } else {
                self.profile.keep_row(&text, &labels);
                builder.push(&text, &labels);
                if builder.len() >= ROW_GROUP_ROWS {
                    emit(builder.finish()?)?;
                }
            }
        }
        emit(builder.finish()?)?;
        Ok(())
    }
}

fn detect_label(
    insp: &Inspection,
    text: usize,
    detected: &impl Fn(&str, usize, String),
) -> anyhow::Result<usize> {
    let l = insp.label_column(text)?;
    detected(
        "label",
        l,
        format!("detected: {} distinct values", insp.columns[l].values.len()),
    );
    Ok(l)
}

/// Counts a malformed record, or fails with a message naming it.
fn malformed(
    profile: &mut Profile,
    on_error: OnError,
    shown: &str,
    row_word: &str,
    bad: Malformed,
) -> anyhow::Result<()> {
    if on_error == OnError::Skip {
        profile.drop_row(DropReason::Malformed, bad.row);
        return Ok(());
    }
    let column = match &bad.column {
        Some(column) => format!(", column `{column}`"),
        None => String::new(),
    };
    bail!(
        "{shown}: {row_word} {}{column}: the record {}; fix the file, or set `on_error: skip` to drop such rows",
        bad.row,
        bad.reason
    )
}

/// The labels of a label cell: one, or (with a separator) several, trimmed,
/// sorted and deduplicated. An `Err` is the reason the cell is malformed.
fn split_labels(cell: Cell, separator: Option<&str>) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = match (cell, separator) {
        (Cell::Missing, _) => Vec::new(),
        (Cell::Text(text), None) => vec![text],
        (Cell::Text(text), Some(sep)) => text.split(sep).map(str::to_string).collect(),
        (Cell::List(items), Some(_)) => items,
        (Cell::List(items), None) if items.len() <= 1 => items,
        (Cell::List(items), None) => {
            return Err(format!(
                "holds {} labels; set `multi_label: true` to keep them all",
                items.len()
            ));
        }
    };
    for label in &mut labels {
        if label.trim().len() != label.len() {
            *label = label.trim().to_string();
        }
    }
    labels.retain(|l| !l.is_empty());
    labels.sort_unstable();
    labels.dedup();
    Ok(labels)
}

/// A 128-bit hash of a row, for duplicate detection (a collision among 10
/// million rows has a probability near 1e-25).
fn row_hash(text: &str, labels: &[String]) -> u128 {
    let mut hasher = blake3::Hasher::new();
    for part in std::iter::once(text).chain(labels.iter().map(String::as_str)) {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let bytes = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&bytes.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Fails when what was read cannot make a classification dataset.
fn check_result(profile: &Profile, shown: &str) -> anyhow::Result<()> {
    if profile.rows_read == 0 {
        bail!("{shown} has a header but no data rows; add rows below the header");
    }
    if profile.rows_kept == 0 {
        bail!(
            "no row of {shown} is left after cleaning ({}); check that `text:` and `label:` name the right columns",
            profile.dropped_summary()
        );
    }
    if profile.labels.len() < 2 {
        let only = profile
            .labels
            .keys()
            .next()
            .map(String::as_str)
            .unwrap_or("");
        bail!(
            "a classifier needs at least 2 labels, but column `{}` of {shown} holds only `{only}`; \
             check that `label:` names the right column",
            profile.label
        );
    }
    Ok(())
}
