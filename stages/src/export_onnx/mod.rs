//! `export-onnx`: turns a fine-tuned model folder into a bundle that runs wherever ONNX
//! Runtime runs.
//!
//! ```yaml
//! export-onnx:
//!   from: finetune
//!   opset: 20          # the ONNX opset model.onnx declares, 20 to 26
//!   device: cpu        # where the self-check runs: cpu, cuda, cuda:N, auto (not in the key)
//!   threads: 2         # its threads (not in the key); one per core when left out
//! ```
//!
//! Input: an upstream with output `model`, a Hugging Face model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `labels.json`), and optionally `train_log`.
//!
//! Outputs, at the top level (the output folder is the bundle; see [`pipe_models::bundle`] for the
//! files and the model's inputs and outputs): `model.onnx` (and `model.onnx.data` when the
//! weights pass 100 MB), `tokenizer.json`, `labels.json`, `bundle.json`, and `train_log.jsonl`
//! when the upstream has one.
//!
//! Memory: the weights are read from the model folder one tensor at a time and written into
//! `model.onnx.data` as they come, and the self-check holds one copy at a time (the exported
//! session, then the training forward's weights), so an export peaks at about one copy of
//! the model.
//!
//! The graph is the training forward (the family's
//! [`SequenceClassifier::logits`](pipe_models::classifier::SequenceClassifier::logits)) with
//! its parameter inputs frozen into initializers, the lengths computed from
//! `attention_mask`, `token_type_ids` taken as an input when the family has token types, and
//! probabilities added. Before the stage succeeds it loads the written
//! `model.onnx` in ONNX Runtime and compares its logits on a padded sample batch with the
//! training forward fed the same weights (within [`check::allowed_difference`]: 1e-5 per
//! layer, scaled by the largest logit when it is above 1).

mod check;
mod graph;

use std::path::Path;

use crate::wiring::Needs;
use anyhow::{Context, Result, bail};
use pipe_engine::{Checked, Outcome, ParamError, PlannedInput, RunContext, Stage, parse_params};
use pipe_onnx::builder::{MAX_OPSET, OPSET};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::device::{
    check as check_device, choose, default_device, headline_suffix, session_options,
};
use crate::table::write_json;
use pipe_models::Architecture;
use pipe_models::bundle::{
    BundleInfo, DATA_FILE, INFO_FILE, INPUTS, LABELS_FILE, MODEL_FILE, ModelShape, OUTPUTS,
    Provenance, TOKEN_TYPE_IDS, TOKENIZER_FILE, TRAIN_LOG_FILE, content_key,
};
use pipe_models::classifier::ProblemType;
use pipe_models::hf_folder;

/// Past this many bytes of weights, they go to external data (`model.onnx.data`). Protobuf
/// cannot hold a message over 2 GiB, and below that ONNX Runtime still holds an inline model's
/// folded weights twice while a session loads, where it maps external data and folds it
/// with one copy (`bench/README.md`, the big-model section). Small models stay one file.
const EXTERNAL_DATA_ABOVE: usize = 100_000_000;

/// The `export-onnx` stage kind.
#[derive(Debug)]
pub struct ExportOnnx {
    external_data_above: usize,
}

impl Default for ExportOnnx {
    fn default() -> Self {
        ExportOnnx {
            external_data_above: EXTERNAL_DATA_ABOVE,
        }
    }
}

impl ExportOnnx {
    /// An `export-onnx` that moves weights to external data past `bytes` rather than 2 GB,
    /// so tests can exercise external data on a small model.
    pub fn with_external_data_above(bytes: usize) -> Self {
        ExportOnnx {
            external_data_above: bytes,
        }
    }
}

/// Parameters of `export-onnx`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// The ONNX opset model.onnx declares (20 to 26).
    #[serde(default = "default_opset")]
    pub opset: i64,
    /// Where the self-check runs: cpu, cuda, cuda:N or auto (not part of the stage key).
    #[serde(default = "default_device")]
    pub device: String,
    /// Threads of the self-check; one per core when left out (not part of the stage key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

fn default_opset() -> i64 {
    OPSET
}

impl Params {
    fn parse(value: &serde_json::Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        if !(OPSET..=MAX_OPSET).contains(&params.opset) {
            return Err(ParamError::new(
                &["opset"],
                format!("opset {} is not supported", params.opset),
            )
            .with_help(format!(
                "choose an opset from {OPSET} (GELU's tanh form needs it) to {MAX_OPSET} (the latest ONNX Runtime 1.31 runs)"
            )));
        }
        check_device(&params.device, params.threads)?;
        Ok(params)
    }
}

/// What export-onnx reads from its input.
const READS: Needs<'static> = Needs {
    kind: "export-onnx",
    outputs: &["model"],
    from_kind: "finetune",
};

