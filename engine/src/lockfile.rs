//! The lockfile, `<manifest stem>.lock` beside the manifest.
//!
//! It records, per stage, what the stage last ran (or was restored) with:
//! its key, the full [`KeyRecord`] (kind, version, canonical parameters,
//! input hashes), its output hashes and its headline metrics (the scalar ones:
//! see [`headline_metrics`]). Commit it: `git diff`
//! then shows results changing with code and data, `pipe status` explains
//! what changed since, and `pipe gc` keeps what any lockfile references.
//! When a run changes the lockfile, the old one is kept in the store (see
//! [`previous_lock_path`]) for `pipe metrics --diff previous`.
//!
//! Format (YAML, keys sorted, so diffs are small and stable):
//!
//! ```yaml
//! manifest: student.yaml
//! pipeline: student
//! stages:
//!   split:
//!     key: 3f1c…
//!     kind: split
//!     kind_version: 1
//!     params: {seed: 42, test: 0.2, …}
//!     inputs: {from:ingest: 9a0e…}
//!     outputs: {split: …, test: …, train: …}
//!     metrics: {…}
//! ```
//!
//! `manifest` (the manifest's file name, since the format of issue #27) and
//! `pipeline` say whose lockfile it is: two manifests with one stem (`p.yaml`,
//! `p.yml`) would share `p.lock`, so a lockfile is only read and written for
//! its own manifest ([`LockFile::check_owner`]). Older lockfiles, without
//! `manifest`, stay readable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use yaml_rust2::Yaml;

use crate::hash::Digest;
use crate::key::{KeyRecord, canonical_json};
use crate::yaml;
use crate::{UsageError, atomic};

/// The lockfile of one manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    /// The file name of the manifest it belongs to (absent in lockfiles of
    /// older pipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The pipeline's name.
    pub pipeline: String,
    /// Stage name → what it last ran with.
    #[serde(default)]
    pub stages: BTreeMap<String, LockEntry>,
}

/// One stage in the lockfile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    /// The stage key.
    pub key: Digest,
    /// What the key was computed from.
    #[serde(flatten)]
    pub record: KeyRecord,
    /// Output name → hash.
    #[serde(default)]
    pub outputs: BTreeMap<String, Digest>,
    /// Headline metrics of that run ([`headline_metrics`] of the stage's metrics).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, Value>,
}

/// What of a stage's metrics the lockfile keeps: the scalar values (numbers,
/// strings, booleans), nested objects included. Arrays (per-class tables,
/// confusion matrices, curves) stay in the stage record (`pipe show`) and the
/// stage's own files, so the lockfile stays small and its diffs readable
/// however many labels a model has.
pub fn headline_metrics(
    metrics: &serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    metrics
        .iter()
        .filter_map(|(name, value)| {
            let kept = match value {
                Value::Array(_) => return None,
                Value::Object(inner) => {
                    let inner = headline_metrics(inner);
                    if inner.is_empty() {
                        return None;
                    }
                    Value::Object(inner)
                }
                scalar => scalar.clone(),
            };
            Some((name.clone(), kept))
        })
        .collect()
}

/// A lockfile as parsed, with the hash of the bytes it was parsed from.
#[derive(Deserialize)]
struct ParsedCopy {
    source: Digest,
    lock: LockFile,
}

/// [`ParsedCopy`] for writing.
#[derive(Serialize)]
struct ParsedCopyRef<'a> {
    source: Digest,
    lock: &'a LockFile,
}

/// Where `pipe run` keeps the parsed copy of lockfile `lock_file`:
/// `<store>/lockfiles/<stem>.parsed.json`.
pub fn parsed_copy_path(store_dir: &Path, lock_file: &Path) -> PathBuf {
    kept_copy_path(store_dir, lock_file, "parsed.json")
}

/// Where the lockfile of `manifest` lives.
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.with_extension("lock")
}

/// Where `pipe run` keeps the lockfile `lock_file` as it was before the last
/// run that changed it: `<store>/lockfiles/<stem>.previous.lock`.
pub fn previous_lock_path(store_dir: &Path, lock_file: &Path) -> PathBuf {
    kept_copy_path(store_dir, lock_file, "previous.lock")
}

/// `<store>/lockfiles/<stem of lock_file>.<suffix>`: the store's copies of a lockfile.
fn kept_copy_path(store_dir: &Path, lock_file: &Path, suffix: &str) -> PathBuf {
    let stem = lock_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    store_dir.join("lockfiles").join(format!("{stem}.{suffix}"))
}

