//! Integration tests: they drive the built `pipe` binary on temporary folders.

mod cache;
mod cli;
mod crash;
mod data;
mod device;
mod malformed;
mod matrix;
mod metrics;
mod predict;
mod safety;
mod schema;
mod training;
mod util;
