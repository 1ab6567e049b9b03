//! The tokenized tables finetune reads, and the order it feeds their rows in.
//!
//! Batches are padded to their longest row, not to `max_length`, so rows of similar length
//! are batched together: each epoch shuffles the rows (seeded by `seed` and the epoch), cuts
//! the shuffled list into groups of [`GROUP_BATCHES`] batches, sorts each group by length
//! and slices it into batches. The order is a pure function of the seed and the epoch, which
//! is what lets a resumed run pick up at any step.

use std::path::Path;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type};
use pipe_onnx::HostTensor;

use crate::models::Xoshiro256;
use crate::models::classifier::ProblemType;
#[cfg(doc)]
use crate::models::layers::Tokens;
use crate::table::read_table;

/// Batches per length-sorted group: large enough that batches are nearly uniform in
/// length, small enough that an epoch's order stays well mixed.
pub const GROUP_BATCHES: usize = 50;

/// The labels of a table.
#[derive(Debug, Clone)]
pub enum Labels {
    /// One class index per row.
    Single(Vec<i64>),
    /// `num_labels` 0/1 targets per row, row-major.
    Multi {
        /// Labels per row.
        num_labels: usize,
        /// The targets.
        targets: Vec<f32>,
    },
}

/// A tokenized table (`<split>.parquet` of the tokenize stage) in memory.
#[derive(Debug, Clone)]
pub struct TokenTable {
    ids: Vec<i64>,
    offsets: Vec<usize>,
    labels: Labels,
}

impl TokenTable {
    /// Reads `path`, checking that there are `num_labels` labels.
    pub fn read(path: &Path, num_labels: usize) -> Result<TokenTable> {
        let batch = read_table(path)?;
        let shown = path.display();
        let column = |name: &str| {
            batch.column_by_name(name).with_context(|| {
                format!("{shown} has no `{name}` column; is it an output of `tokenize`?")
            })
        };
        let lists = column("input_ids")?
            .as_list_opt::<i32>()
            .with_context(|| format!("`input_ids` of {shown} is not a list column"))?;
        let mut ids = Vec::new();
        let mut offsets = vec![0];
        for row in 0..lists.len() {
            let values = lists.value(row);
            let values = values
                .as_primitive_opt::<Int32Type>()
                .with_context(|| format!("`input_ids` of {shown} is not a list of int32"))?;
            if values.is_empty() {
                bail!(
                    "row {} of {shown} has no tokens; every row needs at least one",
                    row + 1
                );
            }
            ids.extend(values.values().iter().map(|&v| i64::from(v)));
            offsets.push(ids.len());
        }
        let labels = if let Some(col) = batch.column_by_name("label_id") {
            let col = col
                .as_primitive_opt::<Int32Type>()
                .with_context(|| format!("`label_id` of {shown} is not int32"))?;
            let labels: Vec<i64> = col.values().iter().map(|&v| i64::from(v)).collect();
            if let Some(row) = labels
                .iter()
                .position(|&l| l < 0 || l as usize >= num_labels)
            {
                bail!(
                    "row {} of {shown} has label id {}, but labels.json lists {num_labels} labels",
                    row + 1,
                    labels[row]
                );
            }
            Labels::Single(labels)
        } else {
            let hot = column("label_multi_hot")?
                .as_list_opt::<i32>()
                .with_context(|| format!("`label_multi_hot` of {shown} is not a list column"))?;
            let mut targets = Vec::with_capacity(hot.len() * num_labels);
            for row in 0..hot.len() {
                let values = hot.value(row);
                let values = values.as_primitive_opt::<Float32Type>().with_context(|| {
                    format!("`label_multi_hot` of {shown} is not a list of float32")
                })?;
                if values.len() != num_labels {
                    bail!(
                        "row {} of {shown} has {} label targets, but labels.json lists {num_labels}",
                        row + 1,
                        values.len()
                    );
                }
                targets.extend_from_slice(values.values());
            }
            Labels::Multi {
                num_labels,
                targets,
            }
        };
        Ok(TokenTable {
            ids,
            offsets,
            labels,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token count of row `i`.
    pub fn length(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// The longest row.
    pub fn max_length(&self) -> usize {
        (0..self.len()).map(|i| self.length(i)).max().unwrap_or(0)
    }

    /// The largest token id.
    pub fn max_id(&self) -> i64 {
        self.ids.iter().copied().max().unwrap_or(0)
    }

    /// The labels of every row.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Single- or multi-label.
    pub fn problem(&self) -> ProblemType {
        match self.labels {
            Labels::Single(_) => ProblemType::SingleLabelClassification,
            Labels::Multi { .. } => ProblemType::MultiLabelClassification,
        }
    }

    /// The graph inputs for `rows` (see [`Tokens::Distinct`]): `token_ids`, the batch's
    /// distinct ids (sorted), `token_index` `[b, longest]` (padding points at id 0, which the
    /// model never looks at), `lengths` `[b]` and `labels`; and the number of real tokens.
    pub fn batch(&self, rows: &[usize]) -> Result<(Vec<(&'static str, HostTensor)>, usize)> {
        let b = rows.len();
        let width = rows.iter().map(|&r| self.length(r)).max().unwrap_or(0);
        let mut ids = vec![0i64; b * width];
        let mut lengths = Vec::with_capacity(b);
        for (slot, &r) in rows.iter().enumerate() {
            let row = &self.ids[self.offsets[r]..self.offsets[r + 1]];
            ids[slot * width..slot * width + row.len()].copy_from_slice(row);
            lengths.push(row.len() as i64);
        }
        let tokens = lengths.iter().sum::<i64>() as usize;
        let (distinct, index) = distinct_tokens(&ids);
        let labels = match &self.labels {
            Labels::Single(all) => {
                HostTensor::i64(&[b as i64], rows.iter().map(|&r| all[r]).collect())?
            }
            Labels::Multi {
                num_labels,
                targets,
            } => {
                let k = *num_labels;
                let data = rows
                    .iter()
                    .flat_map(|&r| targets[r * k..(r + 1) * k].iter().copied())
                    .collect();
                HostTensor::f32(&[b as i64, k as i64], data)?
            }
        };
        Ok((
            vec![
                (
                    "token_ids",
                    HostTensor::i64(&[distinct.len() as i64], distinct)?,
                ),
                (
                    "token_index",
                    HostTensor::i64(&[b as i64, width as i64], index)?,
                ),
                ("lengths", HostTensor::i64(&[b as i64], lengths)?),
                ("labels", labels),
            ],
            tokens,
        ))
    }

    /// The batches of `epoch` (0-based): see the module docs.
    pub fn epoch_batches(
        &self,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        shuffle: bool,
    ) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if shuffle {
            let mut rng = Xoshiro256::new(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for i in (1..order.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        let mut batches = Vec::with_capacity(self.len().div_ceil(batch_size));
        for group in order.chunks_mut(batch_size * GROUP_BATCHES) {
            group.sort_by_key(|&r| std::cmp::Reverse(self.length(r)));
            batches.extend(group.chunks(batch_size).map(<[usize]>::to_vec));
        }
        batches
    }

    /// Batches in table order, for evaluation.
    pub fn in_order(&self, batch_size: usize) -> Vec<Vec<usize>> {
        let order: Vec<usize> = (0..self.len()).collect();
        order.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }
}

/// The distinct values of `ids`, sorted, and for each id its index among them: the
/// `token_ids` and `token_index` inputs of [`Tokens::Distinct`].
pub fn distinct_tokens(ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let index = ids
        .iter()
        .map(|id| distinct.partition_point(|d| d < id) as i64)
        .collect();
    (distinct, index)
}
