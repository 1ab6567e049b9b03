//! Workspace paths: normalised, and kept inside the manifest's folder.

use std::path::{Component, Path};

/// Normalises a workspace path written in a manifest: resolves `.` and `..`
/// lexically, uses `/` separators, and refuses paths that leave `workspace`
/// (absolute paths, `..` above it, or a symlink pointing out of it) unless
/// `allow_outside` is set. Returns the path relative to `workspace` (or the
/// absolute path, for an allowed outside path).
pub fn normalize(workspace: &Path, written: &str, allow_outside: bool) -> Result<String, String> {
    let path = Path::new(written);
    if path.is_absolute() {
        if allow_outside {
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
                    if allow_outside {
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
    if !allow_outside {
        check_symlinks(workspace, &relative)?;
    }
    Ok(relative)
}

/// Refuses a path whose existing part resolves, through symlinks, outside
/// `workspace`. Only the components that are links are resolved, so a path
/// without links costs one `lstat` per component.
fn check_symlinks(workspace: &Path, relative: &str) -> Result<(), String> {
    let mut prefix = workspace.to_path_buf();
    for part in relative.split('/') {
        prefix.push(part);
        match std::fs::symlink_metadata(&prefix) {
            Ok(meta) if meta.is_symlink() => {
                let Ok(root) = workspace.canonicalize() else {
                    return Ok(());
                };
                match prefix.canonicalize() {
                    Ok(real) if !real.starts_with(&root) => {
                        return Err(format!(
                            "path `{relative}` resolves through a symlink to `{}`, outside the workspace",
                            real.display()
                        ));
                    }
                    // A dangling link leads nowhere yet; pipe never writes through links.
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
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
        let ws = dir.path();
        assert_eq!(
            normalize(ws, "./data/../data/x.csv", false).unwrap(),
            "data/x.csv"
        );
        assert!(normalize(ws, "../x", false).unwrap_err().contains("leaves"));
        assert!(
            normalize(ws, "/etc/passwd", false)
                .unwrap_err()
                .contains("absolute")
        );
        assert_eq!(normalize(ws, "../x", true).unwrap(), "../x");
        assert!(normalize(ws, ".", false).is_err());
    }

    #[test]
    fn refuses_symlinks_out() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = normalize(dir.path(), "link/file.txt", false).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn within() {
        assert!(is_within("data/x.csv", "data"));
        assert!(is_within("data", "data"));
        assert!(!is_within("database", "data"));
    }
}
