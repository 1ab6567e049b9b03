//! `pipe push`: upload the lockfile's results to the remote cache.

use pipe_engine::remote::RemoteCache;
use pipe_engine::{Printer, Tone};

use crate::Outcome;
use crate::cli::TransferArgs;
use crate::commands::gc::human_bytes;
use crate::commands::remote::{lock_store, locked_keys, require, transfer_bar};
use crate::workspace;

/// Uploads the results of the selected stages (default: all in the lockfile).
pub fn exec(args: TransferArgs, printer: &Printer) -> anyhow::Result<Outcome> {
    let registry = pipe_stages::registry();
    let (file, stages) = workspace::split_file_and_stages(&args.args)?;
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let remote = require(&pipeline)?;
    let store = workspace::open_store(&pipeline)?;
    let keys = locked_keys(&pipeline, &stages)?;
    let _lock = lock_store(&store, !args.no_wait, printer)?;
    let bar = transfer_bar(printer, "Pushing");
    let result = remote.push(&store, &keys, &bar);
    bar.finish_and_clear();
    match result {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(Outcome::Success)
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
            Ok(Outcome::Success)
        }
        Err(error) => {
            printer.error(&error.context(format!("cannot push to {}", remote.location())));
            Ok(Outcome::Failure)
        }
    }
}
