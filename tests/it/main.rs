//! Integration tests: they drive the built `pipe` binary on temporary folders.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

mod architecture;
mod bundle;
mod cache;
mod checkpoints;
mod cli;
mod crash;
mod data;
mod device;
mod families;
mod hub;
mod init;
mod malformed;
mod matrix;
mod metrics;
mod predict;
mod pretrained;
mod remote;
mod safety;
mod schema;
mod serve;
mod slurm;
mod stdout;
mod training;
mod trust;
mod util;
