//! Running a pipeline: independent stages in parallel, each brought up to
//! date by a job ([`crate::job`]); a failure stops its descendants while
//! unrelated branches finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, mpsc};

use crate::BadInput;
use crate::executor::Executor;
use crate::executor::local::Local;
use crate::hash::StatCache;
use crate::job::{JobEnv, JobResult, run_job};
use crate::lockfile::{
    LockEntry, LockFile, headline_metrics, lock_path, parsed_copy_path, previous_lock_path,
};
use crate::plan::Pipeline;
use crate::printer::Printer;
use crate::remote_cache::{RemoteCache, RemoteLink};
use crate::run_report::{RunReport, StageReport, Status};
use crate::store::OutputEntry;
use crate::store::Store;

/// Which stages `--force` reruns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    /// None.
    #[default]
    None,
    /// Every selected stage.
    All,
    /// These stages.
    Stages(Vec<String>),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages to bring up to date (with what they need); empty means all.
    pub targets: Vec<String>,
    /// Stages to rerun even when cached.
    pub force: Force,
    /// Decide what would run, change nothing.
    pub dry_run: bool,
    /// Stages run at once.
    pub jobs: usize,
    /// Print one line per stage as it finishes.
    pub print_stages: bool,
    /// A shared cache to ask on a local miss (see [`crate::remote_cache`]).
    pub remote: Option<Arc<dyn RemoteCache>>,
    /// Where stages that must run execute (see [`crate::executor`]); `None` runs them here.
    pub executor: Option<Arc<dyn Executor>>,
}

/// Brings the selected stages up to date and returns what happened.
/// The caller holds the store lock (except for a dry run, which writes nothing).
pub fn run(
    pipeline: &Pipeline<'_>,
    store: &Store,
    options: &RunOptions,
    printer: &Printer,
) -> anyhow::Result<RunReport> {
    let lock_file_path = lock_path(&pipeline.manifest.path);
    let parsed_copy = parsed_copy_path(store.root(), &lock_file_path);
    let stat_cache_path = store.root().join("stat-cache.json");
    // The two machine files a run reads first, read at once: for a large pipeline
    // each is a few megabytes of JSON.
    let (loaded, stat_cache) = std::thread::scope(|scope| {
        let stat_cache = scope.spawn(|| StatCache::load(&stat_cache_path));
        let loaded = LockFile::load_cached(&lock_file_path, &parsed_copy);
        let stat_cache = stat_cache
            .join()
            .unwrap_or_else(|_| StatCache::load(&stat_cache_path));
        (loaded, stat_cache)
    });
    let mut lock = loaded?;
    lock.check_owner(
        &lock_file_path,
        &pipeline.manifest.path,
        &pipeline.manifest.name,
    )?;
    let manifest_name = pipeline
        .manifest
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let targets: Vec<usize> = if options.targets.is_empty() {
        pipeline.order().to_vec()
    } else {
        selected_ids(pipeline, &options.targets)?
    };
    if let Force::Stages(names) = &options.force {
        selected_ids(pipeline, names)?;
    }
    let selected = pipeline.closure(&targets);
    let executor: &dyn Executor = options.executor.as_deref().unwrap_or(&Local);
    let remote = options.remote.clone().map(RemoteLink::new);
    let env = JobEnv {
        pipeline,
        store,
        stat_cache: &stat_cache,
        printer,
        dry_run: options.dry_run,
        remote: remote.as_ref(),
        executor,
    };
    if !options.dry_run && executor.runs_here() && pipeline.preflight(&selected).is_err() {
        // A stage this machine cannot run (a CUDA stage on a laptop) is no
        // obstacle when its results come from the cache: only the stages a
        // dry run says would run must pass.
        let dry_env = JobEnv {
            dry_run: true,
            ..env
        };
        let would_run: Vec<usize> = schedule(&dry_env, &selected, &lock, options, |_, _| {})
            .into_iter()
            .filter(|(_, result)| !matches!(result, JobResult::Cached(_)))
            .map(|(id, _)| id)
            .collect();
        pipeline.preflight(&would_run)?;
    }
    let name_width = selected
        .iter()
        .map(|&i| pipeline.stages[i].name.len())
        .max()
        .unwrap_or(0);
    let results = schedule(&env, &selected, &lock, options, |id, result| {
        if options.print_stages {
            let report = stage_report(pipeline, executor, id, result);
            RunReport::print_stage(printer, &report, name_width);
        }
    });
    let stages: Vec<StageReport> = results
        .iter()
        .map(|(id, r)| stage_report(pipeline, executor, *id, r))
        .collect();
    let failed = || stages.iter().filter(|s| s.status == Status::Failed);
    let report = RunReport {
        pipeline: pipeline.manifest.name.clone(),
        ok: results
            .iter()
            .all(|(_, r)| !matches!(r.status(), Status::Failed | Status::Skipped)),
        bad_input: failed().next().is_some() && failed().all(|s| s.bad_input),
        stages,
    };
    if !options.dry_run {
        // A no-op run leaves the lockfile as it was: no need to render it again.
        let mut changed = !lock_file_path.exists();
        for (id, result) in &results {
            if let Some(done) = result.done() {
                let entry = LockEntry {
                    key: done.key,
                    record: done.record.clone(),
                    outputs: done
                        .outputs
                        .iter()
                        .map(|(k, o)| (k.clone(), o.hash))
                        .collect(),
                    metrics: headline_metrics(&done.metrics),
                };
                let name = &pipeline.stages[*id].name;
                if lock.stages.get(name) != Some(&entry) {
                    lock.stages.insert(name.clone(), entry);
                    changed = true;
                }
            }
        }
        let names: BTreeSet<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        let before = lock.stages.len();
        lock.stages.retain(|name, _| names.contains(name.as_str()));
        changed |= lock.stages.len() != before
            || lock.pipeline != pipeline.manifest.name
            || lock.manifest != manifest_name;
        lock.pipeline = pipeline.manifest.name.clone();
        lock.manifest = manifest_name;
        if changed {
            lock.save_cached(
                &lock_file_path,
                &previous_lock_path(store.root(), &lock_file_path),
                &parsed_copy,
            )?;
        }
    }
    // Only a cache: saving it after a dry run too makes the next `pipe status` fast.
    stat_cache.save(&stat_cache_path)?;
    Ok(report)
}

