//! `evaluate`: scores split tables with an exported bundle and reports how well it does.
//!
//! ```yaml
//! evaluate:
//!   from: { model: export-onnx, data: split }
//!   splits: [train, test]   # default: every split the data has, in the order train, validation, test
//!   batch_size: 32          # rows per model run
//!   batch_tokens: 4096      # padded tokens per model run at most; a longer row runs alone
//!   device: cpu             # cpu, cuda, cuda:N or auto (not in the key)
//!   threads: 2              # ONNX Runtime threads; one per core when left out (not in the key)
//! ```
//!
//! Inputs: `model`, an `export-onnx` stage (its output folder is the bundle, see
//! [`pipe_models::bundle`]), and `data`, a stage with the tables `train`, `validation`, `test` in
//! the `dataset` schema ([`crate::table`]). Every label in the data must be one the bundle
//! knows.
//!
//! Outputs:
//! - `metrics.json`: `{"labels": [...], "<split>": <metrics of the split>, ...}`;
//! - `predictions.parquet`: one row per scored row (see [`rows::PredictionsWriter`]);
//! - `report.html`: metrics, ROC curves, the training loss curve (from the bundle's
//!   `train_log.jsonl`, when it has one) and the [`WRONG_EXAMPLES`] most confidently wrong
//!   rows of each split.

mod rows;
mod train_log;
mod truth;

