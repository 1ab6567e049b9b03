//! A stage's outputs on disk: committing what a run wrote into the store,
//! restoring a cached stage's outputs, and publishing them at
//! `out/<pipeline>/<stage>/`.
//!
//! What pipe may touch in the workspace: only declared outs, and inside them
//! only what pipe itself wrote (content matching an object of the stage's last
//! record). Anything else found where an out goes, such as a file a user
//! dropped into an output folder or an out edited by hand, is moved to the
//! store's trash with a note ([`crate::trash`]) and named in a warning. No
//! symlink is followed: links are hashed, stored and restored as links, a
//! link in the way is removed as a link, and an out whose parent folder is a
//! link is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::hash::{Digest, EntryKind, Hashed, StatCache, Tree, hash_path};
use crate::journal::Unfinished;
use crate::lockfile::LockEntry;
use crate::plan::{Pipeline, PlannedStage};
use crate::printer::Printer;
use crate::store::{Import, OutputEntry, Placing, StageRecord, Store};
use crate::trash;
use crate::{atomic, files, folder_modes};

/// What pipe last wrote for a stage, as (workspace path, content digest)
/// pairs of every file, link and folder (by its tree's digest) of its
/// declared outs (from the record of the lockfile's key): a file in a
/// declared out is pipe's to remove only when its path and content are one of
/// these pairs, a folder only when pipe made a folder at its path; anything
/// else is trashed.
pub type Produced = BTreeSet<(String, Digest)>;

/// What this module's functions work with: a job's pipeline, store, hashes of workspace
/// files and printer.
#[derive(Clone, Copy)]
pub struct OutsEnv<'a> {
    /// The pipeline.
    pub pipeline: &'a Pipeline<'a>,
    /// The store.
    pub store: &'a Store,
    /// Hashes of workspace files.
    pub stat_cache: &'a StatCache,
    /// The printer (notes, progress, warnings).
    pub printer: &'a Printer,
}

/// The [`Produced`] pairs of a stage: those of the lockfile's entry, what
/// its last run left in its outs if that run failed ([`FailedOuts`]), and
/// what an unfinished restore may have put there ([`Unfinished`]).
fn produced(store: &Store, pipeline: &str, stage: &str, locked: Option<&LockEntry>) -> Produced {
    let mut known = FailedOuts::read(store, pipeline, stage).files;
    let stored = |digest: &Digest| store.read_tree(digest).ok();
    let restoring = Unfinished::read(store, pipeline, stage).unwrap_or_default();
    for record in restoring.keys.iter().filter_map(|k| store.record(k)) {
        for output in record.outputs.values().filter(|o| o.workspace) {
            produced_pairs(&output.path, output.kind, &output.hash, &stored, &mut known);
        }
    }
    let Some(locked) = locked else {
        return known;
    };
    match store.record(&locked.key) {
        Some(record) => {
            for output in record.outputs.values().filter(|o| o.workspace) {
                produced_pairs(&output.path, output.kind, &output.hash, &stored, &mut known);
            }
        }
        // Without the record, the lockfile knows each out's digest (a folder's
        // tree is read when the store still has it).
        None => {
            let outs = locked.outputs.iter();
            for (out, digest) in outs.filter(|(out, _)| locked.record.outs.contains(out)) {
                let kind = match store.read_tree(digest) {
                    Ok(_) => EntryKind::Dir,
                    Err(_) => EntryKind::File,
                };
                produced_pairs(out, kind, digest, &stored, &mut known);
            }
        }
    }
    known
}

/// The [`Produced`] pairs of an earlier run of `stage` that left out `out` holding exactly
/// `digest`, when the store has one (after `git checkout` of an older lockfile, say, the
/// workspace holds what another key wrote): then the out is pipe's, not an edit by hand.
pub fn earlier_run_wrote(
    store: &Store,
    pipeline: &str,
    stage: &str,
    out: &str,
    digest: &Digest,
) -> Option<Produced> {
    let record = store.records_of(pipeline, stage).find(|r| {
        (r.outputs.values()).any(|o| o.workspace && o.path == out && o.hash == *digest)
    })?;
    let output = record.outputs.values().find(|o| o.path == out)?;
    let mut pairs = Produced::new();
    let stored = |d: &Digest| store.read_tree(d).ok();
    produced_pairs(out, output.kind, &output.hash, &stored, &mut pairs);
    Some(pairs)
}

