//! Moving one object or record between the local store and the remote.
//!
//! Remote layout under the URL's prefix, both content-addressed and never
//! rewritten with other content:
//!
//! ```text
//! <prefix>/objects/ab/cdef…     a store object (file content or folder tree), by BLAKE3 hash
//! <prefix>/stages/<key>.json    the record of a completed stage key
//! ```
//!
//! Objects larger than [`CHUNK`] go up as multipart uploads and come down as
//! ranged reads, [`PARALLEL`] chunks at a time; every download is written to a
//! temporary file under the store's `tmp/`, checked against its hash, and
//! only then moved into the store.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use pipe_engine::Digest;
use pipe_engine::hash::{EntryKind, Hashed, hash_file};
use pipe_engine::remote_cache::RemoteUnavailable;
use pipe_engine::store::{Import, Store};

/// Objects up to this size move in one request; larger ones in chunks of it.
pub(crate) const CHUNK: u64 = 8 << 20;

/// Requests in flight at once.
pub(crate) const PARALLEL: usize = 8;

/// The remote end: an object store and the prefix pipe owns in it.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// `<prefix>` of the layout.
    pub prefix: Path,
    /// The URL, for messages.
    pub url: String,
    /// Whether the remote is a folder (`file://`), where a multipart upload is staged in a
    /// file `<object>#<n>` beside its object.
    pub local: bool,
}

/// A staging file of a folder remote untouched this long belongs to an upload that was
/// killed: a running upload writes to it at least once per chunk.
pub(crate) const ABANDONED_STAGING: std::time::Duration = std::time::Duration::from_secs(600);

impl Bucket {
    /// Where object `digest` lives in the remote.
    pub fn object(&self, digest: &Digest) -> Path {
        let hex = digest.to_string();
        self.prefix
            .clone()
            .join("objects")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    /// Where the record of stage key `key` lives in the remote.
    pub fn record(&self, key: &Digest) -> Path {
        self.prefix
            .clone()
            .join("stages")
            .join(format!("{key}.json"))
    }

    /// The size of the object at `path`, or `None` when the remote has none.
    pub async fn size(&self, path: &Path) -> anyhow::Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The bytes at `path`, or `None` when the remote has none.
    pub async fn get(&self, path: &Path) -> anyhow::Result<Option<Bytes>> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        result
            .bytes()
            .await
            .map(Some)
            .map_err(|e| self.unavailable(e))
    }

    /// Writes `bytes` at `path`.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Uploads local object `digest` of `size` bytes, reporting bytes on `bar`.
    pub async fn upload(
        &self,
        local: &Store,
        digest: &Digest,
        size: u64,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        local.verify_object(digest)?;
        let source = local.object_path(digest);
        let file = fs_err::File::open(&source)
            .with_context(|| format!("cannot read the store object `{}`", source.display()))?
            .into_file();
        let path = self.object(digest);
        if size <= CHUNK {
            let bytes = read_chunk(&file, 0, size, &source)?;
            self.put(&path, bytes).await?;
            bar.inc(size);
            return Ok(());
        }
        self.remove_abandoned_staging(&path);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK as usize);
        let mut offset = 0;
        while offset < size {
            let len = CHUNK.min(size - offset);
            let sent = match writer.wait_for_capacity(PARALLEL / 2).await {
                Ok(()) => read_chunk(&file, offset, len, &source),
                Err(e) => Err(self.unavailable(e)),
            };
            match sent {
                Ok(bytes) => writer.put(bytes),
                Err(e) => {
                    // Best effort: the server drops the parts of an aborted upload.
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
            offset += len;
            bar.inc(len);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// In a folder remote, removes the staging files `<object>#<digits>` of `object` that no
    /// upload has written to for [`ABANDONED_STAGING`]: what a push killed midway left (the
    /// object itself is missing, or it would not be uploaded again). Best effort.
    fn remove_abandoned_staging(&self, object: &Path) {
        if !self.local {
            return;
        }
        let file = std::path::PathBuf::from(format!("/{object}"));
        let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            return;
        };
        let Ok(entries) = fs_err::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let staged = entry.file_name();
            let ours = staged
                .to_str()
                .and_then(|n| n.strip_prefix(name)?.strip_prefix('#'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let idle = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= ABANDONED_STAGING));
            if ours && idle && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs_err::remove_file(entry.path());
            }
        }
    }

