//! Content hashes of files and folders.
//!
//! A file's hash is BLAKE3 of its bytes. A folder's hash is BLAKE3 of its
//! [`Tree`]: the sorted list of (name, kind, hash) of its entries, encoded as
//! canonical JSON, so it is a Merkle hash that does not depend on the order
//! the filesystem lists entries in. Large files are hashed memory-mapped on
//! all cores (BLAKE3's tree mode), which runs near memory bandwidth.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{atomic, files};

/// Files at least this large are hashed memory-mapped, in parallel.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// A mapped file is hashed this many bytes at a time, each window's pages handed back to the
/// kernel once hashed: hashing a 10 GB model folder then holds one window, not the file. (A
/// whole-file map kept every page it read in the process's resident set: a stage writing a
/// 1.5 GB output took `pipe run` to a 1.49 GB peak, 282 MB with windows.)
const MAP_WINDOW: usize = 256 << 20;

/// A BLAKE3 digest, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad digest `{s}`: expected 64 hex digits");
        let text = s.as_bytes();
        if text.len() != 64 {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(bytes))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Parses the hex text in place: lockfiles and stat caches hold
        /// tens of thousands of digests, so no `String` per digest.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a BLAKE3 digest as 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Digest, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

/// What an entry of a [`Tree`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file (`hash` is its content hash).
    File,
    /// An executable regular file.
    Executable,
    /// A folder (`hash` is its tree's hash).
    Dir,
    /// A symbolic link (`hash` is the hash of its target text, which the
    /// store keeps as an object). Never followed when hashing, storing or
    /// restoring outputs.
    Symlink,
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// File or folder name (one path component).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its hash.
    pub hash: Digest,
    /// Size in bytes (files: their length; folders: the sum of their files).
    pub size: u64,
}

/// A folder's listing, sorted by name; its canonical JSON is what a folder hash hashes.
/// Folder modes are not in it (they are not content): the stage record keeps them, see
/// `crate::folder_modes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name.
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    /// The canonical bytes of the tree (stored as an object in the store).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tree always serializes")
    }

    /// The tree's hash.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Total size of the files under this tree.
    pub fn size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// A hashed file or folder. Folders carry their sub-trees.
#[derive(Debug, Clone)]
pub enum Hashed {
    /// A file.
    File {
        /// Content hash.
        hash: Digest,
        /// Length.
        size: u64,
        /// Executable bit set.
        executable: bool,
    },
    /// A symbolic link, by its target text.
    Symlink {
        /// The target text.
        target: String,
    },
    /// A folder, with every sub-folder's tree (by hash) so a store can keep them.
    Dir {
        /// This folder's tree.
        tree: Tree,
        /// Trees of all sub-folders, including this one.
        trees: Vec<Tree>,
    },
}

impl Hashed {
    /// The file's or folder's hash.
    pub fn digest(&self) -> Digest {
        match self {
            Hashed::File { hash, .. } => *hash,
            Hashed::Symlink { target } => Digest::of(target.as_bytes()),
            Hashed::Dir { tree, .. } => tree.digest(),
        }
    }

    /// Bytes of file content (a link: the length of its target text).
    pub fn size(&self) -> u64 {
        match self {
            Hashed::File { size, .. } => *size,
            Hashed::Symlink { target } => target.len() as u64,
            Hashed::Dir { tree, .. } => tree.size(),
        }
    }

    /// The tree entry for this value under `name`.
    pub fn entry(&self, name: &str) -> TreeEntry {
        let kind = match self {
            Hashed::File {
                executable: true, ..
            } => EntryKind::Executable,
            Hashed::File { .. } => EntryKind::File,
            Hashed::Symlink { .. } => EntryKind::Symlink,
            Hashed::Dir { .. } => EntryKind::Dir,
        };
        TreeEntry {
            name: name.to_string(),
            kind,
            hash: self.digest(),
            size: self.size(),
        }
    }
}

/// BLAKE3 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    hash_contents(path, fs_err::metadata(path)?.len())
}

/// BLAKE3 of the content of the file at `path`, `len` bytes long.
fn hash_contents(path: &Path, len: u64) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    if len >= MMAP_THRESHOLD {
        hash_mapped(path, MAP_WINDOW, &mut hasher)?;
    } else {
        hasher.update_reader(fs_err::File::open(path)?)?;
    }
    Ok(Digest(*hasher.finalize().as_bytes()))
}

/// Feeds the file at `path` to `hasher` through a memory map, `window` bytes at a time on all
/// cores, releasing each window's pages from this process once hashed.
fn hash_mapped(path: &Path, window: usize, hasher: &mut blake3::Hasher) -> io::Result<()> {
    let file = fs_err::File::open(path)?;
    // SAFETY: a read-only map of a file; as with any map, a file truncated by another
    // process while it is hashed can fault (blake3's own `update_mmap` has the same rule).
    let map = unsafe { memmap2::Mmap::map(file.file())? };
    for (i, bytes) in map.chunks(window.max(1)).enumerate() {
        hasher.update_rayon(bytes);
        // SAFETY: a shared read-only file map; MADV_DONTNEED only drops the pages from this
        // process (they stay in the page cache) and nothing borrows this range any more.
        // Failing to drop them costs memory, not correctness.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                i * window.max(1),
                bytes.len(),
            )
        };
    }
    Ok(())
}

