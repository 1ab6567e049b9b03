//! `finetune`: trains a text classifier (any family of `pipe_models`: GPT-Neo, BERT, RoBERTa,
//! DistilBERT, ModernBERT, Llama, Mistral, Qwen2, Qwen3, GPT-2) on ONNX Runtime.
//!
//! ```yaml
//! finetune:
//!   from: tokenize
//!   model: { config: tiny, seed: 0 }     # or { embedded: all-MiniLM-L6-v2 } / { path: models/gpt-neo-125m } / { hub: EleutherAI/gpt-neo-125m }
//!   epochs: 3
//!   batch_size: 16
//!   learning_rate: 5.0e-4
//!   device: cpu                          # or cuda, cuda:1, auto (not part of the cache key)
//! ```
//!
//! With `lora` the run trains a LoRA adapter and the head; with `freeze: [embeddings,
//! layers.0-5, …]` the named parts keep their starting weights ([`Trained`]).
//!
//! Input: the outputs of `tokenize` (`train`, optional `validation`, `tokenizer.json`,
//! `labels.json`). Outputs:
//!
//! - `model/`: a Hugging Face folder `transformers` loads as the family's
//!   `…ForSequenceClassification` (`config.json`: every key of the source config, with
//!   `id2label`/`label2id`; `model.safetensors`), plus the
//!   `tokenizer.json` and `labels.json` it was trained with;
//! - `adapter/` (with `lora`): the LoRA adapter in PEFT's format (`adapter_config.json`,
//!   `adapter_model.safetensors`), which `PeftModel.from_pretrained(base, "adapter")` loads;
//!   `model/` then holds the base weights with the update merged in;
//! - `train_log.jsonl`: one line per step (step, epoch, loss, lr, grad_norm, tokens,
//!   seconds, tokens_per_s) and per evaluation (eval_loss, eval_accuracy);
//! - `metrics.json`: losses, validation results, steps, throughput, the seconds from the
//!   stage's start to its first step (`setup_seconds`: reading the model, building and
//!   loading the graphs), peak memory (with the
//!   state on the device also the device's, `device_peak_memory_bytes`: the sum of the peaks
//!   of the run's ONNX Runtime arenas there), where the training state lived
//!   (`training_state`: `host` or `device`), and, for a model folder, the element type its
//!   weights are stored in (`source_dtype`: `float32`, `bfloat16`, `float16`; training
//!   always runs in float32 and `model/` is written in float32); with frozen weights,
//!   `frozen_dtype` and the bytes they took while training (`frozen_weight_bytes`).
//!
//! With `frozen_dtype: int8` or `int4` the frozen weights are multiplied quantized
//! ([`pipe_onnx::quantize`]); the quantized copies are for training only: `model/` merges the
//! trained update into the original f32 weights, read again at the end.
//!
//! Each optimizer step is one run of a compiled ONNX graph (forward and gradients) per
//! micro-batch (`gradient_accumulation_steps` of them, each gradient weighted by its share
//! of the step's loss) and one fused clipping + AdamW pass over the flat training state
//! ([`pipe_onnx::step_trainer`]: in host memory on the CPU, in device memory on CUDA).
//! Checkpoints go to the scratch folder named by the stage
//! key; a killed run resumes from the last one. The only state is the parameters, moments and
//! step count, all saved exactly, and the data order is a function of the seed and the epoch,
//! so a resumed run ends with the same weights, bit for bit, as an uninterrupted one (tested
//! with a real SIGKILL). Training is reproducible at any thread count on one machine: the
//! embedding takes the batch's distinct ids ([`Tokens::Distinct`](pipe_models::layers::Tokens)),
//! because ONNX Runtime's CPU scatter-add, the usual gradient of an embedding lookup, sums
//! repeated ids in a varying order when it has more than one thread.

mod checkpoint;
mod data;
mod freeze;
mod model_source;
mod objective;
mod params;
mod schedule;
mod selection;
mod trained;
mod training;

use std::borrow::Cow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pipe_engine::{Checked, Input, Outcome, ParamError, PlannedInput, RunContext, Stage};
use serde_json::{Value, json};

