//! A cache shared between clones of a project: `pipe push` uploads stage
//! results to an object store, `pipe pull` and `pipe run` (on a local miss)
//! download them, so a teammate's clone runs nothing someone already ran.
//!
//! The remote is named by `remote: s3://bucket/prefix` in the manifest or by
//! `PIPE_REMOTE` (see [`remote_url`]); its layout is described in
//! [`transfer`](crate::transfer). Uploads are idempotent (what the remote has
//! is skipped) and put every object before the record that needs it, so a
//! record in the remote always has its objects. Downloads are verified by
//! hash before they enter the local store, and a record is written locally
//! only after all its objects.
//!
//! The engine sees this crate through [`pipe_engine::remote_cache::RemoteCache`];
//! object_store runs on a small tokio runtime owned by [`Remote`], so the
//! engine stays synchronous.

#![deny(missing_docs)]

mod aws_files;
mod open;
mod sync;
mod transfer;

use indicatif::{ProgressBar, ProgressStyle};
use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::store::{StageRecord, Store};
use pipe_engine::{Digest, Manifest};

pub use open::{REMOTE_ENV, remote_url};
pub use sync::{PullReport, PushReport};

use crate::transfer::Bucket;

/// An opened remote cache.
#[derive(Debug)]
pub struct Remote {
    bucket: Bucket,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Opens the remote at `url` (`s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `file:///folder`). Nothing is contacted yet; a bad URL or configuration
    /// is a [`pipe_engine::UsageError`].
    pub fn open(url: &str) -> anyhow::Result<Remote> {
        // TLS through rustls with ring; a provider installed before is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (store, prefix) = open::open_store(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pipe-remote")
            .enable_all()
            .build()?;
        Ok(Remote {
            bucket: Bucket {
                store,
                prefix,
                local: url.starts_with("file:"),
                url: url.to_string(),
            },
            runtime,
        })
    }

    /// The remote `manifest` uses (`PIPE_REMOTE`, else its `remote:` key), or
    /// `None` when it names none. A bad URL is an error naming where it is written.
    pub fn for_manifest(manifest: &Manifest) -> anyhow::Result<Option<Remote>> {
        let Some((url, origin)) = remote_url(manifest) else {
            return Ok(None);
        };
        Remote::open(&url)
            .map(Some)
            .map_err(|e| match e.downcast::<pipe_engine::UsageError>() {
                Ok(usage) => pipe_engine::UsageError(format!("{origin}: {usage}")).into(),
                Err(other) => other.context(format!("cannot open the remote named at {origin}")),
            })
    }

    /// Uploads the records of `keys` (stage name, key) and the objects they
    /// need from `store`, skipping what the remote already has; `bar` counts bytes.
    pub fn push(
        &self,
        store: &Store,
        keys: &[(String, Digest)],
        bar: &ProgressBar,
    ) -> anyhow::Result<PushReport> {
        self.runtime
            .block_on(sync::push(&self.bucket, store, keys, bar))
    }

    /// Downloads the records of `keys` (stage name, key) and their objects
    /// into `store`, skipping what it already has; `bar` counts bytes.
    /// Call with the store's lock held.
    pub fn pull(
        &self,
        store: &Store,
        keys: &[(String, Digest)],
        bar: &ProgressBar,
    ) -> anyhow::Result<PullReport> {
        self.runtime
            .block_on(sync::pull(&self.bucket, store, keys, bar))
    }
}

impl RemoteCache for Remote {
    fn location(&self) -> String {
        self.bucket.url.clone()
    }

    fn record(&self, key: &Digest) -> anyhow::Result<Option<StageRecord>> {
        self.runtime
            .block_on(sync::remote_record(&self.bucket, key))
    }

    fn fetch(&self, store: &Store, key: &Digest) -> anyhow::Result<Option<StageRecord>> {
        let hidden = ProgressBar::hidden();
        self.runtime
            .block_on(sync::fetch(&self.bucket, store, key, &hidden))
    }
}

/// The style of a transfer's progress bar: bytes, rate and time left.
pub fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>9.cyan.bold} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} [{elapsed_precise} < {eta}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("━╸─")
}
