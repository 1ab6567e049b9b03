//! Command-line arguments (clap). Each subcommand's behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pipe_stages::init::ModelChoice;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  a stage (or a check) failed
  2  bad usage, a bad manifest, an environment problem, or stages that each failed on
     their input (a truncated or mismatched checkpoint)";

/// Declarative, content-hashed ML pipelines.
///
/// A manifest (YAML) describes stages: ingest a CSV, split it, tokenize it,
/// fine-tune a model, export it, evaluate it, or any shell command. `pipe run`
/// runs only the stages whose inputs really changed and restores the rest
/// from the cache.
#[derive(Debug, Parser)]
#[command(name = "pipe", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// When to colour output (NO_COLOR is respected under `auto`).
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,

    /// Print only errors and answers.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Color {
    /// Colour when stderr is a terminal.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline's stages whose inputs changed; restore the rest from the cache.
    #[command(after_help = "\
Examples:
  pipe run pipelines/student.yaml            run the whole pipeline
  pipe run pipelines/student.yaml evaluate   run evaluate and what it needs
  pipe run --force=finetune                  rerun finetune even if cached
  pipe run --dry-run                         say what would run, change nothing
  pipe run --json | jq '.stages[] | {name, status}'
  pipe run --push                            then upload the results to the remote cache
  pipe run --executor slurm --jobs 20        each stage that must run as a Slurm job

A local miss is looked up in the remote cache (`remote:` or PIPE_REMOTE) before the
stage runs; a remote that fails is a warning and the stage runs locally.

Exit codes: 0 success, 1 a stage (or --push) failed, 2 bad usage or manifest, or every failed
stage failed on its input (a truncated or mismatched checkpoint).")]
    Run(RunArgs),
    /// Show what `pipe run` would do, and why, without running anything.
    #[command(after_help = "\
Examples:
  pipe status pipelines/student.yaml
  pipe status --json

Exit codes: 0 every stage is cached or would run, 1 a stage cannot run as written (a missing
input, say), 2 bad usage or manifest.")]
    Status(StatusArgs),
    /// Print the stage graph as text, Graphviz dot or Mermaid.
    #[command(after_help = "\
Examples:
  pipe dag pipelines/student.yaml
  pipe dag --format dot | dot -Tsvg > dag.svg
  pipe dag --format mermaid")]
    Dag(DagArgs),
    /// Check a manifest (syntax, kinds, parameters, references, paths, cycles).
    #[command(after_help = "\
Examples:
  pipe validate pipelines/student.yaml")]
    Validate(ValidateArgs),
    /// Show a stage's output paths and metrics.
    #[command(after_help = "\
Examples:
  pipe show evaluate
  pipe show pipelines/student.yaml split --json")]
    Show(ShowArgs),
    /// Print the stages' metrics, or compare them with a git revision or the previous run.
    #[command(
        long_about = "Print the stages' metrics, or compare them with a git revision or the previous run.

Metrics come from the lockfile beside the manifest: one row per stage and metric, stages \
in pipeline order, nested metrics flattened with dots (`test.accuracy`), numbers with 4 \
significant digits (integers whole). The table shows numbers only: strings, booleans and \
arrays (a confusion matrix) are left out of it but kept in `--json`.",
        after_help = "\
Examples:
  pipe metrics                                   the metrics of the last run
  pipe metrics pipelines/student.yaml --json     {stage: {metric: value}}
  pipe metrics --diff                            what changed since HEAD (or the previous run)
  pipe metrics student.yaml --diff main --all    every metric, side by side with branch main
  pipe metrics --diff previous                   what the last run changed (the default outside git)

Exit codes: 0 success, 1 no metrics to show or compare with, 2 bad usage or manifest."
    )]
    Metrics(MetricsArgs),
    /// Upload the results the lockfile references to the remote cache.
    ///
    /// The remote is `remote: s3://bucket/prefix` in the manifest, or PIPE_REMOTE (which wins).
    /// Endpoint and credentials come from the AWS environment (AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, and
    /// AWS_ALLOW_HTTP=true for a plain-http server), and what it leaves unset from the AWS
    /// CLI's files (~/.aws/credentials and ~/.aws/config, profile AWS_PROFILE or default).
    /// What the remote has is skipped. While a pipe run uses the store, push waits for it.
    #[command(after_help = "\
Examples:
  pipe push                                 every stage of the one manifest here
  pipe push pipelines/student.yaml finetune just finetune's results
  PIPE_REMOTE=s3://team-cache/student pipe push
  AWS_PROFILE=team pipe push                keys and endpoint of ~/.aws/ profile `team`

