//! The content-addressed store, `.pipe/` beside the manifest (or `PIPE_STORE`).
//!
//! ```text
//! .pipe/
//!   objects/ab/cdef…        read-only blobs named by their BLAKE3 hash; folders are
//!                           stored as their Tree (JSON) under the tree's hash
//!   stages/<key>.json       one StageRecord per completed stage key (the run cache)
//!   tmp/                    stages in flight; emptied at the start of every run
//!   out/<pipeline>/<stage>/ outputs at stable paths (hard links into objects/)
//!   scratch/<key>/          checkpoints of long stages, kept until the stage succeeds
//!   logs/<pipeline>/<stage>.log   the last run's log of each stage
//!   lockfiles/<stem>.previous.lock  a manifest's lockfile before the last run that
//!                           changed it (`pipe metrics --diff previous`)
//!   stat-cache.json         hashes of workspace files by their stat
//!   lock                    held by the run that uses the store
//! ```
//!
//! Crash safety: a stage writes only under `tmp/`. Its outputs enter
//! `objects/` by rename after they are complete and synced, and its record is
//! written last (temp file + rename). A kill at any moment leaves either no
//! record or a record whose objects all exist; orphan objects are removed by
//! `pipe gc`. Objects are made read-only; `out/` holds hard links to them, so
//! do not edit files under `out/` in place (copy them first).

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::hash::{Digest, EntryKind, Hashed, Tree};
use crate::key::KeyRecord;

/// The record of one completed stage key, `stages/<key>.json`.
///
/// Format (JSON): `key`, `pipeline`, `stage` (names at the time it ran),
/// `record` (the [`KeyRecord`] the key was computed from), `outputs` (output
/// name → [`OutputEntry`]), `metrics` (object), `headline`, `seconds`,
/// `finished_at` (Unix seconds), `pipe_version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage key.
    pub key: Digest,
    /// The pipeline that ran it.
    pub pipeline: String,
    /// The stage's name when it ran.
    pub stage: String,
    /// What the key was computed from.
    pub record: KeyRecord,
    /// Named outputs.
    pub outputs: BTreeMap<String, OutputEntry>,
    /// Metrics the stage reported.
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The stage's headline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// Wall time of the run.
    pub seconds: f64,
    /// When it finished (Unix seconds).
    pub finished_at: u64,
    /// The `pipe` version that ran it.
    pub pipe_version: String,
}

/// One named output of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEntry {
    /// File or folder name under `out/<pipeline>/<stage>/`, or for a command
    /// stage's declared out, its workspace path.
    pub path: String,
    /// File, executable or folder.
    pub kind: EntryKind,
    /// Content hash (folders: tree hash).
    pub hash: Digest,
    /// Bytes.
    pub size: u64,
    /// True for a command stage's declared out, which lives in the workspace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workspace: bool,
}

/// The hash that stands for a set of outputs (or one of them) in a downstream key.
pub fn outputs_digest(outputs: &BTreeMap<String, OutputEntry>) -> Digest {
    let map: BTreeMap<&String, String> = outputs
        .iter()
        .map(|(k, v)| (k, v.hash.to_string()))
        .collect();
    Digest::of(&serde_json::to_vec(&map).expect("a map of strings serializes"))
}

