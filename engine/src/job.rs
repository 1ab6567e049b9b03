//! Bringing one stage up to date: compute its key, look it up in the cache
//! and restore it, or run it and commit its outputs to the store.
//!
//! The two seams of a job are [`lookup`] (where a stage is looked up in the
//! cache; a miss there is where a remote cache would be asked) and the
//! executor in [`JobEnv::executor`] (where a stage's kind actually executes:
//! in this process, or as a cluster job, see [`crate::executor`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::executor::{Executor, StageJob};
use crate::files;
use crate::hash::{Digest, StatCache};
use crate::integrity::Repair;
use crate::journal::Unfinished;
use crate::key::{KeyRecord, MissReason, explain};
use crate::lockfile::LockEntry;
use crate::outputs::{
    FailedOuts, Known, OutsEnv, clear_out, commit, earlier_run_wrote, output_paths, publish,
    restore,
};
use crate::plan::{Pipeline, PlannedStage};
use crate::printer::Printer;
use crate::remote_cache::{self, RemoteLink};
use crate::run_report::Status;
use crate::stage::{Input, Outcome, RunContext};
use crate::store::{OutputEntry, StageRecord, outputs_digest};

/// Added to a stage's reason in a dry run when its last run failed and left
/// files in its outs.
const LAST_RUN_FAILED: &str = "the last run failed, its outs hold what it left";

/// What a job needs to know besides the stage.
pub struct JobEnv<'a> {
    /// The pipeline.
    pub pipeline: &'a Pipeline<'a>,
    /// The store.
    pub store: &'a crate::store::Store,
    /// Hashes of workspace files.
    pub stat_cache: &'a StatCache,
    /// The printer (notes, progress, warnings).
    pub printer: &'a Printer,
    /// Only decide, never run or restore.
    pub dry_run: bool,
    /// The shared cache asked on a local miss, if any.
    pub(crate) remote: Option<&'a RemoteLink>,
    /// Where the stages that must run execute.
    pub executor: &'a dyn Executor,
}

impl JobEnv<'_> {
    /// The part of the environment the outputs' functions take.
    fn outs(&self) -> OutsEnv<'_> {
        OutsEnv {
            pipeline: self.pipeline,
            store: self.store,
            stat_cache: self.stat_cache,
            printer: self.printer,
        }
    }
}

/// A stage that is up to date: what it ran (or was restored) with and what it produced.
#[derive(Debug)]
pub struct Done {
    /// The stage key.
    pub key: Digest,
    /// What the key was computed from.
    pub record: KeyRecord,
    /// The stage's outputs.
    pub outputs: BTreeMap<String, OutputEntry>,
    /// Its metrics.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Its headline.
    pub headline: Option<String>,
    /// Why it ran, or for a cached stage why it was restored (when not simply unchanged).
    pub reason: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// How one job ended.
#[derive(Debug)]
pub enum JobResult {
    /// The stage ran and its outputs were committed.
    Ran(Done),
    /// The stage was found in the cache (and, unless in a dry run, restored).
    Cached(Done),
    /// Dry run: the stage would run.
    WouldRun {
        /// Its key, unless an upstream would run first.
        key: Option<Digest>,
        /// Why it would run.
        reason: String,
    },
    /// The stage failed.
    Failed {
        /// Its key, when it could be computed.
        key: Option<Digest>,
        /// Why it ran, when it got that far.
        reason: Option<String>,
        /// What went wrong, with its causes.
        error: anyhow::Error,
        /// The last lines of the stage's log, when it wrote any.
        log_tail: Option<String>,
        /// Wall time.
        seconds: f64,
    },
    /// The stage did not run because an upstream stage failed.
    Skipped {
        /// The upstream stage that failed (or was skipped).
        upstream: String,
    },
}

impl JobResult {
    /// The status shown for this result.
    pub fn status(&self) -> Status {
        match self {
            JobResult::Ran(_) => Status::Ran,
            JobResult::Cached(_) => Status::Cached,
            JobResult::WouldRun { .. } => Status::WouldRun,
            JobResult::Failed { .. } => Status::Failed,
            JobResult::Skipped { .. } => Status::Skipped,
        }
    }

    /// The stage's outputs, when it is up to date.
    pub fn done(&self) -> Option<&Done> {
        match self {
            JobResult::Ran(done) | JobResult::Cached(done) => Some(done),
            _ => None,
        }
    }

