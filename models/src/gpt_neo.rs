//! GPT-Neo for sequence classification, built as an ONNX training graph.
//!
//! GPT-Neo (EleutherAI) is a decoder-only transformer in the GPT-2 family whose layers
//! alternate between global causal attention and local (sliding-window) causal attention.
//! The classifier pools the hidden state of each row's last real token (or, with
//! [`Pooling::Mean`], the mean over its real tokens) and maps it to `num_labels` scores. Reference implementation, transformers 5.24.0:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt_neo/modeling_gpt_neo.py>
//! (cited below as `M:line`, as in `stages/tests/fixtures/gpt_neo/README.md`).
//!
//! Quirks, each checked against the golden fixtures:
//! - **Unscaled attention:** `q·kᵀ` is not divided by √head_dim (M:112).
//! - **Local windows:** on `local` layers key `k` is visible from query `q` iff
//!   `0 <= q - k < window_size` (M:67–68); global layers use `k <= q`.
//! - Masked scores are set to `f32::MIN`, not −∞ (M:117–121), so a row with no visible key
//!   stays finite.
//! - **gelu_new**, the tanh approximation of GELU (ONNX `Gelu(approximate="tanh")`).
//! - q/k/v projections have no bias, `out_proj` has one; `score` has no bias.
//! - Pre-LayerNorm blocks, a final `ln_f`; positions are `0..seq` whatever the padding.
//! - **Pooling by length:** HF pools at the rightmost non-pad token (M:685–696); with right
//!   padding that is `length - 1`, which is what we gather, from an explicit `lengths` input.
//! - **No pad token:** GPT-Neo has none; padding is described only by `lengths` (key `j` is
//!   visible in row `b` iff `j < lengths[b]`), so the pad id never matters.
//!
//! Graph inputs: `input_ids` int64 `[batch, seq]`, `lengths` int64 `[batch]` (each in
//! `1..=seq`), and one f32 input per parameter under its Hugging Face name. Nodes are named
//! after the module path (`transformer.h.3.attn.attention/Softmax`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::{DType, Dim, Graph, Tensor, TrainParam};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{self, ClassifierInput, SequenceClassifier, decoder_pad_id};
pub use super::classifier::{Pooling, ProblemType, hf_trainer_decay};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::last_tokens::{LastTokens, forward_to_last_tokens, last_non_pad};
pub use super::layers::{Activation, Tokens};
use super::layers::{LayerNorm, pool_mean};
use super::lora::{self, LoraLayer, LoraParams};
use super::{Init, ParamSpec, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// The attention of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// Causal attention over every earlier token.
    Global,
    /// Causal attention over the last `window_size` tokens (the query included).
    Local,
}

