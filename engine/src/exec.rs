//! Running a pipeline: independent stages in parallel, each brought up to
//! date by a job ([`crate::job`]); a failure stops its descendants while
//! unrelated branches finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use crate::hash::StatCache;
use crate::job::{JobEnv, JobResult, run_job};
use crate::lockfile::{LockEntry, LockFile, lock_path, previous_lock_path};
use crate::plan::Pipeline;
use crate::printer::Printer;
use crate::remote::{RemoteCache, RemoteLink};
use crate::report::{RunReport, StageReport, Status};
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
    /// A shared cache to ask on a local miss (see [`crate::remote`]).
    pub remote: Option<Arc<dyn RemoteCache>>,
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
    let mut lock = LockFile::load(&lock_file_path)?;
    let stat_cache_path = store.root().join("stat-cache.json");
    let stat_cache = StatCache::load(&stat_cache_path);
    let targets: Vec<usize> = if options.targets.is_empty() {
        pipeline.order.clone()
    } else {
        options
            .targets
            .iter()
            .map(|t| pipeline.id(t).ok_or_else(|| unknown_stage(pipeline, t)))
            .collect::<anyhow::Result<_>>()?
    };
    if let Force::Stages(names) = &options.force {
        for name in names {
            pipeline
                .id(name)
                .ok_or_else(|| unknown_stage(pipeline, name))?;
        }
    }
    let selected = pipeline.closure(&targets);
    let remote = options.remote.clone().map(RemoteLink::new);
    let env = JobEnv {
        pipeline,
        store,
        stat_cache: &stat_cache,
        printer,
        dry_run: options.dry_run,
        remote: remote.as_ref(),
    };
    let name_width = selected
        .iter()
        .map(|&i| pipeline.stages[i].name.len())
        .max()
        .unwrap_or(0);
    let results = schedule(&env, &selected, &lock, options, |id, result| {
        if options.print_stages {
            RunReport::print_stage(printer, &stage_report(pipeline, id, result), name_width);
        }
    });
    let report = RunReport {
        pipeline: pipeline.manifest.name.clone(),
        ok: results
            .iter()
            .all(|(_, r)| r.status != Status::Failed && r.status != Status::Skipped),
        stages: results
            .iter()
            .map(|(id, r)| stage_report(pipeline, *id, r))
            .collect(),
    };
    if !options.dry_run {
        for (id, result) in &results {
            if let (Status::Ran | Status::Cached, Some(key), Some(record), Some(outputs)) =
                (result.status, result.key, &result.record, &result.outputs)
            {
                lock.stages.insert(
                    pipeline.stages[*id].name.clone(),
                    LockEntry {
                        key,
                        record: record.clone(),
                        outputs: outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect(),
                        metrics: result.metrics.clone(),
                    },
                );
            }
        }
        let names: BTreeSet<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        lock.stages.retain(|name, _| names.contains(name.as_str()));
        lock.pipeline = pipeline.manifest.name.clone();
        lock.save(
            &lock_file_path,
            &previous_lock_path(store.root(), &lock_file_path),
        )?;
    }
    // Only a cache: saving it after a dry run too makes the next `pipe status` fast.
    stat_cache.save(&stat_cache_path)?;
    Ok(report)
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

fn stage_report(pipeline: &Pipeline<'_>, id: usize, result: &JobResult) -> StageReport {
    let stage = &pipeline.stages[id];
    StageReport {
        name: stage.name.clone(),
        kind: stage.kind.kind().to_string(),
        status: result.status,
        key: result.key,
        seconds: result.seconds,
        reason: result.reason.clone(),
        headline: result.headline.clone(),
        error: result.error.clone(),
    }
}

/// Runs jobs for `selected` (in topological order) on up to `jobs` threads.
/// Returns results in the order stages finished.
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
        Force::Stages(names) => names.contains(&pipeline.stages[id].name),
    };
    let mut results: BTreeMap<usize, JobResult> = BTreeMap::new();
    let mut finished: Vec<(usize, JobResult)> = Vec::new();
    let mut started: BTreeSet<usize> = BTreeSet::new();
    let jobs = options.jobs.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, JobResult)>();
        let mut running = 0usize;
        loop {
            for &id in selected {
                if started.contains(&id) || running >= jobs {
                    continue;
                }
                let ups = &pipeline.stages[id].upstream;
                if !ups.iter().all(|u| results.contains_key(u)) {
                    continue;
                }
                started.insert(id);
                if let Some(&bad) = ups
                    .iter()
                    .find(|u| matches!(results[u].status, Status::Failed | Status::Skipped))
                {
                    let result = JobResult {
                        reason: Some(format!("upstream {} failed", pipeline.stages[bad].name)),
                        ..JobResult::empty(Status::Skipped, Instant::now())
                    };
                    on_done(id, &result);
                    results.insert(id, result.clone());
                    finished.push((id, result));
                    continue;
                }
                let upstream: BTreeMap<usize, _> = ups
                    .iter()
                    .map(|&u| (u, results[&u].outputs.clone()))
                    .collect();
                let locked = lock.stages.get(&pipeline.stages[id].name).cloned();
                let force = forced(id);
                let tx = tx.clone();
                running += 1;
                scope.spawn(move || {
                    let result = run_job(env, id, &upstream, locked.as_ref(), force);
                    // The receiver lives until every job has reported.
                    let _ = tx.send((id, result));
                });
            }
            if running == 0 {
                if started.len() == selected.len() {
                    break;
                }
                // Skips may have unblocked more stages: loop again.
                continue;
            }
            let Ok((id, result)) = rx.recv() else { break };
            running -= 1;
            on_done(id, &result);
            results.insert(id, result.clone());
            finished.push((id, result));
        }
    });
    finished
}
