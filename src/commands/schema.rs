//! `pipe schema`.

use crate::Verdict;

/// Prints the manifest JSON Schema for the kinds this build knows.
pub fn exec() -> anyhow::Result<Verdict> {
    let schema = pipe_engine::schema::pipeline_schema(&pipe_stages::registry());
    crate::output::answer_json(&schema)?;
    Ok(Verdict::Success)
}