/// A GPT-Neo configuration, read from a Hugging Face `config.json` (keys pipe does not use
/// are kept in [`GptNeoConfig::other`]).
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt_neo/configuration_gpt_neo.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct GptNeoConfig {
    /// Token vocabulary size (rows of `wte`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_heads: usize,
    /// MLP width; `None` (JSON `null`) means `4 * hidden_size`.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Rows of `wpe`: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Keys a local layer sees, the query included; 256 when absent, as transformers'
    /// `GPTNeoConfig` defaults it.
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    /// Attention pattern in the nested HF form: `[[["global", "local"], 6]]` repeats the
    /// pair six times. See [`GptNeoConfig::attention_layers`].
    pub attention_types: Vec<(Vec<AttentionKind>, usize)>,
    /// MLP activation.
    #[serde(default = "default_activation")]
    pub activation_function: Activation,
    /// LayerNorm ε.
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of fresh linear and embedding weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Number of labels; HF does not write it (it derives it from `id2label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Label names by index (keys are decimal strings, as HF writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Single- or multi-label classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// Dropout after the embeddings while training.
    #[serde(default)]
    pub embed_dropout: f64,
    /// Dropout on the attention probabilities while training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout on each block's output while training.
    #[serde(default)]
    pub resid_dropout: f64,
    /// How the classifier pools a row (pipe's key; written only when not `last`).
    #[serde(default, skip_serializing_if = "Pooling::is_last")]
    pub pooling: Pooling,
    /// Every other key of the source `config.json` (`bos_token_id`, `eos_token_id`, …), kept
    /// as it was and written back.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn default_activation() -> Activation {
    Activation::GeluNew
}

fn default_window_size() -> usize {
    256
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_initializer_range() -> f64 {
    0.02
}

impl GptNeoConfig {
    /// The pad id the classifier reads past (the last token that is not it): the config's
    /// `pad_token_id`, else its end-of-text token (`eos_token_id`, its first when a list),
    /// else 0, the `<|endoftext|>` of the BPE the tokenize stage trains; an error when the
    /// id is not a token of the vocabulary.
    pub fn pad_token_id(&self) -> Result<i64> {
        let pad = self.other.get("pad_token_id").and_then(Value::as_i64);
        let names_one = |key: &str| self.other.get(key).is_some_and(|v| !v.is_null());
        if !names_one("pad_token_id") && !names_one("eos_token_id") {
            return Ok(0);
        }
        decoder_pad_id("gpt_neo", pad, &self.other, self.vocab_size)
    }

    /// A small model to train from scratch: hidden 256, 4 layers of 8 heads alternating
    /// global/local, MLP 1024, 128 positions, window 256.
    pub fn tiny(vocab_size: usize, num_labels: usize) -> Self {
        GptNeoConfig {
            vocab_size,
            hidden_size: 256,
            num_layers: 4,
            num_heads: 8,
            intermediate_size: Some(1024),
            max_position_embeddings: 128,
            window_size: 256,
            attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 2)],
            activation_function: Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            num_labels: Some(num_labels),
            id2label: None,
            problem_type: None,
            embed_dropout: 0.0,
            attention_dropout: 0.0,
            resid_dropout: 0.0,
            pooling: Pooling::Last,
            other: serde_json::Map::new(),
        }
    }

    /// A model for tests: hidden 32, 2 layers (global, local) of 4 heads, MLP 64,
    /// 32 positions, window 4 (the shape of the golden fixtures).
    pub fn test(vocab_size: usize, num_labels: usize) -> Self {
        GptNeoConfig {
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: Some(64),
            max_position_embeddings: 32,
            window_size: 4,
            attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 1)],
            ..Self::tiny(vocab_size, num_labels)
        }
    }

    /// The attention kind of each layer, expanded from `attention_types`.
    pub fn attention_layers(&self) -> Vec<AttentionKind> {
        self.attention_types
            .iter()
            .flat_map(|(kinds, repeat)| (0..*repeat).flat_map(move |_| kinds.iter().copied()))
            .collect()
    }

    /// MLP width.
    pub fn intermediate_size(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        if self.pooling == Pooling::First {
            bail!(
                "GPT-Neo pools the last token or the mean (`pooling: last | mean`); its first \
                 token has seen no other"
            );
        }
        self.pad_token_id()?;
        let layers = self.attention_layers().len();
        if layers != self.num_layers {
            bail!(
                "attention_types describes {layers} layers but num_layers is {}",
                self.num_layers
            );
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size,
                self.num_heads
            );
        }
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("window_size", self.window_size),
            ("num_labels", self.num_labels()),
        ])?;
        Ok(())
    }
}

/// What a GPT-Neo classifier is built from: a [`GptNeoConfig`], or a
/// [`ModelConfig`](super::ModelConfig) that holds one (what [`super::hf_folder::read_config`]
/// gives).
pub trait AsGptNeo {
    /// The GPT-Neo config, or an error naming the family it is instead.
    fn as_gpt_neo(&self) -> Result<&GptNeoConfig>;
}

impl AsGptNeo for GptNeoConfig {
    fn as_gpt_neo(&self) -> Result<&GptNeoConfig> {
        Ok(self)
    }
}

impl DropoutSites for GptNeoConfig {
    fn num_heads(&self) -> usize {
        self.num_heads
    }
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: self.embed_dropout,
            attention: self.attention_dropout,
            resid: self.resid_dropout,
        }
    }
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        let hidden = SiteShape::Rows(self.hidden_size);
        let site = |module: String, shape, p| Site { module, shape, p };
        let mut sites = vec![site("transformer.drop".into(), hidden, rates.embed)];
        for i in 0..self.num_layers {
            let attn = format!("transformer.h.{i}.attn.attention");
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
        let (h, m) = (
            SiteShape::Rows(self.hidden_size),
            SiteShape::Rows(self.intermediate_size()),
        );
        (0..self.num_layers)
            .flat_map(|i| {
                let attn = format!("transformer.h.{i}.attn.attention");
                let mlp = format!("transformer.h.{i}.mlp");
                [
                    (format!("{attn}.q_proj"), h),
                    (format!("{attn}.k_proj"), h),
                    (format!("{attn}.v_proj"), h),
                    (format!("{attn}.out_proj"), h),
                    (format!("{mlp}.c_fc"), h),
                    (format!("{mlp}.c_proj"), m),
                ]
            })
            .collect()
    }
}

impl Architecture for GptNeoConfig {
    fn model_type(&self) -> &'static str {
        "gpt_neo"
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn num_layers(&self) -> usize {
        self.num_layers
    }
    fn max_length(&self) -> usize {
        self.max_position_embeddings
    }
    fn num_labels(&self) -> usize {
        GptNeoConfig::num_labels(self)
    }
    fn id2label(&self) -> Option<&BTreeMap<String, String>> {
        self.id2label.as_ref()
    }
    fn problem_type(&self) -> Option<ProblemType> {
        self.problem_type
    }
    fn pooling(&self) -> Pooling {
        self.pooling
    }
    fn takes_token_types(&self) -> bool {
        false
    }
    fn validate(&self) -> Result<()> {
        GptNeoConfig::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        self.pooling = pooling;
        GptNeoConfig::validate(self)
    }

    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(GptNeoForSequenceClassification::with_lora(
            self, g, lora,
        )?))
    }
    fn head_params(&self) -> Vec<String> {
        GptNeoForSequenceClassification::HEAD_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    fn optional_params(&self) -> Vec<String> {
        Vec::new()
    }

    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        let mut cfg = self.clone();
        cfg.num_labels = Some(labels.len());
        cfg.id2label = None;
        cfg.problem_type = Some(problem);
        let mut value = serde_json::to_value(&cfg)?;
        classifier_keys(
            &mut value,
            "GPTNeoForSequenceClassification",
            labels,
            problem,
        );
        let layers: Vec<Value> = cfg
            .attention_layers()
            .iter()
            .map(|k| serde_json::to_value(k).unwrap_or(Value::Null))
            .collect();
        if let Value::Object(map) = &mut value {
            // transformers classifies more than one row at a time only with a pad token
            // (M:685–690).
            map.insert("pad_token_id".into(), json!(self.pad_token_id()?));
            map.insert("model_type".into(), json!("gpt_neo"));
            map.insert("attention_layers".into(), Value::Array(layers));
            map.insert("dtype".into(), json!("float32"));
            map.insert("use_cache".into(), json!(false));
        }
        Ok(value)
    }
}

fn dim(n: usize) -> i64 {
    n as i64
}

// ---- blocks ----------------------------------------------------------------------------------

/// Attention masks shared by every layer of one forward pass, built once by
/// [`GptNeoModel::forward`]: `[batch, 1, seq, seq]` floats added to the scores, 0 where the key
/// is visible and `f32::MIN` where it is not. Adding them gives exactly what transformers'
/// `where(mask, scores, f32::MIN)` gives (a score below 1e31 in magnitude is under half a
/// rounding step of `f32::MIN`), masked keys get probability 0 and so gradient 0, and the
/// backward pass needs no `Where`. (A row with no visible key is a padded query, whose output
/// reaches neither real tokens nor the pooled state, so its gradient is 0 either way.)
struct Masks {
    global: Tensor,
    local: Option<Tensor>,
}

/// Multi-head self-attention (`transformer.h.<i>.attn.attention`), M:39–132.
pub struct Attention {
    path: VarPath,
    kind: AttentionKind,
    num_heads: i64,
    head_dim: i64,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    /// LoRA updates of q, k, v and out projections, where targeted.
    lora: [Option<LoraLayer>; 4],
}

impl Attention {
    /// Declares the projections under `path` (and their LoRA matrices, where `lora` targets
    /// them).
    pub fn new(
        cfg: &GptNeoConfig,
        kind: AttentionKind,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = dim(cfg.hidden_size);
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let q_proj = vars.get(g, &path.pp("q_proj"), "weight", &[h, h], w)?;
        let k_proj = vars.get(g, &path.pp("k_proj"), "weight", &[h, h], w)?;
        let v_proj = vars.get(g, &path.pp("v_proj"), "weight", &[h, h], w)?;
        let out = path.pp("out_proj");
        let out_proj_weight = vars.get(g, &out, "weight", &[h, h], w)?;
        let out_proj_bias = vars.get(g, &out, "bias", &[h], Init::Zeros)?;
        let mut adapt = |name: &str| LoraLayer::declare(lora, g, vars, &path.pp(name), h, h);
        let lora = [
            adapt("q_proj")?,
            adapt("k_proj")?,
            adapt("v_proj")?,
            adapt("out_proj")?,
        ];
        Ok(Attention {
            path,
            kind,
            num_heads: dim(cfg.num_heads),
            head_dim: dim(cfg.head_dim()),
            q_proj,
            k_proj,
            v_proj,
            out_proj_weight,
            out_proj_bias,
            lora,
        })
    }

    /// `x` `[b, s, hidden]` → `[b, s, hidden]`; with `last`, only each row's last token
    /// attends and the result is `[b, 1, hidden]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        last: Option<&LastTokens>,
        masks: &Masks,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let b = g.shape(x)[0].clone();
        let (nh, hd) = (Dim::Fixed(self.num_heads), Dim::Fixed(self.head_dim));
        let mask = match (self.kind, masks.local) {
            (AttentionKind::Local, Some(local)) => local,
            _ => masks.global,
        };
        g.with_scope(self.path.as_str(), |g| {
            let (rows, mask) = match last {
                Some(last) => (last.pick(g, x)?, last.mask(g, mask)?),
                None => (x, mask),
            };
            let split_heads = |g: &mut Graph,
                               x: Tensor,
                               w: Tensor,
                               adapter: Option<&LoraLayer>|
             -> pipe_onnx::Result<Tensor> {
                let s = g.shape(x)[1].clone();
                let t = lora::linear(g, x, w, None, adapter, dropout)?; // [b, s, hidden]
                let t = g.reshape(t, &[b.clone(), s, nh.clone(), hd.clone()])?;
                g.transpose(t, &[0, 2, 1, 3]) // [b, heads, s, head_dim]
            };
            let q = split_heads(g, rows, self.q_proj, self.lora[0].as_ref())?;
            let k = split_heads(g, x, self.k_proj, self.lora[1].as_ref())?;
            let v = split_heads(g, x, self.v_proj, self.lora[2].as_ref())?;
            let kt = g.transpose(k, &[0, 1, 3, 2])?; // [b, heads, head_dim, s]
            let scores = g.matmul(q, kt)?; // [b, heads, s, s], unscaled (M:112)
            let scores = g.add(scores, mask)?;
            let probs = g.softmax(scores, -1)?;
            let probs = dropout.apply(g, &self.path.join("attn_dropout"), probs)?;
            let ctx = g.matmul(probs, v)?; // [b, heads, s, head_dim]
            let ctx = g.transpose(ctx, &[0, 2, 1, 3])?; // [b, s, heads, head_dim]
            let hidden = Dim::Fixed(self.num_heads * self.head_dim);
            let s = g.shape(rows)[1].clone();
            let ctx = g.reshape(ctx, &[b.clone(), s, hidden])?; // [b, s, hidden]
            let out = lora::linear(
                g,
                ctx,
                self.out_proj_weight,
                Some(self.out_proj_bias),
                self.lora[3].as_ref(),
                dropout,
            )?;
            dropout.apply(g, &self.path.join("resid_dropout"), out)
        })
        .map_err(Into::into)
    }
}

