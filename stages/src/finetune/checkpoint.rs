//! Training checkpoints in the stage's scratch folder (named by the stage key, kept across
//! crashes): every parameter and AdamW moment, the step count and how much of the training
//! log belongs to them.
//!
//! A checkpoint is written as `state-<step>.safetensors` (temp file, fsync, rename), then
//! `checkpoint.json` naming it is replaced the same way, and only then are older state files
//! removed. A kill at any moment leaves `checkpoint.json` naming a complete state file.

use fs_err::File;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use pipe_onnx::{HostTensor, StepTrainer};
use serde::{Deserialize, Serialize};

use super::selection::SelectionState;
use pipe_models::weights;

const META: &str = "checkpoint.json";

/// Where a checkpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Optimizer steps completed.
    pub step: u64,
    /// Bytes of `train_log.jsonl` written up to this step.
    pub log_bytes: u64,
    /// The best evaluation and the patience count, with `select_best` (the best weights
    /// are in the state file, see [`super::selection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionState>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    #[serde(flatten)]
    position: Position,
    state: String,
}

/// Saves the trainer's state at `position` into `dir`, straight from its buffers, with the
/// `extra` tensors beside it (the best weights so far under `select_best`).
pub fn save(
    dir: &Path,
    position: Position,
    trainer: &dyn StepTrainer,
    extra: &BTreeMap<String, HostTensor>,
) -> Result<()> {
    let name = format!("state-{}.safetensors", position.step);
    let tmp = dir.join(format!("{name}.tmp"));
    let names = trainer.state_names();
    let mut tensors = names
        .iter()
        .map(|n| {
            let (shape, values) = trainer.read_state(n)?;
            Ok((n.as_str(), shape, values))
        })
        .collect::<Result<Vec<_>>>()?;
    for (n, tensor) in extra {
        let values = tensor
            .as_f32()
            .with_context(|| format!("checkpoint tensor {n} is not f32 (internal error)"))?;
        tensors.push((n.as_str(), tensor.shape(), Cow::Borrowed(values)));
    }
    // Device state was copied to the host above; host state is borrowed as it is.
    let views: Vec<(&str, &[i64], &[f32])> =
        tensors.iter().map(|(n, s, v)| (*n, *s, &v[..])).collect();
    weights::save_views(&tmp, &views)?;
    File::open(&tmp)?.sync_all()?;
    fs_err::rename(&tmp, dir.join(&name))?;
    let meta = serde_json::to_vec(&Meta {
        position,
        state: name.clone(),
    })?;
    let meta_tmp = dir.join(format!("{META}.tmp"));
    let mut file = File::create(&meta_tmp)?;
    file.write_all(&meta)?;
    file.sync_all()?;
    fs_err::rename(&meta_tmp, dir.join(META))?;
    for entry in fs_err::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with("state-") && file_name != name {
            fs_err::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The last checkpoint saved in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<(Position, BTreeMap<String, HostTensor>)>> {
    let meta_path = dir.join(META);
    let text = match fs_err::read(&meta_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", meta_path.display())),
    };
    let meta: Meta = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is damaged; delete it to start over",
            meta_path.display()
        )
    })?;
    if !is_state_name(&meta.state) {
        anyhow::bail!(
            "{} names `{}`, which is not a state file of this folder (state-<step>.safetensors); delete it to start over",
            meta_path.display(),
            meta.state
        );
    }
    let state = weights::load_all(&dir.join(&meta.state))?;
    Ok(Some((meta.position, state)))
}

/// Whether `name` is a state file name [`save`] writes: `state-<step>.safetensors`, so a
/// damaged or crafted `checkpoint.json` cannot make a resume read a file elsewhere.
fn is_state_name(name: &str) -> bool {
    name.strip_prefix("state-")
        .and_then(|rest| rest.strip_suffix(".safetensors"))
        .is_some_and(|step| !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_naming_a_file_elsewhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for state in [
            "../outside.safetensors",
            "/etc/passwd",
            "state-.safetensors",
            "state-1/x.safetensors",
        ] {
            let meta = serde_json::json!({"step": 1, "log_bytes": 0, "state": state});
            fs_err::write(dir.path().join(META), meta.to_string()).unwrap();
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("not a state file") && err.contains("delete it"),
                "{err}"
            );
        }
        assert!(is_state_name("state-120.safetensors"));
    }
}
