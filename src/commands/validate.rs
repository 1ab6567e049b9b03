//! `pipe validate`.

use pipe_engine::{Printer, Tone};

use crate::Verdict;
use crate::cli::ValidateArgs;
use crate::workspace;

/// Checks a manifest; a bad one is reported like any manifest error (exit 2).
pub fn exec(args: ValidateArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    let file = match args.file {
        Some(f) => f,
        None => workspace::default_manifest()?,
    };
    let pipeline = workspace::load(&file, &registry, args.manifest.allow_outside)?;
    let order: Vec<&str> = pipeline
        .order()
        .iter()
        .map(|&i| pipeline.stages[i].name.as_str())
        .collect();
    printer.status(
        "Valid",
        Tone::Good,
        &format!(
            "{} ({} stages: {})",
            file.display(),
            order.len(),
            order.join(", ")
        ),
    );
    Ok(Verdict::Success)
}
