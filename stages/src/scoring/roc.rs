//! ROC curves and the area under them, exactly as `sklearn.metrics.roc_curve`
//! (`drop_intermediate=True`) and `roc_auc_score` compute them.

use serde::Serialize;

/// A ROC curve: false-positive and true-positive rates, the same points as
/// `sklearn.metrics.roc_curve(drop_intermediate=True)`, starting at (0, 0).
///
/// When every row or no row is positive the rates are undefined: `fpr` and `tpr` are then
/// empty and `auc` is `None`.
#[derive(Clone, Debug, Serialize)]
pub struct RocCurve {
    /// The class the curve separates from the rest.
    pub label: String,
    /// False-positive rate at each point, non-decreasing from 0 to 1.
    pub fpr: Vec<f64>,
    /// True-positive rate at each point, non-decreasing from 0 to 1.
    pub tpr: Vec<f64>,
    /// Area under the curve (trapezoids), `None` when undefined.
    pub auc: Option<f64>,
}

/// One curve per label (one-vs-rest), for the report.
///
/// `truth` is row-major rows × `labels.len()` of 0/1 (one-hot for single-label, see
/// [`one_hot`](super::one_hot)); any non-zero value counts as positive. `probabilities` has
/// the same shape. Meant for data that [`single_label`](super::single_label) or
/// [`multi_label`](super::multi_label) accepted: when the shapes disagree it returns no
/// curves rather than guessing.
pub fn roc_curves(labels: &[String], truth: &[f32], probabilities: &[f32]) -> Vec<RocCurve> {
    let all: Vec<usize> = (0..labels.len()).collect();
    roc_curves_of(labels, truth, probabilities, &all)
}

/// [`roc_curves`] of the classes `classes` only (indices into `labels`, in the order
/// given; one out of range is skipped): the report draws a few of thousands.
pub fn roc_curves_of(
    labels: &[String],
    truth: &[f32],
    probabilities: &[f32],
    classes: &[usize],
) -> Vec<RocCurve> {
    let k = labels.len();
    if k == 0 || truth.len() != probabilities.len() || !truth.len().is_multiple_of(k) {
        return Vec::new();
    }
    classes
        .iter()
        .filter_map(|&j| Some((j, labels.get(j)?)))
        .map(|(j, label)| {
            let column = truth
                .iter()
                .zip(probabilities)
                .skip(j)
                .step_by(k)
                .map(|(&t, &p)| (f64::from(p), t != 0.0))
                .collect();
            let (fpr, tpr) = roc_points(column).unwrap_or_default();
            let auc = (!fpr.is_empty()).then(|| trapezoid(&fpr, &tpr));
            RocCurve {
                label: label.clone(),
                fpr,
                tpr,
                auc,
            }
        })
        .collect()
}

/// ROC AUC of one class from (score, is positive) pairs; `None` without both positives and
/// negatives (where scikit-learn warns and returns `nan`).
pub(super) fn auc(scored: Vec<(f64, bool)>) -> Option<f64> {
    roc_points(scored).map(|(fpr, tpr)| trapezoid(&fpr, &tpr))
}

