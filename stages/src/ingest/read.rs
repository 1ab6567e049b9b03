//! Reading a source file record by record, whatever its format.
//!
//! [`Table::open`] settles the format (by extension, or `format:`), the
//! delimiter of delimited text (sniffed, or `delimiter:`) and the column
//! names; [`Table::next`] then yields one [`Record`] at a time with only the
//! columns asked for, so a file of any size is read with bounded memory:
//! one CSV record, one JSON line, or one Parquet batch at a time.
//!
//! Rows are numbered as a person looking at the file would count them: the
//! 1-based line on which a CSV/TSV record or a JSON line starts (the header
//! is line 1), or the 1-based row of a Parquet file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A source file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Comma- (or otherwise-) delimited text with a header row.
    Csv,
    /// Tab-delimited text with a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format's name as written in a manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "txt" => Some(Format::Csv),
            "tsv" | "tab" => Some(Format::Tsv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// How to read a source: everything left `None` is detected.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The format; by default from the extension.
    pub format: Option<Format>,
    /// The field delimiter of CSV/TSV; by default sniffed from the first lines.
    pub delimiter: Option<u8>,
}

/// One cell of a record, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value: an absent JSON key, JSON null, Parquet null.
    Missing,
    /// A scalar, as text (numbers and booleans are written out).
    Text(String),
    /// A list of values (a JSON array, a Parquet list).
    List(Vec<String>),
}

/// A record that cannot be read as a row: wrong number of fields, invalid
/// UTF-8, or a line that is not a JSON object.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// The 1-based row number (see the module docs).
    pub row: u64,
    /// The column concerned, when there is one.
    pub column: Option<String>,
    /// What is wrong, as a short phrase.
    pub reason: String,
}

/// What [`Table::next`] yields.
#[derive(Debug)]
pub enum Record {
    /// A row, with the cells of the asked-for columns in the asked-for order.
    Row {
        /// The 1-based row number (see the module docs).
        row: u64,
        /// The cells.
        cells: Vec<Cell>,
    },
    /// A record that could not be read.
    Malformed(Malformed),
}

/// An open source file.
pub struct Table {
    format: Format,
    delimiter: Option<u8>,
    columns: Vec<String>,
    size: u64,
    inner: Inner,
}

enum Inner {
    Delimited {
        reader: csv::Reader<BufReader<File>>,
        record: csv::ByteRecord,
    },
    Jsonl {
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
        offset: u64,
    },
    Parquet(Box<ParquetRows>),
}

/// Lines looked at to sniff a delimiter, and JSON lines looked at to collect
/// column names.
const SNIFF_LINES: usize = 1000;

impl Table {
    /// Opens `path` (named `shown` in errors), settling format, delimiter and columns.
    pub fn open(path: &Path, shown: &str, options: &ReadOptions) -> anyhow::Result<Table> {
        let file = fs_err::File::open(path).map(File::from).with_context(|| {
            if path.exists() {
                format!("cannot open {shown}")
            } else {
                format!("{shown} does not exist")
            }
        })?;
        let size = file.metadata()?.len();
        if size == 0 {
            bail!("{shown} is empty: it needs a header row and at least one data row");
        }
        let format = match options.format.or_else(|| Format::from_path(path)) {
            Some(format) => format,
            None => bail!(
                "cannot tell the format of {shown} from its extension; \
                 add `format: csv` (or tsv, jsonl, parquet)"
            ),
        };
        let (delimiter, columns, inner) = match format {
            Format::Csv | Format::Tsv => {
                let delimiter = match options.delimiter {
                    Some(d) => d,
                    None if format == Format::Tsv => b'\t',
                    None => sniff_delimiter(&file)?,
                };
                let mut reader = csv::ReaderBuilder::new()
                    .delimiter(delimiter)
                    .flexible(true)
                    .from_reader(BufReader::with_capacity(1 << 20, file));
                let header = reader
                    .byte_headers()
                    .with_context(|| format!("cannot read the header of {shown}"))?
                    .clone();
                let mut columns = Vec::with_capacity(header.len());
                for (i, name) in header.iter().enumerate() {
                    let name = std::str::from_utf8(name).map_err(|_| {
                        anyhow::anyhow!(
                            "{shown}: line 1: the name of column {} is not valid UTF-8; \
                             save the file as UTF-8",
                            i + 1
                        )
                    })?;
                    columns.push(name.trim().to_string());
                }
                if columns.iter().all(String::is_empty) {
                    bail!("{shown} is empty: it needs a header row and at least one data row");
                }
                let record = csv::ByteRecord::new();
                (
                    Some(delimiter),
                    columns,
                    Inner::Delimited { reader, record },
                )
            }
            Format::Jsonl => {
                let mut reader = BufReader::with_capacity(1 << 20, file);
                let columns = jsonl_columns(&mut reader)?;
                if columns.is_empty() {
                    bail!(
                        "{shown} holds no JSON object: each line should be one, like {{\"text\": \"...\", \"label\": \"...\"}}"
                    );
                }
                reader.rewind()?;
                let inner = Inner::Jsonl {
                    reader,
                    line: 0,
                    buf: Vec::new(),
                    offset: 0,
                };
                (None, columns, inner)
            }
            Format::Parquet => {
                let rows = ParquetRows::open(file, shown)?;
                (None, rows.columns.clone(), Inner::Parquet(Box::new(rows)))
            }
        };
        Ok(Table {
            format,
            delimiter,
            columns,
            size,
            inner,
        })
    }

