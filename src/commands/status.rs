//! `pipe status`: a dry run, explained.

use pipe_engine::{Force, Printer, RunOptions, Status, remote, run};

use crate::Outcome;
use crate::cli::StatusArgs;
use crate::commands::remote::{as_cache, for_run};
use crate::workspace;

/// Prints what `pipe run` would do and why.
pub fn exec(args: StatusArgs, printer: &Printer) -> anyhow::Result<Outcome> {
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
        let pending = report
            .stages
            .iter()
            .filter(|s| s.status == Status::WouldRun)
            .count();
        let from_remote = report
            .stages
            .iter()
            .filter(|s| s.reason.as_deref() == Some(remote::WOULD_RESTORE))
            .count();
        let mut line = if pending == 0 && from_remote == 0 {
            format!("{}: everything is up to date", pipeline.manifest.name)
        } else {
            format!(
                "{}: {pending} of {} stages would run",
                pipeline.manifest.name,
                report.stages.len()
            )
        };
        if from_remote > 0 {
            line.push_str(&format!(
                ", {from_remote} would be restored from the remote"
            ));
        }
        printer.line(&line);
    }
    Ok(if report.ok {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
