//! ModernBERT for sequence classification, built as ONNX training graphs.
//!
//! ModernBERT (Warner et al., 2024) is a pre-norm encoder with rotary positions, GeGLU
//! feed-forwards, no biases, and layers that alternate between global attention and a sliding
//! window. Reference implementation, transformers 5.25.0:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/modernbert/modeling_modernbert.py>
//! (`M:line`).
//!
//! Quirks, each checked against the golden fixture (`stages/tests/fixtures/modernbert/`):
//! - Embeddings are `tok_embeddings` alone (no positions), then `norm` and `drop` (M:51–70).
//! - **Pre-norm layers:** `x = x + attn(attn_norm(x))`, `x = x + mlp(mlp_norm(x))`; layer 0
//!   has no `attn_norm` (an identity, M:292–322). Every LayerNorm has a bias only with
//!   `norm_bias`, every linear layer only with `attention_bias` / `mlp_bias` /
//!   `classifier_bias`; the classifier always has one.
//! - **Attention:** `Wqkv` gives q, k, v (in that order along the last axis, M:264–266),
//!   rotary embeddings rotate q and k with the layer kind's theta (`global_rope_theta` or
//!   `rope_parameters.full_attention.rope_theta` for global layers, `local_rope_theta` /
//!   `sliding_attention` for local ones), scores scaled by `1/√head_dim`, then `Wo` and
//!   `out_drop`. A layer is global when `layer_types` says `full_attention`, or (older
//!   configs) when its index is a multiple of `global_attn_every_n_layers`.
//! - **Sliding window:** a local layer's query `q` sees key `k` only when
//!   `|q − k| ≤ local_attention / 2` (`create_bidirectional_sliding_window_mask`), on top of
//!   the padding mask.
//! - **GeGLU:** `Wo(drop(act(input) · gate))` with `input, gate = Wi(x).chunk(2)` (M:73–90).
//! - `final_norm` after the last layer; the head is `head.dense`, `classifier_activation`,
//!   `head.norm`, then `drop` and `classifier` (M:468–482, M:556–610), on `[CLS]`
//!   (`classifier_pooling: cls`) or the mean of the real rows (`mean`).
//! - A ModernBERT checkpoint (a masked-LM one) carries `head.dense` and `head.norm`, which
//!   transformers loads into the classifier's head; a bare base model lacks them, and they
//!   start fresh. Only `classifier` is always fresh.
//!
//! Graph inputs: the tokens, `lengths` int64 `[batch]` (right padding), and one f32 input per
//! parameter under its Hugging Face name (`model.layers.0.attn.Wqkv.weight`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::{DType, Dim, Graph, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{ClassifierInput, Pooling, ProblemType, SequenceClassifier, config_pad_id};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::layers::{
    Activation, LayerNorm, Linear, Rotary, first_token, gated, merge_heads, padding_mask,
    pool_mean, rope_inv_freq, scaled_attention, split_heads,
};
use super::lora::LoraParams;
use super::{Init, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// `model_type: modernbert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModernBertType {
    /// The only value.
    Modernbert,
}

/// How the classifier pools the rows (`classifier_pooling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierPooling {
    /// The first token.
    #[default]
    Cls,
    /// The mean over the real tokens.
    Mean,
}

