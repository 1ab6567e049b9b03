//! Single-label metrics: each row has exactly one true class, and the predicted class is
//! the most probable one.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::counts::{self, Counts};
use super::{SplitMetrics, TaskMetrics, input, roc};

/// Up to this many labels `metrics.json` holds the dense confusion matrix; past it, only
/// its non-zero cells (see the [module docs](super)).
pub const DENSE_CONFUSION_MAX: usize = 100;

/// Metrics of one split of single-label data.
///
/// `truth[i]` is the class index of row i (into `labels`), `probabilities` is row-major
/// rows × `labels.len()` (a softmax output). Fails on mismatched lengths, a truth index
/// outside `labels`, a probability that is NaN or outside `[0, 1]`, and zero rows. Rows need
/// not sum exactly to 1: they are used as given, as scikit-learn does.
pub fn single_label(
    labels: &[String],
    truth: &[usize],
    probabilities: &[f32],
) -> Result<SplitMetrics> {
    let rows = input::rows(labels, truth.len(), 1, probabilities)?;
    let k = labels.len();
    if let Some((row, &class)) = truth.iter().enumerate().find(|&(_, &c)| c >= k) {
        bail!("row {row}: true class index {class} is out of range for {k} labels");
    }
    input::probabilities(labels, probabilities)?;

    // Memory in rows + labels: the non-zero cells only, one decision per row and class
    // touched (a row counts for its true and its predicted class, no other).
    let mut cells: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut per_class = vec![Counts::default(); k];
    for (&t, row) in truth.iter().zip(probabilities.chunks_exact(k)) {
        let p = predicted_class(row);
        *cells.entry((t, p)).or_default() += 1;
        per_class[t].add(true, t == p);
        if p != t {
            per_class[p].add(false, true);
        }
    }
    let correct: u64 = cells
        .iter()
        .filter(|((t, p), _)| t == p)
        .map(|(_, n)| n)
        .sum();
    let (confusion_matrix, confusion_cells) = if k <= DENSE_CONFUSION_MAX {
        let mut dense = vec![vec![0u64; k]; k];
        for (&(t, p), &n) in &cells {
            dense[t][p] = n;
        }
        (Some(dense), None)
    } else {
        let sparse = cells
            .iter()
            .map(|(&(t, p), &n)| [t as u64, p as u64, n])
            .collect();
        (None, Some(sparse))
    };
    let aucs: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let scored = truth
                .iter()
                .zip(probabilities.chunks_exact(k))
                .map(|(&t, row)| (f64::from(row[c]), t == c))
                .collect();
            roc::auc(scored)
        })
        .collect();

    Ok(SplitMetrics {
        rows,
        macro_f1: counts::macro_f1(&per_class),
        weighted_f1: counts::weighted_f1(&per_class),
        macro_auc: roc::macro_auc(&aucs),
        per_class: super::per_class(labels, &per_class, &aucs),
        task: TaskMetrics::SingleLabel {
            accuracy: correct as f64 / rows as f64,
            log_loss: log_loss(truth, probabilities, k),
            confusion_matrix,
            confusion_cells,
        },
    })
}

/// The predicted class of one row of probabilities: the index of the largest, the first one
/// on ties (`np.argmax`). 0 for an empty row.
pub fn predicted_class(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &p) in row.iter().enumerate().skip(1) {
        if p > row[best] {
            best = i;
        }
    }
    best
}

/// Class indices as the row-major rows × `classes` 0/1 matrix [`roc_curves`](super::roc_curves)
/// takes. An index `>= classes` gives an all-zero row.
pub fn one_hot(truth: &[usize], classes: usize) -> Vec<f32> {
    let mut matrix = vec![0.0; truth.len() * classes];
    for (row, &class) in truth.iter().enumerate() {
        if class < classes {
            matrix[row * classes + class] = 1.0;
        }
    }
    matrix
}

/// Mean negative log-probability of the true class, `sklearn.metrics.log_loss` for `f32`
/// probabilities: each is clipped to `[ε, 1−ε]` with `ε = finfo(float32).eps = 2⁻²³`
/// (scikit-learn 1.9.1 takes ε from the input's dtype, and ONNX models output float32), and
/// rows are not renormalised (scikit-learn 1.9.1 only warns when they do not sum to 1).
fn log_loss(truth: &[usize], probabilities: &[f32], k: usize) -> f64 {
    let eps = f64::from(f32::EPSILON);
    let total: f64 = truth
        .iter()
        .zip(probabilities.chunks_exact(k))
        .map(|(&t, row)| -f64::from(row[t]).clamp(eps, 1.0 - eps).ln())
        .sum();
    total / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_tied_maxima() {
        assert_eq!(predicted_class(&[0.25, 0.25, 0.25, 0.25]), 0);
        assert_eq!(predicted_class(&[0.1, 0.45, 0.45]), 1);
        assert_eq!(predicted_class(&[0.1, 0.2, 0.7]), 2);
        assert_eq!(predicted_class(&[]), 0);
    }

    #[test]
    fn one_hot_sets_one_column_per_row() {
        assert_eq!(one_hot(&[2, 0], 3), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(one_hot(&[5], 2), vec![0.0, 0.0]);
    }

    #[test]
    fn log_loss_clips_with_the_float32_epsilon() {
        // -ln(0.5) for the first row; the second row's true class has probability 0,
        // clipped to 2⁻²³: -ln(2⁻²³) = 23·ln 2.
        let loss = log_loss(&[0, 1], &[0.5, 0.5, 1.0, 0.0], 2);
        let expected = (2f64.ln() + 23.0 * 2f64.ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
    }
}
