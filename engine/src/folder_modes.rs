//! The modes of an output's folders: read when a stage's outputs are committed, given back
//! when pipe restores them (a user's `0700` folder comes back `0700`, not `0755`).
//!
//! A mode is not content: a [`crate::hash::Tree`] lists names, kinds and hashes, so the same
//! files under other folder modes keep their hash and every key that depends on it. The modes
//! live beside the hash, in the stage record's [`crate::store::OutputEntry::folder_modes`],
//! and only those a new folder would not get: modes equal to `0777` less the umask of the run
//! are left out, so most records hold none, and a restore under another umask makes such
//! folders as that umask says, as files restored from the store do (see
//! `store::restored_mode`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::files;

/// The permission bits kept: read, write and search for each class, set-group-ID (a shared
/// group folder) and sticky. Set-user-ID means nothing on a folder.
const KEPT: u32 = 0o3777;

/// Folder modes by path relative to the output (`""`: the output folder itself; `a/b`).
pub type FolderModes = BTreeMap<String, u32>;

/// The modes of `root` and the folders under it that a folder made now would not get
/// (under `umask`). Links are not followed.
pub fn read(root: &Path, umask: u32) -> anyhow::Result<FolderModes> {
    let mut modes = FolderModes::new();
    collect(root, String::new(), 0o777 & !umask, &mut modes)?;
    Ok(modes)
}

fn collect(dir: &Path, rel: String, usual: u32, modes: &mut FolderModes) -> anyhow::Result<()> {
    let mode = files::metadata(dir)?.permissions().mode() & KEPT;
    for entry in files::read_dir(dir)? {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        // A name that is not UTF-8 cannot be in the output's tree (hashing refuses it).
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            let below = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            collect(&entry.path(), below, usual, modes)?;
        }
    }
    if mode != usual {
        modes.insert(rel, mode);
    }
    Ok(())
}

/// Gives the folders under `root` their recorded `modes`, deepest first (so that a folder
/// without write permission is set after everything inside it). A recorded path that is not
/// a folder reached without a link (a record from an older or another run) is passed over:
/// nothing is changed through a link.
pub fn apply(root: &Path, modes: &FolderModes) -> anyhow::Result<()> {
    for (rel, mode) in modes.iter().rev() {
        let is_real_folder = |depth: usize| {
            let prefix: Vec<&str> = rel.split('/').take(depth).collect();
            let path = root.join(prefix.join("/"));
            files::kind_of(&path).is_ok_and(|m| m.is_some_and(|m| m.is_dir()))
        };
        let depth = if rel.is_empty() {
            0
        } else {
            rel.split('/').count()
        };
        if (0..=depth).all(is_real_folder) {
            files::set_mode(&root.join(rel), mode & KEPT)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs_err::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn only_unusual_modes_are_read_and_they_come_back_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs_err::create_dir_all(out.join("private/locked")).unwrap();
        fs_err::create_dir_all(out.join("plain")).unwrap();
        for (rel, mode) in [("", 0o755), ("plain", 0o755), ("private", 0o700)] {
            files::set_mode(&out.join(rel), mode).unwrap();
        }
        files::set_mode(&out.join("private/locked"), 0o500).unwrap();
        let modes = read(&out, 0o022).unwrap();
        assert_eq!(
            modes,
            FolderModes::from([("private".into(), 0o700), ("private/locked".into(), 0o500)])
        );
        // Under umask 077, 0755 is the unusual one.
        let strict = read(&out, 0o077).unwrap();
        assert_eq!(strict.get(""), Some(&0o755));
        assert_eq!(strict.get("private"), None);

        let restored = dir.path().join("restored");
        fs_err::create_dir_all(restored.join("private/locked")).unwrap();
        fs_err::create_dir_all(restored.join("plain")).unwrap();
        apply(&restored, &modes).unwrap();
        assert_eq!(mode_of(&restored.join("private")), 0o700);
        assert_eq!(mode_of(&restored.join("private/locked")), 0o500);
        files::set_mode(&restored.join("private/locked"), 0o700).unwrap();
        files::set_mode(&out.join("private/locked"), 0o700).unwrap();
    }

    #[test]
    fn a_recorded_path_through_a_link_or_to_a_file_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs_err::create_dir_all(outside.join("inner")).unwrap();
        files::set_mode(&outside.join("inner"), 0o755).unwrap();
        let root = dir.path().join("root");
        fs_err::create_dir_all(&root).unwrap();
        files::symlink(outside.to_str().unwrap(), &root.join("link")).unwrap();
        fs_err::write(root.join("file"), "x").unwrap();
        files::set_mode(&root.join("file"), 0o644).unwrap();
        let modes = FolderModes::from([("link/inner".into(), 0o700), ("file".into(), 0o700)]);
        apply(&root, &modes).unwrap();
        assert_eq!(mode_of(&outside.join("inner")), 0o755);
        assert_eq!(mode_of(&root.join("file")), 0o644);
    }
}