/// Reads the lockfile of the manifest at `manifest`, whose pipeline is
/// `pipeline`, refusing one that belongs to another manifest
/// ([`LockFile::check_owner`]).
pub fn load_for(manifest: &Path, pipeline: &str) -> anyhow::Result<LockFile> {
    let path = lock_path(manifest);
    let lock = LockFile::load(&path)?;
    lock.check_owner(&path, manifest, pipeline)?;
    Ok(lock)
}

impl LockFile {
    /// Reads a lockfile; a missing one is empty. A corrupt one is an error
    /// naming the file (delete it to start over: it is rebuilt by the next run).
    pub fn load(path: &Path) -> anyhow::Result<LockFile> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockFile::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        LockFile::parse(&text, &path.display().to_string())
    }

    /// Reads a lockfile through a parsed copy kept at `cache` (JSON, with the
    /// BLAKE3 of the lockfile's bytes): when the lockfile is byte for byte the
    /// one the copy was made from, the fast JSON copy is read instead of the
    /// YAML, which is what a large lockfile's no-op rerun costs most. A
    /// missing, stale or unreadable copy is rebuilt.
    pub fn load_cached(path: &Path, cache: &Path) -> anyhow::Result<LockFile> {
        let text = match fs_err::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockFile::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        let source = Digest::of(&text);
        if let Ok(bytes) = fs_err::read(cache)
            && let Ok(copy) = serde_json::from_slice::<ParsedCopy>(&bytes)
            && copy.source == source
        {
            return Ok(copy.lock);
        }
        let text = String::from_utf8(text)
            .with_context(|| format!("`{}` is not UTF-8 text", path.display()))?;
        let lock = LockFile::parse(&text, &path.display().to_string())?;
        lock.keep_parsed_copy(&text, cache);
        Ok(lock)
    }

    /// Writes the parsed copy read by [`LockFile::load_cached`]. Only a
    /// cache: failing to write it costs speed, not correctness.
    fn keep_parsed_copy(&self, text: &str, cache: &Path) {
        let copy = ParsedCopyRef {
            source: Digest::of(text.as_bytes()),
            lock: self,
        };
        if let Ok(bytes) = serde_json::to_vec(&copy) {
            let _ = atomic::write(cache, &bytes, false);
        }
    }

    /// Parses a lockfile's text; `origin` names it in errors (a path, or
    /// `HEAD:student.lock` for one read from git).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<LockFile> {
        let value = yaml::parse_data(text).map_err(|e| {
            anyhow::anyhow!(
                "{origin}:{}:{}: {}; {}",
                e.span.line,
                e.span.col,
                e.message,
                what_to_do(text)
            )
        })?;
        serde_json::from_value(value)
            .with_context(|| format!("`{origin}` is not a pipe lockfile; {}", what_to_do(text)))
    }

    /// Writes the lockfile atomically; when that changes it, the old content
    /// is first kept at `previous` (for `pipe metrics --diff previous`). A
    /// rewrite that changes nothing keeps the older `previous`, so it stays
    /// the lockfile before the last run that changed something.
    pub fn save(&self, path: &Path, previous: &Path) -> anyhow::Result<()> {
        self.save_text(path, previous).map(|_| ())
    }

    /// [`LockFile::save`], also refreshing the parsed copy at `cache` (see
    /// [`LockFile::load_cached`]).
    pub fn save_cached(&self, path: &Path, previous: &Path, cache: &Path) -> anyhow::Result<()> {
        let text = self.save_text(path, previous)?;
        self.keep_parsed_copy(&text, cache);
        Ok(())
    }

    fn save_text(&self, path: &Path, previous: &Path) -> anyhow::Result<String> {
        let text = self.render()?;
        match fs_err::read(path) {
            Ok(old) if old == text.as_bytes() => return Ok(text),
            Ok(old) => atomic::write(previous, &old, false)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        }
        atomic::write(path, text.as_bytes(), false)?;
        Ok(text)
    }

    /// The lockfile as YAML text.
    fn render(&self) -> anyhow::Result<String> {
        let value = serde_json::to_value(self)?;
        let mut text = format!("{HEADER} what each stage last ran with. Commit it.\n");
        let mut emitter = yaml_rust2::YamlEmitter::new(&mut text);
        emitter
            .dump(&to_yaml(&value))
            .context("cannot write the lockfile as YAML")?;
        text = text.replacen("---\n", "", 1);
        text.push('\n');
        Ok(text)
    }

    /// Refuses a lockfile that belongs to another manifest than `manifest`
    /// (whose pipeline is `pipeline`), with a [`UsageError`] naming both: its
    /// entries are another pipeline's, and writing it would lose them. A
    /// lockfile that names no manifest (an older pipe's) belongs to another
    /// manifest when its `pipeline` is not ours and a manifest beside ours
    /// with the same stem declares that pipeline; otherwise it is ours (the
    /// manifest's `pipeline:` was renamed). An empty (missing) lockfile is anyone's.
    pub fn check_owner(
        &self,
        lock_file: &Path,
        manifest: &Path,
        pipeline: &str,
    ) -> anyhow::Result<()> {
        let ours = file_name(manifest);
        let other = match &self.manifest {
            Some(named) if *named != ours => Some(manifest.with_file_name(named)),
            Some(_) => None,
            None if self.pipeline.is_empty() || self.pipeline == pipeline => None,
            None => same_stem_manifests(manifest)
                .find(|m| crate::Manifest::load(m).is_ok_and(|m| m.name == self.pipeline)),
        };
        let Some(other) = other else {
            return Ok(());
        };
        Err(UsageError(format!(
            "{} is the lockfile of {} (pipeline `{}`), not of {} (pipeline `{pipeline}`): \
             manifests with the same stem would share it and overwrite each other's entries\n  \
             help: rename {} (its lockfile is named after it), or remove {} if it is no longer used",
            lock_file.display(),
            other.display(),
            self.pipeline,
            manifest.display(),
            manifest.display(),
            other.display()
        ))
        .into())
    }

    /// Every stage key and output hash this lockfile references.
    pub fn referenced(&self) -> impl Iterator<Item = (&Digest, &BTreeMap<String, Digest>)> {
        self.stages.values().map(|e| (&e.key, &e.outputs))
    }
}