/// How an imported file reaches `objects/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Rename (the source is a stage's temporary output).
    Move,
    /// Copy (the source is a workspace file the user keeps).
    Copy,
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while a run uses the store; released on drop.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens (creating when needed) the store at `root`.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        for sub in ["objects", "stages", "tmp", "out", "scratch", "logs"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the store folder `{}`", dir.display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store's lock. When another run holds it: with `wait`, calls
    /// `on_wait` (with the holder's pid, if known) and blocks; otherwise fails.
    pub fn lock(&self, wait: bool, on_wait: impl FnOnce(Option<u32>)) -> anyhow::Result<StoreLock> {
        let path = self.root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the store lock `{}`", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                if !wait {
                    let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    anyhow::bail!(StoreBusy(format!(
                        "another pipe run{who} is using the store `{}`; retry when it ends, or drop `--no-wait` to wait for it",
                        self.root.display()
                    )));
                }
                on_wait(holder);
                file.lock()
                    .with_context(|| format!("cannot lock `{}`", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock `{}`", path.display()));
            }
        }
        file.set_len(0)?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        Ok(StoreLock { _file: file })
    }

    /// Removes everything under `tmp/` (left by a killed run). Call with the lock held.
    pub fn clean_tmp(&self) -> anyhow::Result<()> {
        let tmp = self.root.join("tmp");
        for entry in
            std::fs::read_dir(&tmp).with_context(|| format!("cannot list `{}`", tmp.display()))?
        {
            let path = entry?.path();
            remove_any(&path)?;
        }
        Ok(())
    }

    /// A fresh folder under `tmp/`, removed when the guard drops.
    pub fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(self.root.join("tmp"))
            .context("cannot create a folder under the store's tmp/")
    }

    /// Where object `digest` lives.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// Whether object `digest` exists.
    pub fn has_object(&self, digest: &Digest) -> bool {
        self.object_path(digest).exists()
    }

    /// Puts a hashed file or folder into `objects/` (folders: every file and every tree).
    pub fn import(&self, path: &Path, hashed: &Hashed, how: Import) -> anyhow::Result<()> {
        match hashed {
            Hashed::File { hash, .. } => self.import_file(path, hash, how),
            Hashed::Dir { tree, trees } => {
                let by_hash: BTreeMap<Digest, &Tree> =
                    trees.iter().map(|t| (t.digest(), t)).collect();
                self.import_tree(path, tree, &by_hash, how)
            }
        }
    }

    fn import_tree(
        &self,
        dir: &Path,
        tree: &Tree,
        trees: &BTreeMap<Digest, &Tree>,
        how: Import,
    ) -> anyhow::Result<()> {
        for entry in &tree.entries {
            let child = dir.join(&entry.name);
            match entry.kind {
                EntryKind::Dir => {
                    let sub = trees
                        .get(&entry.hash)
                        .context("a sub-folder's tree is missing (internal error)")?;
                    self.import_tree(&child, sub, trees, how)?;
                }
                EntryKind::File | EntryKind::Executable => {
                    self.import_file(&child, &entry.hash, how)?
                }
            }
        }
        self.put_bytes(&tree.digest(), &tree.to_bytes())
    }

    fn import_file(&self, path: &Path, hash: &Digest, how: Import) -> anyhow::Result<()> {
        let dest = self.object_path(hash);
        if dest.exists() {
            return Ok(());
        }
        let parent = dest.parent().expect("object paths have a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
        let staged = match how {
            Import::Move => path.to_path_buf(),
            Import::Copy => {
                let tmp = self.root.join("tmp").join(format!("import-{hash}"));
                std::fs::copy(path, &tmp)
                    .with_context(|| format!("cannot copy `{}` into the store", path.display()))?;
                tmp
            }
        };
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync `{}`", staged.display()))?;
        let mut perms = std::fs::metadata(&staged)?.permissions();
        perms.set_mode(perms.mode() & 0o555);
        std::fs::set_permissions(&staged, perms)?;
        match std::fs::rename(&staged, &dest) {
            Ok(()) => Ok(()),
            // Different filesystems: copy, then rename within the store.
            Err(e) if e.raw_os_error() == Some(18) => {
                let tmp = self.root.join("tmp").join(format!("import-{hash}"));
                std::fs::copy(&staged, &tmp)?;
                std::fs::rename(&tmp, &dest)?;
                Ok(())
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot move `{}` into the store", staged.display()))
            }
        }
    }

    fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let dest = self.object_path(digest);
        if dest.exists() {
            return Ok(());
        }
        atomic::write(&dest, bytes, true)
    }

    /// Reads a tree object.
    pub fn read_tree(&self, digest: &Digest) -> anyhow::Result<Tree> {
        let path = self.object_path(digest);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("missing tree object `{}`", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("corrupt tree object `{}`", path.display()))
    }

    /// Whether every object an output needs is present.
    pub fn output_complete(&self, kind: EntryKind, digest: &Digest) -> bool {
        match kind {
            EntryKind::File | EntryKind::Executable => self.has_object(digest),
            EntryKind::Dir => match self.read_tree(digest) {
                Ok(tree) => tree
                    .entries
                    .iter()
                    .all(|e| self.output_complete(e.kind, &e.hash)),
                Err(_) => false,
            },
        }
    }

    /// Places output `kind`/`digest` at `dest`: hard links for files (a copy
    /// where linking fails, and always with `copy`), folders rebuilt from their
    /// trees. Leaves `dest` untouched when it already is that content.
    pub fn materialize(
        &self,
        kind: EntryKind,
        digest: &Digest,
        dest: &Path,
        copy: bool,
    ) -> anyhow::Result<()> {
        match kind {
            EntryKind::File | EntryKind::Executable => {
                let object = self.object_path(digest);
                if !copy && same_inode(&object, dest) {
                    return Ok(());
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create `{}`", parent.display()))?;
                }
                let staged = sibling_temp(dest);
                let linked = !copy && std::fs::hard_link(&object, &staged).is_ok();
                if !linked {
                    std::fs::copy(&object, &staged).with_context(|| {
                        format!("cannot restore `{}` from the store", dest.display())
                    })?;
                    let mode = if kind == EntryKind::Executable {
                        0o755
                    } else {
                        0o644
                    };
                    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
                }
                if dest.is_dir() {
                    remove_any(dest)?;
                }
                std::fs::rename(&staged, dest)
                    .with_context(|| format!("cannot restore `{}`", dest.display()))
            }
            EntryKind::Dir => {
                let tree = self.read_tree(digest)?;
                if dest.exists() && !dest.is_dir() {
                    remove_any(dest)?;
                }
                std::fs::create_dir_all(dest)
                    .with_context(|| format!("cannot create `{}`", dest.display()))?;
                let wanted: Vec<&str> = tree.entries.iter().map(|e| e.name.as_str()).collect();
                for existing in std::fs::read_dir(dest)? {
                    let existing = existing?;
                    let name = existing.file_name();
                    if !wanted.iter().any(|w| std::ffi::OsStr::new(w) == name) {
                        remove_any(&existing.path())?;
                    }
                }
                for entry in &tree.entries {
                    self.materialize(entry.kind, &entry.hash, &dest.join(&entry.name), copy)?;
                }
                Ok(())
            }
        }
    }

    /// The record of stage key `key`, if it exists and is readable.
    pub fn record(&self, key: &Digest) -> Option<StageRecord> {
        let bytes = std::fs::read(self.record_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a stage record durably (the last step of committing a stage).
    pub fn write_record(&self, record: &StageRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(record)?;
        atomic::write(&self.record_path(&record.key), &bytes, true)
    }

    /// Where the record of `key` lives.
    pub fn record_path(&self, key: &Digest) -> PathBuf {
        self.root.join("stages").join(format!("{key}.json"))
    }

    /// The stable output folder of a stage.
    pub fn out_dir(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root.join("out").join(pipeline).join(stage)
    }

    /// The checkpoint folder of stage key `key`.
    pub fn scratch_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("scratch").join(key.to_string())
    }

    /// The log of a stage's last run.
    pub fn log_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(pipeline)
            .join(format!("{stage}.log"))
    }
}

