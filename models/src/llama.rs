//! The Llama family for sequence classification (Llama, Mistral, Qwen2, Qwen3; SmolLM2 is a
//! Llama), built as ONNX training graphs.
//!
//! One body serves the four `model_type`s, as candle's `llama.rs` and transformers' "Copied
//! from Llama" do. Reference implementation, transformers 5.25.0:
//! `models/llama/modeling_llama.py` (`L:`), `models/qwen2/modeling_qwen2.py`,
//! `models/qwen3/modeling_qwen3.py`, `models/mistral/modeling_mistral.py`, the rotary
//! frequencies in `modeling_rope_utils.py` and the head in `modeling_layers.py`
//! (`GenericForSequenceClassification`).
//!
//! Quirks, each checked against the golden fixtures (`stages/tests/fixtures/{llama,qwen2,qwen3,mistral}/`):
//! - Pre-norm blocks with RMSNorm (`input_layernorm`, `post_attention_layernorm`, a final
//!   `norm`), no shift; a SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`).
//! - **Rotary positions** on q and k, positions `0..seq` whatever the padding; the inverse
//!   frequencies from `rope_theta`, optionally rescaled by `rope_scaling` of type `llama3`
//!   (Llama 3.1/3.2). Both the old keys (`rope_theta`, `rope_scaling`) and transformers 5's
//!   `rope_parameters` are read.
//! - **Grouped-query attention:** `num_key_value_heads` heads of k and v, each shared by
//!   `num_attention_heads / num_key_value_heads` query heads (`repeat_kv`). `head_dim` may be
//!   given (Qwen3), else `hidden_size / num_attention_heads`; scores are scaled by
//!   `1/√head_dim`.
//! - **Qwen2** has biases on q, k and v (not o); Llama and Qwen3 on all four when
//!   `attention_bias`; Mistral on none. **Qwen3** normalises each head of q and k with its
//!   own RMSNorm (`q_norm`, `k_norm`) before the rotation.
//! - **Sliding window** (Mistral's `sliding_window`; Qwen's only with `use_sliding_window`, on
//!   the layers `layer_types` marks, else from layer `max_window_layers` on): query `q` sees
//!   key `k` iff `q - k < sliding_window`, on top of the causal mask.
//! - **Head:** `score` (no bias) on the last non-pad token: as transformers, the rightmost
//!   token that is not `pad_token_id` ([`last_non_pad`]; with right padding `length - 1`
//!   unless the text itself ends in the pad id). A batch of more than one row needs a pad id, so
//!   [`LlamaConfig::pad_token_id`] is the config's, else its `eos_token_id`, else an error.
//! - The classifier has no `lm_head`: tied or untied embeddings load the same (a causal LM
//!   checkpoint's `lm_head.weight` is ignored).
//!
//! Graph inputs: the tokens ([`Tokens`](super::layers::Tokens)), `lengths` int64 `[batch]` (right padding), and one
//! f32 input per parameter under its Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use pipe_onnx::{DType, Dim, Graph, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{
    ClassifierInput, Pooling, ProblemType, SequenceClassifier, decoder_pad_id,
};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::last_tokens::{LastTokens, forward_to_last_tokens, last_non_pad};
use super::layers::{Linear, RmsNorm, Rotary, SwiGlu, causal_mask, rope_inv_freq};
use super::lora::LoraParams;
use super::{Init, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// Which member of the family a config describes (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlamaFlavor {
    /// `LlamaForSequenceClassification` (Llama 2/3, SmolLM2, TinyLlama).
    Llama,
    /// `MistralForSequenceClassification`: no biases, a sliding window when set.
    Mistral,
    /// `Qwen2ForSequenceClassification` (Qwen2, Qwen2.5): q/k/v biases.
    Qwen2,
    /// `Qwen3ForSequenceClassification`: per-head q/k RMSNorm.
    Qwen3,
}

