//! The loss curves, from a bundle's `train_log.jsonl`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::report::LossCurves;

/// `(step, loss)` of every training line of `path`, and `(step, eval_loss)` of every
/// evaluation line. No file gives empty curves; a line that is not JSON is an error naming
/// it.
pub(crate) fn loss_curve(path: &Path) -> Result<LossCurves> {
    let mut curves = LossCurves::default();
    if !path.exists() {
        return Ok(curves);
    }
    let text =
        fs_err::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let Some(step) = value.get("step").and_then(Value::as_u64) else {
            continue;
        };
        if let Some(loss) = value.get("loss").and_then(Value::as_f64) {
            curves.train.push((step, loss));
        }
        if let Some(loss) = value.get("eval_loss").and_then(Value::as_f64) {
            curves.validation.push((step, loss));
        }
    }
    Ok(curves)
}

#[cfg(test)]
mod tests {
    use super::loss_curve;

    #[test]
    fn reads_training_and_evaluation_lines_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.jsonl");
        fs_err::write(
            &path,
            "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\n\n{\"step\": 1, \"epoch\": 1, \"eval_loss\": 2.0}\n{\"step\": 2, \"loss\": 1.5}\n",
        )
        .unwrap();
        let curves = loss_curve(&path).unwrap();
        assert_eq!(curves.train, vec![(1, 2.5), (2, 1.5)]);
        assert_eq!(curves.validation, vec![(1, 2.0)]);
        let absent = loss_curve(&dir.path().join("absent.jsonl")).unwrap();
        assert!(absent.train.is_empty() && absent.validation.is_empty());
        fs_err::write(&path, "{\"step\": 1, \"loss\": 2.5}\nnot json\n").unwrap();
        let err = format!("{:#}", loss_curve(&path).unwrap_err());
        assert!(err.contains("train_log.jsonl:2"), "{err}");
    }
}
