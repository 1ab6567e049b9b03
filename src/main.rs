//! `pipe`: the command line. Argument definitions are in `cli.rs`; each
//! subcommand is a module of `commands/` with an `exec` function.

mod cli;
mod commands;
mod output;
mod workspace;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use pipe_engine::{ColorChoice, ManifestError, Printer, StoreBusy, UsageError};

use crate::cli::{Cli, Color, Command};

/// A subcommand's verdict, which becomes the exit code.
pub enum Verdict {
    /// Everything worked (exit 0).
    Success,
    /// A stage or check failed (exit 1).
    Failure,
    /// Stages failed, each on its input ([`pipe_engine::BadInput`]: a truncated checkpoint,
    /// a tensor of the wrong shape): exit 2, as for a bad manifest.
    BadInput,
}

fn main() -> ExitCode {
    let cli = parse_args();
    let machine = match &cli.command {
        Command::Run(a) => a.json,
        Command::Status(a) => a.json,
        Command::Show(a) => a.json,
        Command::Metrics(a) => a.json,
        Command::Gc(a) => a.json,
        Command::Doctor(a) => a.json,
        Command::Predict(a) => a.json,
        Command::Push(a) | Command::Pull(a) => a.json,
        _ => false,
    };
    let color = match cli.color {
        Color::Auto => ColorChoice::Auto,
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
    };
    let printer = Printer::new(color, cli.quiet, machine);
    let result = match cli.command {
        Command::Run(args) => commands::run::exec(args, &printer),
        Command::Status(args) => commands::status::exec(args, &printer),
        Command::Dag(args) => commands::dag::exec(args),
        Command::Validate(args) => commands::validate::exec(args, &printer),
        Command::Show(args) => commands::show::exec(args),
        Command::Metrics(args) => commands::metrics::exec(args, &printer),
        Command::Push(args) => commands::push::exec(args, &printer),
        Command::Pull(args) => commands::pull::exec(args, &printer),
        Command::Gc(args) => commands::gc::exec(args, &printer),
        Command::Doctor(args) => commands::doctor::exec(args, &printer),
        Command::Init(args) => commands::init::exec(args, &printer),
        Command::Predict(args) => commands::predict::exec(args, &printer),
        Command::Serve(args) => commands::serve::exec(args, &printer),
        Command::PullModel(args) => commands::pull_model::exec(args, &printer),
        Command::Schema => commands::schema::exec(),
        Command::ExecStage(args) => commands::exec_stage::exec(args),
    };
    match result {
        Ok(Verdict::Success) => ExitCode::SUCCESS,
        Ok(Verdict::Failure) => ExitCode::from(1),
        Ok(Verdict::BadInput) => ExitCode::from(2),
        Err(error) => {
            if output::is_broken_pipe(&error) {
                // `pipe dag | head`: the reader left; that is not an error.
                return ExitCode::SUCCESS;
            }
            report_error(&printer, &error);
            ExitCode::from(2)
        }
    }
}

/// The command line, with clap's own output (help, usage errors) coloured as `--color`
/// says: clap reads it only after parsing, too late for those.
fn parse_args() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut choice = None;
    for (i, arg) in args.iter().enumerate() {
        let value = match arg.to_str() {
            Some("--color") => args.get(i + 1).and_then(|v| v.to_str()),
            Some(other) => other.strip_prefix("--color="),
            None => None,
        };
        match value {
            Some("never") => choice = Some(clap::ColorChoice::Never),
            Some("always") => choice = Some(clap::ColorChoice::Always),
            Some("auto") => choice = Some(clap::ColorChoice::Auto),
            _ => {}
        }
    }
    let mut command = Cli::command();
    if let Some(choice) = choice {
        command = command.color(choice);
    }
    let matches = command.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn report_error(printer: &Printer, error: &anyhow::Error) {
    if let Some(manifest) = error.downcast_ref::<ManifestError>() {
        for diagnostic in &manifest.diagnostics {
            let one = ManifestError::single(diagnostic.clone(), manifest.source_text.clone());
            printer.error(&anyhow::anyhow!("{one}"));
        }
        let n = manifest.diagnostics.len();
        if n > 1 {
            printer.line(&format!("{} problems in the manifest", n));
        }
    } else if error.downcast_ref::<UsageError>().is_some()
        || error.downcast_ref::<StoreBusy>().is_some()
    {
        printer.error(&anyhow::anyhow!("{error}"));
    } else {
        printer.error(error);
    }
}