impl LlamaFlavor {
    /// `model_type` as `config.json` writes it.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFlavor::Llama => "llama",
            LlamaFlavor::Mistral => "mistral",
            LlamaFlavor::Qwen2 => "qwen2",
            LlamaFlavor::Qwen3 => "qwen3",
        }
    }

    /// The transformers class of the classifier.
    pub fn architecture(self) -> &'static str {
        match self {
            LlamaFlavor::Llama => "LlamaForSequenceClassification",
            LlamaFlavor::Mistral => "MistralForSequenceClassification",
            LlamaFlavor::Qwen2 => "Qwen2ForSequenceClassification",
            LlamaFlavor::Qwen3 => "Qwen3ForSequenceClassification",
        }
    }
}

/// A Llama-family configuration, read from a Hugging Face `config.json`. Keys pipe does not
/// use (`bos_token_id`, `tie_word_embeddings`, the rotary keys, …) are kept in
/// [`LlamaConfig::other`] and written back.
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/configuration_llama.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral`, `qwen2` or `qwen3`.
    pub model_type: LlamaFlavor,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention); `None`: one per query head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; `None`: `hidden_size / num_attention_heads` (Qwen3: 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// The longest row (in tokens).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm ε.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Biases on the attention projections (Llama, Qwen3; Qwen2 always has q/k/v biases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Biases on the MLP projections (Llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Dropout on the attention probabilities while training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Keys a sliding-window layer sees, the query included (Mistral, Qwen).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen: whether layers from `max_window_layers` on slide (when `layer_types` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen: the first sliding layer when `use_sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Per layer `full_attention` or `sliding_attention` (Qwen, transformers 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Standard deviation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// The padding token: the classifier reads the last token that is not it.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Number of labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Label names by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Single- or multi-label classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// Every other key of the source `config.json`, kept as it was.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_act() -> String {
    "silu".into()
}
fn default_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_initializer_range() -> f64 {
    0.02
}

/// How the rotary frequencies are scaled (`rope_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: `θ^(-2i/d)` as they are.
    Default,
    /// `llama3`: long wavelengths divided by `factor`, a smooth ramp between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length of pre-training.
        original_max_position_embeddings: f64,
    },
}