/// The first words of every lockfile pipe writes: a file that starts with
/// them is pipe's to rebuild; one that does not may be the user's.
const HEADER: &str = "# Written by `pipe run`:";

/// What to do about a lockfile that cannot be read: delete it only when
/// pipe wrote it (a manifest named `p.lock` must not be deleted on advice).
fn what_to_do(text: &str) -> &'static str {
    if text.starts_with(HEADER) {
        "delete it and run again to rebuild it"
    } else {
        "pipe did not write it, but keeps the lockfile of the manifest with the same stem \
         there: move this file aside (or rename that manifest), and run again"
    }
}

/// A path's file name as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The other manifests that would share `manifest`'s lockfile: `<stem>.yaml`
/// and `<stem>.yml` beside it, when they exist.
fn same_stem_manifests(manifest: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["yaml", "yml"]
        .into_iter()
        .map(|ext| manifest.with_extension(ext))
        .filter(move |m| m.as_path() != manifest && m.is_file())
}

/// JSON → YAML with object keys sorted.
fn to_yaml(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(canonical_json(value)),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut hash = yaml_rust2::yaml::Hash::new();
            for k in keys {
                hash.insert(Yaml::String(k.clone()), to_yaml(&map[k]));
            }
            Yaml::Hash(hash)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-stage lockfile whose stage reports `loss`.
    fn lock_with_loss(loss: f64) -> (LockFile, KeyRecord) {
        let record = KeyRecord {
            kind: "finetune".into(),
            kind_version: 1,
            params: serde_json::json!({"learning_rate": 0.0005, "epochs": 3, "name": "123", "flag": true}),
            run: None,
            outs: vec![],
            inputs: BTreeMap::from([("from:tokenize".into(), Digest::of(b"x"))]),
        };
        let lock = LockFile {
            manifest: None,
            pipeline: "student".into(),
            stages: BTreeMap::from([(
                "finetune".into(),
                LockEntry {
                    key: record.key(),
                    record: record.clone(),
                    outputs: BTreeMap::from([("model".into(), Digest::of(b"m"))]),
                    metrics: serde_json::json!({"loss": loss})
                        .as_object()
                        .unwrap()
                        .clone(),
                },
            )]),
        };
        (lock, record)
    }

    #[test]
    fn the_lockfile_keeps_scalar_metrics_and_leaves_arrays_to_the_record() {
        let metrics = serde_json::json!({
            "device": "cpu",
            "test": {
                "accuracy": 0.9,
                "per_class": [{"label": "a", "f1": 0.8}],
                "confusion": [[1, 0], [0, 1]],
                "curves": {"roc": [0.1, 0.2]},
            },
            "labels": ["a", "b"],
            "converged": true,
        });
        let serde_json::Value::Object(metrics) = metrics else {
            unreachable!()
        };
        assert_eq!(
            serde_json::Value::Object(headline_metrics(&metrics)),
            serde_json::json!({"device": "cpu", "test": {"accuracy": 0.9}, "converged": true})
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let (lock, record) = lock_with_loss(0.25);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("student.lock");
        lock.save(&path, &dir.path().join("previous.lock")).unwrap();
        let text = fs_err::read_to_string(&path).unwrap();
        assert!(text.contains("learning_rate: 0.0005"), "{text}");
        let back = LockFile::load(&path).unwrap();
        let entry = &back.stages["finetune"];
        assert_eq!(entry.record, record);
        assert_eq!(entry.record.key(), entry.key);
        assert_eq!(entry.metrics["loss"], serde_json::json!(0.25));
    }

    #[test]
    fn the_parsed_copy_is_used_only_for_the_bytes_it_was_made_from() {
        let (lock, _) = lock_with_loss(0.5);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("student.lock");
        let cache = dir.path().join("student.parsed.json");
        lock.save_cached(&path, &dir.path().join("previous.lock"), &cache)
            .unwrap();
        assert!(cache.exists());
        assert_eq!(LockFile::load_cached(&path, &cache).unwrap(), lock);
        // Edited by hand: the copy is stale, the YAML wins and the copy is rebuilt.
        let edited = fs_err::read_to_string(&path)
            .unwrap()
            .replace("loss: 0.5", "loss: 0.75");
        fs_err::write(&path, edited).unwrap();
        let back = LockFile::load_cached(&path, &cache).unwrap();
        assert_eq!(
            back.stages["finetune"].metrics["loss"],
            serde_json::json!(0.75)
        );
        fs_err::write(&cache, "not json").unwrap();
        assert_eq!(LockFile::load_cached(&path, &cache).unwrap(), back);
    }

    /// Saves `lock` and reads it back.
    fn round_trip(lock: &LockFile) -> LockFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.lock");
        lock.save(&path, &dir.path().join("previous.lock")).unwrap();
        LockFile::load(&path).unwrap()
    }

    #[test]
    fn eighty_labels_of_metrics_read_back() {
        let (mut lock, _) = lock_with_loss(0.5);
        let per_label: serde_json::Map<String, Value> = (0..80)
            .map(|i| {
                let scores = serde_json::json!({"precision": 0.5, "recall": 0.25, "f1": 0.3, "support": 7, "auc": 0.9});
                (format!("label{i}"), scores)
            })
            .collect();
        let split = serde_json::json!({"accuracy": 0.5, "per_class": per_label, "confusion": vec![vec![1; 80]; 80]});
        let metrics = &mut lock.stages.get_mut("finetune").unwrap().metrics;
        for name in ["train", "validation", "test"] {
            metrics.insert(name.into(), split.clone());
        }
        assert_eq!(round_trip(&lock), lock);
    }

    #[test]
    fn a_thousand_stages_read_back() {
        let (mut lock, _) = lock_with_loss(0.5);
        let entry = lock.stages["finetune"].clone();
        for i in 0..1000 {
            lock.stages.insert(format!("s{i}"), entry.clone());
        }
        assert_eq!(round_trip(&lock), lock);
    }

    #[test]
    fn saving_a_changed_lockfile_keeps_the_old_one_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("student.lock");
        let previous = dir.path().join(".pipe/lockfiles/student.previous.lock");
        let loss = |p: &Path| LockFile::load(p).unwrap().stages["finetune"].metrics["loss"].clone();
        lock_with_loss(0.5).0.save(&path, &previous).unwrap();
        assert!(!previous.exists(), "a first lockfile has no previous one");
        lock_with_loss(0.25).0.save(&path, &previous).unwrap();
        assert_eq!(loss(&previous), serde_json::json!(0.5));
        assert_eq!(loss(&path), serde_json::json!(0.25));
        lock_with_loss(0.25).0.save(&path, &previous).unwrap();
        assert_eq!(
            loss(&previous),
            serde_json::json!(0.5),
            "an unchanged rewrite keeps the lockfile before the last change"
        );
    }
}
