//! The parameters of `finetune`, their defaults and their checks.

use pipe_engine::{ParamError, parse_params};
use pipe_onnx::SessionOptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use anyhow::{Context, Result};
use pipe_models::classifier::Pooling;
use pipe_models::embedded::{self, Embedded};
use pipe_models::gpt_neo::{AttentionKind, GptNeoConfig};
use pipe_models::lora::LoraParams;
use pipe_models::{Architecture, ModelConfig};

use super::freeze::FreezeEntry;

/// Parameters of `finetune`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Params {
    /// The model to start from (exactly one of `config`, `path`, `hub`, `embedded`).
    pub model: ModelParams,
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Optimizer steps to take; overrides `epochs` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Rows per micro-batch: per optimizer step without gradient accumulation.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches of `batch_size` rows whose gradients add up to one optimizer step
    /// (`transformers`' name): a step then sees `batch_size × N` rows, the same rows and the
    /// same result as `batch_size: batch_size × N` within float rounding.
    #[serde(
        default = "default_gradient_accumulation_steps",
        skip_serializing_if = "is_one"
    )]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Decoupled weight decay (AdamW), not applied to biases and LayerNorm weights.
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW β1.
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    /// AdamW β2.
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    /// AdamW ε.
    #[serde(default = "default_epsilon")]
    pub adam_epsilon: f64,
    /// How the learning rate moves over training.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Fraction of the steps spent warming the learning rate up from 0 (linear schedule only).
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Shuffle the training rows each epoch (seeded).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at every epoch end); 0: epoch ends only.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Evaluate on the validation split every this many steps (and at every epoch end);
    /// 0: epoch ends only. Ignored without a validation split.
    #[serde(default)]
    pub eval_every: u64,
    /// Keep the weights of the evaluation with the best value of this metric instead of the
    /// last ones (`load_best_model_at_end` with `metric_for_best_model` in `transformers`).
    /// Needs a validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_best: Option<SelectBest>,
    /// Stop after this many evaluations in a row without improvement of `select_best`'s
    /// metric (`transformers.EarlyStoppingCallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<u64>,
    /// Dropout probabilities while training (none at evaluation or export); each defaults to
    /// the model config's `embed_dropout`, `attention_dropout`, `resid_dropout`.
    #[serde(default, skip_serializing_if = "DropoutParams::is_unset")]
    pub dropout: DropoutParams,
    /// How a GPT-Neo classifier pools a row's hidden states: `last` (the last real token, as
    /// Hugging Face's `GPTNeoForSequenceClassification`) or `mean` (the mean over the real
    /// tokens, which trains better from scratch on small data). Left out: the model's own
    /// (`last`, unless the model folder was trained by pipe with `mean`; encoders read their
    /// first token, `first`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// ε of label smoothing in the training loss (`label_smoothing_factor` in `transformers`,
    /// `torch.nn.CrossEntropyLoss(label_smoothing=ε)`). Single-label data only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Class weights of the training loss (`torch.nn.CrossEntropyLoss(weight=…)`):
    /// `balanced` (scikit-learn's `n_samples / (n_classes · count)` over the training split)
    /// or `{ label: weight, … }` (labels not named weigh 1). Single-label data only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// Where to train: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when usable, else the CPU).
    /// Not part of the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// TensorFloat-32 matrix products on CUDA (default true; ignored on the CPU). Not part of
    /// the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
    /// Threads per operator (default: one per core). Not part of the cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Train a LoRA adapter instead of every weight: `{ r, alpha, dropout, targets }`, PEFT's
    /// semantics; the base model stays frozen and the `score` head is trained in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraParams>,
    /// Parts of the model that keep their starting weights (partial fine-tuning, PyTorch's
    /// `requires_grad = False`): `embeddings`, `layers.N`, `layers.A-B`, or a Hugging Face
    /// module name such as `transformer.h.0.mlp`. The `score` head is always trained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub freeze: Vec<FreezeEntry>,
    /// The precision the frozen weights (LoRA's base model, the `freeze` parts) are kept and
    /// multiplied in while training: `f32` (exact), `bf16` (2 bytes per weight, widened to
    /// f32 for each product; exact from a bfloat16 checkpoint, read in place), `int8` (one
    /// scale per output channel, integer products: faster, 2 bytes per weight) or `int4`
    /// (4-bit blocks of 32: half a byte per weight). Trained parameters, norms and the head
    /// stay f32 (embeddings too, but in `bf16`), and `model/` is the f32 model with the
    /// update merged into the original weights. CPU only.
    #[serde(default, skip_serializing_if = "FrozenDtype::is_f32")]
    pub frozen_dtype: FrozenDtype,
}

/// The precision frozen weights are kept and multiplied in while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrozenDtype {
    #[default]
    F32,
    Bf16,
    Int8,
    Int4,
}

