//! `pipe run`.

use std::time::Instant;

use pipe_engine::{Force, Printer, RunOptions, Tone, run};

use crate::Outcome;
use crate::cli::RunArgs;
use crate::workspace;

/// Runs the pipeline (or the named stages and what they need).
pub fn exec(args: RunArgs, printer: &Printer) -> anyhow::Result<Outcome> {
    let registry = pipe_stages::registry();
    let (file, targets) = workspace::split_file_and_stages(&args.args)?;
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let store = workspace::open_store(&pipeline)?;
    let _lock = if args.dry_run {
        None
    } else {
        let lock = store.lock(!args.no_wait, |holder| {
            let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
            printer.status(
                "Waiting",
                Tone::Warn,
                &format!(
                    "for another pipe run{who} to release {}",
                    store.root().display()
                ),
            );
        })?;
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
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = Instant::now();
    let options = RunOptions {
        targets,
        force,
        dry_run: args.dry_run,
        jobs,
        print_stages: !args.json,
    };
    let report = run(&pipeline, &store, &options, printer)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_summary(printer, started.elapsed().as_secs_f64());
    }
    Ok(if report.ok {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
