//! `compare`: every member of a matrix side by side, on one page.
//!
//! ```yaml
//! compare:
//!   from: [evaluate, export-onnx]   # evaluate gives the metrics; export-onnx (or finetune) the training log
//!   by: test.macro_auc              # the metric that picks the best member (the default)
//! ```
//!
//! `compare` gathers instead of fanning out: it gets one input per member of
//! each stage in `from:`, named by the member (`evaluate@lr-0.0003`). Inputs
//! of different stages that share a member slug (`@lr-0.0003`) describe one
//! member: its metrics come from the input that has `metrics.json` (an
//! `evaluate` stage), its training time, throughput and loss curve from the
//! one that has `train_log.jsonl` (an `export-onnx` bundle or a `finetune`
//! stage). Several plain stages (`from: [evaluate-a, evaluate-b]`) compare
//! too; each is then a member of its own.
//!
//! Outputs:
//! - `compare.json`: `{"by", "higher_is_better", "best": {"member", "value"},
//!   "columns": [...], "members": [{"member", "inputs": [...], "metrics": {column: value}}]}`;
//!   a column is `<split>.<metric>` (`test.accuracy`, `test.macro_f1`, `test.macro_auc`,
//!   `test.log_loss`) or `train_seconds`, `tokens_per_s`; an undefined value is `null`;
//! - `report.html`: the metrics table (best member marked), the ROC curves of all members
//!   overlaid per split (micro-averaged one-vs-rest, from each member's
//!   `predictions.parquet`), and the training-loss curves overlaid.

mod members;
mod page;

use anyhow::{Context, Result, bail};
use pipe_engine::{Checked, Outcome, ParamError, PlannedInput, RunContext, Stage, parse_params};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::table::write_json;
use members::{MemberResult, gather};

/// The `compare` stage kind.
#[derive(Debug, Default)]
pub struct Compare;

/// Parameters of `compare`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// The column that picks the best member, e.g. `test.macro_auc`, `test.accuracy`,
    /// `test.log_loss` (lower is better for losses and times), `tokens_per_s`.
    #[serde(default = "default_by")]
    pub by: String,
}

fn default_by() -> String {
    "test.macro_auc".into()
}

/// Metrics of a split that the table shows, in column order.
pub const SPLIT_METRICS: [&str; 4] = ["accuracy", "macro_f1", "macro_auc", "log_loss"];

/// Columns that come from the training log.
pub const TRAINING_COLUMNS: [&str; 2] = ["train_seconds", "tokens_per_s"];

/// Whether a larger value of column `by` is better: not for losses and times.
fn higher_is_better(by: &str) -> bool {
    !(by.ends_with("loss") || by.ends_with("seconds"))
}

impl Params {
    fn parse(value: &Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        let known =
            params.by.split_once('.').is_some_and(|(split, metric)| {
                !split.is_empty() && SPLIT_METRICS.contains(&metric)
            }) || TRAINING_COLUMNS.contains(&params.by.as_str());
        if !known {
            return Err(ParamError::new(
                &["by"],
                format!("cannot rank members by `{}`", params.by),
            )
            .with_help(format!(
                "use `<split>.<metric>` with a metric among {}, or one of {}",
                SPLIT_METRICS.join(", "),
                TRAINING_COLUMNS.join(", ")
            )));
        }
        Ok(params)
    }
}

/// What `compare.json` holds.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// The ranking column.
    pub by: String,
    /// Whether larger values of `by` are better.
    pub higher_is_better: bool,
    /// The best member and its value of `by`; `None` when no member has that value.
    pub best: Option<Best>,
    /// The columns of the table, in order.
    pub columns: Vec<String>,
    /// One entry per member, in input order.
    pub members: Vec<MemberRow>,
}

/// The member that wins on `by`.
#[derive(Debug, Serialize)]
pub struct Best {
    /// Its name.
    pub member: String,
    /// Its value of `by`.
    pub value: f64,
}

/// One member's row.
#[derive(Debug, Serialize)]
pub struct MemberRow {
    /// The member's name (its matrix slug, or the stage name).
    pub member: String,
    /// The inputs it was read from.
    pub inputs: Vec<String>,
    /// Column → value (`null` when undefined or unknown).
    pub metrics: serde_json::Map<String, Value>,
}

