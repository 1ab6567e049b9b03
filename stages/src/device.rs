//! The `device` and `threads` parameters of the stages that run a model in ONNX Runtime. They
//! choose where and how fast a result is computed, not what it is, so they stay out of the key
//! (results on CUDA differ from the CPU's in the last bits; see docs/ARCHITECTURE.md).
//!
//! `device` is `cpu`, `cuda` (device 0), `cuda:N` or `auto`. Three moments:
//! - [`check`] (validation): the spelling, without loading ONNX Runtime;
//! - [`preflight`] (before any stage of a run starts): a fixed CUDA device must be usable
//!   here, or the run stops with ONNX Runtime's reason and the fix;
//! - [`choose`] (when the stage runs): `auto` becomes CUDA device 0 when a session can be
//!   created on it, else the CPU, and a note says which.

use pipe_engine::{ParamError, Reporter};
use pipe_onnx::SessionOptions;
use pipe_onnx::runtime::{self, CudaOptions, Device, DeviceChoice};

/// The default of `device`.
pub(crate) fn default_device() -> String {
    "cpu".into()
}

/// Checks `device` (`cpu`, `cuda`, `cuda:N`, `auto`) and `threads` without loading ONNX Runtime.
pub(crate) fn check(device: &str, threads: Option<usize>) -> Result<DeviceChoice, ParamError> {
    let choice: DeviceChoice = device.parse().map_err(|e: pipe_onnx::Error| {
        ParamError::new(&["device"], e.to_string())
            .with_help("write `device: cpu`, `device: cuda:0` or `device: auto`")
    })?;
    if threads == Some(0) {
        return Err(
            ParamError::new(&["threads"], "`threads` must be at least 1")
                .with_help("leave it out to use one thread per core"),
        );
    }
    Ok(choice)
}

/// For `Stage::preflight`: a fixed CUDA device must run a session here. `cpu` and `auto`
/// always pass (`auto` falls back to the CPU at run time).
pub(crate) fn preflight(device: &str) -> Result<(), ParamError> {
    let DeviceChoice::Fixed(fixed @ Device::Cuda(_)) = check(device, None)? else {
        return Ok(());
    };
    runtime::probe(fixed).map_err(|e| match e {
        pipe_onnx::Error::DeviceUnavailable {
            device,
            reason,
            fix,
        } => ParamError::new(&["device"], format!("{device} is unavailable: {reason}"))
            .with_help(fix),
        other => ParamError::new(&["device"], other.to_string()),
    })
}

/// The device a stage runs on: a fixed one as written, `auto` resolved here, with a note
/// saying which device `auto` chose and, on a fallback, why CUDA could not be used.
pub(crate) fn choose(device: &str, reporter: &dyn Reporter) -> anyhow::Result<Device> {
    let choice = check(device, None)?;
    let resolved = runtime::resolve(choice)?;
    if choice == DeviceChoice::Auto {
        match &resolved.fallback {
            None => reporter.note(&format!("device auto: running on {}", resolved.device)),
            Some(reason) => reporter.note(&format!(
                "device auto: running on the CPU; CUDA is unavailable: {}",
                reason.lines().next().unwrap_or_default()
            )),
        }
    }
    Ok(resolved.device)
}

/// Session options for `device` (resolved as [`choose`] does; probes are remembered, so this
/// is cheap after [`choose`]), `threads` (ONNX Runtime's default when `None`) and TF32 on CUDA.
pub(crate) fn session_options(
    device: &str,
    threads: Option<usize>,
    tf32: bool,
) -> Result<SessionOptions, ParamError> {
    let choice = check(device, threads)?;
    let device = runtime::resolve(choice)
        .map_err(|e| ParamError::new(&["device"], e.to_string()))?
        .device;
    Ok(SessionOptions {
        device,
        intra_threads: threads,
        graph_cache_dir: None,
        cuda: CudaOptions { tf32 },
        profile_prefix: None,
    })
}

/// The headline suffix naming the device, unless it is the CPU asked for by name.
pub(crate) fn headline_suffix(asked: &str, used: Device) -> String {
    if asked == "cpu" {
        String::new()
    } else {
        format!(" · {used}")
    }
}
