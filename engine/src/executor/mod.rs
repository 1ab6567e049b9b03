//! Where a stage's kind executes: in this process ([`local::Local`], the
//! default), or as a job of a cluster scheduler ([`slurm::Slurm`]).
//!
//! An executor only runs [`crate::Stage::run`] for a stage the engine has
//! decided must run, into the temporary folder the engine prepared; the
//! engine keeps the DAG, the keys, the cache and the commit. So what is cached
//! is restored without ever reaching an executor, and a stage's outputs are
//! hashed and committed the same way wherever it ran.

pub mod local;
pub mod request;
pub mod slurm;

pub use crate::manifest::ExecutorChoice;

use std::path::Path;

use serde::Serialize;

use crate::plan::{Pipeline, PlannedStage};
use crate::stage::{Outcome, RunContext};

/// One stage handed to an executor.
pub struct StageJob<'a> {
    /// The pipeline the stage is part of.
    pub pipeline: &'a Pipeline<'a>,
    /// The stage.
    pub stage: &'a PlannedStage<'a>,
    /// What its kind runs with: inputs, output folder, log, ...
    pub ctx: &'a RunContext<'a>,
    /// The stage's temporary folder in the store (holding `ctx.out_dir`), where
    /// an executor may keep files of its own.
    pub work_dir: &'a Path,
}

/// Runs the stages that must run.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Its name, as `--executor` and the `--json` report write it.
    fn name(&self) -> &'static str;

    /// Runs the stage's kind to completion and returns its outcome; an error fails the stage.
    fn run(&self, job: &StageJob<'_>) -> anyhow::Result<Outcome>;

    /// Whether stages run on this machine, so that [`crate::Stage::preflight`]
    /// checks (a device, a tool) are made here before a run; a cluster's
    /// nodes are not the machine that submits to them.
    fn runs_here(&self) -> bool {
        true
    }

    /// The scheduler's job for stage `stage` in this run, if it made one.
    fn job(&self, stage: &str) -> Option<JobInfo> {
        let _ = stage;
        None
    }
}

/// A stage's job in a cluster scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The scheduler's job id.
    pub id: String,
    /// Its last known state (`PENDING`, `RUNNING`, `COMPLETED`, `TIMEOUT`, ...).
    pub state: String,
}
