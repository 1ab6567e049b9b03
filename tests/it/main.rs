//! Integration tests: they drive the built `pipe` binary on temporary folders.

mod bundle;
mod cache;
mod cli;
mod crash;
mod data;
mod hub;
mod init;
mod malformed;
mod metrics;
mod predict;
mod schema;
mod serve;
mod training;
mod util;