impl Stage for ExportOnnx {
    fn kind(&self) -> &'static str {
        "export-onnx"
    }

    fn version(&self) -> u32 {
        // 2: the graph runs the last block on the pooled rows only; bundle.json names a
        //    mean pooling.
        // 3: weights past 100 MB (not 2 GB) go to model.onnx.data.
        3
    }

    /// The copied training log holds the training's timings (see finetune's).
    fn run_record_outputs(&self) -> &'static [&'static str] {
        &["train_log"]
    }

    fn summary(&self) -> &'static str {
        "Export a fine-tuned model as an ONNX bundle (model.onnx, tokenizer, labels) and check it against the training graph"
    }

    fn params_schema(&self) -> serde_json::Value {
        pipe_engine::schema_of::<Params>()
    }

    /// Reads the `model` folder of a finetune stage.
    fn check_inputs(
        &self,
        _: &serde_json::Value,
        inputs: &[PlannedInput<'_>],
    ) -> Result<(), ParamError> {
        READS.check_only(inputs)
    }

    fn check(&self, params: &serde_json::Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        Ok(Checked {
            key_params: json!({ "opset": params.opset }),
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
        let input = ctx.only_input()?;
        let model_dir = input.output("model")?;
        let cfg = hf_folder::read_config(model_dir)?;
        let problem = cfg
            .problem_type()
            .unwrap_or(ProblemType::SingleLabelClassification);
        let labels = read_labels(model_dir, &cfg)?;
        let tokenizer = copy_tokenizer(model_dir, ctx.out_dir, &cfg)?;

        let specs = pipe_models::param_specs(&cfg)?;
        let weights = hf_folder::weights_path(model_dir)?;
        let model_path = ctx.out_dir.join(MODEL_FILE);
        let weight_bytes: usize = specs.iter().map(|s| s.numel() * 4).sum();
        let external = weight_bytes > self.external_data_above;
        graph::write_model(&cfg, problem, &weights, &model_path, params.opset, external)?;

        write_json(&ctx.out_dir.join(LABELS_FILE), &labels)?;
        let info = BundleInfo {
            format: BundleInfo::FORMAT,
            model: ModelShape::of(&cfg),
            num_labels: labels.len(),
            labels,
            problem_type: problem,
            opset: params.opset,
            inputs: bundle_inputs(&cfg),
            outputs: OUTPUTS.map(String::from).to_vec(),
            source: Provenance {
                stage: ctx.stage.to_string(),
                key: content_key(ctx.out_dir)?,
                model_stage: input.stage.clone(),
            },
            pipe_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        write_json(&ctx.out_dir.join(INFO_FILE), &info)?;
        if let Some(log) = input.outputs.get("train_log") {
            fs_err::copy(log, ctx.out_dir.join(TRAIN_LOG_FILE))
                .with_context(|| format!("cannot copy {} into the bundle", log.display()))?;
        }

        let max_diff = check::self_check(&model_path, &cfg, &weights, &specs, &options)?;
        ctx.reporter.note(&format!(
            "self-check: model.onnx matches the training graph (max logit difference {max_diff:.1e})"
        ));
        let bytes = file_size(&model_path)?
            + if external {
                file_size(&ctx.out_dir.join(DATA_FILE))?
            } else {
                0
            };
        let mut metrics = serde_json::Map::new();
        metrics.insert("opset".into(), json!(params.opset));
        metrics.insert("labels".into(), json!(info.num_labels));
        metrics.insert("bytes".into(), json!(bytes));
        metrics.insert("vocab_size".into(), json!(tokenizer.get_vocab_size(true)));
        metrics.insert("self_check_max_diff".into(), json!(max_diff));
        metrics.insert("device".into(), json!(device.to_string()));
        Ok(Outcome {
            metrics,
            headline: Some(format!(
                "opset {} · {} labels · {}{}",
                params.opset,
                info.num_labels,
                human_size(bytes),
                headline_suffix(&params.device, device)
            )),
        })
    }
}

/// The graph inputs of `cfg`'s bundle, in order.
fn bundle_inputs(cfg: &dyn Architecture) -> Vec<String> {
    let mut inputs = INPUTS.map(String::from).to_vec();
    if cfg.takes_token_types() {
        inputs.push(TOKEN_TYPE_IDS.to_string());
    }
    inputs
}

/// The model folder's `labels.json`, checked against `config.json`.
fn read_labels(model_dir: &Path, cfg: &dyn Architecture) -> Result<Vec<String>> {
    let path = model_dir.join(LABELS_FILE);
    let text = fs_err::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; the model folder needs labels.json (label names in class-index order)",
            path.display()
        )
    })?;
    let labels: Vec<String> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON list of strings", path.display()))?;
    if labels.len() != cfg.num_labels() {
        bail!(
            "{} lists {} labels but config.json says the model has {}",
            path.display(),
            labels.len(),
            cfg.num_labels()
        );
    }
    if let Some(id2label) = cfg.id2label() {
        for (i, label) in labels.iter().enumerate() {
            if let Some(named) = id2label.get(&i.to_string())
                && named != label
            {
                bail!(
                    "{} names label {i} `{label}` but config.json's id2label calls it `{named}`",
                    path.display()
                );
            }
        }
    }
    Ok(labels)
}

/// Copies the model folder's tokenizer into the bundle after checking that it loads and that
/// its ids fit the model's vocabulary.
fn copy_tokenizer(model_dir: &Path, out_dir: &Path, cfg: &dyn Architecture) -> Result<Tokenizer> {
    let path = model_dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        bail!(
            "{} is missing; the model folder needs the tokenizer it was trained with",
            path.display()
        );
    }
    let tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer: {e}", path.display()))?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > cfg.vocab_size() {
        bail!(
            "{} has {vocab} tokens but the model's vocab_size is {}; they do not belong together",
            path.display(),
            cfg.vocab_size()
        );
    }
    fs_err::copy(&path, out_dir.join(TOKENIZER_FILE))
        .with_context(|| format!("cannot copy {} into the bundle", path.display()))?;
    Ok(tokenizer)
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(fs_err::metadata(path)
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len())
}

/// `1.2 MB`, `340 kB`, `512 B` (decimal units).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_a_person_would_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1_234), "1.2 kB");
        assert_eq!(human_size(340_000), "340 kB");
        assert_eq!(human_size(1_200_000), "1.2 MB");
        assert_eq!(human_size(2_500_000_000), "2.5 GB");
    }
}
