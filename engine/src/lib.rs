//! The `pipe` engine: it reads a YAML manifest, checks it against the stage
//! kinds it is given, builds the DAG, and brings stages up to date through a
//! content-addressed store, running only those whose inputs really changed.
//!
//! It knows nothing about machine learning: stage kinds come in through the
//! [`Stage`] trait and a [`Registry`].
//!
//! The main types:
//! - [`Manifest`]: a parsed manifest; [`plan()`] checks it into a [`Pipeline`].
//! - [`Store`]: the `.pipe/` folder (objects, stage records, outputs).
//! - [`run()`]: executes a pipeline and returns a [`RunReport`].
//!
//! ```no_run
//! # fn kinds() -> pipe_engine::Registry { pipe_engine::Registry::new() }
//! use pipe_engine::{Manifest, PlanOptions, Printer, RunOptions, Store, ColorChoice, Force, plan, run};
//! let registry = kinds();
//! let manifest = Manifest::load("pipelines/student.yaml".as_ref())?;
//! let pipeline = plan(manifest, &registry, PlanOptions::default())?;
//! let store = Store::open(&pipeline.manifest.dir.join(".pipe"))?;
//! let printer = Printer::new(ColorChoice::Auto, false, false);
//! let _lock = store.lock(true, |_| {})?;
//! let options = RunOptions { targets: vec![], force: Force::None, dry_run: false, jobs: 2, print_stages: true, remote: None, executor: None };
//! let report = run(&pipeline, &store, &options, &printer)?;
//! assert!(report.ok);
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

pub mod atomic;
pub mod diag;
mod exec;
pub mod executor;
pub mod files;
mod folder_modes;
pub mod gc;
pub mod hash;
pub mod integrity;
mod job;
mod journal;
pub mod key;
pub mod lockfile;
pub mod manifest;
mod marker;
mod outputs;
mod param_words;
pub mod paths;
pub mod plan;
pub mod printer;
pub mod process;
pub mod remote_cache;
pub mod run_report;
pub mod schema;
pub mod stage;
pub mod store;
mod trash;
pub mod yaml;

pub use diag::{Diagnostic, ManifestError};
pub use exec::{Force, RunOptions, run};
pub use hash::Digest;
pub use manifest::{Manifest, matrix};
pub use outputs::output_paths;
pub use plan::{Pipeline, PlanOptions, plan};
pub use printer::{ColorChoice, Printer, Tone};
pub use run_report::{RunReport, StageReport, Status};
pub use stage::{
    Checked, Input, Outcome, ParamError, PlannedInput, Registry, Reporter, RunContext, Stage,
    key_params_of, parse_params, schema_of,
};
pub use store::{StageRecord, Store, StoreBusy};

/// A mistake in how `pipe` was called (exit code 2), as opposed to a stage failing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A stage's input that cannot be used as it is (a truncated checkpoint, an index naming a
/// missing shard, a tensor of the wrong shape or type): the stage fails like any other, and
/// `pipe run` exits 2 (bad input) rather than 1 when every failure of the run is one
/// ([`RunReport::bad_input`]). The wrapped error's message and causes show unchanged.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadInput(pub anyhow::Error);

impl BadInput {
    /// Whether `error` is, or was caused by, a [`BadInput`].
    pub fn is_in(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| cause.is::<BadInput>())
    }
}

/// The store folder for a manifest folder: `PIPE_STORE` when set, else `.pipe/` beside the manifest.
pub fn store_dir(manifest_dir: &std::path::Path) -> std::path::PathBuf {
    match std::env::var_os("PIPE_STORE") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => manifest_dir.join(".pipe"),
    }
}
