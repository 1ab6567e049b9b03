//! `pipe status`: a dry run, explained.

use pipe_engine::{Force, Printer, RunOptions, Status, remote_cache, run};

use crate::Verdict;
use crate::cli::StatusArgs;
use crate::commands::transfer::{as_cache, for_run};
use crate::workspace;

/// Prints what `pipe run` would do and why.
pub fn exec(args: StatusArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    let (file, targets) = workspace::split_file_and_stages(&args.args)?;
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let store = workspace::open_store(&pipeline)?;
    let options = RunOptions {
        targets,
        force: Force::None,
        dry_run: true,
        jobs: 1,
        print_stages: !args.json,
        remote: as_cache(&for_run(&pipeline, args.no_remote)?),
        executor: None,
    };
    let report = run(&pipeline, &store, &options, printer)?;
    if args.json {
        crate::output::answer_json(&report)?;
    } else {
        let count = |status: Status| report.stages.iter().filter(|s| s.status == status).count();
        let pending = count(Status::WouldRun);
        let failed: Vec<&str> = report
            .stages
            .iter()
            .filter(|s| s.status == Status::Failed)
            .map(|s| s.name.as_str())
            .collect();
        let skipped = count(Status::Skipped);
        let from_remote = report
            .stages
            .iter()
            .filter(|s| s.reason.as_deref() == Some(remote_cache::WOULD_RESTORE))
            .count();
        let name = &pipeline.manifest.name;
        let total = report.stages.len();
        let mut line = if !failed.is_empty() {
            format!(
                "{name}: {} of {total} stages cannot run ({}), {skipped} would be skipped, \
                 {pending} would run",
                failed.len(),
                failed.join(", ")
            )
        } else if pending == 0 && from_remote == 0 {
            format!("{name}: everything is up to date")
        } else {
            format!("{name}: {pending} of {total} stages would run")
        };
        if from_remote > 0 {
            line.push_str(&format!(
                ", {from_remote} would be restored from the remote"
            ));
        }
        printer.line(&line);
    }
    Ok(if report.ok {
        Verdict::Success
    } else {
        Verdict::Failure
    })
}
