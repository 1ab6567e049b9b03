//! `pipe status`: a dry run, explained.

use pipe_engine::{Force, Printer, RunOptions, Status, run};

use crate::Outcome;
use crate::cli::StatusArgs;
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
    };
    let report = run(&pipeline, &store, &options, printer)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let pending = report
            .stages
            .iter()
            .filter(|s| s.status == Status::WouldRun)
            .count();
        let line = if pending == 0 {
            format!("{}: everything is up to date", pipeline.manifest.name)
        } else {
            format!(
                "{}: {pending} of {} stages would run",
                pipeline.manifest.name,
                report.stages.len()
            )
        };
        printer.line(&line);
    }
    Ok(if report.ok {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
