//! What `pipe doctor` says about ONNX Runtime.

use serde::Serialize;

/// The ONNX Runtime library `pipe` would use.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeReport {
    /// The shared library's path.
    pub path: std::path::PathBuf,
    /// Its version.
    pub version: String,
    /// Its execution providers (`CPUExecutionProvider`, `CUDAExecutionProvider`, ...).
    pub providers: Vec<String>,
}

impl std::fmt::Display for RuntimeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ONNX Runtime {} at {} (providers: {})",
            self.version,
            self.path.display(),
            self.providers.join(", ")
        )
    }
}

/// Finds and loads ONNX Runtime, or says why it cannot and how to get it.
pub fn runtime_report() -> Result<RuntimeReport, String> {
    pipe_onnx::runtime::runtime_info()
        .map(|info| RuntimeReport {
            path: info.path,
            version: info.version,
            providers: info.providers,
        })
        .map_err(|e| format!("{e}"))
}