/// The feed-forward block (`transformer.h.<i>.mlp`): `c_proj(act(c_fc(x)))`, M:296–311.
pub struct Mlp {
    path: VarPath,
    activation: Activation,
    c_fc_weight: Tensor,
    c_fc_bias: Tensor,
    c_proj_weight: Tensor,
    c_proj_bias: Tensor,
    /// LoRA updates of `c_fc` and `c_proj`, where targeted.
    lora: [Option<LoraLayer>; 2],
}

impl Mlp {
    /// Declares `c_fc` and `c_proj` under `path` (and their LoRA matrices, where `lora`
    /// targets them).
    pub fn new(
        cfg: &GptNeoConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (h, m) = (dim(cfg.hidden_size), dim(cfg.intermediate_size()));
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let fc = path.pp("c_fc");
        let c_fc_weight = vars.get(g, &fc, "weight", &[m, h], w)?;
        let c_fc_bias = vars.get(g, &fc, "bias", &[m], Init::Zeros)?;
        let proj = path.pp("c_proj");
        let c_proj_weight = vars.get(g, &proj, "weight", &[h, m], w)?;
        let c_proj_bias = vars.get(g, &proj, "bias", &[h], Init::Zeros)?;
        let lora = [
            LoraLayer::declare(lora, g, vars, &fc, h, m)?,
            LoraLayer::declare(lora, g, vars, &proj, m, h)?,
        ];
        Ok(Mlp {
            path,
            activation: cfg.activation_function,
            c_fc_weight,
            c_fc_bias,
            c_proj_weight,
            c_proj_bias,
            lora,
        })
    }