/// Mean of the defined AUCs, `None` if there are none.
pub(super) fn macro_auc(aucs: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = aucs.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// `(fpr, tpr)` as `roc_curve(drop_intermediate=True)` returns them, or `None` without both
/// positives and negatives.
///
/// Mirrors `sklearn/metrics/_ranking.py` (1.9.1): sort by descending score; one point per
/// distinct score, after its whole tie group (`confusion_matrix_at_thresholds`); drop the
/// points where neither count bends (`np.diff(·, 2) == 0` for both), keeping the first and
/// the last; prepend (0, 0); divide by the totals.
fn roc_points(mut scored: Vec<(f64, bool)>) -> Option<(Vec<f64>, Vec<f64>)> {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points: Vec<(u64, u64)> = Vec::new(); // (false positives, true positives)
    let (mut fps, mut tps) = (0, 0);
    for (i, &(score, positive)) in scored.iter().enumerate() {
        if positive {
            tps += 1;
        } else {
            fps += 1;
        }
        // `!=`, not `total_cmp`: like NumPy, -0.0 and 0.0 are one score.
        if scored.get(i + 1).is_none_or(|next| next.0 != score) {
            points.push((fps, tps));
        }
    }
    if fps == 0 || tps == 0 {
        return None;
    }
    let kept = drop_intermediate(&points);
    let fpr = std::iter::once(0.0)
        .chain(kept.iter().map(|&(f, _)| f as f64 / fps as f64))
        .collect();
    let tpr = std::iter::once(0.0)
        .chain(kept.iter().map(|&(_, t)| t as f64 / tps as f64))
        .collect();
    Some((fpr, tpr))
}

/// Keeps the first and last points and every point where the false- or true-positive count
/// changes slope (the second difference is non-zero); collinear points in between go.
fn drop_intermediate(points: &[(u64, u64)]) -> Vec<(u64, u64)> {
    if points.len() <= 2 {
        return points.to_vec();
    }
    let bends = |a: u64, b: u64, c: u64| a + c != 2 * b;
    let mut kept = vec![points[0]];
    kept.extend(
        points
            .windows(3)
            .filter(|w| bends(w[0].0, w[1].0, w[2].0) || bends(w[0].1, w[1].1, w[2].1))
            .map(|w| w[1]),
    );
    kept.extend(points.last());
    kept
}

/// Area under the polyline through `(x, y)` by trapezoids, as `np.trapezoid(y, x)`
/// computes each one: `Δx · (y₁ + y₀) / 2`.
fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(scores: &[f64], positive: &[bool]) -> Vec<(f64, bool)> {
        scores
            .iter()
            .copied()
            .zip(positive.iter().copied())
            .collect()
    }

    #[test]
    fn a_perfect_ranking_has_auc_one_and_a_reversed_one_zero() {
        let pos = [true, true, false, false];
        assert_eq!(auc(scored(&[0.9, 0.8, 0.3, 0.1], &pos)), Some(1.0));
        assert_eq!(auc(scored(&[0.1, 0.2, 0.3, 0.4], &pos)), Some(0.0));
    }

    #[test]
    fn tied_scores_form_one_diagonal_step() {
        // All scores equal: one point (1, 1) after (0, 0), the diagonal, area 1/2.
        let (fpr, tpr) = roc_points(scored(&[0.5; 4], &[true, false, true, false])).unwrap();
        assert_eq!((fpr, tpr), (vec![0.0, 1.0], vec![0.0, 1.0]));
        // Scores 0.9 (pos), 0.5 (pos, neg tied), 0.1 (neg). Pairs: (0.9 vs both negs) win
        // twice, (0.5 pos vs 0.5 neg) ties → ½, (0.5 pos vs 0.1 neg) wins: (2 + ½ + 1) / 4.
        let pos = [true, true, false, false];
        assert_eq!(auc(scored(&[0.9, 0.5, 0.5, 0.1], &pos)), Some(3.5 / 4.0));
    }

    #[test]
    fn collinear_points_are_dropped_but_the_area_is_unchanged() {
        // Descending: pos, pos, pos, neg, neg: points (0,1) (0,2) (0,3) (1,3) (2,3); the
        // middle (0,2) and (1,3) are collinear with their neighbours.
        let (fpr, tpr) = roc_points(scored(
            &[0.9, 0.8, 0.7, 0.2, 0.1],
            &[true, true, true, false, false],
        ))
        .unwrap();
        assert_eq!(fpr, vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(tpr, vec![0.0, 1.0 / 3.0, 1.0, 1.0]);
        assert_eq!(trapezoid(&fpr, &tpr), 1.0);
    }

    #[test]
    fn one_sided_truth_has_no_curve() {
        assert_eq!(auc(scored(&[0.2, 0.4], &[true, true])), None);
        assert_eq!(auc(scored(&[0.2, 0.4], &[false, false])), None);
        assert_eq!(macro_auc(&[None, None]), None);
        assert_eq!(macro_auc(&[Some(0.5), None, Some(1.0)]), Some(0.75));
    }

    #[test]
    fn roc_curves_reads_columns_and_refuses_mismatched_shapes() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let truth = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let probs = [0.8, 0.2, 0.3, 0.7, 0.6, 0.4];
        let curves = roc_curves(&labels, &truth, &probs);
        assert_eq!(curves.len(), 2);
        assert_eq!(curves[0].label, "a");
        assert_eq!(curves[0].auc, Some(1.0));
        assert_eq!(curves[1].auc, Some(1.0));
        assert!(roc_curves(&labels, &truth, &probs[..4]).is_empty());
        let one_sided = roc_curves(&labels[..1], &[1.0, 1.0], &[0.3, 0.6]);
        assert_eq!((one_sided[0].fpr.len(), one_sided[0].auc), (0, None));
    }
}
