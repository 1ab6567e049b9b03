//! GPT-2 (and DistilGPT-2) for sequence classification, built as an ONNX training graph.
//!
//! Reference implementation, transformers 5.25.0:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py>
//! (cited as `M:line`).
//!
//! Quirks, each checked against the golden fixture (`stages/tests/fixtures/gpt2/`):
//! - **Conv1D:** every projection stores its weight `[in, out]` and computes `x W + b`
//!   (`pytorch_utils.Conv1D`); q, k and v come from one fused `c_attn` `[h, 3h]`, split in
//!   that order (M:187).
//! - Learned positions `0..seq` (`wpe`) whatever the padding; pre-LayerNorm blocks (`ln_1`,
//!   `ln_2`) and a final `ln_f`; `gelu_new` in the MLP (`activation_function`).
//! - Scores are scaled by `1/√head_dim` when `scale_attn_weights` (the default) and further by
//!   `1/(layer + 1)` when `scale_attn_by_inverse_layer_idx` (M:98–101).
//! - **Head:** `score` (no bias) on the last non-pad token, as GPT-Neo's and the Llama family's
//!   ([`last_non_pad`]): with right padding `length - 1`, unless the text ends in the pad id.
//!   GPT-2 checkpoints name no pad token, so the written config pads with `eos_token_id`
//!   ([`decoder_pad_id`]).
//!
//! Graph inputs: the tokens ([`Tokens`](super::layers::Tokens)), `lengths` int64 `[batch]` (right padding), and one
//! f32 input per parameter under its Hugging Face name (`transformer.h.0.attn.c_attn.weight`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::{DType, Dim, Graph, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{
    ClassifierInput, Pooling, ProblemType, SequenceClassifier, decoder_pad_id,
};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::last_tokens::{LastTokens, forward_to_last_tokens, last_non_pad};
use super::layers::{Activation, Conv1D, LayerNorm, Linear, causal_mask};
use super::lora::LoraParams;
use super::{Init, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// A GPT-2 configuration, read from a Hugging Face `config.json`. Keys pipe does not use
/// (`n_ctx`, `summary_*`, `bos_token_id`, …) are kept in [`Gpt2Config::other`] and written back.
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/configuration_gpt2.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Gpt2Config {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Rows of `wpe`: the longest row.
    pub n_positions: usize,
    /// Width of the hidden states.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block; must divide `n_embd`.
    pub n_head: usize,
    /// MLP width; `None`: `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub activation_function: Activation,
    /// Dropout on each block's outputs while training.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Dropout after the embeddings while training.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities while training.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Whether scores are divided by `√head_dim`.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Whether layer `i`'s scores are further divided by `i + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
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

fn default_act() -> Activation {
    Activation::GeluNew
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}

impl Gpt2Config {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// MLP width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2)
    }

    /// The pad id the classifier's rule needs ([`decoder_pad_id`]).
    pub fn pad_token_id(&self) -> Result<i64> {
        decoder_pad_id("gpt2", self.pad_token_id, &self.other, self.vocab_size)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner()),
            ("num_labels", self.num_labels()),
        ])?;
        if !self.n_embd.is_multiple_of(self.n_head) || self.n_embd == 0 {
            bail!(
                "n_embd {} is not a positive multiple of n_head {}",
                self.n_embd,
                self.n_head
            );
        }
        for (key, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{key} is {p}, not a probability in [0, 1)");
            }
        }
        self.pad_token_id()?;
        Ok(())
    }
}

fn dim(n: usize) -> i64 {
    n as i64
}

// ---- blocks ----------------------------------------------------------------------------------

/// Causal self-attention with the fused `c_attn` (`transformer.h.<i>.attn`), M:84–228.
struct Attention {
    path: VarPath,
    num_heads: i64,
    head_dim: i64,
    scale: f64,
    c_attn: Conv1D,
    c_proj: Conv1D,
}

impl Attention {
    fn new(
        cfg: &Gpt2Config,
        i: usize,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = cfg.n_embd;
        let std = cfg.initializer_range;
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        Ok(Attention {
            c_attn: Conv1D::new(g, vars, path.pp("c_attn"), (h, 3 * h), std, lora)?,
            c_proj: Conv1D::new(g, vars, path.pp("c_proj"), (h, h), std, lora)?,
            num_heads: dim(cfg.n_head),
            head_dim: dim(cfg.head_dim()),
            scale,
            path,
        })
    }

