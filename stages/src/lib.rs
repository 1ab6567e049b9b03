//! The stage kinds `pipe` ships, each in its own module, and [`registry`],
//! which hands them all to the engine.

#![deny(missing_docs)]

mod command;

use pipe_engine::Registry;

/// Every stage kind this build of `pipe` knows.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(command::Command);
    registry
}