/// Adds the pairs of output `kind`/`digest` placed at `path` (a folder: its
/// own, and every entry under its tree at its own path; `tree` finds a
/// folder's tree).
fn produced_pairs(
    path: &str,
    kind: EntryKind,
    digest: &Digest,
    tree: &dyn Fn(&Digest) -> Option<Tree>,
    into: &mut Produced,
) {
    into.insert((path.to_string(), *digest));
    if kind != EntryKind::Dir {
        return;
    }
    if let Some(found) = tree(digest) {
        for entry in &found.entries {
            let child = format!("{path}/{}", entry.name);
            produced_pairs(&child, entry.kind, &entry.hash, tree, into);
        }
    }
}

/// What the last run of a command stage left in its declared outs when it
/// failed (a command that wrote half a file, then exited non-zero), kept at
/// `failed/<pipeline>/<stage>.json` in the store until the stage next
/// succeeds or is restored. Those files are pipe's: the next run removes them
/// instead of trashing them, and they are not taken for edits by hand.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FailedOuts {
    /// Declared out → digest of what the failed run left there.
    pub outs: BTreeMap<String, Digest>,
    /// Every file and link under those outs, as (path, digest).
    pub files: Produced,
}

impl FailedOuts {
    /// The record of `stage`'s last failed run; empty when it has none (or an
    /// unreadable one: then its outs are simply not known to be pipe's).
    pub fn read(store: &Store, pipeline: &str, stage: &str) -> FailedOuts {
        fs_err::read(store.failed_path(pipeline, stage))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Hashes what a failed run of `stage` left in its declared outs and
    /// keeps it as the stage's failed-run record.
    pub fn remember(env: &OutsEnv<'_>, stage: &PlannedStage<'_>) -> anyhow::Result<()> {
        let mut failed = FailedOuts::default();
        for out in &stage.outs {
            let path = env.pipeline.manifest.dir.join(out);
            if files::kind_of(&path)?.is_none() {
                continue;
            }
            let hashed = env.stat_cache.hash_out(&path)?;
            let (kind, digest) = (hashed.entry(out).kind, hashed.digest());
            let trees: BTreeMap<Digest, &Tree> = match &hashed {
                Hashed::Dir { trees, .. } => trees.iter().map(|t| (t.digest(), t)).collect(),
                _ => BTreeMap::new(),
            };
            let tree = |d: &Digest| trees.get(d).map(|t| (*t).clone());
            produced_pairs(out, kind, &digest, &tree, &mut failed.files);
            failed.outs.insert(out.clone(), digest);
        }
        let path = env
            .store
            .failed_path(&env.pipeline.manifest.name, &stage.name);
        if failed.outs.is_empty() {
            return files::remove_all(&path);
        }
        if let Some(parent) = path.parent() {
            files::create_dir_all(parent)?;
        }
        atomic::write(&path, &serde_json::to_vec(&failed)?, true)
    }

    /// Drops `stage`'s failed-run record (it succeeded, or was restored).
    pub fn forget(store: &Store, pipeline: &str, stage: &str) -> anyhow::Result<()> {
        files::remove_all(&store.failed_path(pipeline, stage))
    }
}

/// Removes the staging files of unfinished restores (named `temps`, see
/// [`Unfinished`]) beside declared out `out`: exact paths, no listing.
/// Those inside a folder out are cleared with the rest of the folder.
fn remove_temps_beside(workspace: &Path, out: &str, temps: &[String]) -> anyhow::Result<()> {
    let path = workspace.join(out);
    for temp in temps {
        let staged = path.with_file_name(temp);
        if files::kind_of(&staged)?.is_some_and(|m| !m.is_dir()) {
            files::remove_file(&staged)?;
        }
    }
    Ok(())
}

/// Refuses a declared out whose parent folders include a symlink: writing
/// there would write through the link.
fn ensure_real_parents(workspace: &Path, out: &str) -> anyhow::Result<()> {
    let mut path = workspace.to_path_buf();
    let parts: Vec<&str> = out.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        path.push(part);
        if files::kind_of(&path)?.is_some_and(|m| m.is_symlink()) {
            anyhow::bail!(
                "`{}` is a symlink, and pipe does not write through links; replace it with a folder to keep `{out}` there",
                path.display()
            );
        }
    }
    Ok(())
}