Exit codes: 0 success, 1 the remote failed (the cause is printed), 2 bad usage, manifest, \
AWS files, or the store in use (with --no-wait).")]
    Push(TransferArgs),
    /// Download the results the lockfile references from the remote cache.
    ///
    /// They go into the local store (each object checked against its hash); `pipe run`
    /// then restores them without running anything, even offline. The remote and its
    /// credentials are found as for `pipe push`.
    #[command(after_help = "\
Examples:
  pipe pull && pipe run                     fetch a teammate's results, then use them
  pipe pull pipelines/student.yaml evaluate

Exit codes: 0 success, 1 the remote failed or lacks a stage, 2 bad usage or manifest.")]
    Pull(TransferArgs),
    /// Remove cached results that no lockfile references.
    #[command(after_help = "\
Examples:
  pipe gc --dry-run                           the store of the current folder
  pipe gc pipelines/student.yaml --dry-run    the store beside that manifest
  pipe gc --grace 0s        remove everything unreferenced, however recent")]
    Gc(GcArgs),
    /// Inspect a data file, ask how to use it, and write a manifest.
    #[command(after_help = "\
Examples:
  pipe init --from data/questions.csv                 ask, then write pipeline.yaml
  pipe init --from data/questions.csv --yes -o student.yaml
  pipe init --from q.csv --text question --label subject --test 0.2 --shuffle --yes
  pipe init --from q.csv --model EleutherAI/gpt-neo-125m --lora --epochs 2 --yes")]
    Init(InitArgs),
    /// Label texts with an exported model bundle.
    ///
    /// BUNDLE is the output folder of an export-onnx stage, or the name of such a stage in
    /// the manifest (`--manifest`, or the one manifest in the current folder). Texts come
    /// from the command line or, with `--file`, from a column of a data file.
    #[command(after_help = "\
Examples:
  pipe predict export-onnx \"What is the speed of light?\"
  pipe predict .pipe/out/student/export-onnx \"first text\" \"second text\"
  pipe predict export-onnx --file data/new_questions.csv --text-column question
  pipe predict export-onnx --file notes.jsonl --json | jq '.[].label'
  pipe predict export-onnx@fast \"hi\"               a member of a matrix stage

Exit codes: 0 success, 1 the bundle cannot be found, opened or run, 2 bad usage or manifest.")]
    Predict(PredictArgs),
    /// Serve an exported model bundle over HTTP.
    ///
    /// BUNDLE is the output folder of an export-onnx stage, or the name of such a stage in
    /// the manifest, as for `pipe predict`. `POST /predict` with `{"texts": [...]}` answers
    /// `{"predictions": [...]}`, each element as `pipe predict --json` prints it;
    /// `GET /health` and `GET /metadata` (labels, model shape, provenance) answer too.
    /// Concurrent requests share model runs, and a large request takes turns with the others
    /// (`--max-batch` texts at a time); a request whose client left is not computed further.
    /// Connections past `--max-connections` are answered 503. Stops cleanly on SIGTERM or
    /// Ctrl-C, answering the requests already taken.
    #[command(after_help = "\
Examples:
  pipe serve export-onnx                              listen on 127.0.0.1:8080
  pipe serve .pipe/out/student/export-onnx --host 0.0.0.0 --port 9000
  pipe serve export-onnx --queue 16 --max-batch 8     refuse (503) beyond 16 requests in hand
  pipe serve export-onnx --max-connections 100        refuse (503) beyond 100 open connections
  curl -s localhost:8080/predict -d '{\"texts\": [\"What is a prime number?\"]}'

Exit codes: 0 stopped by a signal, 1 the bundle cannot be found or opened, 2 bad usage, \
manifest or address.")]
    Serve(ServeArgs),
    /// Download a Hugging Face model (config, weights, tokenizer) into the local cache.
    ///
    /// Files go where `hf download` puts them (HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub), so `model: { hub: ID }` and `tokenizer: { hub: ID }` find
    /// them offline. HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are respected; an interrupted
    /// download resumes where it stopped.
    #[command(after_help = "\
Examples:
  pipe pull-model EleutherAI/gpt-neo-125m
  HF_ENDPOINT=http://mirror.local:8080 pipe pull-model EleutherAI/gpt-neo-125m

