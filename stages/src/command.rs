//! The `command` kind: any shell step, with declared `deps` and `outs`.
//!
//! ```yaml
//! clean-notes:
//!   run: python scripts/notes.py data/raw.txt data/notes.csv
//!   deps: [scripts/notes.py, data/raw.txt]
//!   outs: [data/notes.csv]
//!   env: [LANG]          # environment variables whose values are part of the key
//! ```
//!
//! The command runs with `sh -c` in the manifest's folder, in a process group
//! of its own that is killed as a whole when the command ends or pipe dies;
//! its stdout and stderr go to the stage's log. The engine hashes `deps` into the key,
//! removes `outs` before the run, checks they exist after it, stores them,
//! and restores them on a cache hit.

use std::fs::File;
use std::process::{Command as Process, Stdio};

use anyhow::Context;
use pipe_engine::process::status_in_group;
use pipe_engine::{Checked, Outcome, ParamError, RunContext, Stage, parse_params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `command` kind.
pub struct Command;

/// Parameters of a command stage (besides the reserved `run`, `deps`, `outs`).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Names of environment variables whose values are part of the stage key
    /// (the command sees the whole environment either way).
    #[serde(default)]
    env: Vec<String>,
}

impl Stage for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Runs a shell command with declared deps and outs."
    }

    fn params_schema(&self) -> Value {
        pipe_engine::schema_of::<Params>()
    }

    fn takes_run(&self) -> bool {
        true
    }

    fn check(&self, params: &Value) -> Result<Checked, ParamError> {
        let params: Params = parse_params(params)?;
        let mut env = serde_json::Map::new();
        for (i, name) in params.env.iter().enumerate() {
            if name.is_empty() || name.contains('=') {
                return Err(ParamError::new(
                    &["env", &i.to_string()],
                    format!("`{name}` is not an environment variable name"),
                )
                .with_help("list variable names only, e.g. `env: [LANG, SEED]`"));
            }
            let value = std::env::var(name)
                .map(Value::String)
                .unwrap_or(Value::Null);
            env.insert(name.clone(), value);
        }
        Ok(Checked {
            key_params: serde_json::json!({ "env": env }),
            workspace_deps: Vec::new(),
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let command = ctx.run.context("a command stage needs `run:`")?;
        let log = File::options()
            .append(true)
            .create(true)
            .open(ctx.log_path)
            .with_context(|| format!("cannot open the log `{}`", ctx.log_path.display()))?;
        let mut process = Process::new("sh");
        process
            .arg("-c")
            .arg(command)
            .current_dir(ctx.workspace)
            .env("PIPE_STAGE", ctx.stage)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // In its own process group: nothing it starts outlives the stage or pipe.
        let status = status_in_group(&mut process).context("cannot start `sh`")?;
        if !status.success() {
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            anyhow::bail!("command `{command}` {how}");
        }
        Ok(Outcome::default())
    }
}