/// The rotary embedding's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// The base `θ` (`rope_theta`).
    pub theta: f64,
    /// The scaling.
    pub scaling: RopeScaling,
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies, computed in f32 as transformers computes them
    /// (`_compute_default_rope_parameters`, `_compute_llama3_parameters`).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let freqs = rope_inv_freq(self.theta, head_dim).into_iter();
        match self.scaling {
            RopeScaling::Default => freqs.collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = (old / low_freq_factor) as f32;
                let high_wavelen = (old / high_freq_factor) as f32;
                let factor = factor as f32;
                freqs
                    .map(|f| {
                        let wavelen = (2.0 * std::f64::consts::PI) as f32 / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = ((old as f32) / wavelen - low_freq_factor as f32)
                                / (high_freq_factor - low_freq_factor) as f32;
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

impl LlamaConfig {
    /// Key/value heads per layer.
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        match (self.head_dim, self.model_type) {
            (Some(d), _) => d,
            (None, LlamaFlavor::Qwen3) => 128,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2)
    }

    /// Whether q, k and v have biases; whether o has one.
    fn attention_biases(&self) -> (bool, bool) {
        let flag = self.attention_bias.unwrap_or(false);
        match self.model_type {
            LlamaFlavor::Qwen2 => (true, false),
            LlamaFlavor::Mistral => (false, false),
            LlamaFlavor::Llama | LlamaFlavor::Qwen3 => (flag, flag),
        }
    }

    /// The sliding window of layer `i`, if it slides. Qwen's configs have a window only with
    /// `use_sliding_window` (transformers sets `sliding_window` to `None` otherwise), from
    /// layer `max_window_layers` (default 28) on unless `layer_types` says which.
    pub fn window(&self, i: usize) -> Option<usize> {
        let qwen = matches!(self.model_type, LlamaFlavor::Qwen2 | LlamaFlavor::Qwen3);
        if qwen && !self.use_sliding_window.unwrap_or(false) {
            return None;
        }
        let window = self.sliding_window?;
        let slides = match (&self.layer_types, self.model_type) {
            (Some(types), _) => types.get(i).is_some_and(|t| t == SLIDING),
            (None, LlamaFlavor::Mistral) => true,
            (None, LlamaFlavor::Qwen2 | LlamaFlavor::Qwen3) => {
                i >= self.max_window_layers.unwrap_or(QWEN_MAX_WINDOW_LAYERS)
            }
            (None, LlamaFlavor::Llama) => false,
        };
        slides.then_some(window)
    }

    /// The pad id the classifier's rule needs ([`decoder_pad_id`]).
    pub fn pad_token_id(&self) -> Result<i64> {
        decoder_pad_id(
            self.model_type.model_type(),
            self.pad_token_id,
            &self.other,
            self.vocab_size,
        )
    }

    /// The rotary parameters, from transformers 5's `rope_parameters` or the older
    /// `rope_theta` and `rope_scaling`; an error for a rope type pipe does not implement.
    pub fn rope(&self) -> Result<Rope> {
        let params = self.other.get("rope_parameters").filter(|v| !v.is_null());
        let scaling = self.other.get("rope_scaling").filter(|v| !v.is_null());
        let theta_key =
            |v: Option<&Value>| v.and_then(|v| v.get("rope_theta")).and_then(Value::as_f64);
        let theta = theta_key(params)
            .or_else(|| self.other.get("rope_theta").and_then(Value::as_f64))
            .unwrap_or(10000.0);
        let Some(scaling) = params.or(scaling) else {
            return Ok(Rope {
                theta,
                scaling: RopeScaling::Default,
            });
        };
        let key = if params.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if let Some(p) = scaling.get("partial_rotary_factor").and_then(Value::as_f64)
            && p != 1.0
        {
            bail!("`{key}.partial_rotary_factor` {p} is not supported; only 1.0 is");
        }
        let number = |field: &str| {
            scaling
                .get(field)
                .and_then(Value::as_f64)
                .with_context(|| format!("`{key}` of type `{kind}` needs a number `{field}`"))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "llama3" => RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            },
            other => bail!(
                "`{key}` has rope type `{other}`, which pipe does not implement; it knows \
                 `default` and `llama3`"
            ),
        };
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = scaling
            && high_freq_factor <= low_freq_factor
        {
            bail!("`{key}`: high_freq_factor must be above low_freq_factor");
        }
        Ok(Rope { theta, scaling })
    }

    /// Checks that the numbers fit together and that pipe implements what the config asks.
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("num_labels", self.num_labels()),
        ])?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads())
        {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads()
            );
        }
        let d = self.head_dim();
        if d == 0 || !d.is_multiple_of(2) {
            bail!("head_dim {d} must be a positive even number (rotary pairs dimensions)");
        }
        if self.head_dim.is_none()
            && self.model_type != LlamaFlavor::Qwen3
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}; set `head_dim`",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.hidden_act != "silu" {
            bail!(
                "hidden_act `{}` is not supported for {}; only `silu` is",
                self.hidden_act,
                self.model_type.model_type()
            );
        }
        if self.sliding_window == Some(0) {
            bail!("sliding_window must be positive");
        }
        let marks_sliding = self.layer_types.iter().flatten().any(|t| t == SLIDING);
        if marks_sliding && (0..self.num_hidden_layers).all(|i| self.window(i).is_none()) {
            bail!(
                "layer_types marks `{SLIDING}` layers but this config has no window{}: \
                 transformers cannot run such a model; set `sliding_window` (and, for Qwen, \
                 `use_sliding_window: true`), or mark every layer `full_attention`",
                if self.sliding_window.is_some() {
                    " (Qwen uses `sliding_window` only with `use_sliding_window: true`)"
                } else {
                    ""
                }
            );
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            bail!(
                "attention_dropout is {}, not a probability in [0, 1)",
                self.attention_dropout
            );
        }
        self.rope()?;
        self.pad_token_id()?;
        Ok(())
    }
}

fn dim(n: usize) -> i64 {
    n as i64
}

/// `layer_types`' name of a sliding-window layer.
const SLIDING: &str = "sliding_attention";

