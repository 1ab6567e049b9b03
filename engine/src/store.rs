//! The content-addressed store, `.pipe/` beside the manifest (or `PIPE_STORE`).
//!
//! ```text
//! .pipe/
//!   STORE                   the marker: this folder is a pipe store, and its format
//!                           (see `crate::marker`); checked before anything else
//!   objects/ab/cdef…        read-only blobs named by their BLAKE3 hash; folders are
//!                           stored as their Tree (JSON) under the tree's hash; each
//!                           sealed by its modification time (see `crate::integrity`)
//!   damaged/<hash>[.n]      objects found changed in place or replaced, moved aside
//!                           (emptied by `pipe gc` after its grace period)
//!   stages/<key>.json       one StageRecord per completed stage key (the run cache)
//!   tmp/                    stages in flight; emptied at the start of every run
//!   out/<pipeline>/<stage>/ outputs at stable paths (hard links into objects/)
//!   scratch/<key>/          checkpoints of long stages, kept until the stage succeeds
//!   logs/<pipeline>/<stage>.log   the last run's log of each stage
//!   lockfiles/<stem>.previous.lock  a manifest's lockfile before the last run that
//!                           changed it (`pipe metrics --diff previous`)
//!   lockfiles/<stem>.parsed.json    the lockfile as last parsed, keyed by the hash
//!                           of its bytes (a fast read for large pipelines)
//!   failed/<pipeline>/<stage>.json  what a stage's last failed run left in its
//!                           declared outs (pipe's to remove, not user edits)
//!   restoring/<pipeline>/<stage>.json  a restore of the stage's declared outs
//!                           in progress (or killed): see `crate::journal`
//!   trash/<time>/           what pipe moved out of the way of an out instead of
//!                           deleting it, with a note (emptied by `pipe gc`)
//!   stat-cache.json         hashes of workspace files by their stat
//!   lock                    held by the run that uses the store
//! ```
//!
//! Crash safety: a stage writes only under `tmp/`. Its outputs enter
//! `objects/` by rename after they are complete and synced, and its record is
//! written last (temp file + rename). A kill at any moment leaves either no
//! record or a record whose objects all exist; orphan objects are removed by
//! `pipe gc`. Objects are made read-only; `out/` holds hard links to them, so
//! do not edit files under `out/` in place (copy them first): a stage that
//! does fails, and an object changed any other way is found before it is
//! used again (`crate::integrity`).

use fs_err::File;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::TryLockError;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::hash::{Digest, EntryKind, Hashed, Tree};
use crate::integrity::{ObjectState, Repair, damaged_warning, seal};
use crate::key::KeyRecord;
use crate::{UsageError, atomic, files};

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

impl StageRecord {
    /// Parses a record (JSON) and checks it (see [`StageRecord::check`]).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<StageRecord> {
        let record: StageRecord =
            serde_json::from_slice(bytes).context("not a pipe stage record")?;
        record.check()?;
        Ok(record)
    }

    /// Refuses output paths that could lead outside where they belong: a store
    /// output is one plain file name (it lives in `out/<pipeline>/<stage>/`), a
    /// declared out one of the record's declared outs, and either a normalised
    /// relative path or an outside path (absolute, or starting with `..`) as
    /// `--allow-outside` accepts it. A record is only used for a stage whose
    /// manifest declares the same outs, so an outside path in a record is one
    /// the manifest allowed.
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, output) in &self.outputs {
            let ok = if output.workspace {
                (is_plain_relative(&output.path) || is_outside_path(&output.path))
                    && self.record.outs.contains(&output.path)
            } else {
                is_plain_name(&output.path)
            };
            if !ok {
                anyhow::bail!(
                    "output `{name}` has the path {:?}, which is not where a stage output can be",
                    output.path
                );
            }
            if let Some(bad) = (output.folder_modes.keys()).find(|p| !is_folder_of_output(p)) {
                anyhow::bail!(
                    "output `{name}` has a folder mode for {bad:?}, which is not a path inside it"
                );
            }
        }
        Ok(())
    }
}

/// Whether `name` is one path component that names a file: not empty, `.`
/// or `..`, without `/` or NUL.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Whether `path` is relative and normalised: plain names joined by `/`.
pub fn is_plain_relative(path: &str) -> bool {
    path.split('/').all(is_plain_name)
}