    fn failed(key: Option<Digest>, error: anyhow::Error, started: Instant) -> JobResult {
        JobResult::Failed {
            key,
            reason: None,
            error,
            log_tail: None,
            seconds: started.elapsed().as_secs_f64(),
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
        return JobResult::WouldRun {
            key: None,
            reason: format!("upstream {} will run", env.pipeline.stages[up].name),
        };
    }
    let record = match key_record(env, stage, upstream) {
        Ok(r) => r,
        Err(e) => return JobResult::failed(None, e, started),
    };
    let key = record.key();
    let mut reason = match locked {
        _ if forced => MissReason::Forced,
        Some(entry) if entry.key == key => MissReason::NotInCache,
        Some(entry) => explain(&entry.record, &record),
        None => MissReason::New,
    };
    // `pipe status` says when what is in the outs was left by a failed run.
    let last_failed = env.dry_run
        && !FailedOuts::read(env.store, &env.pipeline.manifest.name, &stage.name)
            .outs
            .is_empty();
    if !forced {
        match lookup(env, stage, &key, locked) {
            Lookup::Hit { found, from_remote } => {
                if !env.dry_run
                    && let Err(e) = restore(&env.outs(), stage, &found, locked)
                {
                    let error = e.context("cannot restore from the cache");
                    return JobResult::failed(Some(key), error, started);
                }
                let from_history = locked.is_some_and(|l| l.key != key);
                let reason = match (from_remote, env.dry_run) {
                    (true, true) => Some(remote_cache::WOULD_RESTORE.to_string()),
                    (true, false) => Some(remote_cache::RESTORED.to_string()),
                    (false, _) => from_history.then(|| "restored from the run cache".to_string()),
                };
                let reason = match reason {
                    _ if !last_failed => reason,
                    Some(reason) => Some(format!("{reason}; {LAST_RUN_FAILED}")),
                    None => Some(LAST_RUN_FAILED.to_string()),
                };
                return JobResult::Cached(Done {
                    key,
                    record,
                    outputs: found.outputs,
                    metrics: found.metrics,
                    headline: found.headline,
                    reason,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            Lookup::Miss => {}
            Lookup::Modified(why) => reason = why,
        }
    }
    if env.dry_run {
        let reason = if last_failed {
            format!("{reason}; {LAST_RUN_FAILED}")
        } else {
            reason.to_string()
        };
        return JobResult::WouldRun {
            key: Some(key),
            reason,
        };
    }
    match execute(env, stage, upstream, locked, &record, key, started) {
        Ok((outputs, outcome)) => JobResult::Ran(Done {
            key,
            record,
            outputs,
            metrics: outcome.metrics,
            headline: outcome.headline,
            reason: Some(reason.to_string()),
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(error) => {
            let log = env.store.log_path(&env.pipeline.manifest.name, &stage.name);
            let log_tail =
                log_tail(&log, 12).map(|tail| format!("last lines of {}:\n{tail}", log.display()));
            JobResult::Failed {
                key: Some(key),
                reason: Some(reason.to_string()),
                error,
                log_tail,
                seconds: started.elapsed().as_secs_f64(),
            }
        }
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
            // Run records (timings) are not part of what a downstream stage depends on.
            None => outputs_digest(
                outputs,
                env.pipeline.stages[input.stage].kind.run_record_outputs(),
            ),
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
        if env.dry_run
            && !path.exists()
            && let Some(output) = upstream
                .values()
                .flatten()
                .flat_map(|outputs| outputs.values())
                .find(|o| o.workspace && o.path == *dep)
        {
            inputs.insert(format!("dep:{dep}"), output.hash);
            continue;
        }
        let hashed = match env.stat_cache.hash_dep(&path) {
            Ok(hashed) => hashed,
            Err(_) if !path.exists() => anyhow::bail!(
                "dependency `{dep}` does not exist; create it, or declare it in the `outs:` of the stage that writes it"
            ),
            Err(e) => return Err(e),
        };
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

/// What [`lookup`] found in the cache.
enum Lookup {
    /// A record whose objects are all there, and no declared out was edited by hand;
    /// `from_remote` when the local store missed and the remote cache had it.
    Hit {
        /// The record.
        found: Box<StageRecord>,
        /// Whether it came from the remote cache.
        from_remote: bool,
    },
    /// No usable record: the stage must run.
    Miss,
    /// A record, but a declared out was edited by hand: the stage runs again
    /// (and the edited out is kept in the trash).
    Modified(MissReason),
}

/// Looks stage key `key` up in the cache. A declared out that differs from
/// the record but matches what `pipe` last wrote there (the lockfile's hash)
/// is the output of another key and is simply replaced; one that matches
/// neither was edited by hand, so the stage reruns.
fn lookup(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    key: &Digest,
    locked: Option<&LockEntry>,
) -> Lookup {
    // Damaged objects are moved aside (a dry run only looks), so the stage counts as a
    // miss: the remote cache may have them, or the stage runs again.
    let repair = if env.dry_run {
        Repair::Look
    } else {
        Repair::Fix
    };
    let complete = |found: &StageRecord| {
        let mut damaged = Vec::new();
        let all = found.outputs.values().all(|o| {
            (env.store).output_intact(o.kind, &o.hash, Some(o.size), repair, &mut damaged)
        });
        for warning in damaged {
            env.printer.warn(&format!("{}: {warning}", stage.name));
        }
        all
    };
    let (found, from_remote) = match env.store.record(key) {
        Some(found) if complete(&found) => (found, false),
        // A local miss, or a record whose objects are gone (collected, a store copied in
        // part): the shared remote cache may have them (a dry run only asks, and what it
        // answers cannot be checked against objects it did not fetch).
        _ => {
            let asked = env.remote.and_then(|link| {
                link.lookup(env.store, key, &stage.name, env.dry_run, env.printer)
            });
            match asked {
                Some(found) if env.dry_run => {
                    return Lookup::Hit {
                        found: Box::new(found),
                        from_remote: true,
                    };
                }
                Some(found) => (found, true),
                None => return Lookup::Miss,
            }
        }
    };
    let failed = FailedOuts::read(env.store, &env.pipeline.manifest.name, &stage.name);
    // A restore stopped midway left the outs half written: they are pipe's, and
    // the restore finishes them (nothing there is taken for an edit by hand).
    let restoring = Unfinished::read(env.store, &env.pipeline.manifest.name, &stage.name).is_some();
    if from_remote && !complete(&found) {
        return Lookup::Miss;
    }
    for (name, output) in &found.outputs {
        if output.workspace {
            if !stage.outs.contains(&output.path) {
                return Lookup::Miss;
            }
            let path = env.pipeline.manifest.dir.join(&output.path);
            if restoring || !matches!(files::kind_of(&path), Ok(Some(_))) {
                continue;
            }
            let current = env.stat_cache.hash_out(&path).map(|h| h.digest()).ok();
            let written_by_pipe = locked.and_then(|l| l.outputs.get(name)).copied();
            let left_by_failed_run = failed.outs.get(&output.path).copied();
            let earlier_run = |digest: &Digest| {
                let (pipeline, out) = (&env.pipeline.manifest.name, &output.path);
                earlier_run_wrote(env.store, pipeline, &stage.name, out, digest).is_some()
            };
            if current != Some(output.hash)
                && current != written_by_pipe
                && (current.is_none() || current != left_by_failed_run)
                && !current.as_ref().is_some_and(earlier_run)
            {
                return Lookup::Modified(MissReason::OutputModified {
                    path: output.path.clone(),
                });
            }
        }
    }
    Lookup::Hit {
        found: Box::new(found),
        from_remote,
    }
}

/// Runs the stage in a temporary folder and commits its outputs.
fn execute(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    upstream: &BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
    locked: Option<&LockEntry>,
    record: &KeyRecord,
    key: Digest,
    started: Instant,
) -> anyhow::Result<(BTreeMap<String, OutputEntry>, Outcome)> {
    let workspace = &env.pipeline.manifest.dir;
    let tmp = env.store.temp_dir()?;
    let out_dir = tmp.path().join("out");
    files::create_dir_all(&out_dir)?;
    let scratch = env.store.scratch_dir(&key);
    files::create_dir_all(&scratch)?;
    let log = env.store.log_path(&env.pipeline.manifest.name, &stage.name);
    if let Some(parent) = log.parent() {
        files::create_dir_all(parent)?;
    }
    // A new empty file: a link found there is replaced, never written through.
    crate::atomic::write(&log, b"", false)?;
    let pipeline = &env.pipeline.manifest.name;
    let known = Known::of(env.store, pipeline, &stage.name, locked);
    for out in &stage.outs {
        let path = workspace.join(out);
        clear_out(&env.outs(), &stage.name, out, &known)?;
        if let Some(parent) = path.parent() {
            files::create_dir_all(parent)?;
        }
    }
    // What an unfinished restore left is cleared: nothing of it remains to finish.
    Unfinished::finish(env.store, pipeline, &stage.name)?;
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
    let job = StageJob {
        pipeline: env.pipeline,
        stage,
        ctx: &ctx,
        work_dir: tmp.path(),
    };
    let ran = env
        .executor
        .run(&job)
        .map_err(|e| env.pipeline.locate_run_error(stage, e))
        .and_then(|outcome| {
            inputs_unchanged(env, stage, upstream)?;
            Ok((commit(&env.outs(), stage, &out_dir)?, outcome))
        });
    let (outputs, outcome) = match ran {
        Ok(done) => done,
        Err(error) => {
            // What the failed command wrote in its outs is pipe's, not the user's.
            if let Err(e) = FailedOuts::remember(&env.outs(), stage) {
                env.printer.warn(&format!(
                    "{}: cannot note what the failed run left in its outs: {e:#}",
                    stage.name
                ));
            }
            return Err(error);
        }
    };
    FailedOuts::forget(env.store, pipeline, &stage.name)?;
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
    let changed = changed_deps(env, stage, record);
    if changed.is_empty() {
        env.store.write_record(&stage_record)?;
    } else {
        let shown: Vec<String> = changed.iter().map(|d| format!("`{d}`")).collect();
        env.printer.warn(&format!(
            "{}: {} changed while the stage ran; its outputs are kept but not cached, so the next run runs it again",
            stage.name,
            shown.join(", ")
        ));
    }
    publish(&env.outs(), &stage.name, &outputs)?;
    files::remove_all(&scratch)?;
    Ok((outputs, outcome))
}

/// Fails a stage that changed an upstream store output in place (the files
/// under `out/<pipeline>/<stage>/` are hard links to store objects): the
/// damaged objects are moved aside, so the upstream stage runs again next
/// time, and the error names each file. One `stat` per input file.
fn inputs_unchanged(
    env: &JobEnv<'_>,
    stage: &PlannedStage<'_>,
    upstream: &BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
) -> anyhow::Result<()> {
    let mut changed = Vec::new();
    for input in &stage.inputs {
        let Some(Some(outputs)) = upstream.get(&input.stage) else {
            continue;
        };
        let up = &env.pipeline.stages[input.stage].name;
        let dir = env.store.out_dir(&env.pipeline.manifest.name, up);
        for output in outputs.values().filter(|o| !o.workspace) {
            let mut damaged = Vec::new();
            let intact = (env.store).output_intact(
                output.kind,
                &output.hash,
                Some(output.size),
                Repair::Fix,
                &mut damaged,
            );
            if !intact && !damaged.is_empty() {
                changed.push(format!(
                    "`{}` (of stage {up})",
                    dir.join(&output.path).display()
                ));
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the stage changed its input {} in place: files under `.pipe/out/` are hard links to \
         the store's objects, so a command must copy one before changing it (`cp \"$PIPE_FROM/x\" x`); \
         the changed objects were moved to the store's `damaged/` folder and the upstream stage \
         runs again next time",
        changed.join(", ")
    )
}

/// The deps of `stage` whose content is no longer what its key was computed
/// from (`record`): an input edited while the stage ran. Outputs made from
/// it must not be cached under a key that names the old content. A dep that
/// cannot be hashed any more counts as changed.
fn changed_deps(env: &JobEnv<'_>, stage: &PlannedStage<'_>, record: &KeyRecord) -> Vec<String> {
    stage
        .deps
        .iter()
        .filter(|dep| {
            let now = env
                .stat_cache
                .hash_dep(&env.pipeline.manifest.dir.join(dep))
                .map(|h| h.digest())
                .ok();
            now.is_none() || record.inputs.get(&format!("dep:{dep}")) != now.as_ref()
        })
        .cloned()
        .collect()
}

/// The last `lines` lines of a log file, indented, when it has any.
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    let text = files::read_to_string(path).ok()?;
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