    /// `resid_dropout(c_proj(attention))` of `x` `[b, s, h]`; `mask` `[b, 1, s, s]`. With
    /// `last`, only each row's last token attends: `[b, 1, h]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        last: Option<&LastTokens>,
        mask: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let b = g.shape(x)[0].clone();
        let qkv = self.c_attn.forward(g, x, dropout)?; // [b, s, 3h]
        let ctx = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let h = self.num_heads * self.head_dim;
            let (nh, hd) = (Dim::Fixed(self.num_heads), Dim::Fixed(self.head_dim));
            let part = |g: &mut Graph, k: i64| {
                g.slice(qkv, &[k * h], &[Dim::Fixed((k + 1) * h)], &[-1], &[]) // [b, s, h]
            };
            let heads = |g: &mut Graph, t: Tensor| -> pipe_onnx::Result<Tensor> {
                let s = g.shape(t)[1].clone();
                let t = g.reshape(t, &[b.clone(), s, nh.clone(), hd.clone()])?;
                g.transpose(t, &[0, 2, 1, 3]) // [b, heads, s, head_dim]
            };
            let q = part(g, 0)?;
            let (q, mask) = match last {
                Some(last) => (last.pick(g, q)?, last.mask(g, mask)?),
                None => (q, mask),
            };
            let s = g.shape(q)[1].clone();
            let q = heads(g, q)?;
            let k = part(g, 1)?;
            let k = heads(g, k)?;
            let v = part(g, 2)?;
            let v = heads(g, v)?;
            let scale = g.scalar(DType::F32, self.scale);
            let q = g.mul(q, scale)?;
            let kt = g.transpose(k, &[0, 1, 3, 2])?;
            let scores = g.matmul(q, kt)?;
            let scores = g.add(scores, mask)?;
            let probs = g.softmax(scores, -1)?;
            let probs = dropout.apply(g, &self.path.join("attn_dropout"), probs)?;
            let ctx = g.matmul(probs, v)?;
            let ctx = g.transpose(ctx, &[0, 2, 1, 3])?;
            g.reshape(ctx, &[b.clone(), s.clone(), Dim::Fixed(h)])
        })?;
        let y = self.c_proj.forward(g, ctx, dropout)?;
        g.with_scope(self.path.as_str(), |g| {
            dropout.apply(g, &self.path.join("resid_dropout"), y)
        })
    }
}

/// One pre-LN block (`transformer.h.<i>`), M:231–330.
struct Block {
    path: VarPath,
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    c_proj: Conv1D,
    activation: Activation,
}

impl Block {
    fn new(
        cfg: &Gpt2Config,
        i: usize,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (h, m, eps) = (cfg.n_embd, cfg.inner(), cfg.layer_norm_epsilon);
        let std = cfg.initializer_range;
        let ln_1 = LayerNorm::new(g, vars, path.pp("ln_1"), h, eps)?;
        let attn = Attention::new(cfg, i, g, vars, path.pp("attn"), lora)?;
        let ln_2 = LayerNorm::new(g, vars, path.pp("ln_2"), h, eps)?;
        let mlp = path.pp("mlp");
        Ok(Block {
            ln_1,
            attn,
            ln_2,
            c_fc: Conv1D::new(g, vars, mlp.pp("c_fc"), (h, m), std, lora)?,
            c_proj: Conv1D::new(g, vars, mlp.pp("c_proj"), (m, h), std, lora)?,
            activation: cfg.activation_function,
            path,
        })
    }

    /// `x` `[b, s, h]` → `[b, s, h]`; with `last`, keys and values still come from every
    /// position but only each row's last token goes on: `[b, 1, h]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        last: Option<&LastTokens>,
        mask: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let a = self.ln_1.forward(g, x)?;
        let a = self.attn.forward(g, a, last, mask, dropout)?;
        let x = match last {
            Some(last) => last.pick(g, x)?,
            None => x,
        };
        let x = g.with_scope(self.path.as_str(), |g| g.add(x, a))?;
        let m = self.ln_2.forward(g, x)?;
        let m = self.c_fc.forward(g, m, dropout)?;
        let mlp = self.path.pp("mlp");
        let m = g.with_scope(mlp.as_str(), |g| self.activation.apply(g, m))?;
        let m = self.c_proj.forward(g, m, dropout)?;
        g.with_scope(mlp.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let m = dropout.apply(g, &mlp.join("dropout"), m)?;
            g.add(x, m)
        })
    }
}

// ---- the base model --------------------------------------------------------------------------

