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
//!
//! A command may also read what typed stages wrote, through `from:`:
//!
//! ```yaml
//! plot:
//!   from: evaluate                 # or a list; a matrix stage fans the command out
//!   run: python scripts/plot.py "$PIPE_FROM/metrics.json" plots/${member}.png
//!   outs: ['plots/${member}.png']   # quoted: `{` would start a YAML mapping
//! ```
//!
//! It then runs after those stages, their output hashes are in its key, and
//! it finds each input's output folder in `PIPE_FROM_<INPUT>` (the input's
//! name upper-cased, `-`, `@` and `.` as `_`: `PIPE_FROM_EXPORT_ONNX`) and,
//! when it has exactly one input, in `PIPE_FROM`. `PIPE_STAGE` holds the
//! stage's own name (`plot@lr-0.0003` for a matrix member).

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use anyhow::Context;
use pipe_engine::process::status_in_group;
use pipe_engine::{Checked, Input, Outcome, ParamError, RunContext, Stage, parse_params};
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
            env.insert(name.clone(), env_key_value(std::env::var_os(name)));
        }
        Ok(Checked {
            key_params: serde_json::json!({ "env": env }),
            workspace_deps: Vec::new(),
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
        let command = ctx.run.context("a command stage needs `run:`")?;
        let log = fs_err::OpenOptions::new()
            .append(true)
            .create(true)
            .open(ctx.log_path)
            .with_context(|| format!("cannot open the log `{}`", ctx.log_path.display()))?
            .into_file();
        let mut process = Process::new("sh");
        for (name, dir) in input_folders(ctx.inputs) {
            process.env(name, dir);
        }
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

/// The variables that show a command its inputs: `PIPE_FROM_<INPUT>` for
/// each, and `PIPE_FROM` when there is one.
fn input_folders(inputs: &[Input]) -> Vec<(String, PathBuf)> {
    let mut vars: Vec<(String, PathBuf)> = inputs
        .iter()
        .map(|input| {
            (
                format!("PIPE_FROM_{}", env_suffix(&input.name)),
                folder_of(input),
            )
        })
        .collect();
    if let [(_, only)] = vars.as_slice() {
        vars.push(("PIPE_FROM".into(), only.clone()));
    }
    vars
}

/// `export-onnx` → `EXPORT_ONNX`, `finetune@lr-0.0003` → `FINETUNE_LR_0_0003`.
fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' | '@' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The folder that holds an input's outputs: the deepest folder containing
/// all of them (a typed stage's `.pipe/out/<pipeline>/<stage>/`).
fn folder_of(input: &Input) -> PathBuf {
    let mut parents = input.outputs.values().filter_map(|p| p.parent());
    let Some(first) = parents.next() else {
        return PathBuf::new();
    };
    parents.fold(first.to_path_buf(), |common, parent| {
        common
            .ancestors()
            .find(|a| parent.starts_with(a))
            .unwrap_or(Path::new(""))
            .to_path_buf()
    })
}

/// How an `env:` variable's value enters the stage key: UTF-8 text as a
/// string (so keys of such values never change), unset as `null`, and any
/// other bytes by their hex as `{"bytes": "…"}`, so a value that is not UTF-8
/// keys on what it is and never on "unset".
fn env_key_value(value: Option<std::ffi::OsString>) -> Value {
    use std::os::unix::ffi::OsStrExt;
    match value {
        None => Value::Null,
        Some(value) => match value.to_str() {
            Some(text) => Value::String(text.to_string()),
            None => {
                let hex: String = value
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                serde_json::json!({ "bytes": hex })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn input(name: &str, outputs: &[&str]) -> Input {
        Input {
            name: name.into(),
            stage: name.into(),
            outputs: outputs
                .iter()
                .map(|p| (p.rsplit('/').next().unwrap().to_string(), PathBuf::from(p)))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn one_input_is_in_pipe_from_and_under_its_own_name() {
        let vars = input_folders(&[input(
            "export-onnx",
            &[
                "/w/.pipe/out/p/export-onnx/model.onnx",
                "/w/.pipe/out/p/export-onnx/labels.json",
            ],
        )]);
        assert_eq!(
            vars,
            [
                (
                    "PIPE_FROM_EXPORT_ONNX".to_string(),
                    PathBuf::from("/w/.pipe/out/p/export-onnx")
                ),
                (
                    "PIPE_FROM".to_string(),
                    PathBuf::from("/w/.pipe/out/p/export-onnx")
                ),
            ]
        );
    }

    #[test]
    fn several_inputs_have_only_their_own_names() {
        let vars = input_folders(&[
            input(
                "evaluate@lr-0.0003",
                &["/w/.pipe/out/p/evaluate@lr-0.0003/metrics.json"],
            ),
            input("split.v2", &["/w/.pipe/out/p/split/train.parquet"]),
        ]);
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["PIPE_FROM_EVALUATE_LR_0_0003", "PIPE_FROM_SPLIT_V2"]
        );
        assert_eq!(
            vars[0].1,
            PathBuf::from("/w/.pipe/out/p/evaluate@lr-0.0003")
        );
    }

    #[test]
    fn env_values_key_on_their_bytes_and_utf8_keys_are_unchanged() {
        use std::os::unix::ffi::OsStringExt;
        let raw = |bytes: &[u8]| env_key_value(Some(std::ffi::OsString::from_vec(bytes.to_vec())));
        assert_eq!(raw(b"C.UTF-8"), Value::String("C.UTF-8".into()));
        assert_eq!(env_key_value(None), Value::Null);
        assert_eq!(raw(b"\xff\xfe"), serde_json::json!({"bytes": "fffe"}));
        assert_ne!(raw(b"\xff"), raw(b"\xfe"));
        assert_ne!(raw(b"\xff"), Value::Null);
    }
}