Exit codes: 0 downloaded (or already cached), 1 the download failed, 2 bad usage.")]
    PullModel(PullModelArgs),
    /// Report the ONNX Runtime found, its version and execution providers, and the store.
    Doctor(DoctorArgs),
    /// Print the JSON Schema of manifests (as in schemas/pipeline.schema.json).
    Schema,
    /// Run one stage as `pipe run` prepared it (what a cluster job runs; internal).
    #[command(hide = true)]
    ExecStage(ExecStageArgs),
}

/// Where the manifest is, and whether paths may leave its folder.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Allow workspace paths outside the manifest's folder (absolute, `..`, symlinks out).
    #[arg(long)]
    pub allow_outside: bool,
}

/// `pipe run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The manifest (default: the one manifest in the current folder), then stages to run.
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// Rerun even when cached: all selected stages, or `--force=STAGE` (repeatable).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "STAGE")]
    pub force: Vec<String>,
    /// Say what would run and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stages to run at once (default: the number of cores; with `--executor slurm`, 64
    /// jobs in the queue).
    #[arg(long, short, value_parser = parse_at_least_one)]
    pub jobs: Option<usize>,
    /// Print one JSON document on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Fail at once when another run holds the store, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// After the run, upload the results of the stages it ran or restored to the remote cache.
    #[arg(long, conflicts_with_all = ["dry_run", "no_remote"])]
    pub push: bool,
    /// Do not use the remote cache (`remote:` or PIPE_REMOTE) in this run.
    #[arg(long)]
    pub no_remote: bool,
    /// Where stages that must run execute: here, or one Slurm job each (default: the
    /// manifest's `executor:`, else local). With slurm, `--jobs` bounds the jobs in the queue
    /// (default 64).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `--executor` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExecutorArg {
    /// In the `pipe run` process.
    Local,
    /// One Slurm job per stage (`sbatch`); the store must be on a filesystem the nodes share.
    Slurm,
}

/// `pipe exec-stage` (internal).
#[derive(Debug, Args)]
pub struct ExecStageArgs {
    /// The stage's folder in the store, holding the request `pipe run` wrote.
    pub dir: PathBuf,
}

/// `pipe status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest (default: the one manifest in the current folder), then stages.
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// Print JSON (the same shape as `pipe run --json`): statuses `cached` or `would_run`, or
    /// `failed` (with its `error`) for a stage that cannot run as written and `skipped` for the
    /// stages after it; `ok` is then false and the exit code 1.
    #[arg(long)]
    pub json: bool,
    /// Do not ask the remote cache which local misses it would serve.
    #[arg(long)]
    pub no_remote: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe push` and `pipe pull`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The manifest (default: the one manifest in the current folder), then stages
    /// (default: every stage in its lockfile).
    #[arg(value_name = "FILE|STAGE")]
    pub args: Vec<String>,
    /// Print what was transferred as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fail at once when a run holds the store, instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe dag` output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    /// An indented text tree.
    Text,
    /// Graphviz dot.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// `pipe dag`.
#[derive(Debug, Args)]
pub struct DagArgs {
    /// The manifest (default: the one manifest in the current folder).
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DagFormat::Text)]
    pub format: DagFormat,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest (default: the one manifest in the current folder).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// `[FILE] STAGE`: the manifest (default: the one in the current folder) and the stage.
    #[arg(value_name = "FILE|STAGE", required = true, num_args = 1..=2)]
    pub args: Vec<String>,
    /// Print `{"stage", "key", "outputs": {name: path}, "metrics": {...}}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The manifest (default: the one manifest in the current folder).
    pub file: Option<PathBuf>,
    /// Compare with the lockfile at git revision REV, or with `previous`: the
    /// lockfile before the last run that changed it. Without REV: HEAD when the
    /// lockfile is committed there, else the previous run. Lists changed metrics only.
    #[arg(long, value_name = "REV", num_args = 0..=1)]
    pub diff: Option<Option<String>>,
    /// With --diff: list unchanged metrics too (changed rows are then bold).
    #[arg(long, requires = "diff")]
    pub all: bool,
    /// Print JSON: `{stage: {metric: value}}`, or with --diff
    /// `[{stage, metric, old, new, delta}]` (null where a side has no value).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