use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_engine::{
    Checked, Input, Outcome, ParamError, PlannedInput, RunContext, Stage, parse_params,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::device::{
    check as check_device, choose, default_device, headline_suffix, session_options,
};
use crate::report::{self, Report, SplitReport, WrongExample};
use crate::scoring::{self, RocCurve, SplitMetrics};
use crate::table::{DatasetTable, write_json};
use pipe_models::bundle::{Bundle, INFO_FILE, TRAIN_LOG_FILE};
use pipe_models::classifier::ProblemType;
use rows::{PredictionsWriter, most_confidently_wrong};
pub(crate) use train_log::loss_curve;
use truth::Truth;

/// The splits evaluate knows, in the order it scores them by default.
const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// Wrong rows shown per split in the report.
pub const WRONG_EXAMPLES: usize = 5;

/// The `evaluate` stage kind.
#[derive(Debug, Default)]
pub struct Evaluate;

/// Parameters of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// The splits to score (train, validation, test); by default every one the data has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<String>>,
    /// Rows per model run.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Padded tokens per model run at most (rows × the longest row's tokens), which bounds
    /// its memory; a row longer than this runs alone.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    /// Where the model runs: cpu, cuda, cuda:N or auto (not part of the stage key).
    #[serde(default = "default_device")]
    pub device: String,
    /// ONNX Runtime threads; one per core when left out (not part of the stage key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

fn default_batch_size() -> usize {
    32
}

fn default_batch_tokens() -> usize {
    pipe_models::bundle::BATCH_TOKENS
}

impl Params {
    fn parse(value: &serde_json::Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        for (name, value) in [
            ("batch_size", params.batch_size),
            ("batch_tokens", params.batch_tokens),
        ] {
            if value == 0 {
                return Err(ParamError::new(
                    &[name],
                    format!("`{name}` must be at least 1"),
                ));
            }
        }
        if let Some(splits) = &params.splits {
            if splits.is_empty() {
                return Err(ParamError::new(&["splits"], "`splits` is empty").with_help(
                    "name at least one split, or leave `splits` out to score them all",
                ));
            }
            for (i, name) in splits.iter().enumerate() {
                let at = i.to_string();
                if !SPLITS.contains(&name.as_str()) {
                    return Err(ParamError::new(
                        &["splits", &at],
                        format!("unknown split `{name}`"),
                    )
                    .with_help("the splits are train, validation and test"));
                }
                if splits[..i].contains(name) {
                    return Err(ParamError::new(
                        &["splits", &at],
                        format!("split `{name}` is named twice"),
                    ));
                }
            }
        }
        check_device(&params.device, params.threads)?;
        Ok(params)
    }

    /// What goes into the key: everything but where and how fast the model runs.
    fn key_params(&self) -> serde_json::Value {
        json!({
            "splits": self.splits,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
        })
    }
}

/// One scored split.
struct Scored {
    name: &'static str,
    metrics: SplitMetrics,
    roc: Vec<RocCurve>,
    wrong: Vec<WrongExample>,
}

impl Stage for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }

    fn version(&self) -> u32 {
        // 2: past 100 labels `confusion_cells` (sparse) replaces `confusion_matrix`; past
        // 50, report.html shows the 50 largest classes and confusions.
        2
    }

    fn summary(&self) -> &'static str {
        "Score split tables with an exported bundle: metrics, per-row predictions and an HTML report"
    }

    fn params_schema(&self) -> serde_json::Value {
        pipe_engine::schema_of::<Params>()
    }

    fn output_names(&self, _key_params: &serde_json::Value) -> Option<Vec<String>> {
        Some(
            ["predictions", "metrics", "report"]
                .map(String::from)
                .to_vec(),
        )
    }

    /// Reads an export-onnx bundle (`model`) and split tables (`data`), the `splits` asked for.
    fn check_inputs(
        &self,
        params: &serde_json::Value,
        inputs: &[PlannedInput<'_>],
    ) -> Result<(), ParamError> {
        let example = "{ model: <export-onnx stage>, data: <split stage> }";
        let model = crate::wiring::named("evaluate", inputs, "model", example)?;
        let data = crate::wiring::named("evaluate", inputs, "data", example)?;
        crate::wiring::Needs {
            kind: "evaluate",
            outputs: &["bundle"],
            from_kind: "export-onnx",
        }
        .check(model, &["from", "model"])?;
        let Some(tables) = &data.outputs else {
            return Ok(());
        };
        let present: Vec<&str> = SPLITS
            .into_iter()
            .filter(|s| tables.iter().any(|t| t == s))
            .collect();
        let help = "take `data` from a split stage, and `splits` from the tables it writes";
        if present.is_empty() {
            let message = format!(
                "stage `{}` has none of the tables train, validation, test",
                data.stage
            );
            return Err(ParamError::new(&["from", "data"], message).with_help(help));
        }
        let wanted = Params::parse(params)?.splits.unwrap_or_default();
        match wanted
            .iter()
            .enumerate()
            .find(|(_, n)| !present.contains(&n.as_str()))
        {
            None => Ok(()),
            Some((i, name)) => Err(ParamError::new(
                &["splits", &i.to_string()],
                format!(
                    "stage `{}` has no split `{name}` (it has: {})",
                    data.stage,
                    present.join(", ")
                ),
            )
            .with_help(help)),
        }
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        Ok(Checked {
            key_params: params.key_params(),
            workspace_deps: Vec::new(),
        })
    }

    fn preflight(&self, params: &serde_json::Value) -> Result<(), ParamError> {
        crate::device::preflight(&Params::parse(params)?.device)
    }

    fn run(&self, ctx: &RunContext<'_>) -> Result<Outcome> {
        let params = Params::parse(ctx.params)?;
        crate::memory::release_large_frees();
        let device = choose(&params.device, ctx.reporter)?;
        // TF32 is finetune's alone: inference and the self-check keep full fp32 products.
        let options = session_options(&params.device, params.threads, false)?;
        let model = ctx.input("model")?;
        let data = ctx.input("data")?;
        let bundle_dir = bundle_dir(model)?;
        let mut bundle = Bundle::open(bundle_dir, &options)
            .with_context(|| format!("cannot open the bundle of stage `{}`", model.stage))?
            .with_batch_tokens(params.batch_tokens);
        let splits = choose_splits(data, params.splits.as_deref())?;
        let labels = bundle.labels().to_vec();
        let multi_label = bundle.problem_type() == ProblemType::MultiLabelClassification;

        let mut tables = Vec::with_capacity(splits.len());
        for name in splits {
            let shown = format!("table `{name}` of stage `{}`", data.stage);
            let table = DatasetTable::read(data.output(name)?, &shown)?;
            if table.multi_label() != multi_label {
                bail!(
                    "{shown} is {} but the model of stage `{}` is {}",
                    if table.multi_label() {
                        "multi-label"
                    } else {
                        "single-label"
                    },
                    model.stage,
                    if multi_label {
                        "multi-label"
                    } else {
                        "single-label"
                    }
                );
            }
            let truth = Truth::read(&table, &labels, name)?;
            tables.push((name, table, truth));
        }

        let total = tables.iter().map(|(_, t, _)| t.len() as u64).sum();
        let bar = ctx.reporter.progress(total, "rows");
        let mut writer =
            PredictionsWriter::create(&ctx.out_dir.join("predictions.parquet"), multi_label)?;
        let mut scored = Vec::with_capacity(tables.len());
        for (name, table, truth) in &tables {
            bar.set_message(name.to_string());
            let texts: Vec<&str> = (0..table.len()).map(|i| table.text(i)).collect();
            let predictions = bundle
                .predict_with_progress(&texts, params.batch_size, |n| bar.inc(n as u64))
                .with_context(|| format!("cannot score split `{name}`"))?;
            let probabilities = &predictions.probabilities;
            let metrics = match truth {
                Truth::Single(classes) => scoring::single_label(&labels, classes, probabilities),
                Truth::Multi(hot) => scoring::multi_label(&labels, hot, probabilities),
            }
            .with_context(|| format!("cannot compute the metrics of split `{name}`"))?;
            // The report draws the curves of at most `CLASSES_SHOWN` classes.
            let drawn = match labels.len() {
                k if k <= report::CLASSES_SHOWN => (0..k).collect(),
                _ => metrics.top_classes(report::CLASSES_SHOWN),
            };
            let hot = truth.multi_hot(labels.len());
            let roc = scoring::roc_curves_of(&labels, &hot, probabilities, &drawn);
            drop(hot);
            let wrong = most_confidently_wrong(table, truth, &predictions, &labels, WRONG_EXAMPLES);
            writer.write(name, table, truth, &predictions, &labels)?;
            scored.push(Scored {
                name,
                metrics,
                roc,
                wrong,
            });
        }
        writer.finish()?;
        bar.finish_and_clear();

        let mut metrics_json = serde_json::Map::new();
        metrics_json.insert("labels".into(), json!(labels));
        for split in &scored {
            metrics_json.insert(split.name.into(), serde_json::to_value(&split.metrics)?);
        }
        write_json(&ctx.out_dir.join("metrics.json"), &metrics_json)?;

        let loss_curve = train_log::loss_curve(&bundle_dir.join(TRAIN_LOG_FILE))?;
        let title = format!("{} — {}", ctx.stage, model.stage);
        let page = report::render(&Report {
            title: &title,
            labels: &labels,
            splits: scored
                .iter_mut()
                .map(|s| SplitReport {
                    name: s.name,
                    metrics: &s.metrics,
                    roc: std::mem::take(&mut s.roc),
                    wrong: std::mem::take(&mut s.wrong),
                })
                .collect(),
            loss_curve,
        })?;
        let report_path = ctx.out_dir.join("report.html");
        fs_err::write(&report_path, page)
            .with_context(|| format!("cannot write {}", report_path.display()))?;

        metrics_json.remove("labels");
        metrics_json.insert("device".into(), json!(device.to_string()));
        let headline = scored.last().map(|s| {
            format!(
                "{} {}{}",
                s.name,
                s.metrics.headline(),
                headline_suffix(&params.device, device)
            )
        });
        Ok(Outcome {
            metrics: metrics_json,
            headline,
        })
    }
}

