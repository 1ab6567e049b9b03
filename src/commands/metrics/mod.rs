//! `pipe metrics`: the stages' metrics from the lockfile, alone or compared
//! with a git revision or the previous run.

mod baseline;
mod table;
mod values;

use std::path::{Path, PathBuf};

use pipe_engine::lockfile::{self, LockFile, lock_path};
use pipe_engine::{Pipeline, Printer, Tone, UsageError};
use serde_json::Value;

use self::baseline::Baseline;
use self::table::Table;
use self::values::{Change, Metrics, compare, format_number};
use crate::Verdict;
use crate::cli::MetricsArgs;
use crate::workspace;

/// Shows the metrics of the last run, or how they changed.
pub fn exec(args: MetricsArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let MetricsArgs {
        file,
        diff,
        all,
        json,
        manifest,
    } = args;
    let (file, rev) = settle_file_and_rev(file, diff)?;
    let registry = pipe_stages::registry();
    let pipeline = workspace::load(&file, &registry, manifest.allow_outside)?;
    let order: Vec<&str> = pipeline
        .order()
        .iter()
        .map(|&i| pipeline.stages[i].name.as_str())
        .collect();
    let lock_file = lock_path(&pipeline.manifest.path);
    let baseline = match rev {
        Some(rev) => {
            let (baseline, note) = Baseline::resolve(rev.as_deref(), &lock_file)?;
            if let Some(note) = note {
                printer.status("Note", Tone::Quiet, &note);
            }
            Some(baseline)
        }
        None => None,
    };
    // Missing data is a failure (exit 1), not a usage error: say why and stop.
    let store_dir = pipe_engine::store_dir(&pipeline.manifest.dir);
    let loaded = read_current(&lock_file, &pipeline).and_then(|current| {
        let old = baseline
            .map(|b| b.read(&lock_file, &store_dir).map(|old| (b, old)))
            .transpose()?;
        Ok((current, old))
    });
    let (current, old) = match loaded {
        Ok(loaded) => loaded,
        // Another manifest's lockfile is a usage error (exit 2), not missing data.
        Err(error) if error.downcast_ref::<UsageError>().is_some() => return Err(error),
        Err(error) => {
            printer.error(&error);
            return Ok(Verdict::Failure);
        }
    };
    let current = Metrics::of_lock(&current, &order);
    match old {
        Some((baseline, old)) => {
            let old = Metrics::of_lock(&old, &order);
            if !json {
                printer.status(
                    "Comparing",
                    Tone::Quiet,
                    &format!("{} with {baseline}", lock_file.display()),
                );
            }
            show_diff(&old, &current, &order, &baseline, all, json, printer)?;
        }
        None => show(&current, &lock_file, json, printer)?,
    }
    Ok(Verdict::Success)
}

/// The manifest and `--diff`'s revision. `pipe metrics --diff student.yaml`
/// reads the manifest as the revision (`--diff` takes an optional value), so
/// a YAML file there with no other manifest named is taken as the manifest.
fn settle_file_and_rev(
    file: Option<PathBuf>,
    diff: Option<Option<String>>,
) -> anyhow::Result<(PathBuf, Option<Option<String>>)> {
    match (file, diff) {
        (None, Some(Some(rev))) if rev.ends_with(".yaml") || rev.ends_with(".yml") => {
            Ok((PathBuf::from(rev), Some(None)))
        }
        (Some(file), diff) => Ok((file, diff)),
        (None, diff) => Ok((workspace::default_manifest()?, diff)),
    }
}

/// The lockfile of the last run; an error when the pipeline has not run yet.
fn read_current(lock_file: &Path, pipeline: &Pipeline<'_>) -> anyhow::Result<LockFile> {
    let manifest = &pipeline.manifest;
    if !lock_file.exists() {
        anyhow::bail!(
            "no metrics yet: run `pipe run {}` first",
            manifest.path.display()
        );
    }
    lockfile::load_for(&manifest.path, &manifest.name)
}

/// One row per stage and numeric metric, or every metric as JSON.
fn show(metrics: &Metrics, lock_file: &Path, json: bool, printer: &Printer) -> anyhow::Result<()> {
    if json {
        return print_json(&metrics.to_json());
    }
    let numeric = metrics.numeric();
    if numeric.is_empty() {
        printer.status(
            "Nothing",
            Tone::Quiet,
            &format!(
                "no stage in `{}` recorded numeric metrics",
                lock_file.display()
            ),
        );
        return Ok(());
    }
    let mut table = Table::new(&["stage", "metric", "value"], 2);
    for (stage, flat) in numeric.stages() {
        for (metric, value) in flat {
            table.row(vec![stage.into(), metric.clone(), cell(Some(value))], false);
        }
    }
    Ok(table.print(printer)?)
}

/// The metrics that changed since `baseline` (every one with `all`), as a table or JSON.
fn show_diff(
    old: &Metrics,
    new: &Metrics,
    order: &[&str],
    baseline: &Baseline,
    all: bool,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<()> {
    let keep = |changes: Vec<Change>| -> Vec<Change> {
        changes.into_iter().filter(|c| all || c.changed()).collect()
    };
    if json {
        let changes = keep(compare(old, new, order));
        return print_json(&serde_json::to_value(changes)?);
    }
    let changes = keep(compare(&old.numeric(), &new.numeric(), order));
    if changes.is_empty() {
        printer.status(
            "Unchanged",
            Tone::Quiet,
            &format!("no numeric metric differs from {baseline}"),
        );
        return Ok(());
    }
    let mut table = Table::new(&["stage", "metric", "old", "new", "change"], 2);
    for change in &changes {
        let delta = match &change.delta {
            Some(delta) if delta.as_f64().is_some_and(|d| d > 0.0) => {
                format!("+{}", format_number(delta))
            }
            Some(delta) => format_number(delta),
            None => "—".into(),
        };
        table.row(
            vec![
                change.stage.clone(),
                change.metric.clone(),
                cell(change.old.as_ref()),
                cell(change.new.as_ref()),
                delta,
            ],
            all && change.changed(),
        );
    }
    Ok(table.print(printer)?)
}

/// A metric's table cell: the number, compactly, or `—` when missing.
fn cell(value: Option<&Value>) -> String {
    match value {
        Some(Value::Number(number)) => format_number(number),
        Some(other) => other.to_string(),
        None => "—".into(),
    }
}

/// One JSON document on stdout.
fn print_json(value: &Value) -> anyhow::Result<()> {
    crate::output::answer_json(value)
}
