//! Finding the ONNX Runtime shared library, and which of two builds to load.
//!
//! `scripts/fetch-onnxruntime.sh` puts the CPU build (`onnxruntime` wheel) in
//! `.tools/onnxruntime/`; with `--gpu` it puts the CUDA build (`onnxruntime-gpu` wheel: the same
//! core library plus the CUDA execution provider) in `.tools/onnxruntime-gpu/`. A process can
//! load ONNX Runtime only once, so the first use decides: a process that asks for CUDA first
//! (the preflight of a run with a `cuda`/`auto` stage, `pipe predict --device cuda`,
//! `pipe doctor`) loads the CUDA build when it is there, any other the CPU build. The CUDA
//! build runs the CPU provider as well, so either choice can serve a later CPU session; only a
//! CPU-build process cannot serve CUDA later, and its error says so.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// File name of the ONNX Runtime library `pipe` is built and tested against.
pub const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// Where `scripts/fetch-onnxruntime.sh` puts the CPU build, relative to the repository root.
pub const CPU_TOOLS_DIR: &str = ".tools/onnxruntime";

/// Where `scripts/fetch-onnxruntime.sh --gpu` puts the CUDA build, relative to the repository
/// root.
pub const GPU_TOOLS_DIR: &str = ".tools/onnxruntime-gpu";

/// Which build a caller would rather have when it is the first to load ONNX Runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// The CPU build (`.tools/onnxruntime/`), else the CUDA build.
    Cpu,
    /// The CUDA build (`.tools/onnxruntime-gpu/`), else the CPU build.
    Cuda,
}

/// The folders searched for `.tools/…` (ONNX Runtime here, pipe's embedded models elsewhere):
/// the executable's folder and its ancestors, the current directory and its ancestors, then the
/// repository this crate was built from (dev and tests).
pub fn tool_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    roots.push(repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf()));
    roots
}

/// The first `<root>/<tools_dir>/libonnxruntime.so.1.31.1` that exists, and every path tried.
fn find_in_tools(tools_dir: &str, searched: &mut Vec<PathBuf>) -> Option<PathBuf> {
    let rel = Path::new(tools_dir).join(LIBRARY_NAME);
    for root in tool_roots() {
        let p = root.join(&rel);
        if p.is_file() {
            return Some(p);
        }
        searched.push(p);
    }
    None
}

/// The environment variable naming the library to load, which wins over `.tools/`.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// The `ORT_DYLIB_PATH` environment variable, when set and not empty.
pub fn env_override() -> Option<PathBuf> {
    std::env::var_os(ORT_DYLIB_PATH)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The CUDA build fetched by `scripts/fetch-onnxruntime.sh --gpu`, when there is one.
pub fn gpu_library() -> Option<PathBuf> {
    find_in_tools(GPU_TOOLS_DIR, &mut Vec::new())
}

/// The CPU build fetched by `scripts/fetch-onnxruntime.sh`, when there is one.
pub fn cpu_library() -> Option<PathBuf> {
    find_in_tools(CPU_TOOLS_DIR, &mut Vec::new())
}

/// Finds the ONNX Runtime library for a first load with `preference`. Searched in order:
///
/// 1. the `ORT_DYLIB_PATH` environment variable (always wins: a path that is not a file is an
///    error, not a reason to look elsewhere);
/// 2. `.tools/onnxruntime-gpu/` then `.tools/onnxruntime/` for [`Preference::Cuda`], the other
///    way round for [`Preference::Cpu`], each in the folder of the current executable and its
///    ancestors, the current directory and its ancestors, and the repository of this crate.
///
/// The error lists every path searched and says to run `scripts/fetch-onnxruntime.sh`.
pub fn locate_library_for(preference: Preference) -> Result<PathBuf> {
    if let Some(p) = env_override() {
        if p.is_file() {
            return Ok(p);
        }
        return Err(unusable(&p, "no such file".into()));
    }
    let mut searched = Vec::new();
    let order = match preference {
        Preference::Cpu => [CPU_TOOLS_DIR, GPU_TOOLS_DIR],
        Preference::Cuda => [GPU_TOOLS_DIR, CPU_TOOLS_DIR],
    };
    for dir in order {
        if let Some(p) = find_in_tools(dir, &mut searched) {
            return Ok(p);
        }
    }
    Err(Error::LibraryNotFound { searched })
}

/// Finds the library a CPU-only process loads (see [`locate_library_for`]).
pub fn locate_library() -> Result<PathBuf> {
    locate_library_for(Preference::Cpu)
}

/// The error for a library at `path` that cannot be loaded because of `reason`, with what to
/// do: fix or unset `ORT_DYLIB_PATH` when it chose the library, else fetch the library again.
pub(crate) fn unusable(path: &Path, reason: String) -> Error {
    match env_override() {
        Some(chosen) if chosen == path => Error::LibraryUnusable {
            shown: format!("{ORT_DYLIB_PATH}={}", path.display()),
            reason,
            help: format!(
                "point {ORT_DYLIB_PATH} at ONNX Runtime's {LIBRARY_NAME}, or unset it to use the \
                 library `scripts/fetch-onnxruntime.sh` puts in {CPU_TOOLS_DIR}/"
            ),
        },
        _ => Error::LibraryUnusable {
            shown: path.display().to_string(),
            reason,
            help: "run `scripts/fetch-onnxruntime.sh` again to replace it".into(),
        },
    }
}