/// What hashing does with a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Hash what the link points to (inputs: a dep may be a link to a file).
    Follow,
    /// Hash the link itself, by its target text (outputs: a link is stored
    /// and restored as a link, and nothing is read through it).
    Keep,
}

/// Hashes an output file or folder (folders recursively, as a Merkle tree)
/// without following any symlink.
pub fn hash_path(path: &Path) -> anyhow::Result<Hashed> {
    hash_path_with(path, Links::Keep, &|p, meta| hash_contents(p, meta.len()))
}

/// [`hash_path`] with a choice for links and a custom file hasher (e.g. one
/// backed by a [`StatCache`]), which gets the file's metadata as well.
pub fn hash_path_with(
    path: &Path,
    links: Links,
    file_hash: &dyn Fn(&Path, &std::fs::Metadata) -> io::Result<Digest>,
) -> anyhow::Result<Hashed> {
    let meta = match links {
        Links::Follow => fs_err::metadata(path),
        Links::Keep => fs_err::symlink_metadata(path),
    }
    .with_context(|| format!("cannot read `{}`", path.display()))?;
    if meta.is_symlink() {
        return Ok(Hashed::Symlink {
            target: files::read_link(path)?,
        });
    }
    if meta.is_dir() {
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for entry in files::read_dir(path)? {
            let name = entry.file_name().into_string().map_err(|n| {
                anyhow::anyhow!(
                    "file name {n:?} in `{}` is not UTF-8; rename it",
                    path.display()
                )
            })?;
            names.push((name, entry.path()));
        }
        let mut entries = Vec::with_capacity(names.len());
        let mut trees = Vec::new();
        for (name, child) in names {
            let hashed = hash_path_with(&child, links, file_hash)?;
            entries.push(hashed.entry(&name));
            if let Hashed::Dir { trees: sub, .. } = hashed {
                trees.extend(sub);
            }
        }
        let tree = Tree { entries };
        trees.push(tree.clone());
        Ok(Hashed::Dir { tree, trees })
    } else if meta.is_file() {
        let hash =
            file_hash(path, &meta).with_context(|| format!("cannot read `{}`", path.display()))?;
        Ok(Hashed::File {
            hash,
            size: meta.len(),
            executable: meta.permissions().mode() & 0o111 != 0,
        })
    } else {
        anyhow::bail!(
            "`{}` is not a file, folder or symlink (a socket, pipe or device); remove it",
            path.display()
        )
    }
}

/// What a stat cache remembers of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    /// Caches written before ctime was kept read as 0, which matches no file.
    #[serde(default)]
    ctime_ns: i128,
    inode: u64,
    hash: Digest,
}

/// Remembers the hash of workspace files by (path, size, mtime, ctime, inode),
/// so an unchanged 1 GB source file is not read again. Saved in the store as
/// JSON. The ctime, which only the kernel sets, catches content rewritten in
/// place with its old size and mtime put back (`cp -p`, `rsync -t`, `touch -r`).
///
/// A file modified within the same timestamp tick as it was hashed could be
/// missed; to avoid that, files whose mtime is less than two seconds old are
/// never cached (the same "racily clean" rule git uses).
#[derive(Debug, Default)]
pub struct StatCache {
    entries: Mutex<HashMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
    /// The current folder, read once: relative paths are keyed by their absolute form.
    cwd: PathBuf,
}

impl StatCache {
    /// Loads the cache from `path`; a missing or unreadable cache starts empty.
    pub fn load(path: &Path) -> StatCache {
        let entries = fs_err::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        StatCache {
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
            cwd: std::env::current_dir().unwrap_or_default(),
        }
    }

