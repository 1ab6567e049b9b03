//! `pipe doctor`: what this machine offers `pipe`.

mod cpu;
mod runtime;

use pipe_engine::{Printer, Tone};

use crate::Verdict;
use crate::cli::DoctorArgs;

/// Reports the store location, the ONNX Runtime libraries found and loaded, the CPU's integer
/// extensions, and whether a
/// session can run on CUDA device 0. Fails (exit 1) only when no ONNX Runtime can be loaded:
/// a machine without CUDA is a fine machine for `device: cpu`. The report is the answer: it
/// goes to stdout, `--quiet` or not.
pub fn exec(args: DoctorArgs, printer: &Printer) -> anyhow::Result<Verdict> {
    let cwd = std::env::current_dir()?;
    let store = pipe_engine::store_dir(&cwd);
    let runtime = runtime::runtime_report();
    let cuda = runtime.loaded.is_some().then(|| runtime::cuda_report(0));
    let cpu = cpu::cpu_report();
    if args.json {
        let value = serde_json::json!({
            "pipe_version": env!("CARGO_PKG_VERSION"),
            "store": store,
            "onnxruntime": runtime,
            "cuda": cuda,
            "cpu": cpu,
        });
        crate::output::answer_json(&value)?;
    } else {
        let mut lines = Vec::new();
        let mut status = |verb: &str, tone: Tone, rest: &str| {
            lines.push(printer.status_stdout(verb, tone, rest));
        };
        status("pipe", Tone::Good, env!("CARGO_PKG_VERSION"));
        status(
            "store",
            Tone::Good,
            &format!("{} (for manifests in this folder)", store.display()),
        );
        let tone = if runtime.loaded.is_some() {
            Tone::Good
        } else {
            Tone::Bad
        };
        status("runtime", tone, &runtime.to_string());
        status("cpu", Tone::Quiet, &cpu.to_string());
        let found = |p: &Option<std::path::PathBuf>, fetch: &str| match p {
            Some(p) => p.display().to_string(),
            None => format!("not fetched ({fetch})"),
        };
        let libs = &runtime.libraries;
        status(
            "cpu build",
            Tone::Quiet,
            &found(&libs.cpu, "scripts/fetch-onnxruntime.sh"),
        );
        status(
            "cuda build",
            Tone::Quiet,
            &found(&libs.gpu, "scripts/fetch-onnxruntime.sh --gpu"),
        );
        if let Some(p) = &libs.ort_dylib_path {
            status(
                "override",
                Tone::Quiet,
                &format!("ORT_DYLIB_PATH={}", p.display()),
            );
        }
        if let Some(cuda) = &cuda {
            let tone = if cuda.available {
                Tone::Good
            } else {
                Tone::Warn
            };
            status("cuda", tone, &cuda.to_string());
            if let Some(fix) = &cuda.fix {
                status("help", Tone::Quiet, fix);
            }
        }
        crate::output::answer(&lines.join("\n"))?;
    }
    Ok(if runtime.loaded.is_some() {
        Verdict::Success
    } else {
        Verdict::Failure
    })
}
