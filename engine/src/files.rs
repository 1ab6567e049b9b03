//! Filesystem calls with one error form: "cannot <verb> `<path>`: <reason>".
//!
//! The engine goes through these instead of bare `std::fs` so that every
//! failure names the path it was about, and so that nothing here follows a
//! symlink unless its name says it does ([`metadata`] follows; [`kind_of`],
//! [`remove_all`] and [`copy_all`] never do).
//!
//! Everywhere else the workspace calls `fs_err` (clippy's `disallowed-methods` in
//! `clippy.toml` refuses bare `std::fs`); this module alone wraps `std::fs` itself.

#![allow(clippy::disallowed_methods)]

use std::fs::{DirEntry, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

fn at<T>(result: io::Result<T>, verb: &str, path: &Path) -> anyhow::Result<T> {
    result.with_context(|| format!("cannot {verb} `{}`", path.display()))
}

/// Reads a whole file.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    at(std::fs::read(path), "read", path)
}

/// Reads a whole file as UTF-8 text.
pub fn read_to_string(path: &Path) -> anyhow::Result<String> {
    at(std::fs::read_to_string(path), "read", path)
}

/// Writes a whole file in place (for files nobody reads while they are written;
/// see [`crate::atomic::write`] for the others).
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    at(std::fs::write(path, bytes), "write", path)
}

/// Creates a folder and its parents.
pub fn create_dir_all(path: &Path) -> anyhow::Result<()> {
    at(std::fs::create_dir_all(path), "create", path)
}

/// The entries of a folder, sorted by name.
pub fn read_dir(path: &Path) -> anyhow::Result<Vec<DirEntry>> {
    let mut entries: Vec<DirEntry> = at(std::fs::read_dir(path), "list", path)?
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot list `{}`", path.display()))?;
    entries.sort_by_key(DirEntry::file_name);
    Ok(entries)
}

/// Metadata of what `path` points to (follows symlinks).
pub fn metadata(path: &Path) -> anyhow::Result<Metadata> {
    at(std::fs::metadata(path), "read", path)
}

/// Metadata of `path` itself (a symlink is not followed); `None` when nothing is there.
pub fn kind_of(path: &Path) -> anyhow::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect `{}`", path.display())),
    }
}

/// The target text of a symlink, which must be UTF-8.
pub fn read_link(path: &Path) -> anyhow::Result<String> {
    let target = at(std::fs::read_link(path), "read the link", path)?;
    target.into_os_string().into_string().map_err(|t| {
        anyhow::anyhow!(
            "the link `{}` points to {t:?}, which is not UTF-8; rename its target",
            path.display()
        )
    })
}

/// Creates a symlink at `link` whose target text is `target`.
pub fn symlink(target: &str, link: &Path) -> anyhow::Result<()> {
    at(
        std::os::unix::fs::symlink(target, link),
        "create the link",
        link,
    )
}

/// Renames `from` to `to` (replacing a file or an empty folder there).
pub fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot move `{}` to `{}`", from.display(), to.display()))
}

/// Copies a file's bytes and permissions.
pub fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))
}

/// Copies a file, symlink (as a link) or folder (recursively), never following a link.
pub fn copy_all(from: &Path, to: &Path) -> anyhow::Result<()> {
    let meta = at(std::fs::symlink_metadata(from), "inspect", from)?;
    if meta.is_symlink() {
        symlink(&read_link(from)?, to)
    } else if meta.is_dir() {
        create_dir_all(to)?;
        for entry in read_dir(from)? {
            copy_all(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        copy(from, to)
    }
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    at(
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        "change the permissions of",
        path,
    )
}

/// Removes a file or symlink.
pub fn remove_file(path: &Path) -> anyhow::Result<()> {
    at(std::fs::remove_file(path), "remove", path)
}

/// Removes an empty folder.
pub fn remove_dir(path: &Path) -> anyhow::Result<()> {
    at(std::fs::remove_dir(path), "remove", path)
}

/// Removes a file, symlink (the link, not its target) or folder with
/// read-only contents; nothing there is not an error.
pub fn remove_all(path: &Path) -> anyhow::Result<()> {
    let Some(meta) = kind_of(path)? else {
        return Ok(());
    };
    if meta.is_dir() {
        make_writable(path);
        at(std::fs::remove_dir_all(path), "remove", path)
    } else {
        remove_file(path)
    }
}

/// Gives the owner write access to every folder under `dir` (objects are
/// read-only, and a folder of them must be emptied before it can go).
fn make_writable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).ok();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

/// Fsyncs a file's content.
pub fn sync_file(path: &Path) -> anyhow::Result<()> {
    at(
        std::fs::File::open(path).and_then(|f| f.sync_all()),
        "sync",
        path,
    )
}

/// Fsyncs a folder, so renames into it are durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    at(
        std::fs::File::open(dir).and_then(|f| f.sync_all()),
        "sync the folder",
        dir,
    )
}

/// A short token unique to this process and call (`<pid>-<n>`), for naming
/// staging files: [`temp_beside`].
pub fn temp_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The staging name `.p-<token>` that files restored under `token` are
/// written to before their rename. It is short and does not grow with the
/// target's name, so any name the file system accepted can be restored
/// through it (a name of 255 bytes has no room for a suffix).
pub fn temp_name(token: &str) -> String {
    format!(".p-{token}")
}

/// `path`'s sibling [`temp_name`]`(token)`: where a file for `path` is staged.
pub fn temp_beside(path: &Path, token: &str) -> PathBuf {
    path.with_file_name(temp_name(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_short_whatever_the_target() {
        let long = "界".repeat(85);
        let temp = temp_beside(&Path::new("dir").join(&long), &temp_token());
        assert_eq!(temp.parent(), Some(Path::new("dir")));
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".p-") && name.len() < 32, "{name}");
        assert_ne!(temp_token(), temp_token());
    }
}