/// transformers' `max_window_layers` when a Qwen config leaves it out.
const QWEN_MAX_WINDOW_LAYERS: usize = 28;

// ---- blocks ----------------------------------------------------------------------------------

/// Self-attention with rotary positions and grouped k/v heads (`model.layers.<i>.self_attn`),
/// L:200–260.
struct Attention {
    path: VarPath,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    window: Option<usize>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's per-head norms of q and k.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
}

impl Attention {
    fn new(
        cfg: &LlamaConfig,
        i: usize,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads() * d);
        let (qkv_bias, o_bias) = cfg.attention_biases();
        let std = cfg.initializer_range;
        let q_proj = Linear::new(
            g,
            vars,
            path.pp("q_proj"),
            (h, q_out),
            (qkv_bias, std),
            lora,
        )?;
        let k_proj = Linear::new(
            g,
            vars,
            path.pp("k_proj"),
            (h, kv_out),
            (qkv_bias, std),
            lora,
        )?;
        let v_proj = Linear::new(
            g,
            vars,
            path.pp("v_proj"),
            (h, kv_out),
            (qkv_bias, std),
            lora,
        )?;
        let o_proj = Linear::new(g, vars, path.pp("o_proj"), (q_out, h), (o_bias, std), lora)?;
        let qk_norm = match cfg.model_type {
            LlamaFlavor::Qwen3 => Some((
                RmsNorm::new(g, vars, path.pp("q_norm"), d, cfg.rms_norm_eps)?,
                RmsNorm::new(g, vars, path.pp("k_norm"), d, cfg.rms_norm_eps)?,
            )),
            _ => None,
        };
        Ok(Attention {
            num_heads: dim(cfg.num_attention_heads),
            num_kv_heads: dim(cfg.num_key_value_heads()),
            head_dim: dim(d),
            window: cfg.window(i),
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qk_norm,
            path,
        })
    }

    /// The attention output `[b, s, h]` of `x` `[b, s, h]`; `mask` `[b, 1, s, s]`. With
    /// `last` (the last tokens and their rotary tables), only each row's last token attends:
    /// `[b, 1, h]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        rotary: &Rotary,
        last: Option<(&LastTokens, Rotary)>,
        mask: Tensor,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let b = g.shape(x)[0].clone();
        let hd = Dim::Fixed(self.head_dim);
        let (rows, q_rotary, mask) = match last {
            Some((last, q_rotary)) => (last.pick(g, x)?, q_rotary, last.mask(g, mask)?),
            None => (x, *rotary, mask),
        };
        let s = g.shape(rows)[1].clone();
        let q = self.q_proj.forward(g, rows, dropout)?;
        let k = self.k_proj.forward(g, x, dropout)?;
        let v = self.v_proj.forward(g, x, dropout)?;
        let heads = |g: &mut Graph, t: Tensor, n: i64, norm: Option<&RmsNorm>| {
            let len = g.shape(t)[1].clone();
            let t = g.reshape(t, &[b.clone(), len, Dim::Fixed(n), hd.clone()])?;
            let t = match norm {
                Some(norm) => norm.forward(g, t)?,
                None => t,
            };
            g.transpose(t, &[0, 2, 1, 3]) // [b, n, s, head_dim]
        };
        let (q_norm, k_norm) = match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = heads(g, q, self.num_heads, q_norm)?;
        let k = heads(g, k, self.num_kv_heads, k_norm)?;
        let v = g.with_scope(self.path.as_str(), |g| heads(g, v, self.num_kv_heads, None))?;
        let ctx = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let q = q_rotary.apply(g, q)?;
            let k = rotary.apply(g, k)?;
            let (k, v) = (self.repeat_kv(g, k)?, self.repeat_kv(g, v)?);
            // q·kᵀ/√d (L:170): scaling q first is the same up to rounding, and cheaper.
            let scale = g.scalar(DType::F32, 1.0 / (self.head_dim as f64).sqrt());
            let q = g.mul(q, scale)?;
            let kt = g.transpose(k, &[0, 1, 3, 2])?;
            let scores = g.matmul(q, kt)?; // [b, heads, s, s]
            let scores = g.add(scores, mask)?;
            let probs = g.softmax(scores, -1)?;
            let probs = dropout.apply(g, &self.path.join("attention_dropout"), probs)?;
            let ctx = g.matmul(probs, v)?; // [b, heads, s, head_dim]
            let ctx = g.transpose(ctx, &[0, 2, 1, 3])?;
            let width = Dim::Fixed(self.num_heads * self.head_dim);
            g.reshape(ctx, &[b.clone(), s.clone(), width])
        })?;
        Ok(self.o_proj.forward(g, ctx, dropout)?)
    }

    /// `[b, kv, s, d]` → `[b, heads, s, d]`, each k/v head serving `heads / kv` query heads in
    /// a row (`repeat_kv`, L:150).
    fn repeat_kv(&self, g: &mut Graph, t: Tensor) -> pipe_onnx::Result<Tensor> {
        let rep = self.num_heads / self.num_kv_heads;
        if rep == 1 {
            return Ok(t);
        }
        let shape = g.shape(t).to_vec();
        let t = g.unsqueeze(t, &[2])?; // [b, kv, 1, s, d]
        let wide = [
            shape[0].clone(),
            shape[1].clone(),
            Dim::Fixed(rep),
            shape[2].clone(),
            shape[3].clone(),
        ];
        let t = g.expand(t, &wide)?;
        let heads = Dim::Fixed(self.num_heads);
        g.reshape(
            t,
            &[shape[0].clone(), heads, shape[2].clone(), shape[3].clone()],
        )
    }
}

