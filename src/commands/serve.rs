//! `pipe serve BUNDLE`: an HTTP server for an exported bundle.

use std::net::SocketAddr;

use anyhow::Context;
use pipe_engine::{Printer, Tone};
use pipe_serve::signal::TerminationSignals;
use pipe_serve::{ServeOptions, Server};

use crate::Verdict;
use crate::cli::ServeArgs;
use crate::commands::predict::{bundle_dir, choose_device, is_missing_runtime, open_bundle};

/// Serves until SIGTERM or Ctrl-C; a bundle that cannot be found or opened is a failure
/// (exit 1), an address that cannot be bound an environment problem (exit 2).
pub fn exec(args: ServeArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    // Before any thread starts (ONNX Runtime's included), so that every thread inherits it.
    let signals = TerminationSignals::block().context("cannot block SIGTERM and SIGINT")?;
    let device = choose_device(&args.device, printer)?;
    let opened = bundle_dir(&args.bundle, args.manifest.as_deref())
        .and_then(|dir| open_bundle(&dir, device, args.threads));
    let bundle = match opened {
        Ok(bundle) => bundle,
        Err(error)
            if error.downcast_ref::<pipe_engine::ManifestError>().is_some()
                || is_missing_runtime(&error) =>
        {
            return Err(error);
        }
        Err(error) => {
            printer.error(&error);
            return Ok(Verdict::Failure);
        }
    };
    let dir = bundle.dir().display().to_string();
    let options = ServeOptions {
        addr: SocketAddr::new(args.host, args.port),
        max_batch: usize::try_from(args.max_batch).context("--max-batch is too large")?,
        queue: usize::try_from(args.queue).context("--queue is too large")?,
        max_body_bytes: args.max_body_bytes,
        io_threads: 4,
        access_log: true,
        max_connections: args.max_connections,
    };
    let server = Server::start(bundle, &options)?;
    // The address is the answer (with `--port 0`, the only way to learn the port): stdout,
    // even with `--quiet`. A reader that took it and left (`| head -1`) does not stop the
    // server.
    let _ = crate::output::answer(&printer.status_stdout(
        "Listening",
        Tone::Good,
        &format!(
            "on http://{} (bundle {dir}); POST /predict, GET /health, GET /metadata",
            server.addr()
        ),
    ));
    let budget = server.budget();
    if budget.lowered {
        printer.warn(&format!(
            "--max-connections is more than the descriptor limit ({}) allows; \
             raise `ulimit -n` for more",
            budget.limit
        ));
    }
    printer.status(
        "Serving",
        Tone::Quiet,
        &format!(
            "at most {} connections at once (descriptor limit {}); more are answered 503",
            budget.connections, budget.limit
        ),
    );
    let signal = signals.wait().context("cannot wait for a signal")?;
    printer.status(
        "Stopping",
        Tone::Quiet,
        &format!("on {signal}: answering the requests already queued"),
    );
    server.stop();
    printer.status("Stopped", Tone::Good, "");
    Ok(Verdict::Success)
}
