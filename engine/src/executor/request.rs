//! The hand-over between `pipe run` and a stage running elsewhere (a Slurm
//! job): two small JSON files in the stage's temporary folder on the shared
//! filesystem.
//!
//! `request.json`, written by `pipe run` before it submits the job, holds
//! everything [`crate::Stage::run`] needs, as the run resolved it: the kind
//! and its version, the full parameters, the inputs' paths, the output,
//! scratch and log paths (all absolute). The job (`pipe exec-stage DIR`) reads
//! it, runs the kind into the output folder and writes `reply.json`: the
//! metrics and headline, or the error, and the notes the kind wrote (which
//! `pipe run` shows as a local run would). The manifest is not read again, so
//! editing it while a job waits in the queue changes nothing about that job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::atomic;
use crate::executor::local::run_kind;
use crate::files;
use crate::printer::{ColorChoice, Printer};
use crate::stage::{Input, Outcome, ParamError, Registry, Reporter, RunContext};

/// The request's file name in the stage's folder.
pub const REQUEST_FILE: &str = "request.json";
/// The reply's file name in the stage's folder.
pub const REPLY_FILE: &str = "reply.json";

/// What the job runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The version of the `pipe` that wrote it.
    pub pipe_version: String,
    /// The stage's name.
    pub stage: String,
    /// Its kind.
    pub kind: String,
    /// The kind's implementation version the stage key was computed with.
    pub kind_version: u32,
    /// The stage key (hex).
    pub key: String,
    /// The full parameters.
    pub params: Value,
    /// The manifest's folder.
    pub workspace: PathBuf,
    /// Where outputs go.
    pub out_dir: PathBuf,
    /// The scratch folder.
    pub scratch_dir: PathBuf,
    /// The stage's log.
    pub log_path: PathBuf,
    /// Upstream outputs.
    pub inputs: Vec<RequestInput>,
    /// `run:`.
    pub run: Option<String>,
    /// Declared `outs:`.
    pub outs: Vec<String>,
}

/// One [`Input`], as written in a request.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestInput {
    /// The input's name.
    pub name: String,
    /// The upstream stage.
    pub stage: String,
    /// Output name → absolute path.
    pub outputs: BTreeMap<String, PathBuf>,
}

/// What the job answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The stage ran.
    Done {
        /// Its metrics.
        metrics: serde_json::Map<String, Value>,
        /// Its headline.
        headline: Option<String>,
        /// The notes it wrote, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// The stage failed.
    Failed {
        /// The error with its causes.
        error: String,
        /// The setting the error is about, when it is one (a [`ParamError`] from
        /// [`crate::Stage::run`]), so the submitting side names its manifest line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setting: Option<ParamError>,
        /// Whether it failed on its input ([`crate::BadInput`]), which the submitting side
        /// marks again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bad_input: bool,
        /// The notes it wrote before failing, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
}

impl Reply {
    /// The notes the stage wrote.
    pub fn notes(&self) -> &[String] {
        match self {
            Reply::Done { notes, .. } | Reply::Failed { notes, .. } => notes,
        }
    }
}

/// A [`Reporter`] that writes notes to `inner` and keeps them for the reply.
struct KeepNotes<'r> {
    inner: &'r dyn Reporter,
    notes: Mutex<Vec<String>>,
}

impl Reporter for KeepNotes<'_> {
    fn note(&self, message: &str) {
        self.inner.note(message);
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(message.to_string());
        }
    }

    fn progress(&self, total: u64, unit: &str) -> indicatif::ProgressBar {
        self.inner.progress(total, unit)
    }
}

