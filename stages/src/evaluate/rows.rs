//! Per-row results: predicted labels, the most confidently wrong rows, and
//! `predictions.parquet`.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{Float32Builder, ListBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::truth::Truth;
use crate::report::WrongExample;
use crate::table::{DatasetTable, LabelBuilder, TableWriter};
use pipe_models::bundle::Predictions;

/// A multi-label prediction includes each label whose probability reaches this.
pub(crate) const THRESHOLD: f32 = 0.5;

/// What the model predicts for row `i`: its top label, or for multi-label every label at or
/// above [`THRESHOLD`].
fn predicted(predictions: &Predictions, i: usize, multi_label: bool) -> Vec<usize> {
    if multi_label {
        (0..predictions.num_labels)
            .filter(|&j| predictions.row(i)[j] >= THRESHOLD)
            .collect()
    } else {
        vec![predictions.top(i)]
    }
}

/// The truth of row `i` as label indices.
fn true_labels(truth: &Truth, i: usize, num_labels: usize) -> Vec<usize> {
    match truth {
        Truth::Single(classes) => vec![classes[i]],
        Truth::Multi(hot) => (0..num_labels)
            .filter(|&j| hot[i * num_labels + j] >= THRESHOLD)
            .collect(),
    }
}

fn names(indices: &[usize], labels: &[String]) -> Vec<String> {
    indices.iter().map(|&j| labels[j].clone()).collect()
}

/// The `n` rows the model got wrong with the most confidence. Confidence is the probability
/// of the predicted label; for multi-label rows, the surest of the wrong decisions (`p` for a
/// label wrongly included, `1 - p` for one wrongly left out).
pub(crate) fn most_confidently_wrong(
    table: &DatasetTable,
    truth: &Truth,
    predictions: &Predictions,
    labels: &[String],
    n: usize,
) -> Vec<WrongExample> {
    let multi_label = matches!(truth, Truth::Multi(_));
    let mut wrong: Vec<WrongExample> = (0..table.len())
        .filter_map(|i| {
            let want = true_labels(truth, i, labels.len());
            let got = predicted(predictions, i, multi_label);
            if want == got {
                return None;
            }
            let row = predictions.row(i);
            let confidence = if multi_label {
                (0..labels.len())
                    .filter(|j| want.contains(j) != got.contains(j))
                    .map(|j| row[j].max(1.0 - row[j]))
                    .fold(0.0, f32::max)
            } else {
                row[got[0]]
            };
            Some(WrongExample {
                text: table.text(i).to_string(),
                truth: names(&want, labels).join(", "),
                predicted: names(&got, labels).join(", "),
                confidence,
            })
        })
        .collect();
    wrong.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    wrong.truncate(n);
    wrong
}

/// Writes `predictions.parquet`, one batch per split:
///
/// | column          | type                   | when               |
/// | --------------- | ---------------------- | ------------------ |
/// | `split`         | utf8                   | always             |
/// | `text`          | utf8                   | always             |
/// | `label`         | utf8                   | single-label       |
/// | `predicted`     | utf8                   | single-label       |
/// | `labels`        | list<utf8>             | multi-label        |
/// | `predicted_labels` | list<utf8>          | multi-label: every label with probability ≥ 0.5 |
/// | `probabilities` | list<float32>          | always, one per label of `labels.json` |
pub(crate) struct PredictionsWriter {
    writer: TableWriter,
    schema: SchemaRef,
    multi_label: bool,
}

fn string_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, false)))
}

impl PredictionsWriter {
    /// Creates `path` for single- or multi-label rows.
    pub(crate) fn create(path: &std::path::Path, multi_label: bool) -> Result<Self> {
        let (truth, predicted) = if multi_label {
            (
                Field::new("labels", string_list(), false),
                Field::new("predicted_labels", string_list(), false),
            )
        } else {
            (
                Field::new("label", DataType::Utf8, false),
                Field::new("predicted", DataType::Utf8, false),
            )
        };
        let probabilities = DataType::List(Arc::new(Field::new("item", DataType::Float32, false)));
        let schema = Arc::new(Schema::new(vec![
            Field::new("split", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            truth,
            predicted,
            Field::new("probabilities", probabilities, false),
        ]));
        Ok(PredictionsWriter {
            writer: TableWriter::create(path, schema.clone())?,
            schema,
            multi_label,
        })
    }

    /// Appends the rows of split `name`.
    pub(crate) fn write(
        &mut self,
        name: &str,
        table: &DatasetTable,
        truth: &Truth,
        predictions: &Predictions,
        labels: &[String],
    ) -> Result<()> {
        let rows = table.len();
        let mut split = StringBuilder::new();
        let mut text = StringBuilder::new();
        let mut probabilities = ListBuilder::new(Float32Builder::new()).with_field(Field::new(
            "item",
            DataType::Float32,
            false,
        ));
        let mut truth_column = LabelBuilder::new(self.multi_label);
        let mut predicted_column = LabelBuilder::new(self.multi_label);
        for i in 0..rows {
            split.append_value(name);
            text.append_value(table.text(i));
            truth_column.push(&names(&true_labels(truth, i, labels.len()), labels));
            predicted_column.push(&names(&predicted(predictions, i, self.multi_label), labels));
            probabilities.values().append_slice(predictions.row(i));
            probabilities.append(true);
        }
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(split.finish()),
                Arc::new(text.finish()),
                truth_column.finish(),
                predicted_column.finish(),
                Arc::new(probabilities.finish()),
            ],
        )?;
        self.writer.write(&batch)
    }

    /// Flushes the file.
    pub(crate) fn finish(self) -> Result<()> {
        self.writer.finish()
    }
}
