//! Classification metrics of one data split, computed as scikit-learn computes them.
//!
//! [`single_label`] and [`multi_label`] turn the truth and the model's probabilities into a
//! [`SplitMetrics`], the value `evaluate` writes into `metrics.json` under the split's name;
//! [`roc_curves`] gives the one-vs-rest [`RocCurve`]s the report draws. Arithmetic is in
//! `f64` on the `f32` probabilities. The golden values in `tests/fixtures/metrics/` (made by
//! `make_fixtures.py` there) pin every number below to scikit-learn 1.9.1 within 1e-9.
//!
//! | quantity | definition (scikit-learn) |
//! | --- | --- |
//! | predicted class | the argmax of the row, the first index on ties (`np.argmax`) |
//! | multi-label prediction | `p > 0.5` ([`MULTI_LABEL_THRESHOLD`]; strict, like `OneVsRestClassifier.predict`, i.e. logit > 0) |
//! | precision, recall, F1, support | `precision_recall_fscore_support(labels=range(K), zero_division=0)` |
//! | macro / weighted / micro F1 | `f1_score(average=…, zero_division=0)`; macro includes classes with no rows |
//! | ROC AUC per class | `roc_auc_score` one-vs-rest: trapezoids over the ROC curve, equal scores form one step; `None` (JSON `null`) when the class has no positive or no negative row |
//! | macro AUC | the mean of the defined per-class AUCs (scikit-learn's own macro is `nan` as soon as one is undefined); `None` if none is defined |
//! | log loss | `log_loss(labels=range(K))` on `f32` input: clip to `[ε, 1−ε]` with `ε = f32::EPSILON` (2⁻²³, `finfo(float32).eps`), no renormalisation of rows that do not sum to 1 |
//! | confusion matrix | `confusion_matrix(labels=range(K))`: rows are the true class, columns the predicted one; past [`DENSE_CONFUSION_MAX`] labels only its non-zero cells, as `[true, predicted, count]` |
//! | subset accuracy, Hamming loss | `accuracy_score`, `hamming_loss` on the 0/1 indicator matrices |
//!
//! # `metrics.json`
//!
//! A [`SplitMetrics`] serializes as one object; `task` says which of the task-specific
//! fields follow:
//!
//! ```json
//! { "rows": 60, "macro_f1": 0.74, "weighted_f1": 0.75, "macro_auc": 0.88,
//!   "per_class": [{ "label": "negative", "precision": 0.6, "recall": 0.69, "f1": 0.64,
//!                   "support": 13, "auc": 0.86 }, …],
//!   "task": "single_label", "accuracy": 0.75, "log_loss": 1.08,
//!   "confusion_matrix": [[9, 1, 0, 3], …] }
//! { …, "task": "single_label", …, "confusion_cells": [[0, 0, 9], [0, 1, 1], …] }
//! { …, "task": "multi_label", "threshold": 0.5, "subset_accuracy": 0.34,
//!   "micro_f1": 0.77, "hamming_loss": 0.2 }
//! ```
//!
//! `confusion_matrix` (dense, K × K) is written up to [`DENSE_CONFUSION_MAX`] labels, so the
//! consumers of small label sets read what they always did; past it `confusion_cells` lists
//! the non-zero cells (at most one per row evaluated), sorted by true then predicted
//! class: 5,000 labels would make a dense matrix of 25 million cells.

mod counts;
mod input;
mod multi;
mod roc;
mod single;

use serde::Serialize;

pub use multi::{MULTI_LABEL_THRESHOLD, multi_label, predicted_positive};
pub use roc::{RocCurve, roc_curves, roc_curves_of};
pub use single::{DENSE_CONFUSION_MAX, one_hot, predicted_class, single_label};

/// Metrics of one split. Serializes to the JSON written into `metrics.json` under the
/// split's name (see the [module docs](self)).
#[derive(Clone, Debug, Serialize)]
pub struct SplitMetrics {
    /// Number of rows evaluated.
    pub rows: usize,
    /// Unweighted mean of the per-class F1 scores, classes without rows included (as 0 when
    /// they are never predicted either).
    pub macro_f1: f64,
    /// Mean of the per-class F1 scores weighted by support.
    pub weighted_f1: f64,
    /// Mean of the per-class ROC AUCs over the classes where it is defined; `None` when it
    /// is defined for none.
    pub macro_auc: Option<f64>,
    /// One entry per label, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// What only single-label or only multi-label evaluation has.
    #[serde(flatten)]
    pub task: TaskMetrics,
}

/// One class (or, multi-label, one label) against the rest.
#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    /// The label's name.
    pub label: String,
    /// True positives over predicted positives; 0 when nothing is predicted positive.
    pub precision: f64,
    /// True positives over actual positives; 0 when there are none.
    pub recall: f64,
    /// `2·tp / (2·tp + fp + fn)`; 0 when the denominator is.
    pub f1: f64,
    /// Rows that truly belong to the class.
    pub support: u64,
    /// One-vs-rest ROC AUC; `None` when every row or no row belongs to the class.
    pub auc: Option<f64>,
}