/// A ModernBERT configuration, read from a Hugging Face `config.json`. Keys pipe does not use
/// are kept in [`ModernBertConfig::other`] and written back.
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/modernbert/configuration_modernbert.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ModernBertConfig {
    /// `modernbert`.
    pub model_type: ModernBertType,
    /// Token vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Feed-forward width (`Wi` gives twice this: input and gate).
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// The feed-forward's gate activation.
    #[serde(default = "default_act")]
    pub hidden_activation: Activation,
    /// The longest row.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Standard deviation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Whether the LayerNorms have a bias.
    #[serde(default)]
    pub norm_bias: bool,
    /// Whether `Wqkv` and `Wo` have biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether `Wi` and `Wo` have biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether `head.dense` has a bias.
    #[serde(default)]
    pub classifier_bias: bool,
    /// The head's activation.
    #[serde(default = "default_act")]
    pub classifier_activation: Activation,
    /// `[CLS]` or the mean of the rows.
    #[serde(default)]
    pub classifier_pooling: ClassifierPooling,
    /// Dropout on the attention probabilities and the attention output.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout after the embeddings.
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Dropout inside the feed-forward (before `Wo`).
    #[serde(default)]
    pub mlp_dropout: f64,
    /// Dropout before the classifier.
    #[serde(default)]
    pub classifier_dropout: f64,
    /// The width of a local layer's window: a query sees keys at most half of it away.
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    /// `full_attention` or `sliding_attention` per layer (transformers 5 writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Older configs: every n-th layer (from 0) is global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_attn_every_n_layers: Option<usize>,
    /// Older configs: the global layers' rotary base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    /// Older configs: the local layers' rotary base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// transformers 5: `{full_attention: {rope_theta, rope_type}, sliding_attention: {…}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
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

fn default_vocab() -> usize {
    50368
}
fn default_hidden() -> usize {
    768
}
fn default_intermediate() -> usize {
    1152
}
fn default_layers() -> usize {
    22
}
fn default_heads() -> usize {
    12
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_positions() -> usize {
    8192
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-5
}
fn default_local_attention() -> usize {
    128
}

/// The base model's prefix (`base_model_prefix`).
const BASE: &str = "model";

impl ModernBertConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2)
    }

    /// Whether layer `i` attends globally (else through the sliding window).
    pub fn is_global(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i).is_some_and(|t| t == "full_attention"),
            None => i.is_multiple_of(self.global_attn_every_n_layers.unwrap_or(3).max(1)),
        }
    }

    /// The rotary base of global (`full_attention`) or local (`sliding_attention`) layers.
    pub fn rope_theta(&self, global: bool) -> f64 {
        let (kind, old, default) = match global {
            true => ("full_attention", self.global_rope_theta, 160_000.0),
            false => ("sliding_attention", self.local_rope_theta, 10_000.0),
        };
        self.rope_parameters
            .as_ref()
            .and_then(|p| p[kind]["rope_theta"].as_f64())
            .or(old)
            .unwrap_or(default)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "the head width {} (hidden_size / num_attention_heads) must be even for rotary \
                 embeddings",
                self.head_dim()
            );
        }
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("num_labels", self.num_labels()),
        ])?;
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                bail!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                );
            }
            if let Some(t) = types
                .iter()
                .find(|t| *t != "full_attention" && *t != "sliding_attention")
            {
                bail!("layer_types has `{t}`; each must be full_attention or sliding_attention");
            }
        }
        if let Some(params) = &self.rope_parameters {
            for kind in ["full_attention", "sliding_attention"] {
                let t = &params[kind]["rope_type"];
                if !(t.is_null() || t == "default") {
                    bail!(
                        "rope_parameters.{kind}.rope_type {t} is not supported; only `default` is"
                    );
                }
            }
        }
        for (key, p) in [
            ("attention_dropout", self.attention_dropout),
            ("embedding_dropout", self.embedding_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{key} is {p}, not a probability in [0, 1)");
            }
        }
        Ok(())
    }
}

// ---- blocks ----------------------------------------------------------------------------------

/// The additive mask of a local layer, `[b, 1, s, s]`: the padding mask where
/// `|q − k| ≤ half`, `f32::MIN` elsewhere.
fn sliding_mask(
    g: &mut Graph,
    padding: Tensor,
    seq: &Dim,
    half: usize,
) -> pipe_onnx::Result<Tensor> {
    let pos = g.range(seq, DType::I64)?;
    let q = g.unsqueeze(pos, &[1])?; // [s, 1]
    let k = g.unsqueeze(pos, &[0])?; // [1, s]
    let distance = g.sub(q, k)?;
    let distance = g.abs(distance)?; // [s, s]
    let limit = g.scalar(DType::I64, (half + 1) as f64);
    let near = g.less(distance, limit)?;
    let min = g.scalar(DType::F32, f64::from(f32::MIN));
    g.where_(near, padding, min) // [b, 1, s, s]
}

/// One pre-norm layer (`model.layers.<i>`), M:211–322.
struct Layer {
    path: VarPath,
    global: bool,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
    activation: Activation,
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
}

