//! STUB of the metrics module (replace with the metrics-report branch): the agreed API with
//! accuracy only and plain ROC curves, so that `evaluate` compiles and runs meanwhile.

use anyhow::{Result, bail};
use serde::Serialize;

/// The metrics of one split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitMetrics {
    /// Rows scored.
    pub rows: usize,
    /// Share of rows whose prediction is right (all labels right, for multi-label).
    pub accuracy: f64,
}

impl SplitMetrics {
    /// A short summary (`accuracy 0.912`).
    pub fn headline(&self) -> String {
        format!("accuracy {:.3}", self.accuracy)
    }
}

/// Metrics of single-label predictions: `truth` holds one class index per row,
/// `probabilities` is row-major rows × labels.
pub fn single_label(
    labels: &[String],
    truth: &[usize],
    probabilities: &[f32],
) -> Result<SplitMetrics> {
    let n = labels.len();
    if n == 0 || probabilities.len() != truth.len() * n {
        bail!("probabilities do not hold one row of {n} per truth");
    }
    let right = truth
        .iter()
        .zip(probabilities.chunks(n))
        .filter(|(t, row)| argmax(row) == **t)
        .count();
    Ok(SplitMetrics {
        rows: truth.len(),
        accuracy: right as f64 / truth.len().max(1) as f64,
    })
}

/// Metrics of multi-label predictions: `truth` is row-major rows × labels of 0/1.
pub fn multi_label(
    labels: &[String],
    truth: &[f32],
    probabilities: &[f32],
) -> Result<SplitMetrics> {
    let n = labels.len();
    if n == 0 || probabilities.len() != truth.len() {
        bail!("probabilities and truth differ in size");
    }
    let rows = truth.len() / n;
    let right = truth
        .chunks(n)
        .zip(probabilities.chunks(n))
        .filter(|(t, p)| t.iter().zip(*p).all(|(t, p)| (*p >= 0.5) == (*t >= 0.5)))
        .count();
    Ok(SplitMetrics {
        rows,
        accuracy: right as f64 / rows.max(1) as f64,
    })
}

/// One label's ROC curve (one-vs-rest).
#[derive(Debug, Clone, Serialize)]
pub struct RocCurve {
    /// The label.
    pub label: String,
    /// False positive rates, from 0 to 1.
    pub fpr: Vec<f64>,
    /// True positive rates, parallel to `fpr`.
    pub tpr: Vec<f64>,
    /// Area under the curve; `None` when the split lacks positives or negatives.
    pub auc: Option<f64>,
}

/// One-vs-rest ROC curves: `truth` is row-major rows × labels of 0/1.
pub fn roc_curves(labels: &[String], truth: &[f32], probabilities: &[f32]) -> Vec<RocCurve> {
    let n = labels.len().max(1);
    labels
        .iter()
        .enumerate()
        .map(|(j, label)| {
            let mut scored: Vec<(f32, bool)> = truth
                .chunks(n)
                .zip(probabilities.chunks(n))
                .map(|(t, p)| (p[j], t[j] >= 0.5))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let pos = scored.iter().filter(|s| s.1).count() as f64;
            let neg = scored.len() as f64 - pos;
            let (mut fpr, mut tpr) = (vec![0.0], vec![0.0]);
            let (mut tp, mut fp) = (0.0, 0.0);
            for (_, positive) in &scored {
                if *positive {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                fpr.push(if neg > 0.0 { fp / neg } else { 0.0 });
                tpr.push(if pos > 0.0 { tp / pos } else { 0.0 });
            }
            let auc = (pos > 0.0 && neg > 0.0).then(|| {
                fpr.windows(2)
                    .zip(tpr.windows(2))
                    .map(|(f, t)| (f[1] - f[0]) * (t[0] + t[1]) / 2.0)
                    .sum()
            });
            RocCurve {
                label: label.clone(),
                fpr,
                tpr,
                auc,
            }
        })
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
