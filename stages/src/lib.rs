//! The stage kinds `pipe` ships, each in its own module, and [`registry`],
//! which hands them all to the engine.

#![deny(missing_docs)]

mod command;
pub mod compare;
mod device;
pub mod evaluate;
pub mod export_onnx;
pub mod finetune;
mod ingest;
pub mod init;
pub mod memory;
pub mod report;
pub mod scoring;
mod split;
mod table;
pub mod tokenize;
mod wiring;

pub use ingest::{Texts, read_texts};
use pipe_engine::Registry;

/// Every stage kind this build of `pipe` knows.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(command::Command);
    registry.register(compare::Compare);
    registry.register(evaluate::Evaluate);
    registry.register(export_onnx::ExportOnnx::default());
    registry.register(ingest::Ingest);
    registry.register(split::Split);
    registry.register(tokenize::Tokenize::default());
    registry.register(finetune::Finetune::default());
    registry
}