impl Stage for Compare {
    fn kind(&self) -> &'static str {
        "compare"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &'static str {
        "Puts every member of a matrix side by side: metrics table, overlaid ROC and loss curves, best member"
    }

    fn params_schema(&self) -> Value {
        pipe_engine::schema_of::<Params>()
    }

    fn output_names(&self, _key_params: &Value) -> Option<Vec<String>> {
        Some(["compare", "report"].map(String::from).to_vec())
    }

    fn gathers_members(&self) -> bool {
        true
    }

    /// Needs at least one input that may write `metrics.json` (evaluate stages, usually).
    fn check_inputs(&self, _params: &Value, inputs: &[PlannedInput<'_>]) -> Result<(), ParamError> {
        let lacks_metrics = |i: &PlannedInput<'_>| {
            (i.outputs.as_ref()).is_some_and(|o| !o.iter().any(|n| n == "metrics"))
        };
        if inputs.is_empty() || !inputs.iter().all(lacks_metrics) {
            return Ok(());
        }
        let names: Vec<&str> = inputs.iter().map(|i| i.stage).collect();
        Err(ParamError::new(
            &["from"],
            format!(
                "none of the inputs ({}) writes `metrics.json`",
                names.join(", ")
            ),
        )
        .with_help("point `from:` at the evaluate stages to compare"))
    }

    fn check(&self, params: &Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        Ok(Checked {
            key_params: pipe_engine::key_params_of(&params)?,
            workspace_deps: Vec::new(),
        })
    }

    fn run(&self, ctx: &RunContext<'_>) -> Result<Outcome> {
        let params = Params::parse(ctx.params).map_err(|e| anyhow::anyhow!("{e}"))?;
        if ctx.inputs.is_empty() {
            bail!(
                "stage `{}` compares nothing: add `from: <evaluate stage>`",
                ctx.stage
            );
        }
        let members = gather(ctx.inputs)?;
        let comparison = compare(&members, &params.by);
        write_json(&ctx.out_dir.join("compare.json"), &comparison)?;
        let html = page::render(ctx.stage, &comparison, &members)?;
        let path = ctx.out_dir.join("report.html");
        fs_err::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
        let mut metrics = serde_json::Map::new();
        metrics.insert("members".into(), json!(members.len()));
        let headline = match &comparison.best {
            Some(best) => {
                metrics.insert("best".into(), json!(best.member));
                metrics.insert(params.by.clone(), json!(best.value));
                format!(
                    "{} members · best {} ({} {:.3})",
                    members.len(),
                    best.member,
                    params.by,
                    best.value
                )
            }
            None => format!("{} members · none has {}", members.len(), params.by),
        };
        Ok(Outcome {
            metrics,
            headline: Some(headline),
        })
    }
}

/// The table and the winner.
fn compare(members: &[MemberResult], by: &str) -> Comparison {
    let splits: Vec<&str> = members
        .iter()
        .flat_map(|m| m.splits.iter().map(|(s, _)| s.as_str()))
        .fold(Vec::new(), |mut seen, s| {
            if !seen.contains(&s) {
                seen.push(s);
            }
            seen
        });
    let columns: Vec<String> = splits
        .iter()
        .flat_map(|s| SPLIT_METRICS.iter().map(move |m| format!("{s}.{m}")))
        .chain(TRAINING_COLUMNS.iter().map(|c| c.to_string()))
        .collect();
    let rows: Vec<MemberRow> = members
        .iter()
        .map(|m| MemberRow {
            member: m.name.clone(),
            inputs: m.inputs.clone(),
            metrics: columns
                .iter()
                .map(|c| (c.clone(), m.value(c).map_or(Value::Null, |v| json!(v))))
                .collect(),
        })
        .collect();
    let higher = higher_is_better(by);
    let best = members
        .iter()
        .filter_map(|m| m.value(by).filter(|v| v.is_finite()).map(|v| (m, v)))
        .fold(None::<(&MemberResult, f64)>, |best, (m, v)| match best {
            Some((_, b)) if (higher && b >= v) || (!higher && b <= v) => best,
            _ => Some((m, v)),
        })
        .map(|(m, value)| Best {
            member: m.name.clone(),
            value,
        });
    Comparison {
        by: by.to_string(),
        higher_is_better: higher,
        best,
        columns,
        members: rows,
    }
}