/// The error of a store held by another run (exit code 2 with `--no-wait`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreBusy(pub String);

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.ino() == y.ino() && x.dev() == y.dev(),
        _ => false,
    }
}

fn sibling_temp(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.pipe-tmp-{}", std::process::id()))
}

/// Removes a file, symlink or folder (with read-only contents).
pub fn remove_any(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect `{}`", path.display())),
    };
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).ok();
        std::fs::remove_dir_all(path).with_context(|| format!("cannot remove `{}`", path.display()))
    } else {
        std::fs::remove_file(path).with_context(|| format!("cannot remove `{}`", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_path;

    #[test]
    fn import_then_materialize_round_trips_a_folder() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("m")).unwrap();
        std::fs::write(src.path().join("m/a.txt"), "alpha").unwrap();
        std::fs::create_dir(src.path().join("m/deep")).unwrap();
        std::fs::write(src.path().join("m/deep/b.txt"), "beta").unwrap();
        let hashed = hash_path(&src.path().join("m")).unwrap();
        store
            .import(&src.path().join("m"), &hashed, Import::Copy)
            .unwrap();
        assert!(store.output_complete(EntryKind::Dir, &hashed.digest()));
        let dest = store_dir.path().join("restored");
        store
            .materialize(EntryKind::Dir, &hashed.digest(), &dest, false)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("deep/b.txt")).unwrap(),
            "beta"
        );
        assert_eq!(hash_path(&dest).unwrap().digest(), hashed.digest());
        std::fs::remove_file(store.object_path(&crate::hash::Digest::of(b"beta"))).unwrap();
        assert!(!store.output_complete(EntryKind::Dir, &hashed.digest()));
    }

    #[test]
    fn lock_without_wait_fails_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let _held = store.lock(false, |_| {}).unwrap();
        let err = match store.lock(false, |_| {}) {
            Ok(_) => panic!("a second lock must fail"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("another pipe run"), "{err}");
    }
}