/// Whether `rel` can name a folder of an output in its `folder_modes`: empty (the output
/// itself), or plain names joined by `/`.
fn is_folder_of_output(rel: &str) -> bool {
    rel.is_empty() || is_plain_relative(rel)
}

/// Whether `path` is an out outside the workspace as `--allow-outside`
/// accepts it: absolute, or starting with `..`, without NUL.
pub fn is_outside_path(path: &str) -> bool {
    !path.contains('\0') && (path.starts_with('/') || path == ".." || path.starts_with("../"))
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
    /// A folder's folders whose mode a new folder would not get, by relative path (`""`: the
    /// folder itself), as numbers (`448` is `0o700`); given back on restore. Not content: no
    /// hash or key depends on it (see `crate::folder_modes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub folder_modes: BTreeMap<String, u32>,
}

/// The hash that stands for a stage's outputs in a downstream key, the outputs named in
/// `left_out` (its run records, see [`crate::Stage::run_record_outputs`]) excepted.
pub fn outputs_digest(outputs: &BTreeMap<String, OutputEntry>, left_out: &[&str]) -> Digest {
    let map: BTreeMap<&String, String> = outputs
        .iter()
        .filter(|(k, _)| !left_out.contains(&k.as_str()))
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
    /// Opens (creating when needed) the store at `root`. A folder that is
    /// not a pipe store (no `STORE` marker, and not empty) is refused with a
    /// [`UsageError`] before anything is written there (see `crate::marker`).
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        crate::marker::ensure(root)?;
        for sub in ["objects", "stages", "tmp", "out", "scratch", "logs"] {
            let dir = root.join(sub);
            files::create_dir_all(&dir)?;
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
        let mut file = fs_err::OpenOptions::new()
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

    /// Removes what killed runs left under `tmp/`: the entries named as pipe
    /// names them ([`is_temp_name`]); anything else there is not pipe's and
    /// stays. Call with the lock held.
    pub fn clean_tmp(&self) -> anyhow::Result<()> {
        let tmp = self.root.join("tmp");
        for entry in files::read_dir(&tmp)? {
            if entry.file_name().to_str().is_some_and(is_temp_name) {
                files::remove_all(&entry.path())?;
            }
        }
        Ok(())
    }

    /// A fresh folder under `tmp/`, removed when the guard drops.
    pub fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIXES[0])
            .tempdir_in(self.root.join("tmp"))
            .context("cannot create a folder under the store's tmp/")
    }

    /// Checks object `digest` (`size` bytes, when known) and, with [`Repair::Fix`], seals
    /// an intact one again or moves a damaged one to [`Store::damaged_dir`] (see
    /// [`crate::integrity::check`]).
    pub fn check_object(&self, digest: &Digest, size: Option<u64>, repair: Repair) -> ObjectState {
        let object = self.object_path(digest);
        crate::integrity::check(&object, digest, size, repair, &self.damaged_dir())
    }

    /// Where damaged objects are kept (`damaged/`, see `crate::integrity`).
    pub fn damaged_dir(&self) -> PathBuf {
        self.root.join("damaged")
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

    /// Puts a hashed file, link or folder into `objects/` (folders: every
    /// file, link and tree). Each writer stages through a temp name of its
    /// own, so two stages storing identical bytes at once both succeed.
    pub fn import(&self, path: &Path, hashed: &Hashed, how: Import) -> anyhow::Result<()> {
        match hashed {
            Hashed::File { hash, size, .. } => self.import_file(path, hash, *size, how),
            Hashed::Symlink { target } => self.import_link(path, target, &hashed.digest()),
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
                    self.import_file(&child, &entry.hash, entry.size, how)?
                }
                EntryKind::Symlink => {
                    self.import_link(&child, &files::read_link(&child)?, &entry.hash)?
                }
            }
        }
        self.put_bytes(&tree.digest(), &tree.to_bytes())
    }

    /// Stores a link's target text, after checking it still is what was hashed.
    fn import_link(&self, path: &Path, target: &str, hash: &Digest) -> anyhow::Result<()> {
        if Digest::of(target.as_bytes()) != *hash {
            anyhow::bail!(
                "the link `{}` changed while it was being stored; run again",
                path.display()
            );
        }
        self.put_bytes(hash, target.as_bytes())
    }

    /// Whether a usable object `hash` of `size` bytes is already stored. One
    /// that is not sealed as stored is hashed again (see `crate::integrity`);
    /// a damaged one is moved aside, never reused, and the caller stores the
    /// content again.
    fn have_intact(&self, hash: &Digest, size: u64) -> bool {
        self.check_object(hash, Some(size), Repair::Fix).is_intact()
    }

    fn import_file(
        &self,
        path: &Path,
        hash: &Digest,
        size: u64,
        how: Import,
    ) -> anyhow::Result<()> {
        let dest = self.object_path(hash);
        if self.have_intact(hash, size) {
            return Ok(());
        }
        let parent = dest.parent().expect("object paths have a parent");
        files::create_dir_all(parent)?;
        let staged = match how {
            Import::Move => path.to_path_buf(),
            Import::Copy => {
                let tmp = self.unique_temp(TEMP_PREFIXES[1])?;
                files::copy(path, &tmp)?;
                tmp
            }
        };
        files::sync_file(&staged)?;
        let mode = files::metadata(&staged)?.permissions().mode() & 0o555;
        files::set_mode(&staged, mode)?;
        seal(&staged, hash)?;
        match fs_err::rename(&staged, &dest) {
            Ok(()) => {}
            // Different filesystems: copy, then rename within the store.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let tmp = self.unique_temp(TEMP_PREFIXES[1])?;
                files::copy(&staged, &tmp)?;
                files::sync_file(&tmp)?;
                seal(&tmp, hash)?;
                files::rename(&tmp, &dest)?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot move `{}` into the store", staged.display()));
            }
        }
        files::sync_dir(parent)
    }

    /// A path under `tmp/` that no other writer uses.
    fn unique_temp(&self, prefix: &str) -> anyhow::Result<PathBuf> {
        let file = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(self.root.join("tmp"))
            .context("cannot create a temporary file under the store's tmp/")?;
        let (_, path) = file
            .keep()
            .context("cannot keep a temporary file under the store's tmp/")?;
        Ok(path)
    }

    fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let dest = self.object_path(digest);
        if self.have_intact(digest, bytes.len() as u64) {
            return Ok(());
        }
        atomic::write(&dest, bytes, true)?;
        seal(&dest, digest)
    }

    /// Reads a tree object, refusing one whose names could lead outside the
    /// folder it describes (each must be one plain path component).
    pub fn read_tree(&self, digest: &Digest) -> anyhow::Result<Tree> {
        let path = self.object_path(digest);
        let bytes = files::read(&path).context("missing tree object")?;
        let tree: Tree = serde_json::from_slice(&bytes)
            .with_context(|| format!("corrupt tree object `{}`", path.display()))?;
        if let Some(bad) = tree.entries.iter().find(|e| !is_plain_name(&e.name)) {
            anyhow::bail!(
                "corrupt tree object `{}`: entry name {:?} is not a plain file name; run `pipe gc` and run again",
                path.display(),
                bad.name
            );
        }
        Ok(tree)
    }

    /// Checks that object `digest` still holds what its name says, by hashing
    /// it: done before an object leaves this machine (`pipe push`), so a
    /// damaged one is never shared.
    pub fn verify_object(&self, digest: &Digest) -> anyhow::Result<()> {
        let path = self.object_path(digest);
        let found = crate::hash::hash_file(&path)
            .with_context(|| format!("cannot read the store object `{}`", path.display()))?;
        if found != *digest {
            anyhow::bail!(damaged(&path, "its content no longer matches its hash"));
        }
        Ok(())
    }

    /// [`Store::materialize`] after checking each file object it places
    /// ([`Store::check_object`], against the size its record or tree says): a
    /// damaged object is moved aside and refused, never restored.
    pub fn materialize_output(
        &self,
        kind: EntryKind,
        digest: &Digest,
        size: u64,
        dest: &Path,
        place: Placing<'_>,
    ) -> anyhow::Result<()> {
        if matches!(kind, EntryKind::File | EntryKind::Executable) {
            let object = self.object_path(digest);
            match self.check_object(digest, Some(size), Repair::Fix) {
                ObjectState::Intact => {}
                ObjectState::Missing => {
                    anyhow::bail!(damaged(&object, "it is missing"))
                }
                ObjectState::Damaged { moved_to } => {
                    anyhow::bail!(damaged_warning(&object, moved_to.as_deref()))
                }
            }
        }
        self.materialize(kind, digest, dest, place)
    }

    /// Whether every object an output needs is present and intact, only
    /// looking (see [`Store::output_intact`]).
    pub fn output_complete(&self, kind: EntryKind, digest: &Digest) -> bool {
        self.output_intact(kind, digest, None, Repair::Look, &mut Vec::new())
    }

    /// Whether every object output `kind`/`digest` needs (a file of `size`
    /// bytes, when known) is present and intact ([`Store::check_object`]);
    /// the warning for each damaged one found goes to `damaged`. Stops at the
    /// first object that is missing or damaged.
    pub fn output_intact(
        &self,
        kind: EntryKind,
        digest: &Digest,
        size: Option<u64>,
        repair: Repair,
        damaged: &mut Vec<String>,
    ) -> bool {
        let size = match kind {
            EntryKind::File | EntryKind::Executable => size,
            _ => None,
        };
        match self.check_object(digest, size, repair) {
            ObjectState::Intact => {}
            ObjectState::Missing => return false,
            ObjectState::Damaged { moved_to } => {
                damaged.push(damaged_warning(
                    &self.object_path(digest),
                    moved_to.as_deref(),
                ));
                return false;
            }
        }
        match kind {
            EntryKind::Dir => match self.read_tree(digest) {
                Ok(tree) => tree
                    .entries
                    .iter()
                    .all(|e| self.output_intact(e.kind, &e.hash, Some(e.size), repair, damaged)),
                Err(_) => false,
            },
            _ => true,
        }
    }

    /// Places output `kind`/`digest` at `dest`: hard links for files (a copy
    /// where linking fails, and always with `place.copy`), links as links,
    /// folders rebuilt from their trees. Each file or link is staged beside
    /// its target under `place.temp` (see [`files::temp_name`]), then renamed.
    /// Leaves `dest` untouched when it already is that content. Nothing is
    /// followed: a link found at `dest` or inside it is replaced, never
    /// written through. Whatever `dest` holds that the output does not is
    /// removed, so callers outside the store first clear `dest` of anything
    /// pipe did not write (see `crate::outputs`).
    pub fn materialize(
        &self,
        kind: EntryKind,
        digest: &Digest,
        dest: &Path,
        place: Placing<'_>,
    ) -> anyhow::Result<()> {
        let copy = place.copy;
        let existing = files::kind_of(dest)?;
        match kind {
            EntryKind::File | EntryKind::Executable => {
                let object = self.object_path(digest);
                if !copy && existing.is_some() && same_inode(&object, dest) {
                    return Ok(());
                }
                if let Some(parent) = dest.parent() {
                    files::create_dir_all(parent)?;
                }
                let staged = dest.with_file_name(place.temp);
                let linked = !copy && fs_err::hard_link(&object, &staged).is_ok();
                if !linked {
                    files::copy(&object, &staged).with_context(|| {
                        format!("cannot restore `{}` from the store", dest.display())
                    })?;
                    let stored = files::metadata(&object)?.permissions().mode();
                    files::set_mode(&staged, restored_mode(stored, kind, process_umask()))?;
                }
                if existing.is_some_and(|m| m.is_dir()) {
                    files::remove_all(dest)?;
                }
                files::rename(&staged, dest)
            }
            EntryKind::Symlink => {
                let object = self.object_path(digest);
                let target = String::from_utf8(files::read(&object)?)
                    .map_err(|_| anyhow::anyhow!("corrupt link object `{}`", object.display()))?;
                if existing.as_ref().is_some_and(|m| m.is_symlink())
                    && files::read_link(dest)? == target
                {
                    return Ok(());
                }
                if let Some(parent) = dest.parent() {
                    files::create_dir_all(parent)?;
                }
                let staged = dest.with_file_name(place.temp);
                files::symlink(&target, &staged)?;
                if existing.is_some_and(|m| m.is_dir()) {
                    files::remove_all(dest)?;
                }
                files::rename(&staged, dest)
            }
            EntryKind::Dir => {
                let tree = self.read_tree(digest)?;
                if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                    files::remove_all(dest)?;
                }
                files::create_dir_all(dest)?;
                let wanted: BTreeSet<&str> = tree.entries.iter().map(|e| e.name.as_str()).collect();
                for existing in files::read_dir(dest)? {
                    let name = existing.file_name();
                    if !name.to_str().is_some_and(|n| wanted.contains(n)) {
                        files::remove_all(&existing.path())?;
                    }
                }
                for entry in &tree.entries {
                    let at = dest.join(&entry.name);
                    self.materialize_output(entry.kind, &entry.hash, entry.size, &at, place)?;
                }
                Ok(())
            }
        }
    }

    /// The record of stage key `key`, if it exists and is readable.
    /// A record whose output paths could lead outside where they belong
    /// (see [`StageRecord::check`]) counts as unreadable.
    pub fn record(&self, key: &Digest) -> Option<StageRecord> {
        let bytes = fs_err::read(self.record_path(key)).ok()?;
        StageRecord::parse(&bytes).ok()
    }

    /// Writes a stage record durably (the last step of committing a stage).
    pub fn write_record(&self, record: &StageRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(record)?;
        atomic::write(&self.record_path(&record.key), &bytes, true)
    }

    /// Every readable record of stage `stage` of `pipeline`, in no particular order: a scan
    /// of the store's records, for the rare question "did an earlier run write this?".
    pub fn records_of<'s>(
        &'s self,
        pipeline: &'s str,
        stage: &'s str,
    ) -> impl Iterator<Item = StageRecord> + 's {
        fs_err::read_dir(self.root.join("stages"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| StageRecord::parse(&fs_err::read(entry.path()).ok()?).ok())
            .filter(move |r| r.pipeline == pipeline && r.stage == stage)
    }

    /// Claims pipeline name `pipeline` in this store for the manifest at `manifest`: the
    /// name picks `out/<pipeline>/`, the logs and the failed-run records, so two manifests
    /// sharing one would show each other's results. Refused with [`UsageError`] while
    /// another manifest that still exists, still declares that name and uses this store
    /// holds it; a claim whose manifest is gone or renamed passes to `manifest`, and so does
    /// one copied with the project (`cp -a`): its manifest uses another store.
    pub fn claim_pipeline_name(&self, pipeline: &str, manifest: &Path) -> anyhow::Result<()> {
        let claim = self.root.join("names").join(pipeline);
        let ours = fs_err::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
        if let Ok(text) = fs_err::read_to_string(&claim) {
            let holder = PathBuf::from(text.trim_end_matches('\n'));
            if holder == ours {
                return Ok(());
            }
            let still_named = crate::Manifest::load(&holder).is_ok_and(|m| m.name == pipeline);
            let real = |p: &Path| fs_err::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let holder_store = holder.parent().map(|dir| real(&crate::store_dir(dir)));
            let same_store = holder_store.is_some_and(|s| s == real(&self.root));
            if still_named && same_store {
                return Err(UsageError(format!(
                    "pipeline name `{pipeline}` is already used by {} in the store {}: the two \
                     manifests would share `out/{pipeline}/`; give {} a `pipeline:` name of its \
                     own",
                    holder.display(),
                    self.root.display(),
                    manifest.display()
                ))
                .into());
            }
        }
        files::create_dir_all(&self.root.join("names"))?;
        let text = format!("{}\n", ours.display());
        atomic::write(&claim, text.as_bytes(), false)
    }

    /// Where the record of `key` lives.
    pub fn record_path(&self, key: &Digest) -> PathBuf {
        self.root.join("stages").join(format!("{key}.json"))
    }

    /// The stable output folder of a stage.
    pub fn out_dir(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root.join("out").join(pipeline).join(stage)
    }

    /// Where the record of a stage's last failed run lives (see
    /// `crate::outputs::FailedOuts`).
    pub fn failed_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root
            .join("failed")
            .join(pipeline)
            .join(format!("{stage}.json"))
    }

    /// Where the journal of a stage's unfinished restore lives (see
    /// `crate::journal`).
    pub fn restoring_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root
            .join("restoring")
            .join(pipeline)
            .join(format!("{stage}.json"))
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