/// One pre-norm decoder layer (`model.layers.<i>`), L:270–310.
struct Layer {
    path: VarPath,
    self_attn: Attention,
    mlp: SwiGlu,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Layer {
    fn new(
        cfg: &LlamaConfig,
        i: usize,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.rms_norm_eps;
        let self_attn = Attention::new(cfg, i, g, vars, path.pp("self_attn"), lora)?;
        let mlp_bias = cfg.mlp_bias.unwrap_or(false) && cfg.model_type == LlamaFlavor::Llama;
        let mlp = SwiGlu::new(
            g,
            vars,
            path.pp("mlp"),
            (h, cfg.intermediate_size),
            (mlp_bias, cfg.initializer_range),
            lora,
        )?;
        Ok(Layer {
            self_attn,
            mlp,
            input_layernorm: RmsNorm::new(g, vars, path.pp("input_layernorm"), h, eps)?,
            post_attention_layernorm: RmsNorm::new(
                g,
                vars,
                path.pp("post_attention_layernorm"),
                h,
                eps,
            )?,
            path,
        })
    }

    /// `x` `[b, s, h]` → `[b, s, h]`; with `last`, keys and values still come from every
    /// position but only each row's last token goes on: `[b, 1, h]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        rotary: &Rotary,
        last: Option<(&LastTokens, Rotary)>,
        masks: &Masks,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let mask = match self.self_attn.window {
            Some(w) => masks.sliding.get(&w).copied().unwrap_or(masks.causal),
            None => masks.causal,
        };
        let h = self.input_layernorm.forward(g, x)?;
        let a = self.self_attn.forward(g, h, rotary, last, mask, dropout)?;
        let x = match last {
            Some((last, _)) => last.pick(g, x)?,
            None => x,
        };
        let x = g.with_scope(self.path.as_str(), |g| g.add(x, a))?;
        let h = self.post_attention_layernorm.forward(g, x)?;
        let m = self.mlp.forward(g, h, dropout)?;
        Ok(g.with_scope(self.path.as_str(), |g| g.add(x, m))?)
    }
}

/// The attention masks of one forward pass: causal, and one per sliding window in use.
struct Masks {
    causal: Tensor,
    sliding: BTreeMap<usize, Tensor>,
}

// ---- the base model --------------------------------------------------------------------------

/// Token embeddings, decoder layers and the final norm (`model`), L:330–400.
pub struct LlamaModel {
    path: VarPath,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    inv_freq: Vec<f32>,
}

