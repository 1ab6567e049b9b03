//! `pipe doctor`: what this machine offers `pipe`.

use pipe_engine::{Printer, Tone};

use crate::Outcome;
use crate::cli::DoctorArgs;

/// Reports the store location and the ONNX Runtime library.
pub fn exec(args: DoctorArgs, printer: &Printer) -> anyhow::Result<Outcome> {
    let cwd = std::env::current_dir()?;
    let store = pipe_engine::store_dir(&cwd);
    let runtime = pipe_stages::runtime_report();
    if args.json {
        let value = serde_json::json!({
            "pipe_version": env!("CARGO_PKG_VERSION"),
            "store": store,
            "onnxruntime": runtime,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        printer.status("pipe", Tone::Good, env!("CARGO_PKG_VERSION"));
        printer.status(
            "store",
            Tone::Good,
            &format!("{} (for manifests in this folder)", store.display()),
        );
        match &runtime {
            Ok(info) => printer.status("runtime", Tone::Good, &info.to_string()),
            Err(e) => printer.status("runtime", Tone::Bad, e),
        }
    }
    Ok(if runtime.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
