//! The store's trash, `.pipe/trash/<time>/`: where pipe puts what it finds
//! in the way of a declared out but did not write itself (a file a user
//! dropped into an output folder, an out edited by hand), instead of
//! deleting it.
//!
//! Each batch is one folder named by the UTC time (and a counter) holding the
//! moved files under `files/`, and `note.json`:
//!
//! ```json
//! {"stage": "build", "reason": "…", "moved_at": "2026-11-30T11:05:02Z",
//!  "paths": ["build/notes.txt"], "kept_at": {"build/notes.txt": "files/build/notes.txt"}}
//! ```
//!
//! A workspace path is kept at `files/<path>`. An out outside the workspace
//! (`--allow-outside`) is kept inside the batch too: an absolute path under
//! `files/@root/…`, each `..` as a component named `@up` (see [`kept_at`]).
//! A move never replaces anything, and is checked before it is reported.
//!
//! `pipe gc` empties batches older than its grace period.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::{atomic, files};

/// The note written beside a batch of trashed files.
#[derive(Debug, Serialize)]
struct Note<'a> {
    stage: &'a str,
    reason: &'a str,
    moved_at: String,
    paths: &'a [String],
    kept_at: &'a BTreeMap<String, String>,
}

/// A batch of files moved out of the way for one stage, created on first use.
pub struct Batch<'a> {
    trash: PathBuf,
    workspace: &'a Path,
    stage: &'a str,
    reason: &'a str,
    folder: Option<PathBuf>,
    moved: Vec<String>,
    kept_at: BTreeMap<String, String>,
}

impl<'a> Batch<'a> {
    /// A batch under `<store>/trash/` for files of `workspace` in the way of
    /// `stage`'s outs; `reason` goes into the note.
    pub fn new(store_root: &Path, workspace: &'a Path, stage: &'a str, reason: &'a str) -> Self {
        Batch {
            trash: store_root.join("trash"),
            workspace,
            stage,
            reason,
            folder: None,
            moved: Vec::new(),
            kept_at: BTreeMap::new(),
        }
    }

    /// Moves workspace path `rel` (a file, link or folder; for an allowed
    /// outside out, an absolute path or one starting with `..`) into the
    /// batch, at [`kept_at`]`(rel)`.
    pub fn take(&mut self, rel: &Path) -> anyhow::Result<()> {
        let kept = kept_at(rel)?;
        let folder = match &self.folder {
            Some(f) => f.clone(),
            None => {
                let f = self.trash.join(batch_name(SystemTime::now()));
                files::create_dir_all(&f)?;
                self.folder = Some(f.clone());
                f
            }
        };
        let from = self.workspace.join(rel);
        let to = folder.join(&kept);
        if files::kind_of(&to)?.is_some() {
            anyhow::bail!(
                "cannot move `{}` to the trash: `{}` is already taken (internal error; nothing was moved)",
                from.display(),
                to.display()
            );
        }
        let moved = self.move_to(&from, &to);
        if moved.is_err() && files::kind_of(&to).is_ok_and(|t| t.is_none()) {
            // Nothing arrived: a batch that holds nothing yet is removed
            // rather than left empty and without a note.
            if self.moved.is_empty() {
                files::remove_all(&folder).ok();
                self.folder = None;
            }
            return moved;
        }
        // Something arrived (all of it, or part of a copy): the note names it either way.
        let shown = rel.to_string_lossy().into_owned();
        self.kept_at
            .insert(shown.clone(), kept.to_string_lossy().into_owned());
        self.moved.push(shown);
        self.write_note(&folder)?;
        moved
    }

    /// Moves `from` to `to` (inside the batch), checking that it took effect.
    fn move_to(&self, from: &Path, to: &Path) -> anyhow::Result<()> {
        if let Some(parent) = to.parent() {
            files::create_dir_all(parent)?;
        }
        match fs_err::rename(from, to) {
            Ok(()) => {}
            // The store is on another filesystem (`PIPE_STORE`): copy, then remove.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                files::copy_all(from, to)?;
                files::remove_all(from)?;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot move `{}` to the trash `{}`",
                        from.display(),
                        to.display()
                    )
                });
            }
        }
        if files::kind_of(from)?.is_some() || files::kind_of(to)?.is_none() {
            anyhow::bail!(
                "moving `{}` to the trash `{}` did not take effect; nothing else was touched, look at both paths before running again",
                from.display(),
                to.display()
            );
        }
        Ok(())
    }

    fn write_note(&self, folder: &Path) -> anyhow::Result<()> {
        let note = Note {
            stage: self.stage,
            reason: self.reason,
            moved_at: iso_time(SystemTime::now()),
            paths: &self.moved,
            kept_at: &self.kept_at,
        };
        let bytes = serde_json::to_vec_pretty(&note).context("cannot encode the trash note")?;
        atomic::write(&folder.join("note.json"), &bytes, true)
    }

    /// What was moved, and where to, when anything was.
    pub fn finish(self) -> Option<(Vec<String>, PathBuf)> {
        self.folder.map(|f| (self.moved, f))
    }
}