/// What pipe knows it wrote in a stage's outs: [`Produced`] pairs, and the
/// staging file names of its unfinished restores.
pub struct Known {
    /// (path, digest) pairs of files pipe wrote.
    pub produced: Produced,
    /// Staging file names ([`files::temp_name`]) of unfinished restores.
    pub temps: Vec<String>,
}

impl Known {
    /// What pipe knows it wrote in `stage`'s outs (see [`produced`]).
    pub fn of(store: &Store, pipeline: &str, stage: &str, locked: Option<&LockEntry>) -> Known {
        Known {
            produced: produced(store, pipeline, stage, locked),
            temps: Unfinished::read(store, pipeline, stage)
                .map(|u| u.temp_names())
                .unwrap_or_default(),
        }
    }
}

/// Empties the place of declared out `out` before pipe writes there: what
/// pipe wrote (`known`) is removed, anything else moved to the trash, with a
/// warning naming it. pipe's staging files beside the out go too.
pub fn clear_out(env: &OutsEnv<'_>, stage: &str, out: &str, known: &Known) -> anyhow::Result<()> {
    let workspace = &env.pipeline.manifest.dir;
    ensure_real_parents(workspace, out)?;
    remove_temps_beside(workspace, out, &known.temps)?;
    let reason = "pipe did not write it, so it was moved here instead of being deleted";
    let mut batch = trash::Batch::new(env.store.root(), workspace, stage, reason);
    clear(env, &mut batch, known, &workspace.join(out), Path::new(out))?;
    if let Some((moved, folder)) = batch.finish() {
        let shown: Vec<String> = moved.iter().map(|m| format!("`{m}`")).collect();
        env.printer.warn(&format!(
            "{stage}: {} in the way of its outs, not written by pipe: moved to `{}`",
            shown.join(", "),
            folder.display()
        ));
    }
    Ok(())
}

fn clear(
    env: &OutsEnv<'_>,
    batch: &mut trash::Batch<'_>,
    known: &Known,
    path: &Path,
    rel: &Path,
) -> anyhow::Result<()> {
    let Some(meta) = files::kind_of(path)? else {
        return Ok(());
    };
    let rel_text = rel.to_string_lossy().into_owned();
    if meta.is_dir() {
        // A folder pipe never made here (not even one holding only empty
        // folders) is the user's: it goes to the trash whole, with its mode.
        if !wrote_at_or_inside(&known.produced, &rel_text) {
            return batch.take(rel);
        }
        for entry in files::read_dir(path)? {
            let name = entry.file_name();
            clear(env, batch, known, &entry.path(), &rel.join(&name))?;
        }
        return files::remove_dir(path);
    }
    let digest = if meta.is_symlink() {
        Some(Digest::of(files::read_link(path)?.as_bytes()))
    } else if meta.is_file() {
        Some(
            env.stat_cache
                .hash_file(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?,
        )
    } else {
        None
    };
    let pipe_temp = !meta.is_dir()
        && rel
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| known.temps.iter().any(|t| t == n));
    if pipe_temp || digest.is_some_and(|d| known.produced.contains(&(rel_text, d))) {
        files::remove_file(path)
    } else {
        batch.take(rel)
    }
}