impl Request {
    /// The request for running `ctx` with a kind of `kind_version`, paths made absolute.
    pub fn new(kind: &str, kind_version: u32, ctx: &RunContext<'_>) -> anyhow::Result<Request> {
        let absolute = |p: &Path| {
            std::path::absolute(p).with_context(|| format!("cannot resolve `{}`", p.display()))
        };
        Ok(Request {
            pipe_version: env!("CARGO_PKG_VERSION").to_string(),
            stage: ctx.stage.to_string(),
            kind: kind.to_string(),
            kind_version,
            key: ctx.key.to_string(),
            params: ctx.params.clone(),
            workspace: absolute(ctx.workspace)?,
            out_dir: absolute(ctx.out_dir)?,
            scratch_dir: absolute(ctx.scratch_dir)?,
            log_path: absolute(ctx.log_path)?,
            inputs: ctx
                .inputs
                .iter()
                .map(|input| {
                    Ok(RequestInput {
                        name: input.name.clone(),
                        stage: input.stage.clone(),
                        outputs: input
                            .outputs
                            .iter()
                            .map(|(k, p)| Ok((k.clone(), absolute(p)?)))
                            .collect::<anyhow::Result<_>>()?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            run: ctx.run.map(str::to_string),
            outs: ctx.outs.to_vec(),
        })
    }

    /// Writes the request into folder `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        atomic::write(
            &dir.join(REQUEST_FILE),
            &serde_json::to_vec_pretty(self)?,
            false,
        )
    }
}

/// Reads the reply in folder `dir`, `None` when the job wrote none.
pub fn read_reply(dir: &Path) -> anyhow::Result<Option<Reply>> {
    let path = dir.join(REPLY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = files::read(&path)?;
    let reply = serde_json::from_slice(&bytes)
        .with_context(|| format!("`{}` is not a stage reply", path.display()))?;
    Ok(Some(reply))
}

/// The job's side: runs the request in folder `dir` with a kind of `registry`
/// and writes the reply. Returns whether the stage succeeded; an error means
/// the request itself could not be read or answered.
pub fn serve(registry: &Registry, dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join(REQUEST_FILE);
    let bytes = files::read(&path)?;
    let request: Request = serde_json::from_slice(&bytes)
        .with_context(|| format!("`{}` is not a stage request", path.display()))?;
    // `pipe run` puts a stage's output folder inside the request's own folder (its temporary
    // folder in the store); a request that sends the outputs anywhere else was not written by
    // it, and running it could write over files pipe does not own.
    let own_out = std::path::absolute(dir)?.join("out");
    if request.out_dir != own_out {
        anyhow::bail!(
            "`{}` sends the stage's outputs to `{}`, not to `{}`; `pipe exec-stage` runs only \
             the requests `pipe run` writes into a stage's temporary folder",
            path.display(),
            request.out_dir.display(),
            own_out.display()
        );
    }
    let kind = registry.get(&request.kind).with_context(|| {
        format!(
            "this pipe ({}) has no stage kind `{}`; run the same pipe version ({}) on the cluster",
            env!("CARGO_PKG_VERSION"),
            request.kind,
            request.pipe_version
        )
    })?;
    if kind.version() != request.kind_version {
        anyhow::bail!(
            "this pipe ({}) has version {} of the `{}` kind, but the stage key was computed with version {} (pipe {}); run the same pipe version on the cluster",
            env!("CARGO_PKG_VERSION"),
            kind.version(),
            request.kind,
            request.kind_version,
            request.pipe_version
        );
    }
    let inputs: Vec<Input> = request
        .inputs
        .iter()
        .map(|i| Input {
            name: i.name.clone(),
            stage: i.stage.clone(),
            outputs: i.outputs.clone(),
        })
        .collect();
    // Notes go to stderr, which the job writes into the stage's log.
    let printer = Printer::new(ColorChoice::Never, false, true);
    let stderr = printer.reporter(&request.stage);
    let reporter = KeepNotes {
        inner: &stderr,
        notes: Mutex::new(Vec::new()),
    };
    let ctx = RunContext {
        stage: &request.stage,
        key: &request.key,
        params: &request.params,
        workspace: &request.workspace,
        out_dir: &request.out_dir,
        scratch_dir: &request.scratch_dir,
        inputs: &inputs,
        run: request.run.as_deref(),
        outs: &request.outs,
        log_path: &request.log_path,
        reporter: &reporter,
    };
    let result = run_kind(kind, &ctx);
    let notes = reporter.notes.into_inner().unwrap_or_default();
    let (reply, ok) = match result {
        Ok(Outcome { metrics, headline }) => (
            Reply::Done {
                metrics,
                headline,
                notes,
            },
            true,
        ),
        Err(error) => (
            Reply::Failed {
                setting: error.downcast_ref::<ParamError>().cloned(),
                bad_input: crate::BadInput::is_in(&error),
                error: format!("{error:#}"),
                notes,
            },
            false,
        ),
    };
    atomic::write(
        &dir.join(REPLY_FILE),
        &serde_json::to_vec_pretty(&reply)?,
        true,
    )?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{Checked, ParamError, Stage};

    /// Writes its `text` parameter into `out/greeting.txt`; fails when it is empty.
    struct Greet;

    impl Stage for Greet {
        fn kind(&self) -> &'static str {
            "greet"
        }
        fn version(&self) -> u32 {
            2
        }
        fn summary(&self) -> &'static str {
            "writes a greeting"
        }
        fn params_schema(&self) -> Value {
            serde_json::json!({ "type": "object" })
        }
        fn check(&self, params: &Value) -> Result<Checked, ParamError> {
            Ok(Checked {
                key_params: params.clone(),
                workspace_deps: Vec::new(),
            })
        }
        fn run(&self, ctx: &RunContext<'_>) -> anyhow::Result<Outcome> {
            let text = ctx.params["text"].as_str().unwrap_or_default();
            ctx.reporter.note("clearing my throat");
            anyhow::ensure!(!text.is_empty(), "nothing to say");
            if text.contains('!') {
                return Err(ParamError::new(&["text"], "no shouting").into());
            }
            if text.contains('?') {
                let error = anyhow::anyhow!("cannot read the question");
                return Err(crate::BadInput(error.context("in the request")).into());
            }
            let input = ctx.only_input()?.output("words")?;
            let words = files::read_to_string(input)?;
            files::write(
                &ctx.out_dir.join("greeting.txt"),
                format!("{text} {words}").as_bytes(),
            )?;
            let mut metrics = serde_json::Map::new();
            metrics.insert("length".into(), text.len().into());
            Ok(Outcome {
                metrics,
                headline: Some(format!("said {text}")),
            })
        }
    }

    /// A stage folder with a request for `greet` (at `version`) saying `text`.
    fn request(dir: &Path, text: &str, version: u32) {
        let out_dir = dir.join("out");
        fs_err::create_dir_all(&out_dir).unwrap();
        fs_err::write(dir.join("words.txt"), "world").unwrap();
        let params = serde_json::json!({ "text": text });
        let inputs = [Input {
            name: "up".into(),
            stage: "up".into(),
            outputs: [("words".to_string(), dir.join("words.txt"))].into(),
        }];
        let printer = Printer::new(ColorChoice::Never, true, true);
        let reporter = printer.reporter("hello");
        let ctx = RunContext {
            stage: "hello",
            key: "00",
            params: &params,
            workspace: dir,
            out_dir: &out_dir,
            scratch_dir: &dir.join("scratch"),
            inputs: &inputs,
            run: None,
            outs: &[],
            log_path: &dir.join("log"),
            reporter: &reporter,
        };
        Request::new("greet", version, &ctx)
            .unwrap()
            .write(dir)
            .unwrap();
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.register(Greet);
        registry
    }

    #[test]
    fn the_job_runs_the_request_and_replies_with_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "hello", 2);
        assert!(serve(&registry(), dir.path()).unwrap());
        assert_eq!(
            fs_err::read_to_string(dir.path().join("out/greeting.txt")).unwrap(),
            "hello world"
        );
        match read_reply(dir.path()).unwrap() {
            Some(Reply::Done {
                metrics,
                headline,
                notes,
            }) => {
                assert_eq!(metrics["length"], 5);
                assert_eq!(headline.as_deref(), Some("said hello"));
                assert_eq!(notes, ["clearing my throat"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_stage_replies_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "", 2);
        assert!(!serve(&registry(), dir.path()).unwrap());
        match read_reply(dir.path()).unwrap() {
            Some(Reply::Failed {
                error,
                setting,
                bad_input,
                notes,
            }) => {
                assert_eq!(error, "nothing to say");
                assert!(setting.is_none());
                assert!(!bad_input);
                assert_eq!(
                    notes,
                    ["clearing my throat"],
                    "notes before a failure travel too"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_comes_back_marked_with_its_causes() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "what?", 2);
        assert!(!serve(&registry(), dir.path()).unwrap());
        match read_reply(dir.path()).unwrap() {
            Some(Reply::Failed {
                error, bad_input, ..
            }) => {
                assert_eq!(error, "in the request: cannot read the question");
                assert!(bad_input);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_setting_comes_back_as_the_setting_so_its_line_can_be_named() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "hello!", 2);
        assert!(!serve(&registry(), dir.path()).unwrap());
        match read_reply(dir.path()).unwrap() {
            Some(Reply::Failed {
                setting: Some(setting),
                ..
            }) => {
                assert_eq!(setting.path, ["text"]);
                assert_eq!(setting.message, "no shouting");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_sending_outputs_outside_its_folder_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "hello", 2);
        let users = tempfile::tempdir().unwrap();
        fs_err::write(users.path().join("greeting.txt"), "mine").unwrap();
        let path = dir.path().join(REQUEST_FILE);
        let mut request: Request = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
        request.out_dir = users.path().to_path_buf();
        fs_err::write(&path, serde_json::to_vec(&request).unwrap()).unwrap();
        let err = serve(&registry(), dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("runs only the requests `pipe run` writes"),
            "{err}"
        );
        assert_eq!(
            fs_err::read_to_string(users.path().join("greeting.txt")).unwrap(),
            "mine"
        );
        assert!(!dir.path().join(REPLY_FILE).exists());
    }

    #[test]
    fn a_kind_of_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        request(dir.path(), "hello", 1);
        let error = serve(&registry(), dir.path()).unwrap_err().to_string();
        assert!(error.contains("version 2 of the `greet` kind"), "{error}");
        assert!(error.contains("computed with version 1"), "{error}");
        assert!(read_reply(dir.path()).unwrap().is_none());
        assert!(!dir.path().join("out/greeting.txt").exists());
    }
}
