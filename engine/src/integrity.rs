//! Store objects that stay what their names say.
//!
//! `out/<pipeline>/<stage>/` holds hard links to objects, so a command that
//! opens `$PIPE_FROM/x` for writing (as root, or after a `chmod`) changes the
//! object itself, and a person can replace an object with other bytes of the
//! same size. Hashing every object before each use would cost a no-op rerun
//! a read of every model it restores, so each object is *sealed* instead:
//!
//! - When an object enters the store, its modification time keeps its
//!   seconds, and its nanoseconds are set to a tag drawn from its digest
//!   ([`tag`]: a multiple of 1,000 between 1,000 and 999,999,000, so file
//!   systems with microsecond times keep it).
//! - Writing to the object, through any of its links, sets its modification
//!   time to the current time; a file put in its place has a time of its own.
//!   Either way the tag is lost (one chance in a million that the new time
//!   carries it).
//! - Before an object is restored, reused by a commit (`--force`, identical
//!   outputs) or counted as present by a cache lookup, [`Store::check_object`]
//!   compares its size (when known) and tag: one `stat`. On a mismatch it
//!   hashes the object: the same content is sealed again (a store copied
//!   without its times, or made by an older pipe); other content is
//!   *damaged*.
//! - A damaged object is moved to `damaged/<hex>` (then `<hex>.1`, …) in the
//!   store, with a warning naming it, and counts as missing: the stage that
//!   made it runs again, or its objects come from the remote cache.
//!   `pipe gc --verify` hashes every object and does the same.
//!
//! On a file system that keeps only whole seconds the tag never survives, so
//! every check hashes: slower, never wrong.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::os::unix::fs::MetadataExt;

use crate::files;
use crate::hash::Digest;

/// What [`Store::check_object`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// The object holds what its name says.
    Intact,
    /// There is no object (or it is not a file).
    Missing,
    /// The object's content no longer matches its name; `moved_to` says where
    /// [`Repair::Fix`] put it (`None` when only looking, or when it could not be moved).
    Damaged {
        /// Where the object went.
        moved_to: Option<PathBuf>,
    },
}

impl ObjectState {
    /// Whether the object can be used.
    pub fn is_intact(&self) -> bool {
        *self == ObjectState::Intact
    }
}

/// The warning for damaged object `object`, set aside at `moved_to`.
pub fn damaged_warning(object: &Path, moved_to: Option<&Path>) -> String {
    match moved_to {
        Some(to) => format!(
            "the store object `{}` no longer holds what its name says (changed in place through \
             a link under `.pipe/out/`, or replaced): moved to `{}`; what needs it runs again \
             (or comes from the remote cache)",
            object.display(),
            to.display()
        ),
        None => format!(
            "the store object `{}` no longer holds what its name says and cannot be moved \
             aside; delete it (`rm -f {}`) and run again",
            object.display(),
            object.display()
        ),
    }
}

/// What a check may do about what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Only look (a dry run, `pipe status`).
    Look,
    /// Seal an intact object again, and move a damaged one aside.
    Fix,
}

/// The nanoseconds of a sealed object's modification time: from the digest,
/// a whole number of microseconds, never zero.
pub fn tag(digest: &Digest) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.0[..8]);
    ((u64::from_le_bytes(first) % 999_999 + 1) * 1_000) as u32
}

/// Seals the file at `path` as object `digest`: its modification time keeps
/// its seconds and takes the digest's [`tag`] as nanoseconds.
pub fn seal(path: &Path, digest: &Digest) -> anyhow::Result<()> {
    let meta = files::metadata(path)?;
    let seconds = u64::try_from(meta.mtime()).unwrap_or(0);
    let time = UNIX_EPOCH + Duration::new(seconds, tag(digest));
    let file = fs_err::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the store object `{}`: {e}", path.display()))?;
    file.set_modified(time)
        .map_err(|e| anyhow::anyhow!("cannot seal the store object `{}`: {e}", path.display()))
}

/// Whether `meta` is that of object `digest` as sealed, `size` bytes long
/// when a size is known.
fn looks_sealed(meta: &std::fs::Metadata, digest: &Digest, size: Option<u64>) -> bool {
    meta.is_file()
        && size.is_none_or(|s| s == meta.len())
        && u32::try_from(meta.mtime_nsec()).is_ok_and(|n| n == tag(digest))
}

