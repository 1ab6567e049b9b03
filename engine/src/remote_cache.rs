//! A shared cache behind the local store: on a local miss, a run asks the
//! remote for the stage's record before running the stage (read-through).
//!
//! The engine knows a remote only through [`RemoteCache`]; the object-store
//! implementation (S3, GCS, Azure, a folder) lives in the `pipe-remote` crate,
//! so the engine stays synchronous and free of network dependencies.
//!
//! A remote is an optimisation, never a requirement: when it cannot be
//! reached or refuses the credentials, the run prints one warning and goes on
//! locally without asking it again; when one stage's copy in the remote is
//! corrupt, that stage runs locally.

use std::sync::{Arc, OnceLock};

use crate::hash::Digest;
use crate::printer::{Printer, Tone};
use crate::store::{StageRecord, Store};

/// The reason a stage restored from the remote reports.
pub const RESTORED: &str = "restored from the remote";

/// The reason `pipe status` gives for a local miss the remote would serve.
pub const WOULD_RESTORE: &str = "in the remote; `pipe run` restores it";

/// A cache shared between clones, consulted after the local store.
pub trait RemoteCache: Send + Sync + std::fmt::Debug {
    /// Where the remote is, for messages (`s3://bucket/prefix`).
    fn location(&self) -> String;

    /// The record of stage key `key` in the remote, without its objects
    /// (`Ok(None)` when the remote does not have it).
    fn record(&self, key: &Digest) -> anyhow::Result<Option<StageRecord>>;

    /// Copies the record of `key` and every object its outputs need into
    /// `store`: each object verified by its hash before it enters the store,
    /// the record written last. `Ok(None)` when the remote does not have it.
    fn fetch(&self, store: &Store, key: &Digest) -> anyhow::Result<Option<StageRecord>>;
}

/// The error of a remote that cannot be used at all (unreachable, refusing
/// the credentials): the run stops asking it, as opposed to a problem with
/// one stage's copy (a corrupt object), which only that stage pays for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteUnavailable(pub String);

/// One run's use of a remote: it remembers that the remote failed, so a dead
/// remote costs one timeout and one warning per run, not one per stage.
#[derive(Debug)]
pub(crate) struct RemoteLink {
    cache: Arc<dyn RemoteCache>,
    down: OnceLock<()>,
}

impl RemoteLink {
    /// A link to `cache` that has not failed yet.
    pub(crate) fn new(cache: Arc<dyn RemoteCache>) -> RemoteLink {
        RemoteLink {
            cache,
            down: OnceLock::new(),
        }
    }

    /// The remote's record of `key` after a local miss: in a dry run only the
    /// record (nothing is downloaded), otherwise the record with its objects,
    /// now in `store`. `None` on a miss, or with a warning when the remote fails.
    pub(crate) fn lookup(
        &self,
        store: &Store,
        key: &Digest,
        stage: &str,
        dry_run: bool,
        printer: &Printer,
    ) -> Option<StageRecord> {
        if self.down.get().is_some() {
            return None;
        }
        let found = if dry_run {
            self.cache.record(key)
        } else {
            self.cache.fetch(store, key)
        };
        match found {
            Ok(found) => found,
            Err(error) if error.downcast_ref::<RemoteUnavailable>().is_some() => {
                if self.down.set(()).is_ok() {
                    printer.status(
                        "Warning",
                        Tone::Warn,
                        &format!(
                            "the remote cache {} is unavailable ({error:#}); running locally",
                            self.cache.location()
                        ),
                    );
                }
                None
            }
            Err(error) => {
                printer.status(
                    "Warning",
                    Tone::Warn,
                    &format!(
                        "{stage}: cannot use the remote's copy ({error:#}); running it locally"
                    ),
                );
                None
            }
        }
    }
}