/// The prefixes of pipe's names under `tmp/`: a stage's folder, a file on
/// its way into `objects/`. `tempfile` adds [`TEMP_RANDOM_LEN`] letters and digits.
const TEMP_PREFIXES: [&str; 2] = ["stage-", "import-"];

/// How many random characters `tempfile` appends to a prefix (its default).
const TEMP_RANDOM_LEN: usize = 6;

/// Whether `name` (an entry of `tmp/`) is one pipe makes there.
fn is_temp_name(name: &str) -> bool {
    TEMP_PREFIXES.iter().any(|prefix| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() == TEMP_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    })
}

/// The message for a damaged store object at `path`, saying how to repair it.
fn damaged(path: &Path, how: &str) -> String {
    format!(
        "the store object `{}` is damaged ({how}); delete it (`rm -f {}`) and run `pipe run` again, which runs the stage that made it again (or restores it from the remote)",
        path.display(),
        path.display()
    )
}

/// How [`Store::materialize`] places files.
#[derive(Debug, Clone, Copy)]
pub struct Placing<'a> {
    /// Copy files instead of hard-linking them to their objects.
    pub copy: bool,
    /// The file name each file or link is staged under, beside its target.
    pub temp: &'a str,
}

/// The error of a store held by another run (exit code 2 with `--no-wait`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreBusy(pub String);

