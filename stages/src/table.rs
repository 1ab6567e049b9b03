//! Parquet tables shared by the data stages.
//!
//! Every Parquet file the data stages write goes through [`TableWriter`], so
//! they all share one set of writer settings: zstd compression, row groups of
//! [`ROW_GROUP_ROWS`] rows, and a fixed `created_by` string so that the bytes
//! depend only on the rows (split's outputs must be byte-identical across
//! runs and machines).
//!
//! The `dataset` schema, written by ingest and by split:
//!
//! | column   | type                 | when                |
//! | -------- | -------------------- | ------------------- |
//! | `text`   | utf8, not null       | always              |
//! | `label`  | utf8, not null       | single-label data   |
//! | `labels` | list<utf8 not null>  | multi-label data    |

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, GenericListArray, ListBuilder, RecordBatch,
    RecordBatchReader, StringArray, StringBuilder,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows per Parquet row group, and per batch that ingest buffers before
/// writing: the unit that bounds the memory of streaming writes.
pub(crate) const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Writes one Parquet file with the settings all data stages share.
pub(crate) struct TableWriter {
    writer: ArrowWriter<File>,
}

impl TableWriter {
    /// Creates `path` for tables of `schema`.
    pub(crate) fn create(path: &Path, schema: SchemaRef) -> anyhow::Result<Self> {
        let file = fs_err::File::create(path)
            .map(File::from)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // The default names the parquet crate's version; a fixed string keeps
            // outputs byte-identical across builds.
            .set_created_by("pipe".to_string())
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(props))?;
        Ok(TableWriter { writer })
    }

    /// Appends a batch of rows.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        self.writer.write(batch)?;
        Ok(())
    }

    /// Flushes the last row group and the footer.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        self.writer.close()?;
        Ok(())
    }
}

/// Runs `produce` while a second thread writes the batches it emits to
/// `path`, so that encoding and compressing Parquet overlaps with making the
/// next batch. At most two batches wait between the threads. An error of the
/// writer wins over the producer's (which then only says the writer stopped).
pub(crate) fn write_in_background<R>(
    path: &Path,
    schema: SchemaRef,
    produce: impl FnOnce(&mut dyn FnMut(RecordBatch) -> anyhow::Result<()>) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let writer = scope.spawn(move || -> anyhow::Result<()> {
            let mut writer = TableWriter::create(path, schema)?;
            for batch in receiver {
                writer.write(&batch)?;
            }
            writer.finish()
        });
        let mut emit = |batch: RecordBatch| {
            sender
                .send(batch)
                .map_err(|_| anyhow::anyhow!("the Parquet writer stopped"))
        };
        let produced = produce(&mut emit);
        drop(sender);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("internal error: the Parquet writer thread panicked"))?;
        written.and(produced)
    })
}

/// Writes `batch` as the whole content of `path`.
pub(crate) fn write_table(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let mut writer = TableWriter::create(path, batch.schema())?;
    writer.write(batch)?;
    writer.finish()
}

/// Reads a whole Parquet file into one batch.
pub(crate) fn read_table(path: &Path) -> anyhow::Result<RecordBatch> {
    let file = fs_err::File::open(path)
        .map(File::from)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?
        .build()?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(concat_batches(&schema, &batches)?)
}

/// The schema of a `dataset` table.
pub(crate) fn dataset_schema(multi_label: bool) -> SchemaRef {
    let label = if multi_label {
        Field::new("labels", DataType::List(Arc::new(label_item())), false)
    } else {
        Field::new("label", DataType::Utf8, false)
    };
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        label,
    ]))
}

fn label_item() -> Field {
    Field::new("item", DataType::Utf8, false)
}

/// Builds `dataset` batches row by row.
pub(crate) struct DatasetBuilder {
    schema: SchemaRef,
    text: StringBuilder,
    labels: LabelBuilder,
}

/// Builds a `label` column (one label per row) or a `labels` column (a list per row).
pub(crate) enum LabelBuilder {
    /// One label per row.
    Single(StringBuilder),
    /// A list of labels per row.
    Multi(ListBuilder<StringBuilder>),
}

impl LabelBuilder {
    /// An empty column of single labels or label lists.
    pub(crate) fn new(multi_label: bool) -> Self {
        if multi_label {
            LabelBuilder::Multi(ListBuilder::new(StringBuilder::new()).with_field(label_item()))
        } else {
            LabelBuilder::Single(StringBuilder::new())
        }
    }

    /// Adds a row. Single-label columns take exactly one label.
    pub(crate) fn push(&mut self, labels: &[String]) {
        match self {
            LabelBuilder::Single(b) => b.append_value(&labels[0]),
            LabelBuilder::Multi(b) => {
                for label in labels {
                    b.values().append_value(label);
                }
                b.append(true);
            }
        }
    }