/// `pipe gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// A manifest whose store to clean (default: the store of the current folder, kept
    /// for every lockfile under it).
    pub file: Option<PathBuf>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep anything younger than this (`30s`, `15m`, `12h`, `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    /// First hash every store object: a damaged one (changed in place, replaced) is named
    /// and moved to the store's `damaged/` folder, so what needs it runs again.
    #[arg(long)]
    pub verify: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pipe init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The data file to inspect (CSV, TSV, JSON Lines or Parquet).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Where to write the manifest (default: pipeline.yaml).
    #[arg(long, short, value_name = "MANIFEST")]
    pub output: Option<PathBuf>,
    /// The column holding the text.
    #[arg(long)]
    pub text: Option<String>,
    /// The column holding the label.
    #[arg(long)]
    pub label: Option<String>,
    /// A label cell may hold several labels (`physics;math`).
    #[arg(long)]
    pub multi_label: bool,
    /// Fraction of rows for the test split (0: no split).
    #[arg(long, value_name = "FRACTION")]
    pub test: Option<f64>,
    /// Fraction of rows for a validation split (0: none).
    #[arg(long, value_name = "FRACTION")]
    pub validation: Option<f64>,
    /// Shuffle rows before splitting.
    #[arg(long)]
    pub shuffle: bool,
    /// The model to fine-tune: tiny or small (from scratch), or a Hugging Face id such as
    /// EleutherAI/gpt-neo-125m.
    #[arg(long, value_name = "tiny|small|OWNER/NAME", value_parser = parse_model)]
    pub model: Option<ModelChoice>,
    /// Train LoRA adapters instead of every weight.
    #[arg(long)]
    pub lora: bool,
    /// Passes over the train split.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Where to train: cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Take the default answer to every question not given by a flag.
    #[arg(long, short)]
    pub yes: bool,
    /// Overwrite an existing manifest.
    #[arg(long)]
    pub force: bool,
}

/// `pipe predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A bundle folder, or the name of an export-onnx stage of the manifest.
    #[arg(value_name = "BUNDLE")]
    pub bundle: String,
    /// Texts to label.
    #[arg(value_name = "TEXT", required_unless_present = "file")]
    pub texts: Vec<String>,
    /// Label the texts of a CSV, TSV, JSON Lines or Parquet file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    pub file: Option<PathBuf>,
    /// The column of `--file` holding the texts (default: detected, as ingest does).
    #[arg(long, value_name = "NAME", requires = "file")]
    pub text_column: Option<String>,
    /// The manifest in which BUNDLE names a stage (default: the one in the current folder).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print one JSON array: `[{"text", "label", "probabilities": {label: p}}]` (plus
    /// `labels`, the labels at or above 0.5, for multi-label bundles).
    #[arg(long)]
    pub json: bool,
    /// Texts per model run.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Where the model runs: cpu, cuda, cuda:N or auto (CUDA device 0 when usable, else the
    /// CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// ONNX Runtime threads (default: one per core).
    #[arg(long, value_parser = parse_at_least_one)]
    pub threads: Option<usize>,
}

/// `pipe serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A bundle folder, or the name of an export-onnx stage of the manifest.
    #[arg(value_name = "BUNDLE|STAGE")]
    pub bundle: String,
    /// The manifest in which BUNDLE names a stage (default: the one in the current folder).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// The address to listen on: an IP address or `localhost`.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    pub host: std::net::IpAddr,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The most texts one model run takes, across the requests waiting.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch: u64,
    /// The most requests in the model's hands (waiting or being computed); more are answered
    /// 503 with `Retry-After: 1`.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue: u64,
    /// The most connections open at once; more are answered 503 with `Retry-After: 1`.
    /// Default, and at most: three quarters of the file descriptors free at start (after
    /// raising the soft `ulimit -n` to the hard one).
    #[arg(long, value_parser = parse_at_least_one)]
    pub max_connections: Option<usize>,
    /// The largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// ONNX Runtime threads (default: one per core).
    #[arg(long, value_parser = parse_at_least_one)]
    pub threads: Option<usize>,
}

/// `pipe pull-model`.
#[derive(Debug, Args)]
pub struct PullModelArgs {
    /// The repository id, such as EleutherAI/gpt-neo-125m.
    #[arg(value_name = "OWNER/NAME")]
    pub repo: String,
}

/// `pipe doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A count of at least 1 (`--jobs`, `--threads`).
fn parse_at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// An IP address, or `localhost` (the IPv4 loopback, as the default).
fn parse_host(text: &str) -> Result<std::net::IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address; write e.g. 127.0.0.1, 0.0.0.0, ::1 or localhost")
    })
}

/// `tiny`, `small` or a Hugging Face id.
fn parse_model(text: &str) -> Result<ModelChoice, String> {
    ModelChoice::parse(text).map_err(|e| e.to_string())
}

/// `30s`, `15m`, `12h`, `7d` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 30s, 15m, 12h or 7d"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use s, m, h or d"
            ));
        }
    };
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` is longer than any duration pipe can wait; write e.g. 365d"))
}
