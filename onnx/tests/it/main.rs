//! Integration tests of `pipe-onnx`, one module per area. They run graphs in the ONNX Runtime
//! library found by `runtime::locate_library` (run `scripts/fetch-onnxruntime.sh` first).
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

mod util;

/// Backward rules against finite differences.
mod grad;

/// AdamW step graph against a plain-Rust reference.
mod optim;

/// MLP training end to end; IoBinding against plain runs.
mod mlp;

/// Whole models: symbolic shapes, the onnx checker, determinism, export.
mod models;

/// Runtime loading, devices, error messages.
mod runtime;

/// Products over quantized frozen weights against their definitions.
mod quantized;

/// Frozen tables gathered in their stored 16-bit type against the f32 graph.
mod stored_tables;

/// Training state on the device (run on the CPU) against host state.
mod device_state;