    /// Writes the cache to `path` (atomically) if it changed.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut dirty = self.dirty.lock().expect("stat cache lock poisoned");
        if !*dirty {
            return Ok(());
        }
        let entries = self.entries.lock().expect("stat cache lock poisoned");
        atomic::write(path, &serde_json::to_vec(&*entries)?, false)?;
        *dirty = false;
        Ok(())
    }

    /// The hash of the file at `path`, from the cache when its stat is unchanged.
    pub fn hash_file(&self, path: &Path) -> io::Result<Digest> {
        self.hash_known(path, &fs_err::metadata(path)?)
    }

    /// [`StatCache::hash_file`] for a file whose metadata was just read.
    fn hash_known(&self, path: &Path, meta: &std::fs::Metadata) -> io::Result<Digest> {
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        let ctime_ns = meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128;
        // `cwd.join` keeps an absolute `path` as it is; collecting the
        // components drops `.` ones, as `std::path::absolute` would, without
        // asking the OS for the current folder on every file.
        let key: PathBuf = self.cwd.join(path).components().collect();
        {
            let entries = self.entries.lock().expect("stat cache lock poisoned");
            if let Some(e) = entries.get(&key)
                && e.size == meta.len()
                && e.mtime_ns == mtime_ns
                && e.ctime_ns == ctime_ns
                && e.inode == meta.ino()
            {
                return Ok(e.hash);
            }
        }
        let hash = hash_contents(path, meta.len())?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if now_ns - mtime_ns.max(ctime_ns) > 2_000_000_000 {
            let entry = StatEntry {
                size: meta.len(),
                mtime_ns,
                ctime_ns,
                inode: meta.ino(),
                hash,
            };
            self.entries
                .lock()
                .expect("stat cache lock poisoned")
                .insert(key, entry);
            *self.dirty.lock().expect("stat cache lock poisoned") = true;
        }
        Ok(hash)
    }

    /// Hashes an input file or folder through the cache, following symlinks.
    pub fn hash_dep(&self, path: &Path) -> anyhow::Result<Hashed> {
        hash_path_with(path, Links::Follow, &|p, meta| self.hash_known(p, meta))
    }

    /// Hashes an output file or folder through the cache, keeping symlinks as links.
    pub fn hash_out(&self, path: &Path) -> anyhow::Result<Hashed> {
        hash_path_with(path, Links::Keep, &|p, meta| self.hash_known(p, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_hashed_a_window_at_a_time_has_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        // 1.5 MiB of varied bytes: past the map threshold, 24 windows of 64 KiB.
        let bytes: Vec<u8> = (0..3u32 << 19)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs_err::write(&path, &bytes).unwrap();
        let mut windowed = blake3::Hasher::new();
        hash_mapped(&path, 64 << 10, &mut windowed).unwrap();
        assert_eq!(Digest(*windowed.finalize().as_bytes()), Digest::of(&bytes));
        assert_eq!(hash_file(&path).unwrap(), Digest::of(&bytes));
        // Hashing only reads: the file's bytes are as they were written.
        assert_eq!(fs_err::read(&path).unwrap(), bytes);
    }

    #[test]
    fn known_digest() {
        // BLAKE3 of the empty input, from the BLAKE3 test vectors.
        assert_eq!(
            Digest::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn digests_read_back_from_their_hex_and_refuse_anything_else() {
        let digest = Digest::of(b"pipe");
        let hex = digest.to_string();
        assert_eq!(hex.parse::<Digest>().unwrap(), digest);
        assert_eq!(hex.to_uppercase().parse::<Digest>().unwrap(), digest);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        for bad in [
            &hex[..63],
            &format!("{hex}0"),
            &format!("g{}", &hex[1..]),
            "",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Digest>("17").is_err());
    }

    #[test]
    fn folder_hash_depends_on_content_and_names_not_creation_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs_err::create_dir(a.path().join("sub")).unwrap();
        fs_err::write(a.path().join("sub/x"), "1").unwrap();
        fs_err::write(a.path().join("y"), "2").unwrap();
        fs_err::write(b.path().join("y"), "2").unwrap();
        fs_err::create_dir(b.path().join("sub")).unwrap();
        fs_err::write(b.path().join("sub/x"), "1").unwrap();
        let ha = hash_path(a.path()).unwrap().digest();
        assert_eq!(ha, hash_path(b.path()).unwrap().digest());
        fs_err::write(b.path().join("sub/x"), "3").unwrap();
        assert_ne!(ha, hash_path(b.path()).unwrap().digest());
        fs_err::rename(b.path().join("sub/x"), b.path().join("sub/z")).unwrap();
        fs_err::write(b.path().join("sub/z"), "1").unwrap();
        assert_ne!(ha, hash_path(b.path()).unwrap().digest());
    }

    #[test]
    fn large_files_hash_the_same_as_small_path() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs_err::write(dir.path().join("big"), &data).unwrap();
        assert_eq!(
            hash_file(&dir.path().join("big")).unwrap(),
            Digest::of(&data)
        );
    }

    #[test]
    fn stat_cache_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs_err::write(&file, "one").unwrap();
        let cache = StatCache::default();
        assert_eq!(cache.hash_file(&file).unwrap(), Digest::of(b"one"));
        fs_err::write(&file, "two!").unwrap();
        assert_eq!(cache.hash_file(&file).unwrap(), Digest::of(b"two!"));
    }

    #[test]
    fn stat_cache_sees_content_rewritten_in_place_with_its_old_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let write_back_dated = |text: &str| {
            let mut f = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&file)
                .unwrap();
            std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
            f.set_modified(an_hour_ago).unwrap();
        };
        write_back_dated("one1");
        // Past the racily-clean window, so the entry is kept.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let cache = StatCache::default();
        assert_eq!(cache.hash_file(&file).unwrap(), Digest::of(b"one1"));
        assert_eq!(cache.entries.lock().unwrap().len(), 1);

        let inode = fs_err::metadata(&file).unwrap().ino();
        write_back_dated("two2");
        let meta = fs_err::metadata(&file).unwrap();
        assert_eq!((meta.ino(), meta.len()), (inode, 4));
        assert_eq!(cache.hash_file(&file).unwrap(), Digest::of(b"two2"));
    }
}
