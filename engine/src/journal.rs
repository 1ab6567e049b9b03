//! The restore journal, `restoring/<pipeline>/<stage>.json` in the store:
//! written durably before pipe starts putting a cached stage's declared outs
//! in place, and removed once they all are.
//!
//! A restore killed midway (`timeout`, `docker stop`, a preemption) leaves
//! its outs half written. The journal is how the next run knows that what it
//! finds there is pipe's own partial restore, not an edit by hand: it names
//! the stage keys whose files may be there and the staging token of each
//! attempt, so the next run removes exactly pipe's staging files
//! ([`files::temp_name`] of a token, beside or inside the outs), counts the
//! keys' files as pipe's, and finishes the restore instead of rerunning the
//! stage. Without a journal nothing beside the outs is looked at, so a no-op
//! run lists no folder to find leftovers.
//!
//! Format (JSON): `{"keys": ["<key>", …], "tokens": ["<pid>-<n>", …]}`, one
//! entry per restore begun since the stage's outs were last complete.

use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::store::Store;
use crate::{atomic, files};

/// The restores of one stage that began and did not finish.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Unfinished {
    /// The keys being restored: their records' files in the outs are pipe's.
    pub keys: Vec<Digest>,
    /// The staging tokens of those restores.
    pub tokens: Vec<String>,
}

impl Unfinished {
    /// The unfinished restores of `stage`, if a run was stopped during one
    /// (one failed open when there are none). An unreadable journal reads as
    /// none: its outs are then simply not known to be pipe's.
    pub fn read(store: &Store, pipeline: &str, stage: &str) -> Option<Unfinished> {
        let bytes = fs_err::read(store.restoring_path(pipeline, stage)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Notes, durably, that a restore of `stage` to `key` begins, and returns
    /// the staging token it must use.
    pub fn begin(
        store: &Store,
        pipeline: &str,
        stage: &str,
        key: Digest,
    ) -> anyhow::Result<String> {
        let mut journal = Unfinished::read(store, pipeline, stage).unwrap_or_default();
        let token = files::temp_token();
        journal.keys.push(key);
        journal.tokens.push(token.clone());
        let path = store.restoring_path(pipeline, stage);
        if let Some(parent) = path.parent() {
            files::create_dir_all(parent)?;
        }
        atomic::write(&path, &serde_json::to_vec(&journal)?, true)?;
        Ok(token)
    }

    /// Drops `stage`'s journal: its outs are complete (or were cleared to run it).
    pub fn finish(store: &Store, pipeline: &str, stage: &str) -> anyhow::Result<()> {
        files::remove_all(&store.restoring_path(pipeline, stage))
    }

    /// The staging file names these restores used.
    pub fn temp_names(&self) -> Vec<String> {
        self.tokens.iter().map(|t| files::temp_name(t)).collect()
    }
}