/// Checks the object at `object`, named `digest` (`size` bytes, when known): one `stat`
/// when it is sealed as it was stored, a hash otherwise. With [`Repair::Fix`], an intact
/// object is sealed again and a damaged one moved into `damaged` (see [`set_aside`]),
/// after which it is missing.
pub fn check(
    object: &Path,
    digest: &Digest,
    size: Option<u64>,
    repair: Repair,
    damaged: &Path,
) -> ObjectState {
    let Ok(meta) = fs_err::symlink_metadata(object) else {
        return ObjectState::Missing;
    };
    if !meta.is_file() {
        return ObjectState::Missing;
    }
    if looks_sealed(&meta, digest, size) {
        return ObjectState::Intact;
    }
    let intact = crate::hash::hash_file(object).is_ok_and(|h| h == *digest);
    match (intact, repair) {
        (true, Repair::Fix) => {
            // Sealing is an optimisation: an object that cannot be sealed is hashed next time.
            let _ = seal(object, digest);
            ObjectState::Intact
        }
        (true, Repair::Look) => ObjectState::Intact,
        (false, Repair::Look) => ObjectState::Damaged { moved_to: None },
        (false, Repair::Fix) => ObjectState::Damaged {
            moved_to: set_aside(object, digest, damaged).ok(),
        },
    }
}

/// Moves the object at `object`, named `digest`, to `<damaged>/<hex>` (or `<hex>.1`,
/// `<hex>.2`, … when taken), dated now, so `pipe gc` keeps it for its grace period.
/// Returns where it went.
pub fn set_aside(object: &Path, digest: &Digest, damaged: &Path) -> anyhow::Result<PathBuf> {
    files::create_dir_all(damaged)?;
    let hex = digest.to_string();
    let mut to = damaged.join(&hex);
    let mut n = 0;
    while fs_err::symlink_metadata(&to).is_ok() {
        n += 1;
        to = damaged.join(format!("{hex}.{n}"));
    }
    files::rename(object, &to)?;
    if let Ok(file) = fs_err::File::open(&to) {
        let _ = file.set_modified(SystemTime::now());
    }
    if let Some(parent) = object.parent() {
        files::sync_dir(parent)?;
    }
    Ok(to)
}

/// Whether `name` (an entry of `damaged/`) is one [`Store::set_aside`] makes.
pub fn is_damaged_name(name: &str) -> bool {
    let (hex, n) = match name.split_once('.') {
        Some((hex, n)) => (hex, Some(n)),
        None => (name, None),
    };
    hex.parse::<Digest>().is_ok()
        && n.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What `pipe gc --verify` found: every object hashed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Objects hashed.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// The damaged objects: where each was, and where it went.
    pub damaged: Vec<DamagedObject>,
}

/// A damaged object found by [`verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedObject {
    /// Its path under `objects/`.
    pub object: PathBuf,
    /// Where it was moved (`None` in a dry run, or when it could not be moved).
    pub moved_to: Option<PathBuf>,
}

/// Hashes every object under `objects` (the store's `objects/`; entries named as pipe
/// names them), seals the intact ones again and, unless `dry_run`, moves the damaged ones
/// into `damaged`. Call with the store's lock held.
pub fn verify(objects: &Path, damaged: &Path, dry_run: bool) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let repair = if dry_run { Repair::Look } else { Repair::Fix };
    for shard in files::read_dir(objects)? {
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str().filter(|n| n.len() == 2) else {
            continue;
        };
        if !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in files::read_dir(&shard.path())? {
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|rest| format!("{shard_name}{rest}").parse::<Digest>().ok())
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            report.checked += 1;
            report.bytes += meta.len();
            let object = entry.path();
            // Hashed whatever its seal says: this is the check that trusts no time.
            let intact = crate::hash::hash_file(&object).is_ok_and(|h| h == digest);
            if intact {
                if !dry_run {
                    let _ = seal(&object, &digest);
                }
                continue;
            }
            let moved_to = match repair {
                Repair::Fix => Some(set_aside(&object, &digest, damaged)?),
                Repair::Look => None,
            };
            report.damaged.push(DamagedObject { object, moved_to });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_whole_microseconds_and_never_zero() {
        for bytes in [b"a".as_slice(), b"b", b"", b"model"] {
            let t = tag(&Digest::of(bytes));
            assert!(t > 0 && t < 1_000_000_000 && t.is_multiple_of(1_000), "{t}");
        }
    }

    #[test]
    fn damaged_names_are_recognised_exactly() {
        let digest = Digest::of(b"x");
        assert!(is_damaged_name(&digest.to_string()));
        assert!(is_damaged_name(&format!("{digest}.3")));
        assert!(!is_damaged_name("notes.txt") && !is_damaged_name(&format!("{digest}.")));
    }
}