/// Whether pipe wrote `rel` itself or anything inside it: two range lookups in the sorted
/// pairs (the pair at `rel`, and the first one under `rel/`), not a scan of them all per
/// folder. Two, because a sibling such as `rel-x` sorts between `rel` and `rel/…`.
fn wrote_at_or_inside(produced: &Produced, rel: &str) -> bool {
    let first_from = |path: String| {
        produced
            .range((path, Digest([0; 32]))..)
            .next()
            .map(|(p, _)| p.as_str())
    };
    let inside = format!("{rel}/");
    first_from(rel.to_string()).is_some_and(|p| p == rel)
        || first_from(inside.clone()).is_some_and(|p| p.starts_with(&inside))
}

/// Puts a cached stage's outputs in place: declared outs in the workspace
/// (only those that differ) and `out/<pipeline>/<stage>/`. The workspace
/// part is journaled ([`Unfinished`]), so a restore stopped midway is
/// recognised and finished by the next run.
pub fn restore(
    env: &OutsEnv<'_>,
    stage: &PlannedStage<'_>,
    found: &StageRecord,
    locked: Option<&LockEntry>,
) -> anyhow::Result<()> {
    let workspace = &env.pipeline.manifest.dir;
    let pipeline = &env.pipeline.manifest.name;
    let unfinished = Unfinished::read(env.store, pipeline, &stage.name);
    let mut token: Option<String> = None;
    let mut known: Option<Known> = None;
    for output in found.outputs.values().filter(|o| o.workspace) {
        let path = workspace.join(&output.path);
        ensure_real_parents(workspace, &output.path)?;
        if let Some(unfinished) = &unfinished {
            remove_temps_beside(workspace, &output.path, &unfinished.temp_names())?;
        }
        let current = match files::kind_of(&path)? {
            Some(_) => env.stat_cache.hash_out(&path).map(|h| h.digest()).ok(),
            None => None,
        };
        if current == Some(output.hash) {
            continue;
        }
        let token = match &mut token {
            Some(token) => token.as_str(),
            none => none.insert(Unfinished::begin(
                env.store,
                pipeline,
                &stage.name,
                found.key,
            )?),
        };
        let known =
            known.get_or_insert_with(|| Known::of(env.store, pipeline, &stage.name, locked));
        if let Some(digest) = current {
            let earlier =
                earlier_run_wrote(env.store, pipeline, &stage.name, &output.path, &digest);
            known.produced.extend(earlier.unwrap_or_default());
        }
        clear_out(env, &stage.name, &output.path, known)?;
        let place = Placing {
            copy: true,
            temp: &files::temp_name(token),
        };
        env.store
            .materialize_output(output.kind, &output.hash, output.size, &path, place)?;
        folder_modes::apply(&path, &output.folder_modes)?;
    }
    publish(env, &stage.name, &found.outputs)?;
    if token.is_some() || unfinished.is_some() {
        Unfinished::finish(env.store, pipeline, &stage.name)?;
    }
    FailedOuts::forget(env.store, pipeline, &stage.name)
}

/// Makes `out/<pipeline>/<stage>/` hold exactly the stage's store outputs.
pub fn publish(
    env: &OutsEnv<'_>,
    stage: &str,
    outputs: &BTreeMap<String, OutputEntry>,
) -> anyhow::Result<()> {
    let dir = env.store.out_dir(&env.pipeline.manifest.name, stage);
    let wanted: BTreeSet<&str> = outputs
        .values()
        .filter(|o| !o.workspace)
        .map(|o| o.path.as_str())
        .collect();
    // A stage with only workspace outs has nothing here: no folder to make
    // (a large pipeline of shell steps would make one per stage on every run).
    if wanted.is_empty() && files::kind_of(&dir)?.is_none() {
        return Ok(());
    }
    files::create_dir_all(&dir)?;
    for entry in files::read_dir(&dir)? {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| wanted.contains(n))
        {
            files::remove_all(&entry.path())?;
        }
    }
    let temp = files::temp_name(&files::temp_token());
    let place = Placing {
        copy: false,
        temp: &temp,
    };
    for output in outputs.values().filter(|o| !o.workspace) {
        let dest = dir.join(&output.path);
        env.store
            .materialize_output(output.kind, &output.hash, output.size, &dest, place)?;
        folder_modes::apply(&dest, &output.folder_modes)?;
    }
    Ok(())
}

