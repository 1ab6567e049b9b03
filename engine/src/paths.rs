//! Workspace paths: normalised, and kept inside the manifest's folder.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Normalises workspace paths written in a manifest and finds what they
/// really name on disk.
///
/// [`Resolver::normalize`] resolves `.` and `..` lexically, uses `/`
/// separators, and refuses paths that leave the workspace (absolute paths,
/// `..` above it, or a symlink pointing out of it) unless outside paths are
/// allowed. [`Resolver::real`] then says which workspace path a normalised
/// path reaches through the symlinks that exist now, so two spellings of one
/// file (`data/x` and `link/x` with `link -> data`) are seen as one.
///
/// Each folder prefix is looked at once per resolver (one `lstat`), so
/// resolving the 10,000 paths of a large pipeline that share a few folders
/// costs about one `lstat` per path.
#[derive(Debug)]
pub struct Resolver<'w> {
    workspace: &'w Path,
    allow_outside: bool,
    /// The workspace's canonical path, once a symlink needs it.
    root: OnceCell<Option<PathBuf>>,
    /// The real workspace path of each lexical prefix looked at so far.
    prefixes: RefCell<HashMap<String, Real>>,
}

/// Where a lexical workspace path really is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Real {
    /// It exists, or its parent does not, at this workspace path.
    At(String),
    /// A symlink on the way leads out of the workspace (to this absolute path).
    Outside(PathBuf),
}

impl<'w> Resolver<'w> {
    /// A resolver for paths inside `workspace`; `allow_outside` accepts
    /// absolute paths and paths above the workspace as written.
    pub fn new(workspace: &'w Path, allow_outside: bool) -> Resolver<'w> {
        Resolver {
            workspace,
            allow_outside,
            root: OnceCell::new(),
            prefixes: RefCell::new(HashMap::new()),
        }
    }

    /// The normalised form of `written`, relative to the workspace (or as
    /// written, for an allowed outside path); see [`Resolver`].
    pub fn normalize(&self, written: &str) -> Result<String, String> {
        if written.contains('\0') {
            // No file system accepts it; found here, not when a run gets to it.
            return Err(format!(
                "path {written:?} contains a NUL character, which no file name can hold"
            ));
        }
        let path = Path::new(written);
        if path.is_absolute() {
            if self.allow_outside {
                return Ok(written.to_string());
            }
            return Err(format!(
                "absolute path `{written}` is outside the workspace"
            ));
        }
        let mut parts: Vec<String> = Vec::new();
        for component in path.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        if self.allow_outside {
                            return Ok(written.to_string());
                        }
                        return Err(format!("path `{written}` leaves the manifest's folder"));
                    }
                }
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("path `{written}` is not a relative path"));
                }
            }
        }
        if parts.is_empty() {
            return Err(format!(
                "path `{written}` names the manifest's folder itself"
            ));
        }
        let relative = parts.join("/");
        if !self.allow_outside
            && let Real::Outside(real) = self.resolve(&relative)
        {
            return Err(format!(
                "path `{relative}` resolves through a symlink to `{}`, outside the workspace",
                real.display()
            ));
        }
        Ok(relative)
    }

    /// The workspace path that normalised path `relative` reaches. With
    /// `follow_last` the last component is followed too when it is a link
    /// (what reading a dep does); without, only the folders above it are
    /// (what writing an out does: pipe replaces a link, it never writes
    /// through one). An outside path, or one that a link leads out of the
    /// workspace, is returned as it is.
    pub fn real(&self, relative: &str, follow_last: bool) -> String {
        if Path::new(relative).is_absolute() || relative.split('/').next() == Some("..") {
            return relative.to_string();
        }
        let resolved = match relative.rsplit_once('/') {
            _ if follow_last => self.resolve(relative),
            Some((parent, last)) => match self.resolve(parent) {
                Real::At(parent) => Real::At(format!("{parent}/{last}")),
                outside => outside,
            },
            None => Real::At(relative.to_string()),
        };
        match resolved {
            Real::At(real) => real,
            Real::Outside(_) => relative.to_string(),
        }
    }

    /// Resolves a normalised relative path, one memoised prefix at a time.
    fn resolve(&self, relative: &str) -> Real {
        if let Some(known) = self.prefixes.borrow().get(relative) {
            return known.clone();
        }
        let (parent, last) = match relative.rsplit_once('/') {
            Some((parent, last)) => (self.resolve(parent), last),
            None => (Real::At(String::new()), relative),
        };
        let real = match parent {
            Real::Outside(path) => Real::Outside(path.join(last)),
            Real::At(parent) => {
                let lexical = if parent.is_empty() {
                    last.to_string()
                } else {
                    format!("{parent}/{last}")
                };
                self.follow(lexical)
            }
        };
        self.prefixes
            .borrow_mut()
            .insert(relative.to_string(), real.clone());
        real
    }

    /// Where workspace path `lexical` (whose parent is a real folder, or
    /// missing) leads when its last component is a symlink.
    fn follow(&self, lexical: String) -> Real {
        let path = self.workspace.join(&lexical);
        match fs_err::symlink_metadata(&path) {
            Ok(meta) if meta.is_symlink() => {
                let root = self.root.get_or_init(|| self.workspace.canonicalize().ok());
                match (root, path.canonicalize()) {
                    (Some(root), Ok(real)) => match real.strip_prefix(root) {
                        Ok(inside) => match inside.to_str() {
                            Some(inside) if !inside.is_empty() => Real::At(inside.to_string()),
                            _ => Real::At(lexical),
                        },
                        Err(_) => Real::Outside(real),
                    },
                    // A dangling link leads nowhere yet; pipe never writes through links.
                    _ => Real::At(lexical),
                }
            }
            _ => Real::At(lexical),
        }
    }
}

