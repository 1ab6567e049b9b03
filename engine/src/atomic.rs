//! Writing files so that readers see the old content or the new, never half.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::files;

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename. With `durable`, the file and its folder are fsynced, so the new
/// content survives a power loss once this returns.
pub fn write(path: &Path, bytes: &[u8], durable: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    files::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    if durable {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("cannot sync `{}`", path.display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot replace `{}`", path.display()))?;
    if durable {
        files::sync_dir(dir)?;
    }
    Ok(())
}
