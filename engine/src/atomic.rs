//! Writing files so that readers see the old content or the new, never half.
//!
//! The content goes to a temporary file in the same folder, which is then
//! renamed over the target. A replaced file keeps its permission bits; a new
//! one (or one that replaces a symlink, whose target is left alone) gets what the user's umask leaves of `rw-rw-rw-`, as any other program's
//! file would (a bare temporary file would be private to its owner).

use std::fs::Permissions;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use tempfile::NamedTempFile;

use crate::files;

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename. With `durable`, the file and its folder are fsynced, so the new
/// content survives a power loss once this returns.
pub fn write(path: &Path, bytes: &[u8], durable: bool) -> anyhow::Result<()> {
    let (dir, tmp) = filled_temp_beside(path, bytes, durable)?;
    // A symlink at `path` is replaced, never followed: its target is not read or written.
    if let Ok(existing) = fs_err::symlink_metadata(path)
        && existing.is_file()
    {
        tmp.as_file()
            .set_permissions(existing.permissions())
            .with_context(|| format!("cannot set the permissions of `{}`", path.display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot replace `{}`", path.display()))?;
    if durable {
        files::sync_dir(dir)?;
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path`, durably, as [`write`] does; fails
/// with an [`io::ErrorKind::AlreadyExists`] error (and writes nothing) when
/// `path` already exists.
pub fn create_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (dir, tmp) = filled_temp_beside(path, bytes, true)?;
    tmp.persist_noclobber(path).map_err(|e| {
        let kind = e.error.kind();
        anyhow::Error::new(e.error).context(if kind == io::ErrorKind::AlreadyExists {
            format!("`{}` already exists", path.display())
        } else {
            format!("cannot write `{}`", path.display())
        })
    })?;
    files::sync_dir(dir)
}

/// A temporary file holding `bytes` in the folder `path` will live in (which
/// is created if missing), with the permissions a new file gets.
fn filled_temp_beside<'a>(
    path: &'a Path,
    bytes: &[u8],
    durable: bool,
) -> anyhow::Result<(&'a Path, NamedTempFile)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    files::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        // The mode passed to open(2) is filtered by the umask.
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    if durable {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("cannot sync `{}`", path.display()))?;
    }
    Ok((dir, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs_err::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_readable_by_others_and_a_replaced_one_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe.lock");
        write(&path, b"one", false).unwrap();
        let plain = dir.path().join("plain");
        fs_err::File::create(&plain).unwrap();
        assert_eq!(
            mode(&path),
            mode(&plain),
            "the mode any program's new file gets"
        );

        fs_err::set_permissions(&path, Permissions::from_mode(0o604)).unwrap();
        write(&path, b"two", true).unwrap();
        assert_eq!(mode(&path), 0o604);
        assert_eq!(fs_err::read(&path).unwrap(), b"two");
    }

    #[test]
    fn create_new_refuses_an_existing_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe.yaml");
        create_new(&path, b"first").unwrap();
        let err = create_new(&path, b"second").unwrap_err();
        let io = err.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::AlreadyExists);
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert_eq!(fs_err::read(&path).unwrap(), b"first");
        let leftovers: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "the temporary file is gone");
    }

    #[test]
    fn a_symlink_in_the_way_is_replaced_and_its_target_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("users-notes.txt");
        fs_err::write(&target, "the user's bytes").unwrap();
        fs_err::set_permissions(&target, Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("pipe.lock");
        fs_err::os::unix::fs::symlink(&target, &path).unwrap();

        write(&path, b"lock", true).unwrap();

        assert_eq!(fs_err::read(&target).unwrap(), b"the user's bytes");
        assert_eq!(mode(&target), 0o600);
        assert!(fs_err::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(fs_err::read(&path).unwrap(), b"lock");
        let plain = dir.path().join("plain");
        fs_err::File::create(&plain).unwrap();
        assert_eq!(
            mode(&path),
            mode(&plain),
            "a new file's mode, not the target's"
        );
    }
}
