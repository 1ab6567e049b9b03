//! Checks on the inputs of the metrics: shapes, and probabilities that are probabilities.

use anyhow::{Result, bail};

/// Checks that there are labels and rows and that `probabilities` holds `rows × labels`
/// values, where `rows = truth_len / truth_width`; returns `rows`.
pub(super) fn rows(
    labels: &[String],
    truth_len: usize,
    truth_width: usize,
    probabilities: &[f32],
) -> Result<usize> {
    if labels.is_empty() {
        bail!("no labels to evaluate against");
    }
    if truth_len == 0 {
        bail!("no rows to evaluate");
    }
    if !truth_len.is_multiple_of(truth_width) {
        bail!("truth holds {truth_len} values, not a whole number of rows of {truth_width} labels");
    }
    let rows = truth_len / truth_width;
    let expected = rows * labels.len();
    if probabilities.len() != expected {
        bail!(
            "probabilities hold {} values, expected {rows} × {} = {expected} (rows × labels)",
            probabilities.len(),
            labels.len()
        );
    }
    Ok(rows)
}

/// Checks that every probability is a number in `[0, 1]` (logits, say, are not).
pub(super) fn probabilities(labels: &[String], probabilities: &[f32]) -> Result<()> {
    let bad = probabilities.iter().position(|p| !(0.0..=1.0).contains(p));
    if let Some(i) = bad {
        let (row, label) = (i / labels.len(), &labels[i % labels.len()]);
        let p = probabilities[i];
        if p.is_nan() {
            bail!("row {row}: the probability of `{label}` is NaN");
        }
        bail!("row {row}: the probability of `{label}` is {p}, outside [0, 1]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn rows_counts_rows_and_rejects_mismatched_lengths() {
        assert_eq!(rows(&labels(), 3, 1, &[0.5; 6]).unwrap(), 3);
        assert_eq!(rows(&labels(), 6, 2, &[0.5; 6]).unwrap(), 3);
        let err = rows(&labels(), 3, 1, &[0.5; 5]).unwrap_err().to_string();
        assert_eq!(
            err,
            "probabilities hold 5 values, expected 3 × 2 = 6 (rows × labels)"
        );
        let err = rows(&labels(), 5, 2, &[0.5; 6]).unwrap_err().to_string();
        assert!(err.contains("not a whole number of rows"), "{err}");
    }

    #[test]
    fn probabilities_name_the_row_and_label_of_the_first_bad_value() {
        assert!(probabilities(&labels(), &[0.0, 1.0, 0.3, 0.7]).is_ok());
        let err = probabilities(&labels(), &[0.5, 0.5, 0.2, f32::NAN]).unwrap_err();
        assert_eq!(err.to_string(), "row 1: the probability of `b` is NaN");
        let err = probabilities(&labels(), &[0.5, 0.5, -2.5, 0.2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 1: the probability of `a` is -2.5, outside [0, 1]"
        );
    }
}