/// The ids `names` select (a matrix stage's name selects all its members).
fn selected_ids(pipeline: &Pipeline<'_>, names: &[String]) -> anyhow::Result<Vec<usize>> {
    let mut ids = Vec::new();
    for name in names {
        let found = pipeline.select(name);
        if found.is_empty() {
            return Err(unknown_stage(pipeline, name));
        }
        ids.extend(found);
    }
    Ok(ids)
}

fn unknown_stage(pipeline: &Pipeline<'_>, name: &str) -> anyhow::Error {
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    anyhow::Error::new(crate::UsageError(format!(
        "no stage named '{name}' in {}{}; its stages are: {}",
        pipeline.manifest.path.display(),
        crate::diag::did_you_mean(name, names.iter().copied()),
        names.join(", ")
    )))
}

fn stage_report(
    pipeline: &Pipeline<'_>,
    executor: &dyn Executor,
    id: usize,
    result: &JobResult,
) -> StageReport {
    let stage = &pipeline.stages[id];
    // A stage reached its executor when it ran, or failed after its key was known.
    let executed = matches!(
        result,
        JobResult::Ran(_)
            | JobResult::Failed {
                reason: Some(_),
                ..
            }
    );
    let job = executed.then(|| executor.job(&stage.name)).flatten();
    let bad_input = matches!(result, JobResult::Failed { error, .. } if BadInput::is_in(error));
    let (key, seconds, reason, headline, error) = match result {
        JobResult::Ran(done) | JobResult::Cached(done) => (
            Some(done.key),
            done.seconds,
            done.reason.clone(),
            done.headline.clone(),
            None,
        ),
        JobResult::WouldRun { key, reason } => (*key, 0.0, Some(reason.clone()), None, None),
        JobResult::Failed {
            key,
            reason,
            error,
            log_tail,
            seconds,
        } => {
            let mut message = format!("{error:#}");
            if let Some(tail) = log_tail {
                message.push('\n');
                message.push_str(tail);
            }
            (*key, *seconds, reason.clone(), None, Some(message))
        }
        JobResult::Skipped { upstream } => (
            None,
            0.0,
            Some(format!("upstream {upstream} failed")),
            None,
            None,
        ),
    };
    StageReport {
        name: stage.name.clone(),
        kind: stage.kind.kind().to_string(),
        status: result.status(),
        key,
        seconds,
        reason,
        headline,
        error,
        bad_input,
        executor: executed.then(|| executor.name().to_string()),
        job_id: job.as_ref().map(|j| j.id.clone()),
        job_state: job.map(|j| j.state),
    }
}

/// What a finished stage hands to the stages downstream of it.
enum Handoff {
    /// Its outputs (it ran or was cached).
    Outputs(BTreeMap<String, OutputEntry>),
    /// None yet: in a dry run, it would run first.
    WillRun,
    /// None: it failed or was skipped.
    Stopped,
}

impl Handoff {
    fn of(result: &JobResult) -> Handoff {
        match result {
            JobResult::Ran(done) | JobResult::Cached(done) => {
                Handoff::Outputs(done.outputs.clone())
            }
            JobResult::WouldRun { .. } => Handoff::WillRun,
            JobResult::Failed { .. } | JobResult::Skipped { .. } => Handoff::Stopped,
        }
    }
}

