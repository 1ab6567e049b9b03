//! Running a stage's kind in this process.

use crate::executor::{Executor, StageJob};
use crate::stage::{Outcome, RunContext, Stage};

/// Runs stages in the `pipe run` process, each on its job's thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn run(&self, job: &StageJob<'_>) -> anyhow::Result<Outcome> {
        run_kind(job.stage.kind, job.ctx)
    }
}

/// Executes `kind` with `ctx`; a panic inside it becomes an error.
pub fn run_kind(kind: &dyn Stage, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kind.run(ctx))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::bail!(
                "the {} stage crashed ({what}); this is a bug in pipe, please report it",
                kind.kind()
            );
        }
    }
}
