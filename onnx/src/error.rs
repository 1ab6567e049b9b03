//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, differentiating or running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operator was given inputs it cannot take (shapes, element types, arguments).
    #[error("{node}: {message}")]
    Build {
        /// Name the node would have had (`scope/OpType`).
        node: String,
        /// What is wrong.
        message: String,
    },
    /// Autodiff met an operator with no backward rule on the path to the loss.
    #[error(
        "no gradient rule for operator `{op}` (node `{node}`) on the path from the parameters to the loss"
    )]
    NoGradient {
        /// ONNX operator type.
        op: String,
        /// Node name.
        node: String,
    },
    /// The ONNX Runtime library could not be found.
    #[error(
        "ONNX Runtime library not found; searched:\n{}\nhelp: run `scripts/fetch-onnxruntime.sh` or set ORT_DYLIB_PATH",
        .searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    LibraryNotFound {
        /// Every path looked at, in order.
        searched: Vec<PathBuf>,
    },
    /// An ONNX Runtime library was chosen (by `ORT_DYLIB_PATH`, or found in `.tools/`) but
    /// cannot be loaded.
    #[error("cannot load ONNX Runtime from {}: {reason}\nhelp: {help}", .shown)]
    LibraryUnusable {
        /// The library, and how it was chosen (`ORT_DYLIB_PATH=/x/lib.so`).
        shown: String,
        /// Why: it does not exist, or the loader's message.
        reason: String,
        /// What to do about it.
        help: String,
    },
    /// A device was asked for that cannot be had here: ONNX Runtime's (or CUDA's) reason, and
    /// what to do about it.
    #[error("{device} is unavailable: {reason}\nhelp: {fix}")]
    DeviceUnavailable {
        /// The device asked for, e.g. `cuda:0`.
        device: String,
        /// Why, in ONNX Runtime's or CUDA's words.
        reason: String,
        /// What to do about it.
        fix: String,
    },
    /// A call into ONNX Runtime failed.
    #[error("{context}")]
    Ort {
        /// What was being done.
        context: String,
        /// The runtime's message.
        #[source]
        source: ort::Error,
    },
    /// Host data given to the runtime does not match what the graph expects.
    #[error("{0}")]
    Data(String),
    /// A file could not be read or written.
    #[error("{context} `{}`", .path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a context message to an `ort` result.
pub(crate) trait OrtContext<T> {
    fn ort_context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<ort::Error>> OrtContext<T> for std::result::Result<T, E> {
    fn ort_context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Ort {
            context: context(),
            source: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_not_found_lists_paths_and_the_fix() {
        let e = Error::LibraryNotFound {
            searched: vec![PathBuf::from("/a/lib.so"), PathBuf::from("/b/lib.so")],
        };
        let msg = e.to_string();
        assert!(msg.contains("  /a/lib.so\n  /b/lib.so"), "{msg}");
        assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
    }
}
