//! `pipe init`.

use pipe_engine::{Printer, Tone};
use pipe_stages::init::{InitOptions, TerminalPrompter, init};

use crate::Verdict;
use crate::cli::InitArgs;

/// Writes a manifest for a data file, asking what the flags leave open.
pub fn exec(args: InitArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let options = InitOptions {
        from: args.from,
        output: args.output,
        text: args.text,
        label: args.label,
        // A flag can only say yes; leaving it out lets `init` ask or guess.
        multi_label: args.multi_label.then_some(true),
        test: args.test,
        validation: args.validation,
        shuffle: args.shuffle.then_some(true),
        model: args.model,
        lora: args.lora.then_some(true),
        epochs: args.epochs,
        device: args.device,
        hub_cache: None,
        yes: args.yes,
        force: args.force,
    };
    let mut prompter = TerminalPrompter::stdio().quiet(printer.is_quiet());
    let written = init(options, &mut prompter)?;
    let shown = written.manifest.display();
    printer.status("Wrote", Tone::Good, &shown.to_string());
    if printer.is_quiet() {
        return Ok(Verdict::Success);
    }
    printer.line(&if written.trains {
        format!(
            "next: `pipe run {shown}` trains and evaluates the model; then \
             `pipe serve --manifest {shown} export-onnx` serves it"
        )
    } else {
        format!("next: `pipe run {shown}`")
    });
    Ok(Verdict::Success)
}