impl FrozenDtype {
    fn is_f32(&self) -> bool {
        *self == FrozenDtype::F32
    }

    /// The graph builder's name for it.
    pub fn graph_dtype(self) -> pipe_onnx::FrozenDType {
        match self {
            FrozenDtype::F32 => pipe_onnx::FrozenDType::F32,
            FrozenDtype::Bf16 => pipe_onnx::FrozenDType::Bf16,
            FrozenDtype::Int8 => pipe_onnx::FrozenDType::Int8,
            FrozenDtype::Int4 => pipe_onnx::FrozenDType::Int4,
        }
    }

    /// Its name in the manifest and in `metrics.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrozenDtype::F32 => "f32",
            FrozenDtype::Bf16 => "bf16",
            FrozenDtype::Int8 => "int8",
            FrozenDtype::Int4 => "int4",
        }
    }
}

/// The model to fine-tune.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ModelParams {
    /// A fresh model: `tiny`, `small` (the GPT-Neo 125M shape) or an inline config
    /// (Hugging Face `config.json` keys: GPT-Neo's without `model_type`, or any family's
    /// with its `model_type`, such as `bert` or `llama`; `vocab_size` defaults to the
    /// tokenizer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Shape>,
    /// Seed of a fresh model's weights (and of a fresh classification head).
    #[serde(default)]
    pub seed: u64,
    /// A Hugging Face model folder (`config.json` + `model.safetensors`, or an index and its
    /// shards) of a family pipe knows (`model_type` GPT-Neo, BERT, RoBERTa, DistilBERT,
    /// ModernBERT, Llama, Mistral, Qwen2, Qwen3, GPT-2), relative to the manifest's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A Hugging Face repository id (e.g. `EleutherAI/gpt-neo-125m`), read from the local
    /// cache, downloaded into it first when missing (unless `HF_HUB_OFFLINE` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// One of pipe's embedded pretrained models, fetched by `scripts/fetch-model.sh` into
    /// `.tools/models/`: `all-MiniLM-L6-v2` (a 6-layer BERT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<String>,
}

/// A fresh model's shape.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Shape {
    /// A named preset.
    Preset(Preset),
    /// A config written out (keys of Hugging Face's `config.json`).
    Inline(serde_json::Map<String, Value>),
}

impl Shape {
    /// The config of a fresh model.
    pub(super) fn fresh(&self, vocab_size: usize, num_labels: usize) -> Result<ModelConfig> {
        Ok(match self {
            Shape::Preset(Preset::Tiny) => {
                ModelConfig::GptNeo(GptNeoConfig::tiny(vocab_size, num_labels))
            }
            Shape::Preset(Preset::Small) => ModelConfig::GptNeo(GptNeoConfig {
                hidden_size: 768,
                num_layers: 12,
                num_heads: 12,
                intermediate_size: None,
                max_position_embeddings: 2048,
                window_size: 256,
                attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 6)],
                ..GptNeoConfig::tiny(vocab_size, num_labels)
            }),
            Shape::Inline(map) => {
                let mut map = map.clone();
                map.entry("vocab_size").or_insert(Value::from(vocab_size));
                map.insert("num_labels".into(), Value::from(num_labels));
                ModelConfig::from_json(Value::Object(map)).context(
                    "`model.config` is not a config pipe can train (GPT-Neo keys, or \
                     `model_type: bert` / `roberta` with BertConfig's keys, `distilbert` or \
                     `modernbert` with theirs, `llama` / `mistral` / `qwen2` / `qwen3` with \
                     LlamaConfig's keys, or `gpt2` with GPT2Config's keys)",
                )?
            }
        })
    }
}

/// Named model shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Hidden 256, 4 layers of 8 heads (global/local), MLP 1024, 128 positions: trains in
    /// minutes on a laptop CPU.
    Tiny,
    /// The GPT-Neo 125M shape: hidden 768, 12 layers of 12 heads, 2048 positions.
    Small,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warm-up over `warmup_ratio` of the steps, then linear decay to 0
    /// (`transformers.get_linear_schedule_with_warmup`).
    #[default]
    Linear,
    /// The same rate throughout.
    Constant,
}

/// The validation metric that picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelectBest {
    /// The lowest validation loss (plain cross-entropy, whatever the training loss options).
    EvalLoss,
    /// The highest validation accuracy.
    EvalAccuracy,
}

/// Dropout probabilities; `None` takes the model config's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct DropoutParams {
    /// After the token + position embeddings (`embed_dropout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<f64>,
    /// On the attention probabilities (`attention_dropout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<f64>,
    /// On the output of each attention and MLP block, before the residual sum (`resid_dropout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resid: Option<f64>,
}

impl DropoutParams {
    fn is_unset(&self) -> bool {
        *self == DropoutParams::default()
    }
}