impl LlamaModel {
    /// Declares the base model's parameters under `path`, with LoRA matrices where `lora` says.
    pub fn new(
        cfg: &LlamaConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let shape = [dim(cfg.vocab_size), dim(cfg.hidden_size)];
        let embed_tokens = vars.get(g, &path.pp("embed_tokens"), "weight", &shape, w)?;
        // The config's own pad id's row takes no gradient (`padding_idx=config.pad_token_id`;
        // none without one, even where the classifier pads with `eos_token_id`).
        if let Some(pad) = cfg.pad_token_id {
            g.set_padding_row(embed_tokens, pad);
        }
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, i, g, vars, path.pp("layers").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(g, vars, path.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        Ok(LlamaModel {
            path,
            embed_tokens,
            layers,
            norm,
            inv_freq: cfg.rope()?.inv_freq(cfg.head_dim()),
        })
    }

    /// The hidden state, after the final norm, of each row's token at `positions` (int64
    /// `[b]`, from [`last_non_pad`]): `[b, hidden]`.
    pub fn forward_last_tokens(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        positions: Tensor,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let (x, rotary, masks) = self.embed_and_mask(g, input)?;
        // The last layer runs on the pooled rows alone, its queries rotated by their positions.
        let x = forward_to_last_tokens(
            g,
            x,
            positions,
            &self.layers,
            dropout,
            |layer| &layer.path,
            |g, layer, x, last| {
                let last = match last {
                    Some(last) => {
                        let positions = last.positions(g)?;
                        let path = self.path.join("rotary_emb");
                        let q_rotary =
                            g.with_scope(&path, |g| Rotary::new(g, positions, &self.inv_freq))?;
                        Some((last, q_rotary))
                    }
                    None => None,
                };
                layer.forward(g, x, &rotary, last, &masks, dropout)
            },
        )?;
        // The norm is per row: normalising the picked rows is normalising all and picking.
        Ok(self.norm.forward(g, x)?)
    }

    /// The embedded tokens `[b, s, hidden]`, the rotary tables of positions `0..s` and the
    /// attention masks of every layer.
    fn embed_and_mask(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
    ) -> Result<(Tensor, Rotary, Masks)> {
        let s = g.shape(input.tokens.per_position())[1].clone();
        let windows: std::collections::BTreeSet<usize> = self
            .layers
            .iter()
            .filter_map(|l| l.self_attn.window)
            .collect();
        let (x, rotary, masks) = g.with_scope(self.path.as_str(), |g| -> Result<_> {
            let x = input.tokens.embed(g, self.embed_tokens)?;
            let pos = g.range(&s, DType::I64)?; // [s]: 0..s whatever the padding
            let rotary = g.with_scope("rotary_emb", |g| Rotary::new(g, pos, &self.inv_freq))?;
            let masks = g.with_scope("mask", |g| -> pipe_onnx::Result<Masks> {
                let causal = causal_mask(g, input.lengths, &s, None)?;
                let mut sliding = BTreeMap::new();
                for &w in &windows {
                    sliding.insert(w, causal_mask(g, input.lengths, &s, Some(w))?);
                }
                Ok(Masks { causal, sliding })
            })?;
            Ok((x, rotary, masks))
        })?;
        Ok((x, rotary, masks))
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// A Llama-family model with `score` on the last real token (`LlamaForSequenceClassification`
/// and its Mistral/Qwen2/Qwen3 twins, `GenericForSequenceClassification`).
pub struct LlamaForSequenceClassification {
    /// The base model.
    pub model: LlamaModel,
    score: Linear,
    /// The pad id: `score` reads each row's last token that is not it.
    pad_token_id: i64,
    dropout: Dropout,
    vars: Vars,
}

impl LlamaForSequenceClassification {
    /// Names of the head's parameters: a base checkpoint lacks them, so they start fresh.
    pub const HEAD_PARAMS: &'static [&'static str] = &["score.weight"];

    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name, with the LoRA matrices of `lora` after each targeted layer's weights.
    pub fn new(cfg: &LlamaConfig, g: &mut Graph, lora: Option<&LoraParams>) -> Result<Self> {
        cfg.validate()?;
        let mut vars = Vars::new();
        let model = LlamaModel::new(cfg, g, &mut vars, VarPath::root().pp("model"), lora)?;
        let score = Linear::new(
            g,
            &mut vars,
            VarPath::root().pp("score"),
            (cfg.hidden_size, cfg.num_labels()),
            (false, cfg.initializer_range),
            None,
        )?;
        Ok(LlamaForSequenceClassification {
            model,
            score,
            pad_token_id: cfg.pad_token_id()?,
            dropout: Dropout::none(),
            vars,
        })
    }
}

impl SequenceClassifier for LlamaForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.dropout = dropout;
    }

