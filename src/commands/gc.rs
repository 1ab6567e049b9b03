//! `pipe gc`.

use pipe_engine::gc::{collect, find_lockfiles};
use pipe_engine::{Printer, Store, Tone};

use crate::Outcome;
use crate::cli::GcArgs;
use crate::workspace;

/// Removes what no lockfile in the manifest's folder (recursively) references.
pub fn exec(args: GcArgs, printer: &Printer) -> anyhow::Result<Outcome> {
    let file = match args.file {
        Some(f) => f,
        None => workspace::default_manifest()?,
    };
    let project = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let store = Store::open(&pipe_engine::store_dir(project))?;
    let _lock = workspace::lock_store(&store, true, printer)?;
    let lockfiles = find_lockfiles(project);
    let report = collect(&store, &lockfiles, args.grace, args.dry_run)?;
    if args.json {
        crate::output::answer_json(&report)?;
    } else {
        let verb = if args.dry_run { "Would free" } else { "Freed" };
        crate::output::answer(&printer.status_stdout(
            verb,
            Tone::Good,
            &format!(
                "{} in {} objects, {} records, {} checkpoints, {} trash batches (kept what {} lockfile(s) reference)",
                human_bytes(report.bytes),
                report.objects,
                report.records,
                report.scratch,
                report.trash,
                report.lockfiles.len()
            ),
        ))?;
    }
    Ok(Outcome::Success)
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