/// Runs jobs for `selected` (in topological order) on up to `jobs` threads.
/// Returns results in the order stages finished.
/// A stage handed to a worker, with what its job needs.
struct Work<'l> {
    id: usize,
    upstream: BTreeMap<usize, Option<BTreeMap<String, OutputEntry>>>,
    locked: Option<&'l LockEntry>,
    forced: bool,
}

/// A worker of [`schedule`]'s pool: runs jobs until the work channel closes.
fn work(
    env: &JobEnv<'_>,
    work_rx: &std::sync::Mutex<mpsc::Receiver<Work<'_>>>,
    done_tx: mpsc::Sender<(usize, JobResult)>,
) {
    loop {
        // Only the waiting worker holds the lock; the others wait their turn.
        let next = match work_rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(work) = next else { return };
        let result = run_job(env, work.id, &work.upstream, work.locked, work.forced);
        // The receiver lives until every job has reported.
        let _ = done_tx.send((work.id, result));
    }
}

fn schedule(
    env: &JobEnv<'_>,
    selected: &[usize],
    lock: &LockFile,
    options: &RunOptions,
    on_done: impl Fn(usize, &JobResult),
) -> Vec<(usize, JobResult)> {
    let pipeline = env.pipeline;
    let forced = |id: usize| match &options.force {
        Force::None => false,
        Force::All => true,
        Force::Stages(names) => names.iter().any(|n| pipeline.select(n).contains(&id)),
    };
    let mut handoffs: BTreeMap<usize, Handoff> = BTreeMap::new();
    let mut finished: Vec<(usize, JobResult)> = Vec::new();
    let jobs = options.jobs.max(1);
    // Each stage is started once all its upstreams have finished; `waiting`
    // counts the upstreams not finished yet, so a start costs no scan of the DAG.
    let position: BTreeMap<usize, usize> = selected
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut waiting: Vec<usize> = selected
        .iter()
        .map(|&id| pipeline.dag.upstream(id).len())
        .collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); selected.len()];
    for (i, &id) in selected.iter().enumerate() {
        for up in pipeline.dag.upstream(id) {
            if let Some(&u) = position.get(up) {
                downstream[u].push(i);
            }
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = waiting
        .iter()
        .enumerate()
        .filter(|(_, w)| **w == 0)
        .map(|(i, _)| std::cmp::Reverse(i))
        .collect();
    // A pool of at most `jobs` workers, started as work arrives: a no-op
    // rerun of a thousand stages must not cost a thousand threads.
    let (work_tx, work_rx) = mpsc::channel::<Work<'_>>();
    let work_rx = std::sync::Mutex::new(work_rx);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<(usize, JobResult)>();
        let (mut running, mut workers) = (0usize, 0usize);
        loop {
            while running < jobs
                && let Some(std::cmp::Reverse(i)) = ready.pop()
            {
                let id = selected[i];
                let ups = pipeline.dag.upstream(id);
                if let Some(&bad) = ups
                    .iter()
                    .find(|u| matches!(handoffs.get(u), Some(Handoff::Stopped)))
                {
                    let result = JobResult::Skipped {
                        upstream: pipeline.stages[bad].name.clone(),
                    };
                    on_done(id, &result);
                    handoffs.insert(id, Handoff::Stopped);
                    finished.push((id, result));
                    for &d in &downstream[i] {
                        waiting[d] -= 1;
                        if waiting[d] == 0 {
                            ready.push(std::cmp::Reverse(d));
                        }
                    }
                    continue;
                }
                let upstream: BTreeMap<usize, _> = ups
                    .iter()
                    .map(|&u| {
                        let outputs = match handoffs.get(&u) {
                            Some(Handoff::Outputs(o)) => Some(o.clone()),
                            _ => None,
                        };
                        (u, outputs)
                    })
                    .collect();
                running += 1;
                if workers < running {
                    workers += 1;
                    let (work_rx, done_tx) = (&work_rx, done_tx.clone());
                    scope.spawn(move || work(env, work_rx, done_tx));
                }
                let work = Work {
                    id,
                    upstream,
                    locked: lock.stages.get(&pipeline.stages[id].name),
                    forced: forced(id),
                };
                // The workers live until `work_tx` is dropped below.
                let _ = work_tx.send(work);
            }
            if running == 0 {
                break;
            }
            let Ok((id, result)) = done_rx.recv() else {
                break;
            };
            running -= 1;
            on_done(id, &result);
            handoffs.insert(id, Handoff::of(&result));
            finished.push((id, result));
            for &d in &downstream[position[&id]] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(std::cmp::Reverse(d));
                }
            }
        }
        drop(work_tx);
    });
    finished
}