    /// The format being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The delimiter of CSV/TSV.
    pub fn delimiter(&self) -> Option<u8> {
        self.delimiter
    }

    /// Column names, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Progress as (done, total) in the unit [`Table::progress_unit`] names.
    pub fn progress(&self) -> (u64, u64) {
        match &self.inner {
            Inner::Delimited { reader, .. } => (reader.position().byte(), self.size),
            Inner::Jsonl { offset, .. } => (*offset, self.size),
            Inner::Parquet(rows) => (rows.row, rows.total),
        }
    }

    /// The unit of [`Table::progress`].
    pub fn progress_unit(&self) -> &'static str {
        match self.format {
            Format::Parquet => "rows",
            _ => "bytes",
        }
    }

    /// The next record with the cells of columns `wanted` (indices into
    /// [`Table::columns`]), or `None` at the end. Errors are I/O errors;
    /// bad records come back as [`Record::Malformed`].
    pub fn next(&mut self, wanted: &[usize]) -> anyhow::Result<Option<Record>> {
        match &mut self.inner {
            Inner::Delimited { reader, record } => {
                if !reader.read_byte_record(record)? {
                    return Ok(None);
                }
                let row = record.position().map_or(0, |p| p.line());
                if record.len() != self.columns.len() {
                    return Ok(Some(Record::Malformed(Malformed {
                        row,
                        column: None,
                        reason: format!(
                            "has {} fields but the header has {}",
                            record.len(),
                            self.columns.len()
                        ),
                    })));
                }
                let mut cells = Vec::with_capacity(wanted.len());
                for &i in wanted {
                    match std::str::from_utf8(&record[i]) {
                        Ok(value) => cells.push(Cell::Text(value.to_string())),
                        Err(err) => {
                            return Ok(Some(Record::Malformed(Malformed {
                                row,
                                column: Some(self.columns[i].clone()),
                                reason: format!(
                                    "is not valid UTF-8 (bad byte at offset {} of the field)",
                                    err.valid_up_to()
                                ),
                            })));
                        }
                    }
                }
                Ok(Some(Record::Row { row, cells }))
            }
            Inner::Jsonl {
                reader,
                line,
                buf,
                offset,
            } => loop {
                buf.clear();
                let n = reader.read_until(b'\n', buf)?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                *offset += n as u64;
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(json_record(
                    strip_bom(buf),
                    *line,
                    &self.columns,
                    wanted,
                )));
            },
            Inner::Parquet(rows) => rows.next(wanted),
        }
    }
}

/// Picks the delimiter among `,` `\t` `;` `|` that splits the first lines
/// into the most consistent number of fields (more than one), `,` if none does.
fn sniff_delimiter(file: &File) -> anyhow::Result<u8> {
    let mut head = Vec::new();
    file.take(64 * 1024).read_to_end(&mut head)?;
    let mut file = file;
    file.rewind()?;
    let mut best = (b',', 0usize, 0usize);
    for delimiter in [b',', b'\t', b';', b'|'] {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(false)
            .from_reader(head.as_slice());
        let mut counts = Vec::new();
        let mut record = csv::ByteRecord::new();
        while counts.len() < SNIFF_LINES && reader.read_byte_record(&mut record).unwrap_or(false) {
            counts.push(record.len());
        }
        // The last record may have been cut by the 64 KiB window.
        if counts.len() > 2 {
            counts.pop();
        }
        let Some(&fields) = counts.first() else {
            continue;
        };
        let agreeing = counts.iter().filter(|&&c| c == fields).count();
        if fields > 1 && (agreeing, fields) > (best.1, best.2) {
            best = (delimiter, agreeing, fields);
        }
    }
    Ok(best.0)
}