/// Class weights of the training loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ClassWeights {
    /// A rule that derives them from the training split.
    Rule(ClassWeightRule),
    /// A weight per label name.
    ByLabel(std::collections::BTreeMap<String, f64>),
}

/// Rules for class weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeightRule {
    /// `n_samples / (n_classes · count[class])` (scikit-learn's `balanced`).
    Balanced,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_gradient_accumulation_steps() -> usize {
    1
}
fn default_epochs() -> u64 {
    3
}
fn default_batch_size() -> usize {
    16
}
fn default_learning_rate() -> f64 {
    5e-5
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    100
}

/// Checks that a fresh model's shape fits together (heads divide the width, one attention
/// type per layer, …) while the manifest is read, not when training starts. The vocabulary
/// and the labels come from the data; placeholders stand in for them here.
fn check_shape(shape: &Shape) -> Result<ModelConfig, ParamError> {
    let (placeholder_vocab, placeholder_labels) = (2, 2);
    shape
        .fresh(placeholder_vocab, placeholder_labels)
        .and_then(|config| config.validate().map(|()| config))
        .map_err(|e| {
            ParamError::new(&["model", "config"], format!("{e:#}")).with_help(
                "see Hugging Face's GPTNeoConfig (or BertConfig, LlamaConfig, …) for the keys \
                 and how they fit together",
            )
        })
}

/// Where the starting model comes from, once checked.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A fresh model of this shape.
    Config(Shape),
    /// A folder of the workspace.
    Path(String),
    /// A repository of the local Hugging Face cache.
    Hub(String),
    /// An embedded pretrained model.
    Embedded(&'static Embedded),
}

impl Params {
    /// Rows per optimizer step: `batch_size × gradient_accumulation_steps`.
    pub fn rows_per_step(&self) -> usize {
        self.batch_size * self.gradient_accumulation_steps
    }

