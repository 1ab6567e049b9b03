//! The training loss curve, from a bundle's `train_log.jsonl`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// `(step, loss)` of every line of `path` that has both (evaluation lines, which have
/// `eval_loss` instead, are skipped). No file gives an empty curve; a line that is not JSON
/// is an error naming it.
pub(crate) fn loss_curve(path: &Path) -> Result<Vec<(u64, f64)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut curve = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        if let (Some(step), Some(loss)) = (
            value.get("step").and_then(Value::as_u64),
            value.get("loss").and_then(Value::as_f64),
        ) {
            curve.push((step, loss));
        }
    }
    Ok(curve)
}

#[cfg(test)]
mod tests {
    use super::loss_curve;

    #[test]
    fn keeps_training_steps_and_skips_evaluation_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.jsonl");
        std::fs::write(
            &path,
            "{\"step\": 1, \"loss\": 2.5, \"lr\": 0.001}\n\n{\"epoch\": 1, \"eval_loss\": 2.0}\n{\"step\": 2, \"loss\": 1.5}\n",
        )
        .unwrap();
        assert_eq!(loss_curve(&path).unwrap(), vec![(1, 2.5), (2, 1.5)]);
        assert!(
            loss_curve(&dir.path().join("absent.jsonl"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, "{\"step\": 1, \"loss\": 2.5}\nnot json\n").unwrap();
        let err = format!("{:#}", loss_curve(&path).unwrap_err());
        assert!(err.contains("train_log.jsonl:2"), "{err}");
    }
}
