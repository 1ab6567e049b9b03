//! `pipe pull`: download the lockfile's results from the remote cache.

use pipe_engine::remote_cache::RemoteCache;
use pipe_engine::{Printer, Tone};

use crate::Verdict;
use crate::cli::TransferArgs;
use crate::commands::gc::human_bytes;
use crate::commands::transfer::transfer;

/// Downloads the results of the selected stages (default: all in the lockfile)
/// into the local store.
pub fn exec(args: TransferArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let (remote, result) = transfer(&args, printer, "Pulling", |remote, store, keys, bar| {
        remote.pull(store, keys, bar)
    })?;
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            printer.error(&error.context(format!("cannot pull from {}", remote.location())));
            return Ok(Verdict::Failure);
        }
    };
    if args.json {
        crate::output::answer_json(&report)?;
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
        Verdict::Success
    } else {
        Verdict::Failure
    })
}
