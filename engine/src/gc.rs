//! `pipe gc`: removes stage records and objects no lockfile references.
//!
//! Kept: every record whose key a lockfile in the project references, every
//! object those records' outputs need (folders through their trees), and
//! anything younger than the grace period (a run in another checkout may be
//! about to reference it). Everything else under `stages/`, `objects/` and
//! `scratch/` is removed, and so are batches in `trash/` (files pipe moved out
//! of the way of an out instead of deleting them) and damaged objects in
//! `damaged/` (see `crate::integrity`) older than the grace period.
//! Only entries named as pipe names them are candidates (a record `<key>.json`,
//! an object `ab/<rest of the hash>`, a checkpoint folder `<key>`, a trash
//! batch): anything else in the store was not made by pipe and stays.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::files::{self, remove_all as remove_any};
use crate::hash::{Digest, EntryKind};
use crate::integrity::is_damaged_name;
use crate::lockfile::LockFile;
use crate::store::Store;
use crate::trash::is_batch_name;

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    /// Lockfiles that were read.
    pub lockfiles: Vec<PathBuf>,
    /// Records removed.
    pub records: usize,
    /// Objects removed.
    pub objects: usize,
    /// Checkpoint folders removed.
    pub scratch: usize,
    /// Trash batches removed.
    pub trash: usize,
    /// Damaged objects (`damaged/`, see `crate::integrity`) removed.
    pub damaged: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Every pipe lockfile under `project` (skipping `.git`, `.pipe`, `target` and
/// `node_modules`). Files ending in `.lock` that are not pipe lockfiles are ignored.
pub fn find_lockfiles(project: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![project.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if ![".git", ".pipe", "target", "node_modules"].contains(&name.as_ref()) {
                    stack.push(path);
                }
            } else if name.ends_with(".lock")
                && LockFile::load(&path).is_ok_and(|l| !l.pipeline.is_empty())
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Collects garbage in `store`, keeping what `lockfiles` reference and anything younger than `grace`.
pub fn collect(
    store: &Store,
    lockfiles: &[PathBuf],
    grace: Duration,
    dry_run: bool,
) -> anyhow::Result<GcReport> {
    let mut report = GcReport {
        lockfiles: lockfiles.to_vec(),
        ..Default::default()
    };
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let young = |path: &Path| {
        fs_err::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > cutoff)
    };

    let mut keep_keys: BTreeSet<Digest> = BTreeSet::new();
    for path in lockfiles {
        let lock = LockFile::load(path)?;
        keep_keys.extend(lock.referenced().map(|(k, _)| *k));
    }
    let stages_dir = store.root().join("stages");
    let mut keep_objects: BTreeSet<Digest> = BTreeSet::new();
    for entry in files::read_dir(&stages_dir)? {
        let path = entry.path();
        let Some(key) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            continue;
        };
        let keep = keep_keys.contains(&key) || young(&path);
        match store.record(&key) {
            Some(record) if keep => {
                for output in record.outputs.values() {
                    mark(store, output.kind, &output.hash, &mut keep_objects);
                }
            }
            _ if keep => {}
            _ => {
                report.records += 1;
                report.bytes += size_of(&path);
                if !dry_run {
                    remove_any(&path)?;
                }
            }
        }
    }
    let objects_dir = store.root().join("objects");
    for shard in files::read_dir(&objects_dir)? {
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str().filter(|n| n.len() == 2) else {
            continue;
        };
        if !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in files::read_dir(&shard.path())? {
            let path = entry.path();
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|rest| format!("{shard_name}{rest}").parse::<Digest>().ok())
            else {
                continue;
            };
            if keep_objects.contains(&digest) || young(&path) {
                continue;
            }
            report.objects += 1;
            report.bytes += size_of(&path);
            if !dry_run {
                remove_any(&path)?;
            }
        }
    }
    let scratch_dir = store.root().join("scratch");
    for entry in files::read_dir(&scratch_dir)? {
        let path = entry.path();
        let Some(key) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            continue;
        };
        if keep_keys.contains(&key) || young(&path) {
            continue;
        }
        report.scratch += 1;
        report.bytes += size_of(&path);
        if !dry_run {
            remove_any(&path)?;
        }
    }
    let trash_dir = store.root().join("trash");
    if trash_dir.is_dir() {
        for entry in files::read_dir(&trash_dir)? {
            let path = entry.path();
            let ours = entry.file_name().to_str().is_some_and(is_batch_name);
            if !ours || young(&path) {
                continue;
            }
            report.trash += 1;
            report.bytes += size_of(&path);
            if !dry_run {
                remove_any(&path)?;
            }
        }
    }
    let damaged_dir = store.damaged_dir();
    if damaged_dir.is_dir() {
        for entry in files::read_dir(&damaged_dir)? {
            let path = entry.path();
            let ours = entry.file_name().to_str().is_some_and(is_damaged_name);
            if !ours || young(&path) {
                continue;
            }
            report.damaged += 1;
            report.bytes += size_of(&path);
            if !dry_run {
                remove_any(&path)?;
            }
        }
    }
    Ok(report)
}

/// Marks an output's objects (a folder's tree and everything under it) as kept.
fn mark(store: &Store, kind: EntryKind, digest: &Digest, keep: &mut BTreeSet<Digest>) {
    if !keep.insert(*digest) {
        return;
    }
    if kind == EntryKind::Dir
        && let Ok(tree) = store.read_tree(digest)
    {
        for entry in &tree.entries {
            mark(store, entry.kind, &entry.hash, keep);
        }
    }
}

fn size_of(path: &Path) -> u64 {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs_err::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