    /// Downloads object `digest` (`size` bytes, as its record says) into
    /// `local`, through a temporary file in `tmp` that must hash to `digest`.
    pub async fn download(
        &self,
        local: &Store,
        tmp: &std::path::Path,
        digest: &Digest,
        kind: EntryKind,
        size: u64,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let path = self.object(digest);
        let staged = tmp.join(digest.to_string());
        let file = fs_err::File::create(&staged)
            .with_context(|| format!("cannot create `{}`", staged.display()))?
            .into_file();
        let missing = || {
            anyhow::anyhow!(
                "the remote has no object {} although a record there needs it",
                digest.short()
            )
        };
        if size <= CHUNK {
            let bytes = self.get(&path).await?.ok_or_else(missing)?;
            file.write_all_at(&bytes, 0)
                .with_context(|| format!("cannot write `{}`", staged.display()))?;
            bar.inc(bytes.len() as u64);
        } else {
            let ranges = (0..size.div_ceil(CHUNK)).map(|i| i * CHUNK..((i + 1) * CHUNK).min(size));
            futures::stream::iter(ranges)
                .map(|range| {
                    let (file, path, staged) = (&file, &path, &staged);
                    async move {
                        let bytes = match self.store.get_range(path, range.clone()).await {
                            Ok(bytes) => bytes,
                            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                            Err(e) => return Err(self.unavailable(e)),
                        };
                        file.write_all_at(&bytes, range.start)
                            .with_context(|| format!("cannot write `{}`", staged.display()))?;
                        bar.inc(bytes.len() as u64);
                        Ok(())
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<()>()
                .await?;
        }
        drop(file);
        let local = local.clone();
        let digest = *digest;
        tokio::task::spawn_blocking(move || admit(&local, &staged, &digest, kind))
            .await
            .context("the verification of a download stopped (internal error)")?
    }

    /// An error of the object store: the remote cannot be used.
    pub fn unavailable(&self, error: object_store::Error) -> anyhow::Error {
        let hint = match &error {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                "the remote refused the credentials (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)"
            }
            _ => "the remote did not answer as expected (check AWS_ENDPOINT_URL and the network)",
        };
        RemoteUnavailable(format!("{hint}: {error}")).into()
    }
}

/// `len` bytes of `file` from `offset`.
fn read_chunk(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    path: &std::path::Path,
) -> anyhow::Result<Bytes> {
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, offset)
        .with_context(|| format!("cannot read the store object `{}`", path.display()))?;
    Ok(Bytes::from(buf))
}

/// Moves a downloaded file into the store when it hashes to `digest`.
fn admit(
    local: &Store,
    staged: &std::path::Path,
    digest: &Digest,
    kind: EntryKind,
) -> anyhow::Result<()> {
    let actual = hash_file(staged)
        .with_context(|| format!("cannot hash the download `{}`", staged.display()))?;
    if actual != *digest {
        fs_err::remove_file(staged).ok();
        anyhow::bail!(
            "the remote's object {} is corrupt (its content hashes to {})",
            digest.short(),
            actual.short()
        );
    }
    let executable = kind == EntryKind::Executable;
    if executable {
        fs_err::set_permissions(staged, std::fs::Permissions::from_mode(0o755))?;
    }
    let size = fs_err::metadata(staged)?.len();
    let hashed = Hashed::File {
        hash: *digest,
        size,
        executable,
    };
    local.import(staged, &hashed, Import::Move)
}
