//! What `pipe doctor` says about ONNX Runtime and CUDA.

use std::path::PathBuf;

use serde::Serialize;

/// The ONNX Runtime libraries `pipe` can find, and the one this process loaded.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeReport {
    /// The library loaded (`null` when none could be).
    pub loaded: Option<PathBuf>,
    /// Its version.
    pub version: Option<String>,
    /// Its execution providers (`CPUExecutionProvider`, `CUDAExecutionProvider`, ...).
    pub providers: Vec<String>,
    /// Why no library could be loaded, and how to get one.
    pub error: Option<String>,
    /// The libraries found.
    pub libraries: Libraries,
}

/// Where the ONNX Runtime builds are.
#[derive(Debug, Clone, Serialize)]
pub struct Libraries {
    /// The CPU build in `.tools/onnxruntime/` (`scripts/fetch-onnxruntime.sh`).
    pub cpu: Option<PathBuf>,
    /// The CUDA build in `.tools/onnxruntime-gpu/` (`scripts/fetch-onnxruntime.sh --gpu`).
    pub gpu: Option<PathBuf>,
    /// `ORT_DYLIB_PATH`, which wins over both when set.
    pub ort_dylib_path: Option<PathBuf>,
}

/// Whether a CUDA session can be created, and on what.
#[derive(Debug, Clone, Serialize)]
pub struct CudaReport {
    /// The device tried (`cuda:0`).
    pub device: String,
    /// Whether a session was created and ran on it.
    pub available: bool,
    /// ONNX Runtime's (or CUDA's) reason when it is not available.
    pub reason: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
    /// The device's name, when the driver answers.
    pub name: Option<String>,
    /// The device's memory in bytes, when the CUDA runtime answers.
    pub memory_total_bytes: Option<u64>,
    /// Free device memory in bytes (all processes counted).
    pub memory_free_bytes: Option<u64>,
    /// CUDA runtime version (`13.0`), when loaded.
    pub cuda_runtime: Option<String>,
    /// Highest CUDA version the driver supports.
    pub cuda_driver: Option<String>,
}

impl std::fmt::Display for RuntimeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.loaded, &self.error) {
            (Some(path), _) => write!(
                f,
                "ONNX Runtime {} at {} (providers: {})",
                self.version.as_deref().unwrap_or("?"),
                path.display(),
                self.providers.join(", ")
            ),
            (None, Some(e)) => f.write_str(e),
            (None, None) => f.write_str("ONNX Runtime not loaded"),
        }
    }
}

impl std::fmt::Display for CudaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.available {
            write!(
                f,
                "{}: {}",
                self.device,
                self.name.as_deref().unwrap_or("unnamed device")
            )?;
            if let (Some(total), Some(free)) = (self.memory_total_bytes, self.memory_free_bytes) {
                write!(f, " · {:.1} GiB, {:.1} GiB free", gib(total), gib(free))?;
            }
            if let (Some(rt), Some(drv)) = (&self.cuda_runtime, &self.cuda_driver) {
                write!(f, " · CUDA runtime {rt}, driver {drv}")?;
            }
            Ok(())
        } else {
            write!(
                f,
                "{} unavailable: {}",
                self.device,
                self.reason.as_deref().unwrap_or("unknown reason")
            )
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Loads ONNX Runtime, the CUDA build first when fetched (so the report says what a CUDA run
/// would get), and describes it; a library that cannot be loaded is described by the error.
pub fn runtime_report() -> RuntimeReport {
    let loaded = pipe_onnx::runtime::init_for(pipe_onnx::runtime::Preference::Cuda)
        .and_then(|_| pipe_onnx::runtime::runtime_info());
    let libraries = Libraries {
        cpu: pipe_onnx::runtime::library::cpu_library(),
        gpu: pipe_onnx::runtime::library::gpu_library(),
        ort_dylib_path: pipe_onnx::runtime::library::env_override(),
    };
    match loaded {
        Ok(info) => RuntimeReport {
            loaded: Some(info.path),
            version: Some(info.version),
            providers: info.providers,
            error: None,
            libraries,
        },
        Err(e) => RuntimeReport {
            loaded: None,
            version: None,
            providers: Vec::new(),
            error: Some(e.to_string()),
            libraries,
        },
    }
}

/// Tries to create and run a session on CUDA device `ordinal` and describes the device.
pub fn cuda_report(ordinal: u32) -> CudaReport {
    let status = pipe_onnx::runtime::cuda_status(ordinal);
    CudaReport {
        device: status.device.to_string(),
        available: status.unavailable.is_none(),
        reason: status.unavailable,
        fix: status.fix,
        name: status.name,
        memory_total_bytes: status.memory.as_ref().map(|m| m.total_bytes),
        memory_free_bytes: status.memory.as_ref().map(|m| m.free_bytes),
        cuda_runtime: status.versions.as_ref().map(|v| v.0.clone()),
        cuda_driver: status.versions.map(|v| v.1),
    }
}
