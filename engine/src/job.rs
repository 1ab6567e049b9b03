//! Bringing one stage up to date: compute its key, restore it from the cache,
//! or run it and commit its outputs to the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::hash::{Digest, StatCache};
use crate::key::{KeyRecord, MissReason, explain};
use crate::lockfile::LockEntry;
use crate::plan::{Pipeline, PlannedStage};
use crate::printer::Printer;
use crate::remote::{self, RemoteLink};
use crate::report::Status;
use crate::stage::{Input, Outcome, RunContext};
use crate::store::{Import, OutputEntry, StageRecord, Store, outputs_digest, remove_any};

/// What a job needs to know besides the stage.
pub struct JobEnv<'a> {
    /// The pipeline.
    pub pipeline: &'a Pipeline<'a>,
    /// The store.
    pub store: &'a Store,
    /// Hashes of workspace files.
    pub stat_cache: &'a StatCache,
    /// The printer (notes, progress).
    pub printer: &'a Printer,
    /// Only decide, never run or restore.
    pub dry_run: bool,
    /// The shared cache asked on a local miss, if any.
    pub(crate) remote: Option<&'a RemoteLink>,
}

/// The result of one job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// What happened.
    pub status: Status,
    /// The key, when it could be computed.
    pub key: Option<Digest>,
    /// What the key was computed from.
    pub record: Option<KeyRecord>,
    /// The stage's outputs (None when it failed or, in a dry run, would run).
    pub outputs: Option<BTreeMap<String, OutputEntry>>,
    /// Why it ran (or would).
    pub reason: Option<String>,
    /// Metrics.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Headline.
    pub headline: Option<String>,
    /// Failure message.
    pub error: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

