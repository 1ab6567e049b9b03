//! Training checkpoints in the stage's scratch folder (named by the stage key, kept across
//! crashes): every parameter and AdamW moment, the step count and how much of the training
//! log belongs to them.
//!
//! A checkpoint is written as `state-<step>.safetensors` (temp file, fsync, rename), then
//! `checkpoint.json` naming it, with its size and BLAKE3 hash, and the checkpoint before it
//! (`previous`), is replaced the same way; only then are older state files removed. A kill
//! at any moment leaves `checkpoint.json` naming complete state files.
//!
//! A resume trusts nothing it has not checked: a state file whose size or hash is not what
//! `checkpoint.json` says (a disk error, a truncation), or that does not parse, is set
//! aside as `<name>.damaged` with a note naming it, and training resumes from the previous
//! checkpoint, or starts over when none is good. So does a `checkpoint.json` that does not
//! parse, and a training log shorter than the checkpoint says. A checkpoint written before
//! checksums (no `blake3`) resumes with a note that it could not be checked.

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

/// One checkpoint as `checkpoint.json` names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    position: Position,
    /// The state file's name.
    state: String,
    /// Its BLAKE3 hash (hex); absent in checkpoints of an older pipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    #[serde(flatten)]
    latest: Saved,
    /// The checkpoint before, kept until the next one is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Saved>,
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
    let (hash, bytes) = checksum(&tmp)?;
    fs_err::rename(&tmp, dir.join(&name))?;
    // The checkpoint before stays, in case this one is found damaged.
    let previous = read_meta(dir)
        .ok()
        .flatten()
        .map(|m| m.latest)
        .filter(|p| p.state != name && p.blake3.is_some() && dir.join(&p.state).is_file());
    let meta = serde_json::to_vec(&Meta {
        latest: Saved {
            position,
            state: name.clone(),
            blake3: Some(hash),
            bytes: Some(bytes),
        },
        previous: previous.clone(),
    })?;
    let meta_tmp = dir.join(format!("{META}.tmp"));
    let mut file = File::create(&meta_tmp)?;
    file.write_all(&meta)?;
    file.sync_all()?;
    fs_err::rename(&meta_tmp, dir.join(META))?;
    let keep = |file_name: &str| {
        file_name == name || previous.as_ref().is_some_and(|p| p.state == file_name)
    };
    for entry in fs_err::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if is_state_name(&file_name) && !keep(&file_name) {
            fs_err::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// BLAKE3 (hex) and size of the file at `path`.
fn checksum(path: &Path) -> Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = fs_err::metadata(path)?.len();
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// `checkpoint.json`, if there is one.
fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let meta_path = dir.join(META);
    let text = match fs_err::read(&meta_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", meta_path.display())),
    };
    let meta = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a checkpoint record", meta_path.display()))?;
    Ok(Some(meta))
}

/// Moves `path` aside as `<name>.damaged` and says so in `notes`.
fn set_aside(path: &Path, why: &str, notes: &mut Vec<String>) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    let aside = std::path::PathBuf::from(aside);
    let moved = fs_err::rename(path, &aside);
    notes.push(match moved {
        Ok(()) => format!(
            "the checkpoint `{}` is damaged ({why}): set aside as `{}`, not resumed from",
            path.display(),
            aside.display()
        ),
        Err(e) => format!(
            "the checkpoint `{}` is damaged ({why}) and cannot be set aside ({e}): not resumed from",
            path.display()
        ),
    });
}

/// A checkpoint's state, after checking its file against what `checkpoint.json` says.
fn load_saved(
    dir: &Path,
    saved: &Saved,
    log_len: u64,
    notes: &mut Vec<String>,
) -> Option<BTreeMap<String, HostTensor>> {
    let meta_path = dir.join(META);
    if !is_state_name(&saved.state) {
        notes.push(format!(
            "{} names `{}`, which is not a state file of this folder (state-<step>.safetensors): not resumed from",
            meta_path.display(),
            saved.state
        ));
        return None;
    }
    let path = dir.join(&saved.state);
    if saved.position.log_bytes > log_len {
        notes.push(format!(
            "the training log is shorter ({log_len} bytes) than the checkpoint `{}` says ({}): not resumed from",
            path.display(),
            saved.position.log_bytes
        ));
        return None;
    }
    if let (Some(hash), Some(bytes)) = (&saved.blake3, saved.bytes) {
        match checksum(&path) {
            Ok((found, _)) if found == *hash => {}
            Ok((_, size)) if size != bytes => {
                set_aside(
                    &path,
                    &format!("{size} bytes where {bytes} were written"),
                    notes,
                );
                return None;
            }
            Ok(_) => {
                set_aside(&path, "its content does not match its checksum", notes);
                return None;
            }
            Err(e) => {
                notes.push(format!("{e:#}: not resumed from"));
                return None;
            }
        }
    } else {
        notes.push(format!(
            "the checkpoint `{}` has no checksum (written by an older pipe) and cannot be checked",
            path.display()
        ));
    }
    match weights::load_all(&path) {
        Ok(state) => Some(state),
        Err(e) => {
            set_aside(&path, &format!("{e:#}"), notes);
            None
        }
    }
}

/// A checkpoint to resume from: where it stands, and its tensors.
pub type Resumed = (Position, BTreeMap<String, HostTensor>);

/// The last good checkpoint saved in `dir`, if any, and notes on each one found damaged
/// (see the module's documentation). `log_len` is the training log's length in bytes.
pub fn load(dir: &Path, log_len: u64) -> Result<(Option<Resumed>, Vec<String>)> {
    let mut notes = Vec::new();
    let meta = match read_meta(dir) {
        Ok(Some(meta)) => meta,
        Ok(None) => return Ok((None, notes)),
        Err(e) => {
            set_aside(&dir.join(META), &format!("{e:#}"), &mut notes);
            return Ok((None, notes));
        }
    };
    for saved in std::iter::once(&meta.latest).chain(&meta.previous) {
        if let Some(state) = load_saved(dir, saved, log_len, &mut notes) {
            return Ok((Some((saved.position, state)), notes));
        }
    }
    notes.push("no good checkpoint is left: training starts over".to_string());
    Ok((None, notes))
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
            let (found, notes) = load(dir.path(), 0).unwrap();
            assert!(found.is_none());
            assert!(notes[0].contains("not a state file"), "{notes:?}");
        }
        assert!(is_state_name("state-120.safetensors"));
    }

    #[test]
    fn a_checkpoint_record_that_does_not_parse_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join(META), "{\"step\": 1, \"log").unwrap();
        let (found, notes) = load(dir.path(), 0).unwrap();
        assert!(found.is_none());
        assert!(notes[0].contains("set aside"), "{notes:?}");
        assert!(dir.path().join("checkpoint.json.damaged").is_file());
        assert!(!dir.path().join(META).exists());
    }
}