/// Embeddings, blocks and `ln_f` (`transformer`), M:480–630.
pub struct Gpt2Model {
    path: VarPath,
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2Model {
    /// Declares the base model's parameters under `path`, with LoRA matrices where `lora` says.
    pub fn new(
        cfg: &Gpt2Config,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let h = dim(cfg.n_embd);
        let wte = vars.get(g, &path.pp("wte"), "weight", &[dim(cfg.vocab_size), h], w)?;
        let wpe = vars.get(g, &path.pp("wpe"), "weight", &[dim(cfg.n_positions), h], w)?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, i, g, vars, path.pp("h").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(g, vars, path.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?;
        Ok(Gpt2Model {
            path,
            wte,
            wpe,
            h: blocks,
            ln_f,
        })
    }

    /// The hidden state after `ln_f` of each row's token at `positions` (int64 `[b]`, from
    /// [`last_non_pad`]): `[b, hidden]`.
    pub fn forward_last_tokens(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        positions: Tensor,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let s = g.shape(input.tokens.per_position())[1].clone();
        let (x, mask) = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<_> {
            let tok = input.tokens.embed(g, self.wte)?;
            let pos = g.range(&s, DType::I64)?; // [s], not shifted by padding
            let pe = g.gather(self.wpe, pos, 0)?;
            let x = g.add(tok, pe)?;
            let x = dropout.apply(g, &self.path.join("drop"), x)?;
            let mask = g.with_scope("mask", |g| causal_mask(g, input.lengths, &s, None))?;
            Ok((x, mask))
        })?;
        // The last block runs on the pooled rows alone.
        let x = forward_to_last_tokens(
            g,
            x,
            positions,
            &self.h,
            dropout,
            |block| &block.path,
            |g, block, x, last| Ok(block.forward(g, x, last, mask, dropout)?),
        )?;
        // LayerNorm is per row: normalising the picked rows is normalising all and picking.
        Ok(self.ln_f.forward(g, x)?)
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// GPT-2 with `score` on the last real token (`GPT2ForSequenceClassification`, M:855–960).
pub struct Gpt2ForSequenceClassification {
    /// The base model.
    pub transformer: Gpt2Model,
    score: Linear,
    /// The pad id: `score` reads each row's last token that is not it.
    pad_token_id: i64,
    dropout: Dropout,
    vars: Vars,
}

impl Gpt2ForSequenceClassification {
    /// Names of the head's parameters: a base checkpoint lacks them, so they start fresh.
    pub const HEAD_PARAMS: &'static [&'static str] = &["score.weight"];

    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name, with the LoRA matrices of `lora` after each targeted layer's weights.
    pub fn new(cfg: &Gpt2Config, g: &mut Graph, lora: Option<&LoraParams>) -> Result<Self> {
        cfg.validate()?;
        let mut vars = Vars::new();
        let root = VarPath::root().pp("transformer");
        let transformer = Gpt2Model::new(cfg, g, &mut vars, root, lora)?;
        let score = Linear::new(
            g,
            &mut vars,
            VarPath::root().pp("score"),
            (cfg.n_embd, cfg.num_labels()),
            (false, cfg.initializer_range),
            None,
        )?;
        Ok(Gpt2ForSequenceClassification {
            transformer,
            score,
            pad_token_id: cfg.pad_token_id()?,
            dropout: Dropout::none(),
            vars,
        })
    }
}

impl SequenceClassifier for Gpt2ForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.dropout = dropout;
    }

    /// GPT-2 takes no token types here: `input.token_type_ids` is ignored.
    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        let positions = last_non_pad(g, &input.tokens, input.lengths, self.pad_token_id)?;
        let pooled = self
            .transformer
            .forward_last_tokens(g, input, positions, &self.dropout)?;
        Ok(self.score.forward(g, pooled, &self.dropout)?)
    }
}

// ---- the family ------------------------------------------------------------------------------

impl DropoutSites for Gpt2Config {
    fn num_heads(&self) -> usize {
        self.n_head
    }
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: self.embd_pdrop,
            attention: self.attn_pdrop,
            resid: self.resid_pdrop,
        }
    }
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        let hidden = SiteShape::Rows(self.n_embd);
        let site = |module: String, shape, p| Site { module, shape, p };
        let mut sites = vec![site("transformer.drop".into(), hidden, rates.embed)];
        for i in 0..self.n_layer {
            let attn = format!("transformer.h.{i}.attn");
            sites.push(site(
                format!("{attn}.attn_dropout"),
                SiteShape::Attention,
                rates.attention,
            ));
            sites.push(site(format!("{attn}.resid_dropout"), hidden, rates.resid));
            sites.push(site(
                format!("transformer.h.{i}.mlp.dropout"),
                hidden,
                rates.resid,
            ));
        }
        sites
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        let (h, m) = (SiteShape::Rows(self.n_embd), SiteShape::Rows(self.inner()));
        (0..self.n_layer)
            .flat_map(|i| {
                let block = format!("transformer.h.{i}");
                [
                    (format!("{block}.attn.c_attn"), h),
                    (format!("{block}.attn.c_proj"), h),
                    (format!("{block}.mlp.c_fc"), h),
                    (format!("{block}.mlp.c_proj"), m),
                ]
            })
            .collect()
    }
    fn lora_fan_in_fan_out(&self) -> bool {
        true
    }
}

impl Architecture for Gpt2Config {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.n_embd
    }
    fn num_layers(&self) -> usize {
        self.n_layer
    }
    fn max_length(&self) -> usize {
        self.n_positions
    }
    fn num_labels(&self) -> usize {
        Gpt2Config::num_labels(self)
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
        Gpt2Config::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        if pooling != Pooling::Last {
            bail!(
                "a gpt2 classifier reads its last real token, as transformers' does; \
                 `pooling: {}` applies to GPT-Neo only",
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
        Ok(Box::new(Gpt2ForSequenceClassification::new(self, g, lora)?))
    }
    fn head_params(&self) -> Vec<String> {
        Gpt2ForSequenceClassification::HEAD_PARAMS
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
        classifier_keys(&mut value, "GPT2ForSequenceClassification", labels, problem);
        if let Value::Object(map) = &mut value {
            map.insert("model_type".into(), json!("gpt2"));
            map.insert("pad_token_id".into(), json!(pad));
            map.insert("dtype".into(), json!("float32"));
            map.insert("use_cache".into(), json!(false));
        }
        Ok(value)
    }
}