impl Layer {
    fn new(
        cfg: &ModernBertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        (path, i): (VarPath, usize),
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        let std = cfg.initializer_range;
        let norm = |g: &mut Graph, vars: &mut Vars, name: &str| {
            LayerNorm::with_bias(g, vars, path.pp(name), h, cfg.norm_eps, cfg.norm_bias)
        };
        // In `__init__`'s order, which is `named_parameters()`' order.
        let attn_norm = match i {
            0 => None,
            _ => Some(norm(g, vars, "attn_norm")?),
        };
        let (attn, mlp) = (path.pp("attn"), path.pp("mlp"));
        let ab = (cfg.attention_bias, std);
        let wqkv = Linear::new(g, vars, attn.pp("Wqkv"), (h, 3 * h), ab, lora)?;
        let wo = Linear::new(g, vars, attn.pp("Wo"), (h, h), ab, lora)?;
        let mlp_norm = norm(g, vars, "mlp_norm")?;
        let mb = (cfg.mlp_bias, std);
        let wi = Linear::new(g, vars, mlp.pp("Wi"), (h, 2 * m), mb, lora)?;
        let mlp_wo = Linear::new(g, vars, mlp.pp("Wo"), (m, h), mb, lora)?;
        Ok(Layer {
            global: cfg.is_global(i),
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            intermediate: m,
            activation: cfg.hidden_activation,
            attn_norm,
            wqkv,
            wo,
            mlp_norm,
            wi,
            mlp_wo,
            path,
        })
    }

    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        (rotary, mask): (&Rotary, Tensor),
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(g, x)?,
            None => x,
        };
        let qkv = self.wqkv.forward(g, normed, dropout)?; // [b, s, 3h]
        let attn = self.path.pp("attn");
        let (heads, hd) = (self.heads, self.head_dim);
        let ctx = g.with_scope(attn.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let h = Dim::Fixed((heads * hd) as i64);
            let parts = g.split(qkv, &[h.clone(), h.clone(), h], -1)?;
            let q = split_heads(g, parts[0], heads, hd)?;
            let k = split_heads(g, parts[1], heads, hd)?;
            let v = split_heads(g, parts[2], heads, hd)?;
            let q = g.with_scope("rotary_q", |g| rotary.apply(g, q))?;
            let k = g.with_scope("rotary_k", |g| rotary.apply(g, k))?;
            let site = attn.join("attention_dropout");
            let ctx = scaled_attention(g, (q, k, v), mask, hd, (dropout, &site))?;
            merge_heads(g, ctx, heads * hd)
        })?;
        let a = self.wo.forward(g, ctx, dropout)?;
        let x = g.with_scope(attn.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let a = dropout.apply(g, &attn.join("out_drop"), a)?;
            g.add(x, a)
        })?;
        let normed = self.mlp_norm.forward(g, x)?;
        let t = self.wi.forward(g, normed, dropout)?;
        let mlp = self.path.pp("mlp");
        let t = g.with_scope(mlp.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let t = gated(g, t, self.intermediate, self.activation)?;
            dropout.apply(g, &mlp.join("drop"), t)
        })?;
        let y = self.mlp_wo.forward(g, t, dropout)?;
        g.with_scope(self.path.as_str(), |g| g.add(x, y))
    }
}

// ---- the base model --------------------------------------------------------------------------

/// Embeddings, layers and the final norm (`model`), M:399–465.
pub struct ModernBertModel {
    path: VarPath,
    tok_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    /// The rotary inverse frequencies of global and local layers.
    inv_freq: (Vec<f32>, Vec<f32>),
    half_window: usize,
}

