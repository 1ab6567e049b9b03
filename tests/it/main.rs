//! Integration tests: they drive the built `pipe` binary on temporary folders.

mod cache;
mod cli;
mod crash;
mod data;
mod malformed;
mod metrics;
mod predict;
mod remote;
mod schema;
mod training;
mod util;