impl JobResult {
    /// A result with `status` and nothing else known yet.
    pub fn empty(status: Status, started: Instant) -> JobResult {
        JobResult {
            status,
            key: None,
            record: None,
            outputs: None,
            reason: None,
            metrics: Default::default(),
            headline: None,
            error: None,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn failed(key: Option<Digest>, error: String, started: Instant) -> JobResult {
        JobResult {
            key,
            error: Some(error),
            ..JobResult::empty(Status::Failed, started)
        }
    }
}

/// Brings stage `id` up to date. `upstream` holds the outputs of every stage
/// this one reads (`None` for one that, in a dry run, would run first).
pub fn run_job(
    env: &JobEnv<'_>,
    id: usize,
    upstream: &BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
    locked: Option<&LockEntry>,
    forced: bool,
) -> JobResult {
    let started = Instant::now();
    let stage = &env.pipeline.stages[id];
    if let Some((&up, _)) = upstream.iter().find(|(_, outputs)| outputs.is_none()) {
        return JobResult {
            reason: Some(format!(
                "upstream {} will run",
                env.pipeline.stages[up].name
            )),
            ..JobResult::empty(Status::WouldRun, started)
        };
    }
    let record = match key_record(env, stage, upstream) {
        Ok(r) => r,
        Err(e) => return JobResult::failed(None, format!("{e:#}"), started),
    };
    let key = record.key();
    let mut cached = if forced { None } else { env.store.record(&key) };
    // A local miss: the shared remote cache may have it (a dry run only asks).
    let mut from_remote = false;
    if let (None, false, Some(link)) = (&cached, forced, env.remote) {
        cached = link.lookup(env.store, &key, &stage.name, env.dry_run, env.printer);
        from_remote = cached.is_some();
    }
    let mut reason = if forced {
        MissReason::Forced
    } else {
        match locked {
            Some(entry) if entry.key == key => MissReason::NotInCache,
            Some(entry) => explain(&entry.record, &record),
            None => MissReason::New,
        }
    };
    if let Some(found) = cached {
        let check = if from_remote && env.dry_run {
            CacheCheck::Usable
        } else {
            check_cached(env, &found, locked)
        };
        match check {
            CacheCheck::Usable => {
                let hit = |found| {
                    let mut result = cached_result(found, key, record.clone(), locked, started);
                    if from_remote {
                        let why = if env.dry_run {
                            remote::WOULD_RESTORE
                        } else {
                            remote::RESTORED
                        };
                        result.reason = Some(why.to_string());
                    }
                    result
                };
                if env.dry_run {
                    return hit(found);
                }
                match restore(env, stage, &found) {
                    Ok(()) => return hit(found),
                    Err(e) => {
                        return JobResult::failed(
                            Some(key),
                            format!("cannot restore from the cache: {e:#}"),
                            started,
                        );
                    }
                }
            }
            CacheCheck::Incomplete => {}
            CacheCheck::Modified(modified) => reason = modified,
        }
    }
    if env.dry_run {
        return JobResult {
            key: Some(key),
            record: Some(record),
            reason: Some(reason.to_string()),
            ..JobResult::empty(Status::WouldRun, started)
        };
    }
    match execute(env, stage, upstream, &record, key, started) {
        Ok((outputs, outcome)) => JobResult {
            status: Status::Ran,
            key: Some(key),
            record: Some(record),
            outputs: Some(outputs),
            reason: Some(reason.to_string()),
            metrics: outcome.metrics,
            headline: outcome.headline,
            error: None,
            seconds: started.elapsed().as_secs_f64(),
        },
        Err(e) => {
            let mut message = format!("{e:#}");
            let log = env.store.log_path(&env.pipeline.manifest.name, &stage.name);
            if let Some(tail) = log_tail(&log, 12) {
                message.push_str(&format!("\nlast lines of {}:\n{tail}", log.display()));
            }
            JobResult {
                reason: Some(reason.to_string()),
                ..JobResult::failed(Some(key), message, started)
            }
        }
    }
}

fn cached_result(
    found: StageRecord,
    key: Digest,
    record: KeyRecord,
    locked: Option<&LockEntry>,
    started: Instant,
) -> JobResult {
    let restored_from_history = locked.is_some_and(|l| l.key != key);
    JobResult {
        status: Status::Cached,
        key: Some(key),
        record: Some(record),
        outputs: Some(found.outputs),
        reason: restored_from_history.then(|| "restored from the run cache".to_string()),
        metrics: found.metrics,
        headline: found.headline,
        error: None,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The key record of a stage whose upstream outputs are known.
fn key_record(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    upstream: &BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
) -> anyhow::Result<KeyRecord> {
    let mut inputs = BTreeMap::new();
    for input in &stage.inputs {
        let outputs = upstream
            .get(&input.stage)
            .and_then(Option::as_ref)
            .context("an upstream stage has no outputs (internal error)")?;
        let digest = match &input.output {
            None => outputs_digest(outputs),
            Some(name) => outputs.get(name).map(|o| o.hash).with_context(|| {
                let known: Vec<&str> = outputs.keys().map(String::as_str).collect();
                format!(
                    "`from: {}.{name}`: stage {} has no output `{name}` (it has: {})",
                    env.pipeline.stages[input.stage].name,
                    env.pipeline.stages[input.stage].name,
                    known.join(", ")
                )
            })?,
        };
        inputs.insert(format!("from:{}", input.name), digest);
    }
    for dep in &stage.deps {
        let path = env.pipeline.manifest.dir.join(dep);
        // A dry run restores nothing: an upstream's declared out that is not
        // on disk yet (in the store or the remote) is known from its record.
        let recorded = upstream
            .values()
            .flatten()
            .flat_map(|outputs| outputs.values())
            .find(|o| o.workspace && o.path == *dep);
        if let (false, true, Some(output)) = (path.exists(), env.dry_run, recorded) {
            inputs.insert(format!("dep:{dep}"), output.hash);
            continue;
        }
        if !path.exists() {
            anyhow::bail!(
                "dependency `{dep}` does not exist; create it, or declare it in the `outs:` of the stage that writes it"
            );
        }
        let hashed = env.stat_cache.hash_path(&path)?;
        inputs.insert(format!("dep:{dep}"), hashed.digest());
    }
    Ok(KeyRecord {
        kind: stage.kind.kind().to_string(),
        kind_version: stage.kind.version(),
        params: stage.checked.key_params.clone(),
        run: stage.spec.run.clone(),
        outs: stage.outs.clone(),
        inputs,
    })
}

/// What [`check_cached`] found.
enum CacheCheck {
    /// Every object is there and no declared out was edited by hand.
    Usable,
    /// An object is missing: the stage must run again.
    Incomplete,
    /// A declared out was edited by hand.
    Modified(MissReason),
}

/// Whether a cached record can be used. A declared out that differs
/// from the record but matches what `pipe` last wrote there (the lockfile's
/// hash) is the output of another key and is simply replaced; one that
/// matches neither was edited by hand, so the stage reruns.
fn check_cached(env: &JobEnv<'_>, found: &StageRecord, locked: Option<&LockEntry>) -> CacheCheck {
    for (name, output) in &found.outputs {
        if !env.store.output_complete(output.kind, &output.hash) {
            return CacheCheck::Incomplete;
        }
        if output.workspace {
            let path = env.pipeline.manifest.dir.join(&output.path);
            if !path.exists() {
                continue;
            }
            let current = env.stat_cache.hash_path(&path).map(|h| h.digest()).ok();
            let written_by_pipe = locked.and_then(|l| l.outputs.get(name)).copied();
            if current != Some(output.hash) && current != written_by_pipe {
                return CacheCheck::Modified(MissReason::OutputModified {
                    path: output.path.clone(),
                });
            }
        }
    }
    CacheCheck::Usable
}

/// Puts a cached stage's outputs in place: `out/<pipeline>/<stage>/` and declared outs.
fn restore(env: &JobEnv<'_>, stage: &PlannedStage<'_>, found: &StageRecord) -> anyhow::Result<()> {
    for output in found.outputs.values().filter(|o| o.workspace) {
        let path = env.pipeline.manifest.dir.join(&output.path);
        let current = path
            .exists()
            .then(|| env.stat_cache.hash_path(&path).map(|h| h.digest()).ok())
            .flatten();
        if current != Some(output.hash) {
            env.store
                .materialize(output.kind, &output.hash, &path, true)?;
        }
    }
    publish(env, &stage.name, &found.outputs)
}

/// Makes `out/<pipeline>/<stage>/` hold exactly the stage's store outputs.
fn publish(
    env: &JobEnv<'_>,
    stage: &str,
    outputs: &BTreeMap<String, OutputEntry>,
) -> anyhow::Result<()> {
    let dir = env.store.out_dir(&env.pipeline.manifest.name, stage);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let wanted: Vec<&str> = outputs
        .values()
        .filter(|o| !o.workspace)
        .map(|o| o.path.as_str())
        .collect();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if !wanted
            .iter()
            .any(|w| std::ffi::OsStr::new(w) == entry.file_name())
        {
            remove_any(&entry.path())?;
        }
    }
    for output in outputs.values().filter(|o| !o.workspace) {
        env.store
            .materialize(output.kind, &output.hash, &dir.join(&output.path), false)?;
    }
    Ok(())
}

/// Where a stage's outputs are on disk, for the stages downstream of it.
pub fn output_paths(
    store: &Store,
    pipeline: &Pipeline<'_>,
    stage: usize,
    outputs: &BTreeMap<String, OutputEntry>,
) -> BTreeMap<String, PathBuf> {
    let name = &pipeline.stages[stage].name;
    outputs
        .iter()
        .map(|(k, o)| {
            let path = if o.workspace {
                pipeline.manifest.dir.join(&o.path)
            } else {
                store.out_dir(&pipeline.manifest.name, name).join(&o.path)
            };
            (k.clone(), path)
        })
        .collect()
}

/// Runs the stage in a temporary folder and commits its outputs.
fn execute(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    upstream: &BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
    record: &KeyRecord,
    key: Digest,
    started: Instant,
) -> anyhow::Result<(BTreeMap<String, OutputEntry>, Outcome)> {
    let workspace = &env.pipeline.manifest.dir;
    let tmp = env.store.temp_dir()?;
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir)?;
    let scratch = env.store.scratch_dir(&key);
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create `{}`", scratch.display()))?;
    let log = env.store.log_path(&env.pipeline.manifest.name, &stage.name);
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&log, b"")
        .with_context(|| format!("cannot create the log `{}`", log.display()))?;
    for out in &stage.outs {
        let path = workspace.join(out);
        remove_any(&path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
    }
    let inputs: Vec<Input> = stage
        .inputs
        .iter()
        .map(|input| {
            let outputs = upstream[&input.stage]
                .as_ref()
                .expect("upstream outputs are known when a stage runs");
            let mut paths = output_paths(env.store, env.pipeline, input.stage, outputs);
            if let Some(only) = &input.output {
                paths.retain(|k, _| k == only);
            }
            Input {
                name: input.name.clone(),
                stage: env.pipeline.stages[input.stage].name.clone(),
                outputs: paths,
            }
        })
        .collect();
    let reporter = env.printer.reporter(&stage.name);
    let key_hex = key.to_string();
    let ctx = RunContext {
        stage: &stage.name,
        key: &key_hex,
        params: &stage.spec.params,
        workspace,
        out_dir: &out_dir,
        scratch_dir: &scratch,
        inputs: &inputs,
        run: stage.spec.run.as_deref(),
        outs: &stage.outs,
        log_path: &log,
        reporter: &reporter,
    };
    let outcome =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.kind.run(&ctx))) {
            Ok(result) => result?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                anyhow::bail!(
                    "the {} stage crashed ({what}); this is a bug in pipe, please report it",
                    stage.kind.kind()
                );
            }
        };
    let outputs = commit_outputs(env, stage, &out_dir)?;
    let stage_record = StageRecord {
        key,
        pipeline: env.pipeline.manifest.name.clone(),
        stage: stage.name.clone(),
        record: record.clone(),
        outputs: outputs.clone(),
        metrics: outcome.metrics.clone(),
        headline: outcome.headline.clone(),
        seconds: started.elapsed().as_secs_f64(),
        finished_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        pipe_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    env.store.write_record(&stage_record)?;
    publish(env, &stage.name, &outputs)?;
    remove_any(&scratch)?;
    Ok((outputs, outcome))
}