/// The mode a file restored from an object gets. An object keeps the read
/// bits of the file it was stored from (`stored`, see [`Store::import`]):
/// whoever could read the file may read and write the copy (the owner of a
/// `0600` file gets `0600` back, not `0644`), execute bits follow `kind`, and
/// the process umask is applied as for any file the user's command creates.
fn restored_mode(stored: u32, kind: EntryKind, umask: u32) -> u32 {
    let read = stored & 0o444;
    let mut mode = read | (read >> 1);
    if kind == EntryKind::Executable {
        mode |= read >> 2;
    }
    mode & !umask
}

/// The process umask (Linux: from `/proc/self/status`; `022` when unknown).
/// Read without changing it, since other threads may be creating files.
pub(crate) fn process_umask() -> u32 {
    fs_err::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix("Umask:")?;
                u32::from_str_radix(value.trim(), 8).ok()
            })
        })
        .unwrap_or(0o022)
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs_err::metadata(a), fs_err::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.ino() == y.ino() && x.dev() == y.dev(),
        _ => false,
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
        fs_err::create_dir(src.path().join("m")).unwrap();
        fs_err::write(src.path().join("m/a.txt"), "alpha").unwrap();
        fs_err::create_dir(src.path().join("m/deep")).unwrap();
        fs_err::write(src.path().join("m/deep/b.txt"), "beta").unwrap();
        let hashed = hash_path(&src.path().join("m")).unwrap();
        store
            .import(&src.path().join("m"), &hashed, Import::Copy)
            .unwrap();
        assert!(store.output_complete(EntryKind::Dir, &hashed.digest()));
        let dest = store_dir.path().join("restored");
        let temp = files::temp_name(&files::temp_token());
        let place = Placing {
            copy: false,
            temp: &temp,
        };
        store
            .materialize(EntryKind::Dir, &hashed.digest(), &dest, place)
            .unwrap();
        assert_eq!(
            fs_err::read_to_string(dest.join("deep/b.txt")).unwrap(),
            "beta"
        );
        assert_eq!(hash_path(&dest).unwrap().digest(), hashed.digest());
        fs_err::remove_file(store.object_path(&crate::hash::Digest::of(b"beta"))).unwrap();
        assert!(!store.output_complete(EntryKind::Dir, &hashed.digest()));
    }

    #[test]
    fn folder_mode_paths_of_a_record_stay_inside_the_output() {
        for ok in ["", "a", "a/b"] {
            assert!(is_folder_of_output(ok), "{ok}");
        }
        for bad in ["/etc", "..", "a/../b", "a//b", "./a"] {
            assert!(!is_folder_of_output(bad), "{bad}");
        }
    }

    #[test]
    fn restored_modes_keep_who_may_read_and_honour_the_umask() {
        assert_eq!(restored_mode(0o400, EntryKind::File, 0o022), 0o600);
        assert_eq!(restored_mode(0o444, EntryKind::File, 0o022), 0o644);
        assert_eq!(restored_mode(0o444, EntryKind::File, 0o077), 0o600);
        assert_eq!(restored_mode(0o555, EntryKind::Executable, 0o022), 0o755);
        // An object shared with a non-executable file still restores an executable.
        assert_eq!(restored_mode(0o444, EntryKind::Executable, 0o027), 0o750);
        assert_eq!(restored_mode(0o555, EntryKind::File, 0o022), 0o644);
    }

    #[test]
    fn the_umask_is_read_from_the_process() {
        let status = fs_err::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        let expected = u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap();
        assert_eq!(process_umask(), expected);
    }

    #[test]
    fn clean_tmp_removes_pipes_temp_names_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let stage = store.temp_dir().unwrap().keep();
        fs_err::write(stage.join("half.bin"), "left by a kill").unwrap();
        let import = store.unique_temp(TEMP_PREFIXES[1]).unwrap();
        let tmp = dir.path().join("tmp");
        for mine in ["notes.txt", "stage-notes", "import-abc"] {
            fs_err::write(tmp.join(mine), "mine").unwrap();
        }
        store.clean_tmp().unwrap();
        assert!(!stage.exists() && !import.exists());
        for mine in ["notes.txt", "stage-notes", "import-abc"] {
            assert_eq!(fs_err::read_to_string(tmp.join(mine)).unwrap(), "mine");
        }
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

    #[test]
    fn an_object_changed_in_place_is_found_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("src.txt");
        fs_err::write(&src, "alpha").unwrap();
        let hashed = hash_path(&src).unwrap();
        store.import(&src, &hashed, Import::Copy).unwrap();
        let digest = hashed.digest();
        assert_eq!(
            store.check_object(&digest, Some(5), Repair::Fix),
            ObjectState::Intact
        );
        let object = store.object_path(&digest);
        // Same size, other bytes, written through the object's inode.
        fs_err::write(&object, "omega").unwrap();
        assert_eq!(
            store.check_object(&digest, Some(5), Repair::Look),
            ObjectState::Damaged { moved_to: None }
        );
        assert!(object.exists(), "a look moves nothing");
        let aside = store.damaged_dir().join(digest.to_string());
        assert_eq!(
            store.check_object(&digest, Some(5), Repair::Fix),
            ObjectState::Damaged {
                moved_to: Some(aside.clone())
            }
        );
        assert!(!object.exists());
        assert_eq!(fs_err::read_to_string(&aside).unwrap(), "omega");
        assert_eq!(
            store.check_object(&digest, Some(5), Repair::Fix),
            ObjectState::Missing
        );
    }

    #[test]
    fn verify_hashes_every_object_whatever_its_seal_says() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut digests = Vec::new();
        for text in ["alpha", "beta"] {
            let src = dir.path().join(text);
            fs_err::write(&src, text).unwrap();
            let hashed = hash_path(&src).unwrap();
            store.import(&src, &hashed, Import::Copy).unwrap();
            digests.push(hashed.digest());
        }
        // Replaced with same-size bytes and its seal copied: only a hash finds it.
        let object = store.object_path(&digests[1]);
        let sealed = fs_err::metadata(&object).unwrap().modified().unwrap();
        fs_err::write(&object, "BETA").unwrap();
        fs_err::File::open(&object)
            .unwrap()
            .set_modified(sealed)
            .unwrap();
        let looked =
            crate::integrity::verify(&store.root().join("objects"), &store.damaged_dir(), true)
                .unwrap();
        assert_eq!((looked.checked, looked.damaged.len()), (2, 1));
        assert!(object.exists());
        let fixed =
            crate::integrity::verify(&store.root().join("objects"), &store.damaged_dir(), false)
                .unwrap();
        assert_eq!(fixed.damaged[0].object, object);
        assert!(!object.exists() && store.has_object(&digests[0]));
        let aside = fixed.damaged[0].moved_to.clone().unwrap();
        assert_eq!(fs_err::read_to_string(aside).unwrap(), "BETA");
    }

    #[test]
    fn an_unsealed_intact_object_is_sealed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("src.txt");
        fs_err::write(&src, "alpha").unwrap();
        let hashed = hash_path(&src).unwrap();
        store.import(&src, &hashed, Import::Copy).unwrap();
        let object = store.object_path(&hashed.digest());
        fs_err::File::open(&object)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        let meta = fs_err::metadata(&object).unwrap();
        assert_ne!(
            meta.mtime_nsec(),
            i64::from(crate::integrity::tag(&hashed.digest()))
        );
        assert_eq!(
            store.check_object(&hashed.digest(), None, Repair::Fix),
            ObjectState::Intact
        );
        let meta = fs_err::metadata(&object).unwrap();
        assert!(meta.mtime_nsec() == i64::from(crate::integrity::tag(&hashed.digest())));
    }
}
