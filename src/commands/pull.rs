//! `pipe pull`: download the lockfile's results from the remote cache.

use pipe_engine::remote::RemoteCache;
use pipe_engine::{Printer, Tone};

use crate::Outcome;
use crate::cli::TransferArgs;
use crate::commands::gc::human_bytes;
use crate::commands::remote::{lock_store, locked_keys, require, transfer_bar};
use crate::workspace;

/// Downloads the results of the selected stages (default: all in the lockfile)
/// into the local store.
pub fn exec(args: TransferArgs, printer: &Printer) -> anyhow::Result<Outcome> {
    let registry = pipe_stages::registry();
    let (file, stages) = workspace::split_file_and_stages(&args.args)?;
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let remote = require(&pipeline)?;
    let store = workspace::open_store(&pipeline)?;
    let keys = locked_keys(&pipeline, &stages)?;
    let _lock = lock_store(&store, !args.no_wait, printer)?;
    let bar = transfer_bar(printer, "Pulling");
    let result = remote.pull(&store, &keys, &bar);
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            printer.error(&error.context(format!("cannot pull from {}", remote.location())));
            return Ok(Outcome::Failure);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        printer.status(
            "Pulled",
            Tone::Good,
            &format!(
                "{} stage(s), {} in {} object(s), from {} ({} already here)",
                report.stages,
                human_bytes(report.bytes),
                report.objects,
                remote.location(),
                report.present
            ),
        );
        if !report.missing.is_empty() {
            printer.error(&anyhow::anyhow!(
                "the remote has no results for: {}; push them from a clone that ran them (`pipe push`)",
                report.missing.join(", ")
            ));
        }
    }
    Ok(if report.missing.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