    /// The family takes no token types: `input.token_type_ids` is ignored.
    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        let positions = last_non_pad(g, &input.tokens, input.lengths, self.pad_token_id)?;
        let pooled = self
            .model
            .forward_last_tokens(g, input, positions, &self.dropout)?;
        Ok(self.score.forward(g, pooled, &self.dropout)?)
    }
}

// ---- the family ------------------------------------------------------------------------------

impl DropoutSites for LlamaConfig {
    fn num_heads(&self) -> usize {
        self.num_attention_heads
    }
    /// The family drops only attention probabilities (`attention_dropout`).
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: 0.0,
            attention: self.attention_dropout,
            resid: 0.0,
        }
    }
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        (0..self.num_hidden_layers)
            .map(|i| Site {
                module: format!("model.layers.{i}.self_attn.attention_dropout"),
                shape: SiteShape::Attention,
                p: rates.attention,
            })
            .collect()
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        let h = SiteShape::Rows(self.hidden_size);
        let heads = SiteShape::Rows(self.num_attention_heads * self.head_dim());
        let m = SiteShape::Rows(self.intermediate_size);
        (0..self.num_hidden_layers)
            .flat_map(|i| {
                let (attn, mlp) = (
                    format!("model.layers.{i}.self_attn"),
                    format!("model.layers.{i}.mlp"),
                );
                [
                    (format!("{attn}.q_proj"), h),
                    (format!("{attn}.k_proj"), h),
                    (format!("{attn}.v_proj"), h),
                    (format!("{attn}.o_proj"), heads),
                    (format!("{mlp}.gate_proj"), h),
                    (format!("{mlp}.up_proj"), h),
                    (format!("{mlp}.down_proj"), m),
                ]
            })
            .collect()
    }
}

impl Architecture for LlamaConfig {
    fn model_type(&self) -> &'static str {
        self.model_type.model_type()
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }
    fn max_length(&self) -> usize {
        self.max_position_embeddings
    }
    fn num_labels(&self) -> usize {
        LlamaConfig::num_labels(self)
    }
    fn id2label(&self) -> Option<&BTreeMap<String, String>> {
        self.id2label.as_ref()
    }
    fn problem_type(&self) -> Option<ProblemType> {
        self.problem_type
    }
    fn pooling(&self) -> Pooling {
        Pooling::Last
    }
    fn takes_token_types(&self) -> bool {
        false
    }
    fn validate(&self) -> Result<()> {
        LlamaConfig::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        if pooling != Pooling::Last {
            bail!(
                "a {} classifier reads its last real token, as transformers' does; \
                 `pooling: {}` applies to GPT-Neo only",
                self.model_type.model_type(),
                serde_json::to_value(pooling)?
            );
        }
        Ok(())
    }

    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(LlamaForSequenceClassification::new(
            self, g, lora,
        )?))
    }
    fn head_params(&self) -> Vec<String> {
        LlamaForSequenceClassification::HEAD_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    fn optional_params(&self) -> Vec<String> {
        Vec::new()
    }

    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        let pad = self.pad_token_id()?;
        let mut value = serde_json::to_value(self)?;
        classifier_keys(&mut value, self.model_type.architecture(), labels, problem);
        if let Value::Object(map) = &mut value {
            map.insert("pad_token_id".into(), json!(pad));
            map.insert("dtype".into(), json!("float32"));
            map.insert("use_cache".into(), json!(false));
        }
        Ok(value)
    }
}
