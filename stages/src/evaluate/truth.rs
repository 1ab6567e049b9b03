//! The true labels of a split, as class indices of the bundle's label list.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Result, bail};

use crate::table::DatasetTable;

/// The truth of each row of one split.
pub(crate) enum Truth {
    /// One class index per row.
    Single(Vec<usize>),
    /// Row-major rows × labels of 0/1.
    Multi(Vec<f32>),
}

impl Truth {
    /// The labels of `table` (named `split` in errors) as indices into `labels`. A label
    /// `labels` lacks is an error naming every such label.
    pub(crate) fn read(table: &DatasetTable, labels: &[String], split: &str) -> Result<Truth> {
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let unknown: BTreeSet<&str> = table
            .label_set()
            .into_iter()
            .filter(|l| !index.contains_key(l))
            .collect();
        if !unknown.is_empty() {
            let quoted: Vec<String> = unknown.iter().map(|l| format!("`{l}`")).collect();
            bail!(
                "split `{split}` has labels the model does not know: {}; the model knows: {}. \
                 Evaluate on data with the labels the model was trained on",
                quoted.join(", "),
                labels.join(", ")
            );
        }
        let rows = 0..table.len();
        if table.multi_label() {
            let mut hot = vec![0.0; table.len() * labels.len()];
            for i in rows {
                for label in table.labels(i) {
                    hot[i * labels.len() + index[label]] = 1.0;
                }
            }
            return Ok(Truth::Multi(hot));
        }
        let mut classes = Vec::with_capacity(table.len());
        for i in rows {
            let Some(label) = table.labels(i).first().copied() else {
                bail!("split `{split}` has a row without a label (row {})", i + 1);
            };
            classes.push(index[label]);
        }
        Ok(Truth::Single(classes))
    }

    /// Row-major rows × `num_labels` of 0/1 (one-hot for single-label rows).
    pub(crate) fn multi_hot(&self, num_labels: usize) -> Vec<f32> {
        match self {
            Truth::Multi(hot) => hot.clone(),
            Truth::Single(classes) => {
                let mut hot = vec![0.0; classes.len() * num_labels];
                for (i, &c) in classes.iter().enumerate() {
                    hot[i * num_labels + c] = 1.0;
                }
                hot
            }
        }
    }
}
