//! The contract between the engine and a stage kind.
//!
//! The engine knows nothing about what a stage does. A kind implements [`Stage`]:
//! it names itself, describes its parameters as a JSON Schema, turns the raw
//! parameters of a manifest entry into the canonical form that goes into the
//! stage key ([`Stage::check`]), and runs ([`Stage::run`]) by reading its
//! inputs from [`RunContext::inputs`] and writing its outputs into
//! [`RunContext::out_dir`]. Everything else (hashing, caching, restoring,
//! ordering, parallelism, locking) is the engine's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A stage kind: `ingest`, `split`, `command`, ...
pub trait Stage: Send + Sync {
    /// The kind's name as written in a manifest (kebab-case, e.g. `export-onnx`).
    fn kind(&self) -> &'static str;

    /// The implementation version. Bump it whenever the kind would produce
    /// different output bytes for the same parameters and inputs: it is part
    /// of every stage key, so bumping it invalidates cached results of this kind.
    fn version(&self) -> u32;

    /// One line saying what the kind does (shown by `pipe validate` and in the schema).
    fn summary(&self) -> &'static str;

    /// JSON Schema (2020-12) of the kind's parameters: an object schema whose
    /// `properties` name every accepted key. Usually `schemars::schema_for!(Params)`.
    /// The engine uses `properties` to reject unknown keys with a suggestion, and
    /// `pipe schema` assembles these into `schemas/pipeline.schema.json`.
    fn params_schema(&self) -> Value;

    /// Whether the kind takes the reserved `run:` key (only `command` does).
    fn takes_run(&self) -> bool {
        false
    }

    /// Whether the kind takes every member of a matrix input (one [`Input`]
    /// per member, named by the member) instead of fanning out with it, as
    /// `compare` does. See [`crate::manifest::matrix`].
    fn gathers_members(&self) -> bool {
        false
    }

    /// The names of the outputs this kind writes with these (checked,
    /// canonical) parameters, so that `from: stage.output` is checked before
    /// anything runs. `None`, the default, means they are not known in
    /// advance, and any name is accepted until the stage has run.
    fn output_names(&self, key_params: &Value) -> Option<Vec<String>> {
        let _ = key_params;
        None
    }

    /// Outputs that record how a run went rather than what it computed (timings, throughput,
    /// memory): they are stored, restored, pushed and shown like any output, but a stage
    /// reading this one through `from: <stage>` is not keyed on them, so rerunning a stage
    /// that computes the same result (`--force`, a lost cache) does not rerun everything
    /// downstream. A kind lists only outputs whose other content follows from the outputs
    /// that stay in the key. `from: <stage>.<output>` naming one of them keys on it as usual.
    fn run_record_outputs(&self) -> &'static [&'static str] {
        &[]
    }

    /// The output names this kind writes given what its inputs will hold, for kinds whose
    /// outputs follow their inputs' (one table out per table in). The engine asks every
    /// stage in run order, so what a stage learns here reaches the stages downstream of it
    /// ([`Stage::check_inputs`]). The default is [`Stage::output_names`], which ignores the
    /// inputs.
    fn planned_output_names(
        &self,
        key_params: &Value,
        inputs: &[PlannedInput<'_>],
    ) -> Option<Vec<String>> {
        let _ = inputs;
        self.output_names(key_params)
    }

    /// Checks the parameters against the inputs the stage will get, before anything runs:
    /// a setting that needs an output its upstream does not write (a validation split, say)
    /// fails `pipe validate` (exit 2) at that setting's `file:line:column`, instead of the
    /// run. `inputs` are in `from:` order, each with its upstream's output names when the
    /// plan knows them ([`Stage::planned_output_names`]); an input whose names are unknown
    /// must be accepted (the run checks it). The default accepts any inputs.
    fn check_inputs(&self, params: &Value, inputs: &[PlannedInput<'_>]) -> Result<(), ParamError> {
        let _ = (params, inputs);
        Ok(())
    }

    /// Validates parameters and returns what goes into the stage key.
    ///
    /// `params` is the manifest entry minus reserved keys, as JSON. Parse it
    /// with [`parse_params`] so errors carry the path of the bad value (the
    /// engine turns that path into `file:line:column`). The returned
    /// [`Checked::key_params`] must be canonical: defaults filled in, and
    /// settings that do not change the result (threads, device, progress)
    /// left out.
    fn check(&self, params: &Value) -> Result<Checked, ParamError>;

    /// Checks that this machine can run the stage as its `params` ask (a device, a tool),
    /// before any stage of a run starts; not called for dry runs. An error is located at its
    /// parameter like a [`Stage::check`] error and stops the run with nothing run (exit 2).
    /// The default checks nothing.
    fn preflight(&self, params: &Value) -> Result<(), ParamError> {
        let _ = params;
        Ok(())
    }

    /// Runs the stage. Outputs go into `ctx.out_dir`; each top-level entry
    /// there (file or folder) is one named output. Returning `Err` fails the
    /// stage; nothing it wrote is kept. An error that is a [`ParamError`] (a setting that
    /// could only be checked against the data) is shown at the setting's
    /// `file:line:column`, like a [`Stage::check`] error.
    fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome>;
}

/// One input of a stage as the plan sees it before anything runs: see
/// [`Stage::check_inputs`].
#[derive(Debug, Clone)]
pub struct PlannedInput<'a> {
    /// The input's name (as [`Input::name`]).
    pub name: &'a str,
    /// The upstream stage's name.
    pub stage: &'a str,
    /// The output names it will hold (only the one picked by `from: stage.output`), when
    /// the upstream's kind declares them; `None`: known only once it has run.
    pub outputs: Option<Vec<String>>,
}