    /// `x` `[b, s, hidden]` → `[b, s, hidden]`.
    fn forward(&self, g: &mut Graph, x: Tensor, dropout: &Dropout) -> Result<Tensor> {
        g.with_scope(self.path.as_str(), |g| {
            let t = lora::linear(
                g,
                x,
                self.c_fc_weight,
                Some(self.c_fc_bias),
                self.lora[0].as_ref(),
                dropout,
            )?; // [b, s, inter]
            let t = self.activation.apply(g, t)?;
            let out = lora::linear(
                g,
                t,
                self.c_proj_weight,
                Some(self.c_proj_bias),
                self.lora[1].as_ref(),
                dropout,
            )?;
            dropout.apply(g, &self.path.join("dropout"), out)
        })
        .map_err(Into::into)
    }
}

/// One pre-LN block (`transformer.h.<i>`), M:314–351:
/// `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
pub struct Block {
    path: VarPath,
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    /// Declares the block's parameters under `path` (with LoRA matrices where `lora` says).
    pub fn new(
        cfg: &GptNeoConfig,
        kind: AttentionKind,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let attn = path.pp("attn").pp("attention");
        Ok(Block {
            path: path.clone(),
            ln_1: LayerNorm::new(
                g,
                vars,
                path.pp("ln_1"),
                cfg.hidden_size,
                cfg.layer_norm_epsilon,
            )?,
            attn: Attention::new(cfg, kind, g, vars, attn, lora)?,
            ln_2: LayerNorm::new(
                g,
                vars,
                path.pp("ln_2"),
                cfg.hidden_size,
                cfg.layer_norm_epsilon,
            )?,
            mlp: Mlp::new(cfg, g, vars, path.pp("mlp"), lora)?,
        })
    }

