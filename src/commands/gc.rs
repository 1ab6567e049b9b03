//! `pipe gc`.

use pipe_engine::gc::{collect, find_lockfiles};
use std::path::Path;

use pipe_engine::{Printer, Store, Tone, UsageError};

use crate::Verdict;
use crate::cli::GcArgs;
use crate::workspace;

/// Removes what no lockfile in the manifest's folder (recursively) references; without a
/// manifest, in the current folder, whatever manifests it holds.
pub fn exec(args: GcArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    // A store is a folder's, not a manifest's: without a manifest, the current folder's.
    let project = args
        .file
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let store_dir = pipe_engine::store_dir(project);
    if args.file.is_none() && !store_dir.is_dir() {
        return Err(UsageError(format!(
            "no store at {} to clean; name a manifest whose store to clean \
             (`pipe gc pipelines/student.yaml`)",
            store_dir.display()
        ))
        .into());
    }
    let store = Store::open(&store_dir)?;
    let _lock = workspace::lock_store(&store, true, printer)?;
    let verified = match args.verify {
        true => Some(pipe_engine::integrity::verify(
            &store.root().join("objects"),
            &store.damaged_dir(),
            args.dry_run,
        )?),
        false => None,
    };
    let lockfiles = find_lockfiles(project);
    let report = collect(&store, &lockfiles, args.grace, args.dry_run)?;
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(verified), Some(map)) = (&verified, json.as_object_mut()) {
            map.insert("verify".into(), serde_json::to_value(verified)?);
        }
        crate::output::answer_json(&json)?;
    } else {
        if let Some(verified) = &verified {
            for damaged in &verified.damaged {
                let text = match &damaged.moved_to {
                    Some(to) => format!(
                        "damaged store object `{}`: moved to `{}`",
                        damaged.object.display(),
                        to.display()
                    ),
                    None => format!("damaged store object `{}`", damaged.object.display()),
                };
                printer.warn(&text);
            }
            let tone = match verified.damaged.is_empty() {
                true => Tone::Good,
                false => Tone::Warn,
            };
            crate::output::answer(&printer.status_stdout(
                "Verified",
                tone,
                &format!(
                    "{} objects ({}): {} damaged",
                    verified.checked,
                    human_bytes(verified.bytes),
                    verified.damaged.len()
                ),
            ))?;
        }
        let verb = if args.dry_run { "Would free" } else { "Freed" };
        crate::output::answer(&printer.status_stdout(
            verb,
            Tone::Good,
            &format!(
                "{} in {} objects, {} records, {} checkpoints, {} trash batches, {} damaged objects (kept what {} lockfile(s) reference)",
                human_bytes(report.bytes),
                report.objects,
                report.records,
                report.scratch,
                report.trash,
                report.damaged,
                report.lockfiles.len()
            ),
        ))?;
    }
    Ok(Verdict::Success)
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
