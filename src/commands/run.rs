//! `pipe run`.

use std::sync::Arc;
use std::time::Instant;

use pipe_engine::executor::slurm::{Slurm, gpu_warnings};
use pipe_engine::executor::{Executor, ExecutorChoice};
use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::{
    Force, Pipeline, Printer, RunOptions, RunReport, Status, Store, Tone, UsageError, run,
};
use pipe_remote::Remote;

use crate::Verdict;
use crate::cli::{ExecutorArg, RunArgs};
use crate::commands::gc::human_bytes;
use crate::commands::transfer::{as_cache, for_run, transfer_bar};
use crate::workspace;

/// Jobs in a cluster's queue at once when `--jobs` is not given.
const CLUSTER_JOBS: usize = 64;

/// Runs the pipeline (or the named stages and what they need).
pub fn exec(args: RunArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    let (file, targets) = workspace::split_file_and_stages(&args.args)?;
    let raw: Vec<String> = std::env::args().collect();
    if let Some(stage) = stage_after_bare_force(&raw, &targets) {
        return Err(UsageError(format!(
            "`--force {stage}` would rerun every selected stage, not just {stage}\n  \
             help: write `--force={stage}` to rerun only {stage}; a bare `--force` after the \
             stages (`pipe run {} {stage} --force`) reruns all of them",
            file.display()
        ))
        .into());
    }
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let store = workspace::open_store(&pipeline)?;
    let remote = for_run(&pipeline, args.no_remote)?;
    let _lock = if args.dry_run {
        None
    } else {
        let lock = workspace::lock_store(&store, !args.no_wait, printer)?;
        store.clean_tmp()?;
        Some(lock)
    };
    let force = if args.force.is_empty() {
        Force::None
    } else if args.force.iter().any(String::is_empty) {
        Force::All
    } else {
        Force::Stages(args.force)
    };
    let executor = if args.dry_run {
        None
    } else {
        executor(&pipeline, args.executor, printer)?
    };
    let jobs = args.jobs.unwrap_or_else(|| match &executor {
        // A cluster's queue holds what its nodes cannot start yet: submit every stage
        // that is ready, up to a bound that keeps one polling thread per job cheap.
        Some(cluster) if !cluster.runs_here() => CLUSTER_JOBS,
        _ => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    });
    let started = Instant::now();
    let options = RunOptions {
        targets,
        force,
        dry_run: args.dry_run,
        jobs,
        print_stages: !args.json,
        remote: as_cache(&remote),
        executor,
    };
    let report = run(&pipeline, &store, &options, printer)?;
    if args.json {
        crate::output::answer_json(&report)?;
    } else {
        report.print_summary(printer, started.elapsed().as_secs_f64());
    }
    let pushed = match (&remote, args.push) {
        (Some(remote), true) => push_results(remote, &store, &report, printer),
        (None, true) => {
            printer.error(&anyhow::anyhow!(
                "--push: {} names no remote cache; add `remote: s3://bucket/prefix` to it or set {}",
                pipeline.manifest.path.display(),
                pipe_remote::REMOTE_ENV
            ));
            false
        }
        _ => true,
    };
    Ok(if report.ok && pushed {
        Verdict::Success
    } else if report.bad_input {
        Verdict::BadInput
    } else {
        Verdict::Failure
    })
}

/// The stage named right after a bare `--force` in the command line `raw`: clap reads
/// `--force finetune` as "force everything" and `finetune` as a stage to run, which is
/// never what the user meant (`--force=STAGE` forces one stage).
fn stage_after_bare_force<'a>(raw: &[String], stages: &'a [String]) -> Option<&'a str> {
    raw.windows(2)
        .filter(|pair| pair[0] == "--force")
        .find_map(|pair| stages.iter().find(|s| **s == pair[1]))
        .map(String::as_str)
}

/// The executor `--executor` (or else the manifest's `executor:`) names; `None` for local.
fn executor(
    pipeline: &Pipeline<'_>,
    flag: Option<ExecutorArg>,
    printer: &Printer,
) -> anyhow::Result<Option<Arc<dyn Executor>>> {
    let choice = match flag {
        Some(ExecutorArg::Local) => ExecutorChoice::Local,
        Some(ExecutorArg::Slurm) => ExecutorChoice::Slurm,
        None => pipeline.manifest.executor.unwrap_or(ExecutorChoice::Local),
    };
    if choice == ExecutorChoice::Local {
        return Ok(None);
    }
    let program = std::env::current_exe()?;
    let slurm = Slurm::new(vec![program.into_os_string(), "exec-stage".into()])?;
    for warning in gpu_warnings(pipeline, pipeline.order()) {
        printer.warn(&warning);
    }
    Ok(Some(Arc::new(slurm)))
}

/// Uploads the results of the stages that ran or were restored; false (after
/// printing the cause) when the upload failed.
fn push_results(remote: &Remote, store: &Store, report: &RunReport, printer: &Printer) -> bool {
    let keys: Vec<_> = report
        .stages
        .iter()
        .filter(|s| matches!(s.status, Status::Ran | Status::Cached))
        .filter_map(|s| s.key.map(|key| (s.name.clone(), key)))
        .collect();
    let bar = transfer_bar(printer, "Pushing");
    let result = remote.push(store, &keys, &bar);
    bar.finish_and_clear();
    match result {
        Ok(pushed) => {
            printer.status(
                "Pushed",
                Tone::Good,
                &format!(
                    "{} stage(s), {} in {} object(s), to {}",
                    pushed.stages,
                    human_bytes(pushed.bytes),
                    pushed.objects,
                    remote.location()
                ),
            );
            true
        }
        Err(error) => {
            printer.error(&error.context(format!("--push: cannot push to {}", remote.location())));
            false
        }
    }
}