/// Whether workspace path `inner` is `outer` or lies inside it.
pub fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_confines() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Resolver::new(dir.path(), false);
        assert_eq!(
            inside.normalize("./data/../data/x.csv").unwrap(),
            "data/x.csv"
        );
        assert!(inside.normalize("../x").unwrap_err().contains("leaves"));
        assert!(
            inside
                .normalize("/etc/passwd")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(inside.normalize(".").is_err());
        assert!(inside.normalize("out\0.txt").unwrap_err().contains("NUL"));
        let outside = Resolver::new(dir.path(), true);
        assert_eq!(outside.normalize("../x").unwrap(), "../x");
    }

    #[test]
    fn refuses_symlinks_out() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs_err::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = Resolver::new(dir.path(), false)
            .normalize("link/file.txt")
            .unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn real_paths_see_through_links_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        fs_err::create_dir_all(ws.join("build/sub")).unwrap();
        fs_err::write(ws.join("a.txt"), "a").unwrap();
        fs_err::os::unix::fs::symlink("build", ws.join("alias")).unwrap();
        fs_err::os::unix::fs::symlink("a.txt", ws.join("link.txt")).unwrap();
        let resolver = Resolver::new(ws, false);
        assert_eq!(resolver.real("alias/sub/x", true), "build/sub/x");
        assert_eq!(resolver.real("alias/sub/x", false), "build/sub/x");
        assert_eq!(resolver.real("alias", true), "build");
        // A link as the last component: followed by a reader, kept by a writer.
        assert_eq!(resolver.real("link.txt", true), "a.txt");
        assert_eq!(resolver.real("link.txt", false), "link.txt");
        assert_eq!(resolver.real("missing/x", true), "missing/x");
        assert_eq!(resolver.real("../up", true), "../up");
    }

    #[test]
    fn within() {
        assert!(is_within("data/x.csv", "data"));
        assert!(is_within("data", "data"));
        assert!(!is_within("database", "data"));
    }
}
