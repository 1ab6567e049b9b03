//! One text column of a data file, read the way ingest reads it: for callers that only need
//! texts, such as `pipe predict --file`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::detect::{find_column, inspect};
use super::read::{Cell, Format, ReadOptions, Record, Table};

/// The texts of one column of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texts {
    /// The column they came from.
    pub column: String,
    /// Whether the column was detected rather than named.
    pub detected: bool,
    /// One text per row, in file order (an empty cell reads as empty text).
    pub texts: Vec<String>,
    /// Where each text is in the file: its line (CSV, TSV, JSON Lines) or row (Parquet).
    pub rows: Vec<u64>,
    /// `line` or `row`, as errors about a text should say.
    pub row_word: &'static str,
}

/// Reads the text column of the CSV, TSV, JSON Lines or Parquet file `path`: `column` when
/// given, else the column ingest would detect (the longest text). A malformed record or a
/// cell holding a list is an error naming the file, the row and the column; when the column
/// is detected, a malformed cell in any column is (it may be the text the detection skipped).
pub fn read_texts(path: &Path, column: Option<&str>) -> Result<Texts> {
    let shown = path.display().to_string();
    if Format::from_path(path).is_none() {
        bail!(
            "cannot tell the format of {shown} from its extension; \
             name it .csv, .tsv, .jsonl or .parquet"
        );
    }
    let options = ReadOptions::default();
    let mut table = Table::open(path, &shown, &options)?;
    let (index, detected) = match column {
        Some(name) => (
            find_column(table.columns(), name).with_context(|| format!("in {shown}"))?,
            false,
        ),
        None => (
            inspect(path, &shown, &options)?
                .text_column(None)
                .with_context(|| format!("{shown}: choosing the text column"))?,
            true,
        ),
    };
    let name = table.columns()[index].clone();
    let row_word = if table.format() == Format::Parquet {
        "row"
    } else {
        "line"
    };
    let read: Vec<usize> = if detected {
        (0..table.columns().len()).collect()
    } else {
        vec![index]
    };
    let at = read.iter().position(|&i| i == index).unwrap_or(0);
    let mut texts = Vec::new();
    let mut rows = Vec::new();
    while let Some(record) = table.next(&read)? {
        match record {
            Record::Row { cells, row } => match cells.into_iter().nth(at) {
                Some(Cell::Text(text)) => {
                    texts.push(text);
                    rows.push(row);
                }
                Some(Cell::Missing) => {
                    texts.push(String::new());
                    rows.push(row);
                }
                Some(Cell::List(_)) => {
                    bail!("{shown}: {row_word} {row}, column `{name}`: holds a list, not text")
                }
                None => bail!("internal error: a reader returned no cell"),
            },
            Record::Malformed(bad) => {
                let column = bad
                    .column
                    .map(|c| format!(", column `{c}`"))
                    .unwrap_or_default();
                bail!(
                    "{shown}: {row_word} {}{column}: the record {}",
                    bad.row,
                    bad.reason
                );
            }
        }
    }
    Ok(Texts {
        column: name,
        detected,
        texts,
        rows,
        row_word,
    })
}