use self::data::TokenTable;
pub use self::data::distinct_tokens;
pub use self::freeze::FreezeEntry;
use self::model_source::StartingModel;
pub use self::objective::StepOptions;
use self::params::{ModelSource, Params};
use self::selection::Evaluation;
pub use self::trained::Trained;
pub use self::training::StepGraph;
use self::training::{LOG_FILE, LogSummary, NonFiniteLoss, Training};
use crate::table::write_json;
use pipe_models::dropout::DropoutSites;
use pipe_models::{Architecture, ParamSpec, hf_folder, lora};

/// The `finetune` stage kind.
#[derive(Debug, Default)]
pub struct Finetune {
    hub_cache: Option<PathBuf>,
}

impl Finetune {
    fn hub_cache(&self) -> PathBuf {
        self.hub_cache
            .clone()
            .unwrap_or_else(pipe_models::hub::default_hub_cache)
    }
}

impl Stage for Finetune {
    fn kind(&self) -> &'static str {
        "finetune"
    }

    fn version(&self) -> u32 {
        // 2: distinct-token embedding (bit-reproducible gradients; different float rounding).
        // 3: model/config.json writes the dropout probabilities.
        // 4: AdamW on the flat host state (the clipping norm summed in f64).
        // 5: pipe's fused CPU kernels, the pooled last block and a lane-wise clipping norm
        //    (same numbers up to float rounding, different bits).
        // 6: model/config.json keeps the source's special token ids and names a
        //    `pad_token_id`, so transformers classifies batches of several rows.
        // 7: every family behind one `Architecture`; model/config.json keeps every key of the
        //    source config.
        // 8: adapter_config.json's `modules_to_save` names the head's top-level modules
        //    (RoBERTa's `classifier`, which PEFT loads; not `classifier.dense`).
        8
    }

    fn summary(&self) -> &'static str {
        "Fine-tune a language model (BERT, ModernBERT, Llama, Qwen, GPT-2, GPT-Neo, …) into a text classifier on ONNX Runtime (CPU or CUDA)"
    }

    fn params_schema(&self) -> Value {
        pipe_engine::schema_of::<Params>()
    }

    fn output_names(&self, _key_params: &Value) -> Option<Vec<String>> {
        let log = LOG_FILE.rsplit_once('.').map_or(LOG_FILE, |(stem, _)| stem);
        Some(vec!["model".into(), log.into(), "metrics".into()])
    }

    /// `metrics.json` and `train_log.jsonl` hold seconds and tokens per second; the rest of
    /// them follows from the same (deterministic) training that wrote `model`.
    fn run_record_outputs(&self) -> &'static [&'static str] {
        &["metrics", "train_log"]
    }

    /// Reads a tokenize stage's outputs; `select_best` needs a validation split among them.
    fn check_inputs(&self, params: &Value, inputs: &[PlannedInput<'_>]) -> Result<(), ParamError> {
        crate::wiring::Needs {
            kind: "finetune",
            outputs: &["train", "tokenizer", "labels"],
            from_kind: "tokenize",
        }
        .check_only(inputs)?;
        let params = Params::parse(params)?;
        if params.select_best.is_none() {
            return Ok(());
        }
        match inputs {
            [input] => match &input.outputs {
                Some(outputs) if !outputs.iter().any(|o| o == "validation") => {
                    Err(no_validation_split(input.stage))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn check(&self, params: &Value) -> Result<Checked, ParamError> {
        let params = Params::parse(params)?;
        let mut key_params = pipe_engine::key_params_of(&params)?;
        if let Some(map) = key_params.as_object_mut() {
            // Where and how fast it runs does not change what it computes.
            map.remove("device");
            map.remove("threads");
            map.remove("tf32");
        }
        let workspace_deps = match params.model_source()? {
            ModelSource::Path(path) => vec![path],
            ModelSource::Hub(repo) => {
                // The cache lies outside the workspace: its commit stands in for its content.
                if let (Some(map), Some(commit)) = (
                    key_params.as_object_mut(),
                    pipe_models::hub::key_commit(&self.hub_cache(), &repo),
                ) {
                    map.insert("hub_commit".into(), json!(commit));
                }
                Vec::new()
            }
            ModelSource::Embedded(model) => {
                // Outside the workspace too: its pinned hashes stand in for its content (a run
                // checks the files against them).
                if let Some(map) = key_params.as_object_mut() {
                    map.insert("embedded_sha256".into(), json!(model.key()));
                }
                Vec::new()
            }
            ModelSource::Config(_) => Vec::new(),
        };
        Ok(Checked {
            key_params,
            workspace_deps,
        })
    }

    fn preflight(&self, params: &Value) -> Result<(), ParamError> {
        crate::device::preflight(Params::parse(params)?.device())
    }

    fn run(&self, ctx: &RunContext<'_>) -> Result<Outcome> {
        let stage_began = std::time::Instant::now();
        let params = Params::parse(ctx.params)?;
        crate::memory::release_large_frees();
        let input = ctx.only_input()?;
        let labels = read_labels(input)?;
        let tokenizer_path = input.output("tokenizer")?;
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path)
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tokenizer_path.display()))?;
        let train = TokenTable::read(input.output("train")?, labels.len())?;
        if train.is_empty() {
            bail!("the train split of stage `{}` has no rows", input.stage);
        }
        let validation = match input.outputs.get("validation") {
            Some(path) => Some(TokenTable::read(path, labels.len())?),
            None => None,
        };
        if params.select_best.is_some() && validation.is_none() {
            return Err(no_validation_split(&input.stage).into());
        }
        if let ModelSource::Hub(repo) = params.model_source()? {
            let hub = pipe_models::hub::Hub::from_env(self.hub_cache());
            pipe_models::hub::ensure(&hub, &repo, pipe_models::hub::Want::Model, ctx.reporter)?;
        }
        let mut start = model_source::resolve(
            &params.model_source()?,
            ctx.workspace,
            &self.hub_cache(),
            tokenizer.get_vocab_size(true),
            &labels,
        )?;
        if let Some(pooling) = params.pooling {
            start.config.set_pooling(pooling).map_err(|e| {
                ParamError::new(&["pooling"], format!("{e:#}")).with_help("remove `pooling`")
            })?;
        }
        check_fits(&start, &train, validation.as_ref())?;
        check_memory(&start)?;
        let problem = train.problem();
        let options = StepOptions::resolve(&params, &start.config, &labels, &train)?;
        let device = crate::device::choose(params.device(), ctx.reporter)?;
        let began = std::time::Instant::now();
        let training = Training::new(
            &params,
            &start,
            problem,
            validation.as_ref(),
            ctx.scratch_dir,
            options,
        )?;
        let specs = training.specs().to_vec();
        let frozen_bytes = training.frozen_bytes();
        let finished = training
            .run(&train, ctx.reporter)
            .map_err(|e| blame_checkpoint(e, &start, &specs))?;

        let model_dir = ctx.out_dir.join("model");
        let (base_specs, merging) = match &params.lora {
            Some(lora_params) => {
                let head = start.config.head_params();
                let head: Vec<&str> = head.iter().map(String::as_str).collect();
                let base_model = (params.model.hub.clone())
                    .or_else(|| params.model.path.clone())
                    .or_else(|| params.model.embedded.clone())
                    .unwrap_or_default();
                lora::write_adapter(
                    &ctx.out_dir.join("adapter"),
                    lora_params,
                    &head,
                    &base_model,
                    &finished.weights,
                    start.config.lora_fan_in_fan_out(),
                )?;
                let base: Vec<ParamSpec> = specs
                    .iter()
                    .filter(|s| !lora::is_lora(&s.name))
                    .cloned()
                    .collect();
                (base, Some(lora_params))
            }
            None => (specs.clone(), None),
        };
        // Tensor by tensor, each merged with its LoRA update: the model is never whole twice.
        let fan_in_fan_out = start.config.lora_fan_in_fan_out();
        let value = |spec: &ParamSpec| {
            let w = finished.weight(spec, &start, params.model.seed)?;
            let merged = match merging {
                Some(l) => lora::merge_one(l, &spec.name, &w, &finished.weights, fan_in_fan_out)?,
                None => None,
            };
            Ok(merged.map_or(w, Cow::Owned))
        };
        hf_folder::write_with(
            &model_dir,
            &start.config,
            &labels,
            problem,
            &base_specs,
            &value,
        )?;
        fs_err::copy(tokenizer_path, model_dir.join("tokenizer.json"))?;
        write_json(&model_dir.join("labels.json"), &labels)?;
        fs_err::copy(ctx.scratch_dir.join(LOG_FILE), ctx.out_dir.join(LOG_FILE))?;
        let summary = LogSummary::read(&ctx.out_dir.join(LOG_FILE))?;
        let mut metrics = serde_json::Map::new();
        metrics.insert("train_loss".into(), json!(summary.mean_loss));
        metrics.insert("final_epoch_loss".into(), json!(summary.last_epoch_loss));
        // With `select_best`, the validation results are those of the selected weights.
        let evaluation = match finished.best {
            Some(best) => {
                metrics.insert("best_step".into(), json!(best.step));
                Some(Evaluation {
                    loss: best.loss,
                    accuracy: best.accuracy,
                })
            }
            None => finished.evaluation,
        };
        if let Some(e) = evaluation {
            metrics.insert("validation_loss".into(), json!(e.loss));
            metrics.insert("validation_accuracy".into(), json!(e.accuracy));
        }
        if let Some(step) = finished.stopped_early_at {
            metrics.insert("stopped_early_at_step".into(), json!(step));
        }
        metrics.insert("steps".into(), json!(finished.steps));
        metrics.insert("tokens_per_s".into(), json!(summary.tokens_per_s.round()));
        metrics.insert(
            "parameters".into(),
            json!(base_specs.iter().map(|s| s.numel()).sum::<usize>()),
        );
        let trained = Trained::of(&params);
        if !matches!(trained, Trained::All) {
            metrics.insert("trained_parameters".into(), json!(trained.count(&specs)));
            metrics.insert("frozen_dtype".into(), json!(params.frozen_dtype.as_str()));
            metrics.insert("frozen_weight_bytes".into(), json!(frozen_bytes));
        }
        if let Some(peak) = peak_memory_bytes() {
            metrics.insert("peak_memory_bytes".into(), json!(peak));
        }
        if let Some(dir) = &start.folder
            && let Some(dtype) = hf_folder::source_dtype(dir)?
        {
            metrics.insert("source_dtype".into(), json!(dtype));
        }
        metrics.insert("device".into(), json!(device.to_string()));
        let state = if finished.state_on_device {
            "device"
        } else {
            "host"
        };
        metrics.insert("training_state".into(), json!(state));
        if let Some(memory) = finished.device_memory.filter(|_| finished.state_on_device) {
            metrics.insert("device_peak_memory_bytes".into(), json!(memory.max_in_use));
        }
        metrics.insert("seconds".into(), json!(began.elapsed().as_secs_f64()));
        let setup = finished.first_step_began.duration_since(stage_began);
        metrics.insert("setup_seconds".into(), json!(setup.as_secs_f64()));
        if let Some(step) = finished.resumed_from {
            metrics.insert("resumed_from_step".into(), json!(step));
        }
        write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
        let mut headline = format!("loss {:.3}", summary.last_epoch_loss);
        if let Some(e) = evaluation {
            headline.push_str(&format!(" · val accuracy {:.3}", e.accuracy));
        }
        if let Some(best) = finished.best {
            headline.push_str(&format!(" · best step {}", best.step));
        }
        if let Some(step) = finished.stopped_early_at {
            headline.push_str(&format!(" · stopped early at step {step}"));
        }
        headline.push_str(&format!(" · {:.0} tok/s", summary.tokens_per_s));
        headline.push_str(&crate::device::headline_suffix(params.device(), device));
        Ok(Outcome {
            metrics: metrics
                .into_iter()
                .filter(|(k, _)| k != "seconds" && k != "setup_seconds")
                .collect(),
            headline: Some(headline),
        })
    }
}

/// `select_best` without a validation split in `stage`'s outputs.
/// `error`, or, when it is a loss that was not finite at the first step and a starting
/// weight is not finite, an error naming that weight: the checkpoint is damaged, and the
/// learning rate the loss's message suggests lowering is not the cause.
fn blame_checkpoint(
    error: anyhow::Error,
    start: &StartingModel,
    specs: &[ParamSpec],
) -> anyhow::Error {
    let Some(NonFiniteLoss { step: 1, .. }) = error.downcast_ref::<NonFiniteLoss>() else {
        return error;
    };
    match start.first_non_finite(specs) {
        Ok(Some((name, at))) => pipe_engine::BadInput(anyhow::anyhow!(
            "the training loss is not finite from the first step because the starting model's \
             {name} holds a value that is not finite (element {at}); its checkpoint is damaged: \
             download or copy it again"
        ))
        .into(),
        _ => error,
    }
}

fn no_validation_split(stage: &str) -> ParamError {
    ParamError::new(
        &["select_best"],
        format!(
            "`select_best` picks the weights by their validation result, but stage `{stage}` \
             has no validation split"
        ),
    )
    .with_help(
        "give the split stage a `validation:` share (e.g. `validation: 0.1`), or take \
         `from:` a stage that has a validation split; or remove `select_best`",
    )
}

/// The label names of the tokenize stage, in class-index order.
fn read_labels(input: &Input) -> Result<Vec<String>> {
    let path = input.output("labels")?;
    let text =
        fs_err::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let labels: Vec<String> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON list of label names", path.display()))?;
    if labels.len() < 2 {
        bail!(
            "{} lists {} label(s); a classifier needs at least 2",
            path.display(),
            labels.len()
        );
    }
    Ok(labels)
}

/// Checks that every token id and every row length fits the model.
fn check_fits(
    start: &StartingModel,
    train: &TokenTable,
    validation: Option<&TokenTable>,
) -> Result<()> {
    let config = &start.config;
    for (name, table) in
        std::iter::once(("train", train)).chain(validation.map(|v| ("validation", v)))
    {
        if table.max_id() >= config.vocab_size() as i64 {
            bail!(
                "the {name} split holds token id {} but the model's vocabulary has {} tokens; \
                 tokenize with the model's own tokenizer",
                table.max_id(),
                config.vocab_size()
            );
        }
        if table.max_length() > config.max_length() {
            bail!(
                "the {name} split has rows of {} tokens but the model takes at most {}; \
                 lower `max_length` of the tokenize stage",
                table.max_length(),
                config.max_length()
            );
        }
    }
    Ok(())
}

/// Refuses a fresh model whose weights alone outgrow this machine's memory (a size typed
/// with a digit too many), before anything is allocated.
fn check_memory(start: &StartingModel) -> Result<()> {
    let (None, Some(total)) = (&start.folder, crate::memory::physical_memory_bytes()) else {
        return Ok(());
    };
    let specs = pipe_models::param_specs(&start.config)?;
    let bytes = |s: &ParamSpec| {
        (s.shape.iter())
            .try_fold(4u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
            .unwrap_or(u64::MAX)
    };
    let needed = specs.iter().map(bytes).fold(0u64, u64::saturating_add);
    let Some(largest) = specs.iter().max_by_key(|s| bytes(s)) else {
        return Ok(());
    };
    if needed <= total {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(ParamError::new(
        &["model", "config"],
        format!(
            "this model's weights alone would take {:.1} GB, more than this machine's {:.1} GB \
             of memory (the largest, {}, is {:?})",
            gb(needed),
            gb(total),
            largest.name,
            largest.shape
        ),
    )
    .with_help("check the sizes in `model.config` (`vocab_size`, `hidden_size`, the layer count) for a typo")
    .into())
}

/// The peak resident memory of this process (`VmHWM` on Linux); `None` elsewhere.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = fs_err::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