impl ModernBertModel {
    /// Declares the base model's parameters under `path`, with LoRA matrices where `lora` says.
    pub fn new(
        cfg: &ModernBertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let emb = path.pp("embeddings");
        let tok_embeddings = vars.get(
            g,
            &emb.pp("tok_embeddings"),
            "weight",
            &[cfg.vocab_size as i64, h as i64],
            Init::Normal {
                std: cfg.initializer_range as f32,
            },
        )?;
        // The pad id's row takes no gradient (`padding_idx=config.pad_token_id`).
        let pad = config_pad_id(&cfg.other).unwrap_or(MODERNBERT_PAD_ID);
        g.set_padding_row(tok_embeddings, pad);
        let (eps, bias) = (cfg.norm_eps, cfg.norm_bias);
        let embed_norm = LayerNorm::with_bias(g, vars, emb.pp("norm"), h, eps, bias)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, g, vars, (path.pp("layers").pp(i), i), lora))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = LayerNorm::with_bias(g, vars, path.pp("final_norm"), h, eps, bias)?;
        let hd = cfg.head_dim();
        Ok(ModernBertModel {
            inv_freq: (
                rope_inv_freq(cfg.rope_theta(true), hd),
                rope_inv_freq(cfg.rope_theta(false), hd),
            ),
            half_window: cfg.local_attention / 2,
            path,
            tok_embeddings,
            embed_norm,
            layers,
            final_norm,
        })
    }

    /// The last hidden state after `final_norm`, `[b, s, hidden]` (values at padded positions
    /// are unspecified).
    pub fn forward(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let emb = self.path.pp("embeddings");
        let x = g.with_scope(emb.as_str(), |g| input.tokens.embed(g, self.tok_embeddings))?;
        let x = self.embed_norm.forward(g, x)?;
        let mut x = g.with_scope(emb.as_str(), |g| dropout.apply(g, &emb.join("drop"), x))?;
        let s = g.shape(x)[1].clone();
        let masks = |g: &mut Graph| -> pipe_onnx::Result<(Tensor, Tensor)> {
            let global = padding_mask(g, input.lengths, &s)?;
            let local = sliding_mask(g, global, &s, self.half_window)?;
            Ok((global, local))
        };
        let (global, local) = g.with_scope(&self.path.join("mask"), masks)?;
        let rotary = |g: &mut Graph| -> Result<(Rotary, Rotary)> {
            let seq = g.shape(input.tokens.per_position())[1].clone();
            let pos = g.range(&seq, DType::I64)?; // [s]
            Ok((
                Rotary::new(g, pos, &self.inv_freq.0)?,
                Rotary::new(g, pos, &self.inv_freq.1)?,
            ))
        };
        let (global_rotary, local_rotary) = g.with_scope(&self.path.join("rotary_emb"), rotary)?;
        for layer in &self.layers {
            let ctx = match layer.global {
                true => (&global_rotary, global),
                false => (&local_rotary, local),
            };
            x = layer.forward(g, x, ctx, dropout)?;
        }
        Ok(self.final_norm.forward(g, x)?)
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// transformers' `pad_token_id` of a ModernBERT config that names none.
const MODERNBERT_PAD_ID: i64 = 50283;

/// ModernBERT with its sequence-classification head (`ModernBertForSequenceClassification`).
pub struct ModernBertForSequenceClassification {
    /// The base model.
    pub model: ModernBertModel,
    pooling: ClassifierPooling,
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
    classifier: Linear,
    dropout: Dropout,
    vars: Vars,
}

impl ModernBertForSequenceClassification {
    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name, with the LoRA matrices of `lora` after each targeted layer's weights.
    pub fn new(cfg: &ModernBertConfig, g: &mut Graph, lora: Option<&LoraParams>) -> Result<Self> {
        cfg.validate()?;
        let mut vars = Vars::new();
        let model = ModernBertModel::new(cfg, g, &mut vars, VarPath::root().pp(BASE), lora)?;
        let (h, n) = (cfg.hidden_size, cfg.num_labels());
        let head = VarPath::root().pp("head");
        let std = cfg.initializer_range;
        let dense = Linear::new(
            g,
            &mut vars,
            head.pp("dense"),
            (h, h),
            (cfg.classifier_bias, std),
            None,
        )?;
        let norm = LayerNorm::with_bias(
            g,
            &mut vars,
            head.pp("norm"),
            h,
            cfg.norm_eps,
            cfg.norm_bias,
        )?;
        let classifier = VarPath::root().pp("classifier");
        let classifier = Linear::new(g, &mut vars, classifier, (h, n), (true, std), None)?;
        Ok(ModernBertForSequenceClassification {
            model,
            pooling: cfg.classifier_pooling,
            dense,
            activation: cfg.classifier_activation,
            norm,
            classifier,
            dropout: Dropout::none(),
            vars,
        })
    }
}

impl SequenceClassifier for ModernBertForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.dropout = dropout;
    }

    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        let d = &self.dropout;
        let hidden = self.model.forward(g, input, d)?; // [b, s, h]
        let pooled = g.with_scope("pool", |g| -> pipe_onnx::Result<Tensor> {
            match self.pooling {
                ClassifierPooling::Cls => {
                    let first = first_token(g, hidden)?; // [b, 1, h]
                    let (b, h) = (g.shape(first)[0].clone(), g.shape(first)[2].clone());
                    g.reshape(first, &[b, h])
                }
                ClassifierPooling::Mean => pool_mean(g, hidden, input.lengths),
            }
        })?;
        let x = self.dense.forward(g, pooled, d)?;
        let x = g.with_scope("head", |g| self.activation.apply(g, x))?;
        let x = self.norm.forward(g, x)?;
        let x = d.apply(g, "drop", x)?;
        Ok(self.classifier.forward(g, x, d)?)
    }
}