    /// Takes the rows added so far.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            LabelBuilder::Single(b) => Arc::new(b.finish()),
            LabelBuilder::Multi(b) => Arc::new(b.finish()),
        }
    }
}

impl DatasetBuilder {
    /// An empty builder for single- or multi-label rows.
    pub(crate) fn new(multi_label: bool) -> Self {
        DatasetBuilder {
            schema: dataset_schema(multi_label),
            text: StringBuilder::new(),
            labels: LabelBuilder::new(multi_label),
        }
    }

    /// Adds a row. Single-label builders take exactly one label.
    pub(crate) fn push(&mut self, text: &str, labels: &[String]) {
        self.text.append_value(text);
        self.labels.push(labels);
    }

    /// Rows added since the last [`DatasetBuilder::finish`].
    pub(crate) fn len(&self) -> usize {
        self.text.len()
    }

    /// Takes the rows added so far as a batch.
    pub(crate) fn finish(&mut self) -> anyhow::Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(self.text.finish()), self.labels.finish()],
        )?)
    }
}

/// A `dataset`-shaped table read back: its rows and a view of their labels.
pub(crate) struct DatasetTable {
    /// The rows, as read (all columns kept, so subsets keep the schema).
    pub batch: RecordBatch,
    text: StringArray,
    labels: LabelColumn,
}

enum LabelColumn {
    Single(StringArray),
    Multi(GenericListArray<i32>),
}

impl DatasetTable {
    /// Reads a table with a `text` column and a `label` or `labels` column.
    /// `name` is how errors refer to it (e.g. "upstream `dataset`").
    pub(crate) fn read(path: &Path, name: &str) -> anyhow::Result<Self> {
        let batch = read_table(path).with_context(|| format!("cannot read {name}"))?;
        Self::from_batch(batch, name)
    }

    fn from_batch(batch: RecordBatch, name: &str) -> anyhow::Result<Self> {
        let column = |col: &str| batch.column_by_name(col).cloned();
        let Some(text) = column("text") else {
            bail!(
                "{name} has no `text` column (it has: {})",
                column_names(&batch)
            );
        };
        let text = utf8(&text, name, "text")?;
        let labels = if let Some(label) = column("label") {
            LabelColumn::Single(utf8(&label, name, "label")?)
        } else if let Some(labels) = column("labels") {
            let list_type = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
            let list = cast(&labels, &list_type)
                .with_context(|| format!("{name}: column `labels` is not a list of strings"))?;
            LabelColumn::Multi(list.as_list::<i32>().clone())
        } else {
            bail!(
                "{name} has neither a `label` nor a `labels` column (it has: {})",
                column_names(&batch)
            );
        };
        Ok(DatasetTable {
            batch,
            text,
            labels,
        })
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether rows hold label lists (`labels`) rather than one `label`.
    pub(crate) fn multi_label(&self) -> bool {
        matches!(self.labels, LabelColumn::Multi(_))
    }

    /// The text of row `i` (null reads as empty).
    pub(crate) fn text(&self, i: usize) -> &str {
        if self.text.is_null(i) {
            ""
        } else {
            self.text.value(i)
        }
    }

    /// The labels of row `i` (none for a null cell).
    pub(crate) fn labels(&self, i: usize) -> Vec<&str> {
        match &self.labels {
            LabelColumn::Single(a) if a.is_null(i) => Vec::new(),
            LabelColumn::Single(a) => vec![a.value(i)],
            LabelColumn::Multi(a) if a.is_null(i) => Vec::new(),
            LabelColumn::Multi(a) => {
                let values = a.values().as_string::<i32>();
                let offsets = a.value_offsets();
                let range = offsets[i] as usize..offsets[i + 1] as usize;
                range
                    .filter(|&j| values.is_valid(j))
                    .map(|j| values.value(j))
                    .collect()
            }
        }
    }

    /// Every label that occurs, sorted.
    pub(crate) fn label_set(&self) -> BTreeSet<&str> {
        (0..self.len()).flat_map(|i| self.labels(i)).collect()
    }
}

fn utf8(array: &ArrayRef, name: &str, column: &str) -> anyhow::Result<StringArray> {
    let array = cast(array, &DataType::Utf8)
        .with_context(|| format!("{name}: column `{column}` is not text"))?;
    Ok(array.as_string::<i32>().clone())
}

fn column_names(batch: &RecordBatch) -> String {
    let schema = batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}

/// Writes `value` as pretty JSON with a trailing newline.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs_err::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