    /// Parses and checks `value`.
    pub fn parse(value: &Value) -> Result<Params, ParamError> {
        let params: Params = parse_params(value)?;
        if let ModelSource::Config(shape) = params.model_source()? {
            let config = check_shape(&shape)?;
            if let Some(lora) = &params.lora {
                lora.check_targets(&config, config.model_type())
                    .map_err(|e| ParamError::new(&["lora", "targets"], format!("{e:#}")))?;
            }
        }
        let positive = |ok: bool, key: &str, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(ParamError::new(&[key], format!("`{key}` must be {what}")))
            }
        };
        positive(params.batch_size > 0, "batch_size", "at least 1")?;
        positive(
            params.gradient_accumulation_steps > 0,
            "gradient_accumulation_steps",
            "at least 1 (1: no accumulation)",
        )?;
        positive(
            params
                .batch_size
                .checked_mul(params.gradient_accumulation_steps)
                .is_some(),
            "gradient_accumulation_steps",
            "small enough that `batch_size` × it is a number of rows",
        )?;
        positive(
            params.epochs > 0 || params.max_steps.is_some(),
            "epochs",
            "at least 1 (or set `max_steps`)",
        )?;
        positive(
            params.max_steps != Some(0),
            "max_steps",
            "at least 1 when set",
        )?;
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        positive(
            finite_nonneg(params.learning_rate),
            "learning_rate",
            "a non-negative number",
        )?;
        positive(
            finite_nonneg(params.weight_decay),
            "weight_decay",
            "a non-negative number",
        )?;
        positive(
            finite_nonneg(params.max_grad_norm),
            "max_grad_norm",
            "a non-negative number (0 turns clipping off)",
        )?;
        positive(
            (0.0..1.0).contains(&params.adam_beta1),
            "adam_beta1",
            "in [0, 1)",
        )?;
        positive(
            (0.0..1.0).contains(&params.adam_beta2),
            "adam_beta2",
            "in [0, 1)",
        )?;
        positive(
            params.adam_epsilon.is_finite() && params.adam_epsilon > 0.0,
            "adam_epsilon",
            "a positive number",
        )?;
        positive(
            (0.0..1.0).contains(&params.warmup_ratio),
            "warmup_ratio",
            "in [0, 1)",
        )?;
        if params.warmup_ratio > 0.0 && params.lr_schedule == LrSchedule::Constant {
            return Err(ParamError::new(
                &["warmup_ratio"],
                "`warmup_ratio` applies to the linear schedule only",
            )
            .with_help("remove it, or set `lr_schedule: linear`"));
        }
        params.check_regularisation()?;
        params.check_selection()?;
        params.check_frozen_dtype()?;
        if let Some(lora) = &params.lora {
            lora.check()
                .map_err(|(field, message)| ParamError::new(&["lora", field], message))?;
            if !params.freeze.is_empty() {
                return Err(ParamError::new(
                    &["freeze"],
                    "`freeze` and `lora` do not go together: LoRA already freezes every base \
                     weight",
                )
                .with_help("remove `freeze`, or remove `lora` to train the rest in full"));
            }
        }
        crate::device::check(params.device(), params.threads)?;
        Ok(params)
    }

    /// Checks dropout, label smoothing and class weights.
    fn check_regularisation(&self) -> Result<(), ParamError> {
        let probability = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        for (key, value) in [
            ("embed", self.dropout.embed),
            ("attention", self.dropout.attention),
            ("resid", self.dropout.resid),
        ] {
            if let Some(v) = value
                && !probability(v)
            {
                return Err(ParamError::new(
                    &["dropout", key],
                    format!("`dropout.{key}` must be a probability in [0, 1), not {v}"),
                ));
            }
        }
        if !probability(self.label_smoothing) {
            return Err(ParamError::new(
                &["label_smoothing"],
                format!(
                    "`label_smoothing` must be in [0, 1), not {}",
                    self.label_smoothing
                ),
            )
            .with_help("0.1 is the usual value"));
        }
        if let Some(ClassWeights::ByLabel(map)) = &self.class_weights {
            if map.is_empty() {
                return Err(
                    ParamError::new(&["class_weights"], "`class_weights` names no label")
                        .with_help("write `balanced` or `{ label: weight, … }`"),
                );
            }
            for (label, &w) in map {
                if !(w.is_finite() && w > 0.0) {
                    return Err(ParamError::new(
                        &["class_weights", label],
                        format!("the weight of `{label}` must be a positive number, not {w}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that `frozen_dtype` has frozen weights to apply to, on a device that has its
    /// kernels.
    fn check_frozen_dtype(&self) -> Result<(), ParamError> {
        if self.frozen_dtype.is_f32() {
            return Ok(());
        }
        if self.lora.is_none() && self.freeze.is_empty() {
            return Err(ParamError::new(
                &["frozen_dtype"],
                format!(
                    "`frozen_dtype: {}` applies to frozen weights, but this stage trains every \
                     weight",
                    self.frozen_dtype.as_str()
                ),
            )
            .with_help("add `lora:` or `freeze:`, or remove `frozen_dtype`"));
        }
        if self.device() != "cpu" {
            return Err(ParamError::new(
                &["frozen_dtype"],
                format!(
                    "`frozen_dtype: {}` runs on the CPU (pipe's and ONNX Runtime's CPU \
                     kernels), but `device` is `{}`",
                    self.frozen_dtype.as_str(),
                    self.device()
                ),
            )
            .with_help("set `device: cpu`, or keep f32 frozen weights on CUDA"));
        }
        Ok(())
    }

    /// Checks `select_best` and `early_stopping_patience`.
    fn check_selection(&self) -> Result<(), ParamError> {
        match (self.early_stopping_patience, self.select_best) {
            (Some(_), None) => Err(ParamError::new(
                &["early_stopping_patience"],
                "`early_stopping_patience` needs `select_best` (the metric that must improve)",
            )
            .with_help("add `select_best: eval_loss` or `select_best: eval_accuracy`")),
            (Some(0), Some(_)) => Err(ParamError::new(
                &["early_stopping_patience"],
                "`early_stopping_patience` must be at least 1",
            )),
            _ => Ok(()),
        }
    }

    /// The checked model source.
    pub fn model_source(&self) -> Result<ModelSource, ParamError> {
        let m = &self.model;
        match (&m.config, &m.path, &m.hub, &m.embedded) {
            (Some(config), None, None, None) => Ok(ModelSource::Config(config.clone())),
            (None, Some(path), None, None) => Ok(ModelSource::Path(path.clone())),
            (None, None, Some(repo), None) => match pipe_models::hub::check_repo_id(repo) {
                Ok(()) => Ok(ModelSource::Hub(repo.clone())),
                Err(message) => Err(ParamError::new(&["model", "hub"], message)),
            },
            (None, None, None, Some(name)) => match embedded::lookup(name) {
                Ok(model) => Ok(ModelSource::Embedded(model)),
                Err(message) => Err(ParamError::new(&["model", "embedded"], message)),
            },
            _ => Err(ParamError::new(
                &["model"],
                "`model` needs exactly one of `config`, `path` or `hub` (or `embedded`)",
            )
            .with_help(
                "e.g. `model: { embedded: all-MiniLM-L6-v2 }`, `model: { config: tiny, seed: 0 }`, \
                 `model: { path: models/gpt-neo-125m }` or `model: { hub: EleutherAI/gpt-neo-125m }`",
            )),
        }
    }

    /// `device` as written (`cpu` when left out).
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    /// ONNX Runtime session options for `device` (`auto` resolved), `threads` and `tf32`.
    pub fn session_options(&self) -> Result<SessionOptions, ParamError> {
        crate::device::session_options(self.device(), self.threads, self.tf32.unwrap_or(true))
    }
}