/// Hashes and stores what the stage wrote: entries of its out folder (by
/// move) and its declared workspace outs (by copy).
fn commit_outputs(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    out_dir: &Path,
) -> anyhow::Result<BTreeMap<String, OutputEntry>> {
    let mut outputs = BTreeMap::new();
    let mut entries: Vec<_> = std::fs::read_dir(out_dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // The name is the file name without its last extension (`model.onnx` → `model`,
        // `model.onnx.data` → `model.onnx`), as `Path::file_stem` has it.
        let name = match file_name.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem.to_string(),
            _ => file_name.clone(),
        };
        let hashed = crate::hash::hash_path(&entry.path())?;
        env.store.import(&entry.path(), &hashed, Import::Move)?;
        let output = OutputEntry {
            path: file_name.clone(),
            kind: hashed.entry(&file_name).kind,
            hash: hashed.digest(),
            size: hashed.size(),
            workspace: false,
        };
        if outputs.insert(name.clone(), output).is_some() {
            anyhow::bail!(
                "stage wrote two outputs named `{name}` (internal error in the {} kind)",
                stage.kind.kind()
            );
        }
    }
    for out in &stage.outs {
        let path = env.pipeline.manifest.dir.join(out);
        if !path.exists() {
            anyhow::bail!(
                "the command finished but did not write its declared out `{out}`; fix the command or the `outs:` list"
            );
        }
        let hashed = env.stat_cache.hash_path(&path)?;
        env.store.import(&path, &hashed, Import::Copy)?;
        outputs.insert(
            out.clone(),
            OutputEntry {
                path: out.clone(),
                kind: hashed.entry(out).kind,
                hash: hashed.digest(),
                size: hashed.size(),
                workspace: true,
            },
        );
    }
    Ok(outputs)
}

/// The last `lines` lines of a log file, indented, when it has any.
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return None;
    }
    Some(
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}
