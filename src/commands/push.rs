//! `pipe push`: upload the lockfile's results to the remote cache.

use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::{Printer, Tone};

use crate::Verdict;
use crate::cli::TransferArgs;
use crate::commands::gc::human_bytes;
use crate::commands::transfer::transfer;

/// Uploads the results of the selected stages (default: all in the lockfile).
pub fn exec(args: TransferArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let (remote, result) = transfer(&args, printer, "Pushing", |remote, store, keys, bar| {
        remote.push(store, keys, bar)
    })?;
    match result {
        Ok(report) if args.json => {
            crate::output::answer_json(&report)?;
            Ok(Verdict::Success)
        }
        Ok(report) => {
            printer.status(
                "Pushed",
                Tone::Good,
                &format!(
                    "{} stage(s), {} in {} object(s), to {} ({} already there)",
                    report.stages,
                    human_bytes(report.bytes),
                    report.objects,
                    remote.location(),
                    report.present
                ),
            );
            Ok(Verdict::Success)
        }
        Err(error) => {
            printer.error(&error.context(format!("cannot push to {}", remote.location())));
            Ok(Verdict::Failure)
        }
    }
}