    /// `x` `[b, s, hidden]` → `[b, s, hidden]`; with `last`, keys and values still come from
    /// every position but only each row's last token goes on through attention and the MLP:
    /// `[b, 1, hidden]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        last: Option<&LastTokens>,
        masks: &Masks,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let h = self.ln_1.forward(g, x)?;
        let a = self.attn.forward(g, h, last, masks, dropout)?;
        let x = match last {
            Some(last) => last.pick(g, x)?,
            None => x,
        };
        let x = g.add(x, a)?;
        let h = self.ln_2.forward(g, x)?;
        let m = self.mlp.forward(g, h, dropout)?;
        Ok(g.add(x, m)?)
    }
}

// ---- the base model --------------------------------------------------------------------------

/// Embeddings, blocks and the final LayerNorm (`transformer`, M:380–520).
pub struct GptNeoModel {
    path: VarPath,
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    window_size: i64,
    dropout: Dropout,
}

impl GptNeoModel {
    /// Declares the base model's parameters under `path` (`transformer`), with LoRA matrices
    /// where `lora` says.
    pub fn new(
        cfg: &GptNeoConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = dim(cfg.hidden_size);
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let wte = vars.get(g, &path.pp("wte"), "weight", &[dim(cfg.vocab_size), h], w)?;
        let wpe = vars.get(
            g,
            &path.pp("wpe"),
            "weight",
            &[dim(cfg.max_position_embeddings), h],
            w,
        )?;
        let blocks = cfg
            .attention_layers()
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Block::new(cfg, kind, g, vars, path.pp("h").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(
            g,
            vars,
            path.pp("ln_f"),
            cfg.hidden_size,
            cfg.layer_norm_epsilon,
        )?;
        Ok(GptNeoModel {
            path,
            wte,
            wpe,
            window_size: dim(cfg.window_size),
            h: blocks,
            ln_f,
            dropout: Dropout::none(),
        })
    }

    /// `input_ids` int64 `[b, s]`, `lengths` int64 `[b]` → the last hidden state `[b, s, hidden]`
    /// (after `ln_f`, like HF's `last_hidden_state`). Values at padded positions are unspecified.
    pub fn forward(&self, g: &mut Graph, input_ids: Tensor, lengths: Tensor) -> Result<Tensor> {
        self.forward_tokens(g, Tokens::Ids(input_ids), lengths)
    }

    /// [`Self::forward`] with the token ids given either way [`Tokens`] allows.
    pub fn forward_tokens(&self, g: &mut Graph, tokens: Tokens, lengths: Tensor) -> Result<Tensor> {
        let (x, masks) = self.embed_and_mask(g, tokens, lengths)?;
        let mut x = x;
        for block in &self.h {
            x = block.forward(g, x, None, &masks, &self.dropout)?;
        }
        Ok(self.ln_f.forward(g, x)?)
    }

    /// The last hidden state at `positions` (int64 `[b]`, from [`last_non_pad`]) of each
    /// row, `[b, hidden]`: what [`Self::forward_tokens`] gives there, for less work: the last
    /// block runs on those rows alone ([`forward_to_last_tokens`]).
    pub fn forward_last_tokens(
        &self,
        g: &mut Graph,
        tokens: Tokens,
        lengths: Tensor,
        positions: Tensor,
    ) -> Result<Tensor> {
        let (x, masks) = self.embed_and_mask(g, tokens, lengths)?;
        let x = forward_to_last_tokens(
            g,
            x,
            positions,
            &self.h,
            &self.dropout,
            |block| &block.path,
            |g, block, x, last| block.forward(g, x, last, &masks, &self.dropout),
        )?;
        // LayerNorm is per row: normalising the picked rows is normalising all and picking.
        Ok(self.ln_f.forward(g, x)?)
    }

    /// The embedded tokens `[b, s, hidden]` and the attention masks of every layer.
    fn embed_and_mask(
        &self,
        g: &mut Graph,
        tokens: Tokens,
        lengths: Tensor,
    ) -> Result<(Tensor, Masks)> {
        let s = g.shape(tokens.per_position())[1].clone();
        let has_local = self.h.iter().any(|b| b.attn.kind == AttentionKind::Local);
        let (x, masks) = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<_> {
            let tok = tokens.embed(g, self.wte)?; // [b, s, hidden]
            let pos = g.range(&s, DType::I64)?; // [s], not shifted by padding (M:452–455)
            let pe = g.gather(self.wpe, pos, 0)?; // [s, hidden]
            let x = g.add(tok, pe)?;
            let x = self.dropout.apply(g, &self.path.join("drop"), x)?;
            // Query q (rows) sees key k (columns) iff k <= q, k < length, and, on local
            // layers, q - k < window_size.
            let masks = g.with_scope("mask", |g| -> pipe_onnx::Result<Masks> {
                let q = g.unsqueeze(pos, &[1])?; // [s, 1]
                let k = g.unsqueeze(pos, &[0])?; // [1, s]
                let future = g.less(q, k)?;
                let causal = g.not(future)?; // [s, s]
                let len = g.unsqueeze(lengths, &[1])?; // [b, 1]
                let real = g.less(k, len)?; // [b, s]
                let real = g.unsqueeze(real, &[1, 2])?; // [b, 1, 1, s]
                let global = g.and(causal, real)?; // [b, 1, s, s]
                let local = if has_local {
                    let dist = g.sub(q, k)?;
                    let w = g.scalar(DType::I64, self.window_size as f64);
                    let near = g.less(dist, w)?;
                    let local = g.and(causal, near)?;
                    Some(g.and(local, real)?)
                } else {
                    None
                };
                let zero = g.scalar(DType::F32, 0.0);
                let min = g.scalar(DType::F32, f64::from(f32::MIN));
                let global = g.where_(global, zero, min)?;
                let local = match local {
                    Some(local) => Some(g.where_(local, zero, min)?),
                    None => None,
                };
                Ok(Masks { global, local })
            })?;
            Ok((x, masks))
        })?;
        Ok((x, masks))
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// GPT-Neo with a linear head on the last real token (`GPTNeoForSequenceClassification`,
/// M:615–730), or on the mean of the real tokens ([`Pooling::Mean`]).
pub struct GptNeoForSequenceClassification {
    /// The base model.
    pub transformer: GptNeoModel,
    pooling: Pooling,
    /// The pad id: with [`Pooling::Last`], `score` reads each row's last token that is not it.
    pad_token_id: i64,
    score: Tensor,
    num_labels: i64,
    vars: Vars,
}

impl GptNeoForSequenceClassification {
    /// Names of the head's parameters: a base checkpoint lacks them, so they start fresh.
    pub const HEAD_PARAMS: &'static [&'static str] = &["score.weight"];

    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name (see [`Self::params`]).
    pub fn new(cfg: &impl AsGptNeo, g: &mut Graph) -> Result<Self> {
        Self::with_lora(cfg.as_gpt_neo()?, g, None)
    }

    /// [`Self::new`] with the LoRA matrices of `lora` declared after each targeted layer's
    /// weights (see [`crate::lora`]).
    pub fn with_lora(
        cfg: &impl AsGptNeo,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let cfg = cfg.as_gpt_neo()?;
        cfg.validate()?;
        let mut vars = Vars::new();
        let root = VarPath::root().pp("transformer");
        let transformer = GptNeoModel::new(cfg, g, &mut vars, root, lora)?;
        let num_labels = dim(cfg.num_labels());
        let score = vars.get(
            g,
            &VarPath::root().pp("score"),
            "weight",
            &[num_labels, dim(cfg.hidden_size)],
            Init::Normal {
                std: cfg.initializer_range as f32,
            },
        )?;
        Ok(GptNeoForSequenceClassification {
            transformer,
            pooling: cfg.pooling,
            pad_token_id: cfg.pad_token_id()?,
            score,
            num_labels,
            vars,
        })
    }

    /// Makes the forward pass a training one with `dropout` (the masks of
    /// [`DropoutPlan::declare`](super::dropout::DropoutPlan::declare)).
    pub fn set_dropout(&mut self, dropout: Dropout) {
        self.transformer.dropout = dropout;
    }

    /// Declares the inputs `input_ids` int64 `[batch, seq]` and `lengths` int64 `[batch]`.
    pub fn declare_inputs(g: &mut Graph) -> Result<(Tensor, Tensor)> {
        let ids = g.input(
            "input_ids",
            DType::I64,
            &[Dim::from("batch"), Dim::from("seq")],
        )?;
        let lengths = g.input("lengths", DType::I64, &[Dim::from("batch")])?;
        Ok((ids, lengths))
    }

    /// `input_ids` `[b, s]`, `lengths` `[b]` → logits `[b, num_labels]`, read at each row's
    /// last token that is not the pad id ([`last_non_pad`]: `lengths[b] - 1` unless the text
    /// ends in it), or from the mean of positions `0..lengths[b]`.
    pub fn forward(&self, g: &mut Graph, input_ids: Tensor, lengths: Tensor) -> Result<Tensor> {
        self.forward_tokens(g, Tokens::Ids(input_ids), lengths)
    }

    /// [`Self::forward`] with the token ids given either way [`Tokens`] allows.
    /// HF applies `score` at every position and then picks the last real one (M:673–696);
    /// picking first gives the same logits for less work (see
    /// [`GptNeoModel::forward_last_tokens`]).
    pub fn forward_tokens(&self, g: &mut Graph, tokens: Tokens, lengths: Tensor) -> Result<Tensor> {
        let pooled = match self.pooling {
            Pooling::Last => {
                let positions = last_non_pad(g, &tokens, lengths, self.pad_token_id)?;
                self.transformer
                    .forward_last_tokens(g, tokens, lengths, positions)?
            }
            Pooling::Mean => {
                let hidden = self.transformer.forward_tokens(g, tokens, lengths)?; // [b, s, h]
                g.with_scope("pool", |g| pool_mean(g, hidden, lengths))?
            }
            Pooling::First => bail!("a GPT-Neo classifier pools the last token or the mean"),
        }; // [b, h]
        Ok(g.with_scope("score", |g| g.linear(pooled, self.score, None))?) // [b, labels]
    }

    /// The loss of `logits` `[b, num_labels]` for `problem` (M:700–719; see
    /// [`classifier::loss`]).
    pub fn loss(
        &self,
        g: &mut Graph,
        logits: Tensor,
        labels: Tensor,
        problem: ProblemType,
    ) -> Result<Tensor> {
        classifier::loss(g, logits, labels, problem)
    }

    /// Declares the labels input for `problem` (see [`classifier::declare_labels`]).
    pub fn declare_labels(&self, g: &mut Graph, problem: ProblemType) -> Result<Tensor> {
        classifier::declare_labels(g, problem, self.num_labels as usize)
    }

    /// Every parameter, in declaration order (the order of `named_parameters()` in HF).
    pub fn params(&self) -> &[ParamSpec] {
        self.vars.specs()
    }

    /// The parameter graph inputs, parallel to [`Self::params`].
    pub fn param_tensors(&self) -> &[Tensor] {
        self.vars.tensors()
    }

    /// The parameters for [`pipe_onnx::AdamW::build_step`]; `decay` says which get weight
    /// decay (see [`hf_trainer_decay`]).
    pub fn train_params(&self, decay: impl Fn(&ParamSpec) -> bool) -> Vec<TrainParam> {
        SequenceClassifier::train_params(self, &decay)
    }
}

impl SequenceClassifier for GptNeoForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.transformer.dropout = dropout;
    }

    /// GPT-Neo takes no token types: `input.token_type_ids` is ignored.
    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        self.forward_tokens(g, input.tokens, input.lengths)
    }
}