/// Where a stage's outputs are on disk, for the stages downstream of it.
pub fn output_paths(
    store: &Store,
    pipeline: &Pipeline<'_>,
    stage: usize,
    outputs: &BTreeMap<String, OutputEntry>,
) -> BTreeMap<String, PathBuf> {
    let name = &pipeline.stages[stage].name;
    outputs
        .iter()
        .map(|(k, o)| {
            let path = if o.workspace {
                pipeline.manifest.dir.join(&o.path)
            } else {
                store.out_dir(&pipeline.manifest.name, name).join(&o.path)
            };
            (k.clone(), path)
        })
        .collect()
}

/// Hashes and stores what the stage wrote: entries of its out folder (by
/// move) and its declared workspace outs (by copy). Links are stored as links.
pub fn commit(
    env: &OutsEnv<'_>,
    stage: &PlannedStage<'_>,
    out_dir: &Path,
) -> anyhow::Result<BTreeMap<String, OutputEntry>> {
    let mut outputs = BTreeMap::new();
    let umask = crate::store::process_umask();
    for entry in files::read_dir(out_dir)? {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // The name is the file name without its last extension (`model.onnx` → `model`,
        // `model.onnx.data` → `model.onnx`), as `Path::file_stem` has it.
        let name = match file_name.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem.to_string(),
            _ => file_name.clone(),
        };
        let hashed = hash_path(&entry.path())?;
        // Read before the move takes the folders away.
        let folder_modes = modes_of(&entry.path(), &hashed, umask)?;
        env.store.import(&entry.path(), &hashed, Import::Move)?;
        let output = OutputEntry {
            path: file_name.clone(),
            kind: hashed.entry(&file_name).kind,
            hash: hashed.digest(),
            size: hashed.size(),
            workspace: false,
            folder_modes,
        };
        if outputs.insert(name.clone(), output).is_some() {
            anyhow::bail!(
                "stage wrote two outputs named `{name}` (internal error in the {} kind)",
                stage.kind.kind()
            );
        }
    }
    for out in &stage.outs {
        let path = env.pipeline.manifest.dir.join(out);
        if files::kind_of(&path)?.is_none() {
            anyhow::bail!(
                "the command finished but did not write its declared out `{out}`; fix the command or the `outs:` list"
            );
        }
        let hashed = env.stat_cache.hash_out(&path)?;
        env.store.import(&path, &hashed, Import::Copy)?;
        outputs.insert(
            out.clone(),
            OutputEntry {
                path: out.clone(),
                kind: hashed.entry(out).kind,
                hash: hashed.digest(),
                size: hashed.size(),
                workspace: true,
                folder_modes: modes_of(&path, &hashed, umask)?,
            },
        );
    }
    Ok(outputs)
}

/// The folder modes to record for output `hashed` at `path` (none for a file or link).
fn modes_of(path: &Path, hashed: &Hashed, umask: u32) -> anyhow::Result<folder_modes::FolderModes> {
    match hashed {
        Hashed::Dir { .. } => folder_modes::read(path, umask),
        Hashed::File { .. } | Hashed::Symlink { .. } => Ok(folder_modes::FolderModes::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_pipes_when_pipe_wrote_it_or_inside_it_whatever_sorts_between() {
        let pair = |p: &str| (p.to_string(), Digest::of(p.as_bytes()));
        let produced: Produced = ["out-x", "out.txt", "out/a/b", "other/out"]
            .into_iter()
            .map(pair)
            .collect();
        assert!(
            wrote_at_or_inside(&produced, "out"),
            "`out/a/b` lies inside"
        );
        assert!(wrote_at_or_inside(&produced, "out/a"));
        assert!(wrote_at_or_inside(&produced, "out/a/b"));
        assert!(!wrote_at_or_inside(&produced, "out/a/b/c"));
        assert!(!wrote_at_or_inside(&produced, "ou"));
        assert!(!wrote_at_or_inside(&produced, "other/o"));
        assert!(!wrote_at_or_inside(&Produced::new(), "out"));
    }
}
