//! The store's marker, `STORE`: how pipe knows that a folder is its store
//! before it writes, cleans or collects anything there.
//!
//! pipe creates, replaces and deletes files all over its store, so a folder
//! that is not one (a `PIPE_STORE` pointing at a user's folder, say) must
//! never be taken for one. [`Store::open`](crate::Store::open) calls
//! [`ensure`] first: a folder with the marker is a store (of a format this
//! pipe reads); a missing or empty folder becomes one, marked before anything
//! else is written in it; anything else is refused with [`UsageError`].
//!
//! The marker's first line is `pipe store, format <n>`; the rest is a note for
//! whoever finds the folder.

use std::path::Path;

use crate::{UsageError, atomic, files};

/// The marker's file name, in the store's root.
pub const FILE: &str = "STORE";

/// The store format this pipe writes and reads. A store of a higher format
/// was made by a newer pipe and is refused rather than misread.
pub const FORMAT: u32 = 1;

/// The folders every pipe before the marker created in each store it opened.
const ALWAYS_MADE: [&str; 6] = ["objects", "stages", "tmp", "out", "scratch", "logs"];

/// The other names such a pipe wrote at a store's top level.
const ALSO_MADE: [&str; 6] = [
    "names",
    "lockfiles",
    "failed",
    "trash",
    "lock",
    "stat-cache.json",
];

/// Makes sure `root` is a pipe store, marking it when it is new: see the
/// module doc. Errors are [`UsageError`]s naming the folder and what to do.
pub fn ensure(root: &Path) -> anyhow::Result<()> {
    let marker = root.join(FILE);
    match files::kind_of(&marker)? {
        Some(meta) if meta.is_file() => {
            let text = files::read(&marker)?;
            match format_of(&text) {
                Some(format) if format <= FORMAT => Ok(()),
                Some(format) => Err(UsageError(format!(
                    "the store {} has format {format}, made by a newer pipe (this one reads format \
                     {FORMAT}); use that pipe, or point PIPE_STORE at another folder",
                    root.display()
                ))
                .into()),
                None => Err(not_a_store(root, "its `STORE` file is not pipe's marker")),
            }
        }
        Some(_) => Err(not_a_store(root, "its `STORE` is not a file")),
        None if is_empty_or_missing(root)? || made_by_older_pipe(root) => mark(root),
        None => Err(not_a_store(
            root,
            "it is not empty and has no `STORE` marker",
        )),
    }
}

/// Writes the marker (creating `root` when needed).
fn mark(root: &Path) -> anyhow::Result<()> {
    files::create_dir_all(root)?;
    let text = format!(
        "pipe store, format {FORMAT}\n\
         This folder is pipe's content-addressed store: pipe creates, replaces and deletes \
         files here.\nKeep no files of your own in it; `pipe gc` cleans it.\n"
    );
    match atomic::create_new(&root.join(FILE), text.as_bytes()) {
        Ok(()) => Ok(()),
        // Another pipe marked it at the same moment: what it wrote is read like any marker.
        Err(_) if files::kind_of(&root.join(FILE))?.is_some() => ensure(root),
        Err(e) => Err(e),
    }
}

/// The format a marker's text names, if it is pipe's marker.
fn format_of(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines()
        .next()?
        .strip_prefix("pipe store, format ")?
        .parse()
        .ok()
}

fn is_empty_or_missing(root: &Path) -> anyhow::Result<bool> {
    match files::kind_of(root)? {
        None => Ok(true),
        Some(meta) if meta.is_dir() => Ok(files::read_dir(root)?.is_empty()),
        Some(_) => Err(not_a_store(root, "it is not a folder")),
    }
}

/// Whether `root` is a store made by a pipe that did not mark its stores yet,
/// which is then adopted. Such a pipe made all of [`ALWAYS_MADE`] whenever it
/// opened a store, so every store it made has them; the test asks for those
/// folders, nothing at the top level but names pipe writes there, and only
/// pipe's names in `stages/` (`<key>.json`) and `objects/` (two hex digits).
/// A user's folder does not look like that by accident, and one that does not
/// is refused: refusing an old store costs a message, adopting a user's
/// folder costs their files.
fn made_by_older_pipe(root: &Path) -> bool {
    let is_dir =
        |name: &str| files::kind_of(&root.join(name)).is_ok_and(|m| m.is_some_and(|m| m.is_dir()));
    let names_ok = |dir: &str, ok: &dyn Fn(&str) -> bool| {
        files::read_dir(&root.join(dir)).is_ok_and(|entries| {
            entries
                .iter()
                .all(|e| e.file_name().to_str().is_some_and(ok))
        })
    };
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    ALWAYS_MADE.iter().all(|d| is_dir(d))
        && names_ok(".", &|n| ALWAYS_MADE.contains(&n) || ALSO_MADE.contains(&n))
        && names_ok("stages", &|n| {
            n.strip_suffix(".json")
                .is_some_and(|k| k.len() == 64 && hex(k))
        })
        && names_ok("objects", &|n| n.len() == 2 && hex(n))
}

fn not_a_store(root: &Path, why: &str) -> anyhow::Error {
    UsageError(format!(
        "{} is not a pipe store ({why}); pipe creates and deletes files in its store, so it \
         leaves this folder alone\n  help: point PIPE_STORE at a new or empty folder (pipe \
         marks it as its store), or move your files out of this one",
        root.display()
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_folder_is_marked_and_a_marked_one_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        ensure(&root).unwrap();
        assert_eq!(
            format_of(&fs_err::read(root.join(FILE)).unwrap()),
            Some(FORMAT)
        );
        ensure(&root).unwrap();
    }

    #[test]
    fn a_users_folder_a_foreign_marker_and_a_newer_format_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("tmp")).unwrap();
        fs_err::write(dir.path().join("tmp/notes.txt"), "mine").unwrap();
        let err = ensure(dir.path()).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        assert!(!dir.path().join(FILE).exists());

        fs_err::write(dir.path().join(FILE), "my own notes").unwrap();
        assert!(ensure(dir.path()).is_err());
        fs_err::write(dir.path().join(FILE), "pipe store, format 99\n").unwrap();
        let err = ensure(dir.path()).unwrap_err();
        assert!(err.to_string().contains("newer pipe"), "{err}");
    }

    #[test]
    fn a_store_of_an_older_pipe_is_adopted_only_with_pipes_names() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ALWAYS_MADE {
            fs_err::create_dir(dir.path().join(sub)).unwrap();
        }
        fs_err::create_dir(dir.path().join("objects/ab")).unwrap();
        fs_err::write(
            dir.path().join(format!("stages/{}.json", "0".repeat(64))),
            "{}",
        )
        .unwrap();
        fs_err::write(dir.path().join("lock"), "").unwrap();
        fs_err::write(dir.path().join("stages/notes.txt"), "mine").unwrap();
        assert!(ensure(dir.path()).is_err(), "a user's file in stages/");
        fs_err::remove_file(dir.path().join("stages/notes.txt")).unwrap();
        ensure(dir.path()).unwrap();
        assert!(dir.path().join(FILE).exists());
    }
}