/// The bundle folder of the `model` input: where its `bundle.json` is.
fn bundle_dir(model: &Input) -> Result<&Path> {
    let info = model.output("bundle").with_context(|| {
        format!(
            "the `model` input must be an export-onnx stage, whose output folder holds {INFO_FILE}"
        )
    })?;
    info.parent()
        .with_context(|| format!("{} has no parent folder", info.display()))
}

/// The splits to score: `wanted` (each must exist), or every split `data` has.
fn choose_splits(data: &Input, wanted: Option<&[String]>) -> Result<Vec<&'static str>> {
    let present: Vec<&'static str> = SPLITS
        .into_iter()
        .filter(|s| data.outputs.contains_key(*s))
        .collect();
    let Some(wanted) = wanted else {
        if present.is_empty() {
            bail!(
                "stage `{}` has none of the tables train, validation, test; take `data` from a split stage",
                data.stage
            );
        }
        return Ok(present);
    };
    wanted
        .iter()
        .map(|name| {
            present
                .iter()
                .copied()
                .find(|s| s == name)
                .with_context(|| {
                    format!(
                        "stage `{}` has no split `{name}` (it has: {}); change `splits`",
                        data.stage,
                        if present.is_empty() {
                            "none".to_string()
                        } else {
                            present.join(", ")
                        }
                    )
                })
        })
        .collect()
}