/// Where path `rel` is kept inside a batch folder: always under `files/`,
/// whatever `rel` is. A workspace path keeps its shape (`files/build/x`); an
/// absolute path goes under `files/@root/`, and each `..` becomes `@up`, so
/// no path can lead out of the batch.
pub fn kept_at(rel: &Path) -> anyhow::Result<PathBuf> {
    let mut kept = PathBuf::from("files");
    let mut named = false;
    for component in rel.components() {
        match component {
            Component::RootDir => kept.push("@root"),
            Component::ParentDir => kept.push("@up"),
            Component::CurDir => {}
            Component::Normal(name) => {
                kept.push(name);
                named = true;
            }
            Component::Prefix(_) => {
                anyhow::bail!("cannot keep `{}` in the trash", rel.display())
            }
        }
    }
    if !named {
        anyhow::bail!("cannot keep `{}` in the trash", rel.display());
    }
    Ok(kept)
}

/// A batch folder name: UTC time to the millisecond plus a counter, so two
/// batches of one run never share a folder.
fn batch_name(now: SystemTime) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil(since.as_secs());
    format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{:03}Z-{}-{}",
        since.subsec_millis(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `name` is one [`batch_name`] makes:
/// `<yyyymmdd>T<hhmmss>.<ms>Z-<pid>-<n>` (what `pipe gc` may remove from `trash/`).
pub fn is_batch_name(name: &str) -> bool {
    let digits = |s: &str, len: Option<usize>| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && len.is_none_or(|l| s.len() == l)
    };
    let mut parts = name.splitn(3, '-');
    let (Some(time), Some(pid), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some((date, clock)) = time.split_once('T') else {
        return false;
    };
    let Some((hms, ms)) = clock.strip_suffix('Z').and_then(|c| c.split_once('.')) else {
        return false;
    };
    digits(date, Some(8))
        && digits(hms, Some(6))
        && digits(ms, Some(3))
        && digits(pid, None)
        && digits(n, None)
}

/// `2026-11-30T11:05:02Z`.
fn iso_time(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Unix seconds → (year, month, day, hour, minute, second) in UTC
/// (Howard Hinnant's days-to-civil algorithm).
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29T12:34:56Z, a leap day.
        assert_eq!(civil(1_709_210_096), (2024, 2, 29, 12, 34, 56));
    }

    #[test]
    fn batch_names_are_recognised_exactly() {
        assert!(is_batch_name(&batch_name(SystemTime::now())));
        for not_ours in [
            "notes",
            "20261130T110502.000Z",
            "20261130T110502.000Z-1-x",
            "old-1-2",
        ] {
            assert!(!is_batch_name(not_ours), "{not_ours}");
        }
    }

    #[test]
    fn a_batch_keeps_the_file_and_names_it() {
        let ws = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        fs_err::create_dir(ws.path().join("build")).unwrap();
        fs_err::write(ws.path().join("build/mine.txt"), "keep me").unwrap();
        let mut batch = Batch::new(store.path(), ws.path(), "build", "not written by pipe");
        batch.take(Path::new("build/mine.txt")).unwrap();
        let (moved, folder) = batch.finish().unwrap();
        assert_eq!(moved, vec!["build/mine.txt".to_string()]);
        assert!(!ws.path().join("build/mine.txt").exists());
        assert_eq!(
            fs_err::read_to_string(folder.join("files/build/mine.txt")).unwrap(),
            "keep me"
        );
        let note: serde_json::Value =
            serde_json::from_slice(&fs_err::read(folder.join("note.json")).unwrap()).unwrap();
        assert_eq!(note["stage"], "build");
        assert_eq!(note["paths"][0], "build/mine.txt");
        assert_eq!(note["reason"], "not written by pipe");
        assert_eq!(note["kept_at"]["build/mine.txt"], "files/build/mine.txt");
    }

    #[test]
    fn a_failed_move_leaves_no_empty_batch() {
        let ws = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut batch = Batch::new(store.path(), ws.path(), "build", "not written by pipe");
        assert!(batch.take(Path::new("missing.txt")).is_err());
        assert!(batch.finish().is_none());
        let left: Vec<_> = fs_err::read_dir(store.path().join("trash"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn outside_paths_are_kept_inside_the_batch() {
        assert_eq!(
            kept_at(Path::new("/tmp/o/report.txt")).unwrap(),
            Path::new("files/@root/tmp/o/report.txt")
        );
        assert_eq!(
            kept_at(Path::new("../../x/y")).unwrap(),
            Path::new("files/@up/@up/x/y")
        );
        assert!(kept_at(Path::new("/")).is_err());
    }

    #[test]
    fn an_absolute_path_is_moved_into_the_batch_not_onto_itself() {
        let outside = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let precious = outside.path().join("report.txt");
        fs_err::write(&precious, "PRECIOUS").unwrap();
        let mut batch = Batch::new(store.path(), ws.path(), "mk", "not written by pipe");
        batch.take(&precious).unwrap();
        let (moved, folder) = batch.finish().unwrap();
        assert!(!precious.exists());
        let kept = kept_at(&precious).unwrap();
        assert!(kept.starts_with("files/@root"));
        assert_eq!(
            fs_err::read_to_string(folder.join(kept)).unwrap(),
            "PRECIOUS"
        );
        assert_eq!(moved, vec![precious.display().to_string()]);
    }
}
