//! Which records and objects to move, and moving them: `push`, `pull`, and
//! the read-through `fetch` of one stage key during a run.

use std::collections::BTreeMap;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use pipe_engine::Digest;
use pipe_engine::hash::EntryKind;
use pipe_engine::store::{StageRecord, Store};
use serde::Serialize;

use crate::transfer::{Bucket, CHUNK, PARALLEL};

/// What `push` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    /// Stage records uploaded.
    pub stages: usize,
    /// Stage records the remote already had.
    pub present: usize,
    /// Objects uploaded.
    pub objects: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// What `pull` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PullReport {
    /// Stage records downloaded (with their objects).
    pub stages: usize,
    /// Stages the local store already had in full.
    pub present: usize,
    /// Stages the remote does not have.
    pub missing: Vec<String>,
    /// Objects downloaded.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Uploads the records of `keys` and their objects, objects first.
pub(crate) async fn push(
    bucket: &Bucket,
    store: &Store,
    keys: &[(String, Digest)],
    bar: &ProgressBar,
) -> anyhow::Result<PushReport> {
    let mut report = PushReport::default();
    let found: Vec<(&String, &Digest, Option<u64>)> = futures::stream::iter(keys)
        .map(|(name, key)| async move {
            anyhow::Ok((name, key, bucket.size(&bucket.record(key)).await?))
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let mut records = Vec::new();
    for (name, key, remote) in found {
        if remote.is_some() {
            report.present += 1;
            continue;
        }
        let record = store.record(key).with_context(|| {
            format!(
                "stage {name}: its result (key {}) is not in the local store; run `pipe run` first",
                key.short()
            )
        })?;
        records.push(record);
    }
    let mut needed = BTreeMap::new();
    for record in &records {
        for (name, output) in &record.outputs {
            local_objects(store, output.kind, &output.hash, &mut needed).with_context(|| {
                format!(
                    "stage {}: output `{name}`: rerun the stage (`pipe run --force={}`) to rebuild it",
                    record.stage, record.stage
                )
            })?;
        }
    }
    let missing: Vec<(Digest, u64)> = futures::stream::iter(needed)
        .map(|(digest, size)| async move {
            let remote = bucket.size(&bucket.object(&digest)).await?;
            anyhow::Ok((remote != Some(size)).then_some((digest, size)))
        })
        .buffer_unordered(PARALLEL * 2)
        .try_filter_map(|x| futures::future::ready(Ok(x)))
        .try_collect()
        .await?;
    report.objects = missing.len();
    report.bytes = missing.iter().map(|(_, size)| size).sum();
    bar.set_length(report.bytes);
    let (small, large): (Vec<_>, Vec<_>) = missing.iter().partition(|(_, size)| *size <= CHUNK);
    futures::stream::iter(&small)
        .map(|(digest, size)| bucket.upload(store, digest, *size, bar))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    // One large object at a time, each uploaded in parallel parts.
    for (digest, size) in &large {
        bucket.upload(store, digest, *size, bar).await?;
    }
    for record in &records {
        let bytes = serde_json::to_vec_pretty(record)?;
        bucket
            .put(&bucket.record(&record.key), Bytes::from(bytes))
            .await?;
        report.stages += 1;
    }
    Ok(report)
}

/// Adds object `digest` (and for a folder, its tree's objects) with its size in the local store.
fn local_objects(
    store: &Store,
    kind: EntryKind,
    digest: &Digest,
    needed: &mut BTreeMap<Digest, u64>,
) -> anyhow::Result<()> {
    if needed.contains_key(digest) {
        return Ok(());
    }
    let path = store.object_path(digest);
    let size = fs_err::metadata(&path)
        .with_context(|| format!("object {} is missing from the local store", digest.short()))?
        .len();
    needed.insert(*digest, size);
    if kind == EntryKind::Dir {
        for entry in store.read_tree(digest)?.entries {
            local_objects(store, entry.kind, &entry.hash, needed)?;
        }
    }
    Ok(())
}

/// Downloads the records of `keys` and their objects into `store`.
pub(crate) async fn pull(
    bucket: &Bucket,
    store: &Store,
    keys: &[(String, Digest)],
    bar: &ProgressBar,
) -> anyhow::Result<PullReport> {
    let tmp = store.temp_dir()?;
    let mut report = PullReport::default();
    let mut plans = Vec::new();
    for (name, key) in keys {
        if store.record(key).is_some_and(|r| complete(store, &r)) {
            report.present += 1;
            continue;
        }
        match plan(bucket, store, tmp.path(), key).await? {
            Some(plan) => plans.push(plan),
            None => report.missing.push(name.clone()),
        }
    }
    let files: BTreeMap<Digest, (EntryKind, u64)> =
        plans.iter().flat_map(|p| p.files.clone()).collect();
    report.objects = files.len();
    report.bytes = files.values().map(|(_, size)| size).sum();
    bar.set_length(report.bytes);
    download_all(bucket, store, tmp.path(), &files, bar).await?;
    for plan in &plans {
        store.write_record(&plan.record)?;
        report.stages += 1;
    }
    Ok(report)
}

/// Brings the record of `key` and its objects into `store` (read-through).
pub(crate) async fn fetch(
    bucket: &Bucket,
    store: &Store,
    key: &Digest,
    bar: &ProgressBar,
) -> anyhow::Result<Option<StageRecord>> {
    let tmp = store.temp_dir()?;
    let Some(plan) = plan(bucket, store, tmp.path(), key).await? else {
        return Ok(None);
    };
    download_all(bucket, store, tmp.path(), &plan.files, bar).await?;
    store.write_record(&plan.record)?;
    Ok(Some(plan.record))
}

/// The record of `key` in the remote, checked: it must be the record of that
/// key, and name only output paths a restore may write.
pub(crate) async fn remote_record(
    bucket: &Bucket,
    key: &Digest,
) -> anyhow::Result<Option<StageRecord>> {
    let Some(bytes) = bucket.get(&bucket.record(key)).await? else {
        return Ok(None);
    };
    let corrupt = |what: &str| {
        anyhow::anyhow!(
            "the remote's record of key {} is corrupt: {what}",
            key.short()
        )
    };
    let record: StageRecord = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(&format!("not a stage record ({e})")))?;
    if record.key != *key || record.record.key() != *key {
        return Err(corrupt("it describes another key"));
    }
    for output in record.outputs.values() {
        let safe = if output.workspace {
            record.record.outs.contains(&output.path)
        } else {
            is_plain_name(&output.path)
        };
        if !safe {
            return Err(corrupt(&format!("unsafe output path `{}`", output.path)));
        }
    }
    Ok(Some(record))
}

/// A remote record and the file objects the local store lacks for it.
struct Plan {
    record: StageRecord,
    files: BTreeMap<Digest, (EntryKind, u64)>,
}

/// The remote record of `key` and what to download for it. Folder trees
/// (small) are downloaded now, to learn which files they hold.
async fn plan(
    bucket: &Bucket,
    store: &Store,
    tmp: &std::path::Path,
    key: &Digest,
) -> anyhow::Result<Option<Plan>> {
    let Some(record) = remote_record(bucket, key).await? else {
        return Ok(None);
    };
    let mut files = BTreeMap::new();
    let mut stack: Vec<(EntryKind, Digest, u64)> = record
        .outputs
        .values()
        .map(|o| (o.kind, o.hash, o.size))
        .collect();
    let quiet = ProgressBar::hidden();
    while let Some((kind, digest, size)) = stack.pop() {
        if kind != EntryKind::Dir {
            if !store.has_object(&digest) {
                files.insert(digest, (kind, size));
            }
            continue;
        }
        if !store.has_object(&digest) {
            // A tree is one small object: one request whatever its size.
            bucket
                .download(store, tmp, &digest, EntryKind::File, 0, &quiet)
                .await?;
        }
        let tree = store.read_tree(&digest)?;
        for entry in tree.entries {
            if !is_plain_name(&entry.name) {
                anyhow::bail!(
                    "the remote's folder {} is corrupt: unsafe entry name `{}`",
                    digest.short(),
                    entry.name
                );
            }
            stack.push((entry.kind, entry.hash, entry.size));
        }
    }
    Ok(Some(Plan { record, files }))
}

/// Downloads `files` into `store`: small ones several at a time, large ones
/// one at a time (each in parallel ranges), so memory stays bounded.
async fn download_all(
    bucket: &Bucket,
    store: &Store,
    tmp: &std::path::Path,
    files: &BTreeMap<Digest, (EntryKind, u64)>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let (small, large): (Vec<_>, Vec<_>) = files.iter().partition(|(_, (_, size))| *size <= CHUNK);
    futures::stream::iter(small)
        .map(|(digest, (kind, size))| bucket.download(store, tmp, digest, *kind, *size, bar))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    for (digest, (kind, size)) in large {
        bucket
            .download(store, tmp, digest, *kind, *size, bar)
            .await?;
    }
    Ok(())
}

/// Whether every object of a local record is in the store.
fn complete(store: &Store, record: &StageRecord) -> bool {
    record
        .outputs
        .values()
        .all(|o| store.output_complete(o.kind, &o.hash))
}

/// One path component that stays inside its folder.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}
