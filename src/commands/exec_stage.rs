//! `pipe exec-stage DIR` (hidden): what a cluster job runs. It runs the one
//! stage `pipe run` described in DIR and leaves its outcome there; `pipe run`
//! holds the store's lock meanwhile and commits the outputs itself.

use pipe_engine::executor::request;

use crate::Verdict;
use crate::cli::ExecStageArgs;

/// Runs the stage described in `args.dir`.
pub fn exec(args: ExecStageArgs) -> anyhow::Result<Verdict> {
    let registry = pipe_stages::registry();
    Ok(if request::serve(&registry, &args.dir)? {
        Verdict::Success
    } else {
        Verdict::Failure
    })
}