/// What [`Stage::check`] decided about a stage's parameters.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Canonical parameters hashed into the stage key.
    pub key_params: Value,
    /// Files or folders of the workspace (relative to the manifest's folder)
    /// that the stage reads, such as ingest's `source`. Their content is hashed
    /// into the key, and a stage that declares one of them in `outs` becomes an
    /// upstream of this stage.
    pub workspace_deps: Vec<String>,
}

/// A parameter error, located by its JSON path inside the stage's parameters
/// (e.g. `["model", "config"]`); the engine maps the path to a line and column.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct ParamError {
    /// Path to the offending value: object keys, or array indices as strings.
    pub path: Vec<String>,
    /// What is wrong, as a short lowercase phrase.
    pub message: String,
    /// What to do about it, shown as a trailing `help:` line.
    pub help: Option<String>,
}

impl ParamError {
    /// An error at `path` with no hint.
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        ParamError {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Deserializes a kind's parameters, reporting the path of the value that failed.
pub fn parse_params<T: DeserializeOwned>(params: &Value) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(params).map_err(|err| {
        let path = err
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let (message, help) = crate::param_words::plain(&err.into_inner().to_string());
        ParamError {
            path,
            message,
            help,
        }
    })
}

/// The JSON Schema of a parameter struct, for [`Stage::params_schema`].
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("a JSON Schema always serializes")
}

/// Parameters turned back into JSON (defaults filled in), for [`Checked::key_params`].
pub fn key_params_of<T: serde::Serialize>(params: &T) -> Result<Value, ParamError> {
    serde_json::to_value(params)
        .map_err(|e| ParamError::new(&[], format!("cannot encode parameters: {e}")))
}

/// The outputs of one upstream stage, as seen by a downstream stage.
#[derive(Debug, Clone)]
pub struct Input {
    /// The input's name: the key in a `from:` map, or the upstream stage's
    /// name when `from:` is a name or a list.
    pub name: String,
    /// The upstream stage's name.
    pub stage: String,
    /// The upstream stage's named outputs (output name → path on disk).
    /// Output names are the top-level entries of its output folder without
    /// their last extension (`dataset.parquet` → `dataset`). When `from:` picks
    /// one output (`split.train`), only that one is here.
    pub outputs: BTreeMap<String, PathBuf>,
}

impl Input {
    /// The path of output `name`, or an error listing what the upstream has.
    pub fn output(&self, name: &str) -> anyhow::Result<&Path> {
        self.outputs.get(name).map(PathBuf::as_path).ok_or_else(|| {
            let known: Vec<&str> = self.outputs.keys().map(String::as_str).collect();
            anyhow::anyhow!(
                "stage `{}` has no output `{name}` (it has: {})",
                self.stage,
                known.join(", ")
            )
        })
    }
}

/// Everything a running stage may look at.
pub struct RunContext<'a> {
    /// The stage's name in the manifest.
    pub stage: &'a str,
    /// The stage key (hex), for provenance records such as an exported bundle's.
    pub key: &'a str,
    /// The stage's full parameters (including those left out of the key).
    pub params: &'a Value,
    /// The manifest's folder; workspace paths are relative to it.
    pub workspace: &'a Path,
    /// Where to write outputs (an empty folder under `.pipe/tmp/`).
    pub out_dir: &'a Path,
    /// A folder that survives a crash and is named by the stage key, for
    /// checkpoints; it is removed after the stage succeeds.
    pub scratch_dir: &'a Path,
    /// Upstream outputs, in the order of `from:`.
    pub inputs: &'a [Input],
    /// The `run:` command, for kinds with [`Stage::takes_run`].
    pub run: Option<&'a str>,
    /// Declared `outs:` (workspace-relative), for kinds that produce them.
    pub outs: &'a [String],
    /// The stage's log file (also receives a command's stdout and stderr).
    pub log_path: &'a Path,
    /// Progress and messages, drawn by the engine's printer.
    pub reporter: &'a dyn Reporter,
}

impl RunContext<'_> {
    /// The one input of a stage that takes exactly one, or an error saying so.
    pub fn only_input(&self) -> anyhow::Result<&Input> {
        match self.inputs {
            [one] => Ok(one),
            [] => anyhow::bail!("stage `{}` needs an input: add `from: <stage>`", self.stage),
            _ => anyhow::bail!(
                "stage `{}` takes one input but `from:` names {}",
                self.stage,
                self.inputs.len()
            ),
        }
    }

    /// The input named `name` (a key of the `from:` map).
    pub fn input(&self, name: &str) -> anyhow::Result<&Input> {
        self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "stage `{}` needs input `{name}`: write `from: {{ {name}: <stage>, ... }}`",
                self.stage
            )
        })
    }
}

/// How a stage reports progress and notes while it runs.
pub trait Reporter: Send + Sync {
    /// A one-line note for the user (e.g. "detected text column `question`").
    fn note(&self, message: &str);
    /// A progress bar with `total` steps; hidden when progress is not shown.
    fn progress(&self, total: u64, unit: &str) -> indicatif::ProgressBar;
}

/// What a successful run returns besides its output files.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Metrics, kept in the stage record and the lockfile (a JSON object).
    pub metrics: serde_json::Map<String, Value>,
    /// A short headline for the run summary (e.g. `test AUC 0.981 · accuracy 0.912`).
    pub headline: Option<String>,
}

/// The set of stage kinds a run knows.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind (replacing one of the same name).
    pub fn register(&mut self, stage: impl Stage + 'static) -> &mut Self {
        self.kinds.insert(stage.kind(), Box::new(stage));
        self
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Stage> {
        self.kinds.get(name).map(|b| b.as_ref())
    }

    /// All kinds, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Stage> {
        self.kinds.values().map(|b| b.as_ref())
    }

    /// All kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}
