//! Multi-label metrics: each row has any number of true labels, and a label is predicted
//! when its (sigmoid) probability is above [`MULTI_LABEL_THRESHOLD`].

use anyhow::{Result, bail};

use super::counts::{self, Counts};
use super::{SplitMetrics, TaskMetrics, input, roc};

/// A label is predicted when its probability is strictly above this. Strict, like
/// scikit-learn's `OneVsRestClassifier.predict` and `LogisticRegression` (positive iff the
/// logit is > 0, i.e. the sigmoid is > 0.5): a probability of exactly 0.5 is a "no".
pub const MULTI_LABEL_THRESHOLD: f32 = 0.5;

/// Whether a label with probability `p` is predicted ([`MULTI_LABEL_THRESHOLD`]).
pub fn predicted_positive(p: f32) -> bool {
    p > MULTI_LABEL_THRESHOLD
}

/// Metrics of one split of multi-label data.
///
/// `truth` is row-major rows × `labels.len()` of 0.0/1.0, `probabilities` the sigmoid
/// outputs in the same shape. Fails on mismatched lengths, truth values other than 0 and 1,
/// a probability that is NaN or outside `[0, 1]`, and zero rows.
pub fn multi_label(
    labels: &[String],
    truth: &[f32],
    probabilities: &[f32],
) -> Result<SplitMetrics> {
    let k = labels.len();
    let rows = input::rows(labels, truth.len(), k.max(1), probabilities)?;
    if let Some(i) = truth.iter().position(|&t| t != 0.0 && t != 1.0) {
        bail!(
            "row {}: the truth of `{}` is {}, expected 0 or 1",
            i / k,
            labels[i % k],
            truth[i]
        );
    }
    input::probabilities(labels, probabilities)?;

    let mut per_label = vec![Counts::default(); k];
    let (mut exact_rows, mut wrong_decisions) = (0u64, 0u64);
    for (t_row, p_row) in truth.chunks_exact(k).zip(probabilities.chunks_exact(k)) {
        let mut row_wrong = 0;
        for ((counts, &t), &p) in per_label.iter_mut().zip(t_row).zip(p_row) {
            let (truth, predicted) = (t == 1.0, predicted_positive(p));
            counts.add(truth, predicted);
            row_wrong += u64::from(truth != predicted);
        }
        exact_rows += u64::from(row_wrong == 0);
        wrong_decisions += row_wrong;
    }
    let aucs: Vec<Option<f64>> = (0..k)
        .map(|j| {
            let scored = truth
                .iter()
                .zip(probabilities)
                .skip(j)
                .step_by(k)
                .map(|(&t, &p)| (f64::from(p), t == 1.0))
                .collect();
            roc::auc(scored)
        })
        .collect();

    Ok(SplitMetrics {
        rows,
        macro_f1: counts::macro_f1(&per_label),
        weighted_f1: counts::weighted_f1(&per_label),
        macro_auc: roc::macro_auc(&aucs),
        per_class: super::per_class(labels, &per_label, &aucs),
        task: TaskMetrics::MultiLabel {
            threshold: MULTI_LABEL_THRESHOLD,
            subset_accuracy: exact_rows as f64 / rows as f64,
            micro_f1: counts::micro_f1(&per_label),
            hamming_loss: wrong_decisions as f64 / (rows * k) as f64,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_half_is_not_predicted() {
        assert!(!predicted_positive(0.5));
        assert!(predicted_positive(0.500_000_06));
    }
}
