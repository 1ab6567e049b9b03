//! The `device` and `threads` parameters of the stages that run a model in ONNX Runtime. They
//! choose where and how fast a result is computed, not what it is, so they stay out of the key.

use pipe_engine::ParamError;
use pipe_onnx::{Device, SessionOptions};

/// The default of `device`.
pub(crate) fn default_device() -> String {
    "cpu".into()
}

/// Session options for `device` (`cpu`, `cuda`, `cuda:N`) and `threads` (ONNX Runtime's
/// default when `None`).
pub(crate) fn session_options(
    device: &str,
    threads: Option<usize>,
) -> Result<SessionOptions, ParamError> {
    let device: Device = device.parse().map_err(|e: pipe_onnx::Error| {
        ParamError::new(&["device"], e.to_string())
            .with_help("write `device: cpu` or `device: cuda:0`")
    })?;
    if threads == Some(0) {
        return Err(
            ParamError::new(&["threads"], "`threads` must be at least 1")
                .with_help("leave it out to use one thread per core"),
        );
    }
    Ok(SessionOptions {
        device,
        intra_threads: threads,
        graph_cache_dir: None,
    })
}