/// Column names of a JSON Lines file: the keys of its first objects, in order of appearance.
fn jsonl_columns(reader: &mut BufReader<File>) -> anyhow::Result<Vec<String>> {
    let mut columns = Vec::new();
    let mut seen = BTreeSet::new();
    let mut buf = Vec::new();
    let mut objects = 0;
    while objects < SNIFF_LINES {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(strip_bom(&buf)) {
            objects += 1;
            for key in map.keys() {
                if seen.insert(key.clone()) {
                    columns.push(key.clone());
                }
            }
        }
    }
    Ok(columns)
}

/// `line` without a leading UTF-8 byte order mark.
fn strip_bom(line: &[u8]) -> &[u8] {
    line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
}

fn json_record(line: &[u8], row: u64, columns: &[String], wanted: &[usize]) -> Record {
    let malformed = |reason: String| {
        Record::Malformed(Malformed {
            row,
            column: None,
            reason,
        })
    };
    if let Err(err) = std::str::from_utf8(line) {
        return malformed(format!(
            "is not valid UTF-8 (bad byte at column {})",
            err.valid_up_to() + 1
        ));
    }
    let mut map = match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return malformed("is not a JSON object".to_string()),
        Err(err) => return malformed(format!("is not valid JSON ({err})")),
    };
    let cells = wanted
        .iter()
        .map(|&i| match map.remove(&columns[i]) {
            None | Some(serde_json::Value::Null) => Cell::Missing,
            Some(serde_json::Value::Array(items)) => Cell::List(
                items
                    .into_iter()
                    .filter(|v| !v.is_null())
                    .map(json_text)
                    .collect(),
            ),
            Some(value) => Cell::Text(json_text(value)),
        })
        .collect();
    Record::Row { row, cells }
}

fn json_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Parquet rows, one batch in memory at a time, cells cast to text.
struct ParquetRows {
    columns: Vec<String>,
    shown: String,
    file: File,
    reader: Option<(Vec<usize>, ParquetRecordBatchReader)>,
    batch: Vec<ArrayRef>,
    batch_rows: usize,
    pos: usize,
    row: u64,
    total: u64,
}

impl ParquetRows {
    fn open(file: File, shown: &str) -> anyhow::Result<Self> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file.try_clone()?)
            .with_context(|| format!("{shown} is not a valid Parquet file"))?;
        let columns = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        Ok(ParquetRows {
            columns,
            shown: shown.to_string(),
            file,
            reader: None,
            batch: Vec::new(),
            batch_rows: 0,
            pos: 0,
            row: 0,
            total,
        })
    }

    fn next(&mut self, wanted: &[usize]) -> anyhow::Result<Option<Record>> {
        if self.reader.as_ref().is_none_or(|(w, _)| w != wanted) {
            // (Re)start reading with a projection on the wanted columns.
            let builder = ParquetRecordBatchReaderBuilder::try_new(self.file.try_clone()?)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
            let reader = builder
                .with_projection(mask)
                .with_batch_size(8192)
                .build()?;
            self.reader = Some((wanted.to_vec(), reader));
            self.batch.clear();
            self.batch_rows = 0;
            self.pos = 0;
            self.row = 0;
        }
        let Some((_, reader)) = self.reader.as_mut() else {
            return Ok(None);
        };
        while self.pos >= self.batch_rows {
            let Some(batch) = reader.next() else {
                return Ok(None);
            };
            let batch = batch.with_context(|| format!("cannot read {}", self.shown))?;
            // The projection keeps file order; map back to the order asked for.
            let schema = batch.schema();
            self.batch = wanted
                .iter()
                .map(|&i| {
                    let index = schema.index_of(&self.columns[i])?;
                    text_array(batch.column(index), &self.columns[i], &self.shown)
                })
                .collect::<anyhow::Result<_>>()?;
            self.pos = 0;
            self.batch_rows = batch.num_rows();
        }
        let pos = self.pos;
        self.pos += 1;
        self.row += 1;
        let cells = self
            .batch
            .iter()
            .map(|array| text_cell(array, pos))
            .collect();
        Ok(Some(Record::Row {
            row: self.row,
            cells,
        }))
    }
}

/// Casts a Parquet column to utf8, or to list<utf8> when it holds lists.
fn text_array(array: &ArrayRef, column: &str, shown: &str) -> anyhow::Result<ArrayRef> {
    let target = match array.data_type() {
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        }
        _ => DataType::Utf8,
    };
    cast(array, &target).with_context(|| {
        format!(
            "{shown}: column `{column}` of type {} cannot be read as text",
            array.data_type()
        )
    })
}

fn text_cell(array: &ArrayRef, i: usize) -> Cell {
    if array.is_null(i) {
        return Cell::Missing;
    }
    match array.data_type() {
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(i);
            Cell::List(
                values
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect(),
            )
        }
        _ => Cell::Text(array.as_string::<i32>().value(i).to_string()),
    }
}
