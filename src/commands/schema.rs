//! `pipe schema`.

use crate::Outcome;

/// Prints the manifest JSON Schema for the kinds this build knows.
pub fn exec() -> anyhow::Result<Outcome> {
    let schema = pipe_engine::schema::pipeline_schema(&pipe_stages::registry());
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(Outcome::Success)
}