// ---- the family ------------------------------------------------------------------------------

impl DropoutSites for ModernBertConfig {
    fn num_heads(&self) -> usize {
        self.num_attention_heads
    }
    /// `embedding_dropout` after the embeddings, `attention_dropout` on the attention
    /// probabilities and output, `mlp_dropout` inside the feed-forward.
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: self.embedding_dropout,
            attention: self.attention_dropout,
            resid: self.mlp_dropout,
        }
    }
    /// The head's dropout is `classifier_dropout`. The attention probabilities' site is
    /// `attn.attention_dropout` (transformers drops them functionally, with no module).
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        let (h, m) = (self.hidden_size, self.intermediate_size);
        let site = |module: String, shape, p| Site { module, shape, p };
        let mut sites = vec![site(
            format!("{BASE}.embeddings.drop"),
            SiteShape::Rows(h),
            rates.embed,
        )];
        for i in 0..self.num_hidden_layers {
            let layer = format!("{BASE}.layers.{i}");
            sites.extend([
                site(
                    format!("{layer}.attn.attention_dropout"),
                    SiteShape::Attention,
                    rates.attention,
                ),
                site(
                    format!("{layer}.attn.out_drop"),
                    SiteShape::Rows(h),
                    rates.attention,
                ),
                site(format!("{layer}.mlp.drop"), SiteShape::Rows(m), rates.resid),
            ]);
        }
        sites.push(site(
            "drop".into(),
            SiteShape::Pooled(h),
            self.classifier_dropout,
        ));
        sites
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        let (h, m) = (self.hidden_size, self.intermediate_size);
        (0..self.num_hidden_layers)
            .flat_map(|i| {
                let layer = format!("{BASE}.layers.{i}");
                [
                    (format!("{layer}.attn.Wqkv"), SiteShape::Rows(h)),
                    (format!("{layer}.attn.Wo"), SiteShape::Rows(h)),
                    (format!("{layer}.mlp.Wi"), SiteShape::Rows(h)),
                    (format!("{layer}.mlp.Wo"), SiteShape::Rows(m)),
                ]
            })
            .collect()
    }
}

impl Architecture for ModernBertConfig {
    fn model_type(&self) -> &'static str {
        "modernbert"
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
        ModernBertConfig::num_labels(self)
    }
    fn id2label(&self) -> Option<&BTreeMap<String, String>> {
        self.id2label.as_ref()
    }
    fn problem_type(&self) -> Option<ProblemType> {
        self.problem_type
    }
    fn pooling(&self) -> Pooling {
        match self.classifier_pooling {
            ClassifierPooling::Cls => Pooling::First,
            ClassifierPooling::Mean => Pooling::Mean,
        }
    }
    fn takes_token_types(&self) -> bool {
        false
    }
    fn validate(&self) -> Result<()> {
        ModernBertConfig::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    /// `first` or `mean`, written back as `classifier_pooling` (`cls`, `mean`).
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        self.classifier_pooling = match pooling {
            Pooling::First => ClassifierPooling::Cls,
            Pooling::Mean => ClassifierPooling::Mean,
            Pooling::Last => bail!(
                "a modernbert classifier pools `first` (classifier_pooling: cls) or `mean`, not \
                 `last`"
            ),
        };
        Ok(())
    }
    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(ModernBertForSequenceClassification::new(
            self, g, lora,
        )?))
    }
    fn head_params(&self) -> Vec<String> {
        vec!["classifier.weight".into(), "classifier.bias".into()]
    }
    /// The prediction head, which a masked-LM checkpoint has and a bare base model lacks.
    fn optional_params(&self) -> Vec<String> {
        let mut params = vec!["head.dense.weight".to_string(), "head.norm.weight".into()];
        if self.classifier_bias {
            params.push("head.dense.bias".into());
        }
        if self.norm_bias {
            params.push("head.norm.bias".into());
        }
        params
    }
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        let mut value = serde_json::to_value(self)?;
        classifier_keys(
            &mut value,
            "ModernBertForSequenceClassification",
            labels,
            problem,
        );
        Ok(value)
    }
}