/// The metrics specific to the kind of task, tagged `task` in the JSON.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum TaskMetrics {
    /// Each row has exactly one class.
    SingleLabel {
        /// Share of rows whose predicted class is the true one.
        accuracy: f64,
        /// Mean negative log-probability of the true class, clipped as scikit-learn does.
        log_loss: f64,
        /// `confusion_matrix[true][predicted]` counts rows, indices in label order; up to
        /// [`DENSE_CONFUSION_MAX`] labels.
        #[serde(skip_serializing_if = "Option::is_none")]
        confusion_matrix: Option<Vec<Vec<u64>>>,
        /// The non-zero cells as `[true, predicted, count]`, past [`DENSE_CONFUSION_MAX`]
        /// labels.
        #[serde(skip_serializing_if = "Option::is_none")]
        confusion_cells: Option<Vec<[u64; 3]>>,
    },
    /// Each row has any number of labels.
    MultiLabel {
        /// A label is predicted when its probability is above this.
        threshold: f32,
        /// Share of rows whose predicted label set is exactly the true one.
        subset_accuracy: f64,
        /// F1 of the true/false positives and false negatives pooled over all labels.
        micro_f1: f64,
        /// Share of (row, label) decisions that are wrong.
        hamming_loss: f64,
    },
}

impl SplitMetrics {
    /// The non-zero cells of the confusion matrix as `[true, predicted, count]`, whichever
    /// form it is kept in; empty for multi-label metrics.
    pub fn confusion_cells(&self) -> Vec<[u64; 3]> {
        match &self.task {
            TaskMetrics::SingleLabel {
                confusion_matrix: Some(dense),
                ..
            } => dense
                .iter()
                .enumerate()
                .flat_map(|(t, row)| {
                    row.iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(move |(p, &n)| [t as u64, p as u64, n])
                })
                .collect(),
            TaskMetrics::SingleLabel {
                confusion_cells: Some(cells),
                ..
            } => cells.clone(),
            _ => Vec::new(),
        }
    }

    /// Up to `max` class indices, by support (largest first, then label order): the
    /// classes a report shows when there are too many to show all.
    pub fn top_classes(&self, max: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.per_class.len()).collect();
        order.sort_by_key(|&c| (std::cmp::Reverse(self.per_class[c].support), c));
        order.truncate(max);
        order
    }

    /// The one-line headline for the run summary: `AUC 0.981 · accuracy 0.912`
    /// (single-label) or `AUC 0.950 · micro F1 0.880` (multi-label), AUC being the macro
    /// one-vs-rest AUC and left out when undefined.
    pub fn headline(&self) -> String {
        let main = match &self.task {
            TaskMetrics::SingleLabel { accuracy, .. } => format!("accuracy {accuracy:.3}"),
            TaskMetrics::MultiLabel { micro_f1, .. } => format!("micro F1 {micro_f1:.3}"),
        };
        match self.macro_auc {
            Some(auc) => format!("AUC {auc:.3} · {main}"),
            None => main,
        }
    }
}

/// Assembles the per-class entries from the decision counts and the AUCs.
fn per_class(
    labels: &[String],
    counts: &[counts::Counts],
    aucs: &[Option<f64>],
) -> Vec<ClassMetrics> {
    labels
        .iter()
        .zip(counts)
        .zip(aucs)
        .map(|((label, c), &auc)| ClassMetrics {
            label: label.clone(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            support: c.support(),
            auc,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(macro_auc: Option<f64>, task: TaskMetrics) -> SplitMetrics {
        SplitMetrics {
            rows: 1,
            macro_f1: 0.5,
            weighted_f1: 0.5,
            macro_auc,
            per_class: Vec::new(),
            task,
        }
    }

    #[test]
    fn headline_rounds_to_three_decimals_and_omits_an_undefined_auc() {
        let single = TaskMetrics::SingleLabel {
            accuracy: 0.9125,
            log_loss: 0.3,
            confusion_matrix: Some(Vec::new()),
            confusion_cells: None,
        };
        assert_eq!(
            metrics(Some(0.98149), single.clone()).headline(),
            "AUC 0.981 · accuracy 0.912"
        );
        assert_eq!(metrics(None, single).headline(), "accuracy 0.912");
        let multi = TaskMetrics::MultiLabel {
            threshold: 0.5,
            subset_accuracy: 0.4,
            micro_f1: 0.88,
            hamming_loss: 0.1,
        };
        assert_eq!(
            metrics(Some(0.95), multi).headline(),
            "AUC 0.950 · micro F1 0.880"
        );
    }
}
