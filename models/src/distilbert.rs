//! DistilBERT for sequence classification, built as ONNX training graphs.
//!
//! DistilBERT (Sanh et al., 2019) is BERT distilled to fewer layers, without token types or a
//! pooler. Reference implementation, transformers 5.25.0:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/modeling_distilbert.py>
//! (`D:line`).
//!
//! Quirks, each checked against the golden fixture (`stages/tests/fixtures/distilbert/`):
//! - Embeddings are `word + position` (positions `0..seq`), LayerNorm with ε 1e-12 whatever
//!   the config says, then `dropout` (D:81–116). `sinusoidal_pos_embds` only decides how a
//!   fresh position table starts (sines and cosines, D:72–78); it is a parameter either way.
//! - **Post-LN blocks** with no dropout after the attention's `out_lin`:
//!   `x = sa_layer_norm(x + out_lin(attn))`, then
//!   `x = output_layer_norm(x + dropout(lin2(act(lin1(x)))))` (D:205–258).
//! - Attention scores are scaled by `1/√head_dim`, padded keys get `f32::MIN` (D:121–146).
//! - **Head:** `pre_classifier` on `[CLS]`, ReLU, `dropout` (`seq_classif_dropout`),
//!   `classifier` (D:580–585). Both are fresh on a base checkpoint, and PEFT's sequence
//!   classification trains both (its `modules_to_save` `classifier` matches
//!   `pre_classifier` too).
//! - Only `[CLS]` reaches the head, so the last layer runs its queries, attention output and
//!   feed-forward on that row alone.
//!
//! Graph inputs: the tokens, `lengths` int64 `[batch]` (right padding), and one f32 input per
//! parameter under its Hugging Face name (`distilbert.transformer.layer.0.attention.q_lin.weight`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::{DType, Graph, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{ClassifierInput, Pooling, ProblemType, SequenceClassifier, config_pad_id};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::layers::{
    Activation, LayerNorm, Linear, first_token, merge_heads, padding_mask, scaled_attention,
    split_heads,
};
use super::lora::LoraParams;
use super::{Init, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// `model_type: distilbert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DistilBertType {
    /// The only value.
    Distilbert,
}

/// A DistilBERT configuration, read from a Hugging Face `config.json`. Keys pipe does not use
/// are kept in [`DistilBertConfig::other`] and written back.
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/configuration_distilbert.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct DistilBertConfig {
    /// `distilbert`.
    pub model_type: DistilBertType,
    /// Token vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Number of layers.
    #[serde(default = "default_layers")]
    pub n_layers: usize,
    /// Attention heads per layer; must divide `dim`.
    #[serde(default = "default_heads")]
    pub n_heads: usize,
    /// Feed-forward width.
    #[serde(default = "default_hidden_dim")]
    pub hidden_dim: usize,
    /// Dropout after the embeddings and on each feed-forward output while training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout on the attention probabilities while training.
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    /// Dropout before the classifier while training.
    #[serde(default = "default_classif_dropout")]
    pub seq_classif_dropout: f64,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub activation: Activation,
    /// Rows of `position_embeddings`.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Whether a fresh position table starts as sines and cosines.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// Standard deviation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
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
    30522
}
fn default_dim() -> usize {
    768
}
fn default_layers() -> usize {
    6
}
fn default_heads() -> usize {
    12
}
fn default_hidden_dim() -> usize {
    4 * 768
}
fn default_dropout() -> f64 {
    0.1
}
fn default_classif_dropout() -> f64 {
    0.2
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_positions() -> usize {
    512
}
fn default_initializer_range() -> f64 {
    0.02
}

/// DistilBERT's LayerNorm ε, fixed in the modules (D:87, D:235, D:238).
const LAYER_NORM_EPS: f64 = 1e-12;

/// The base model's prefix.
const BASE: &str = "distilbert";

impl DistilBertConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads.max(1)
    }

    /// Number of labels: `num_labels`, else the size of `id2label`, else 2 (HF's default).
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            bail!(
                "dim {} is not a multiple of n_heads {}",
                self.dim,
                self.n_heads
            );
        }
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("n_layers", self.n_layers),
            ("hidden_dim", self.hidden_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("num_labels", self.num_labels()),
        ])?;
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("seq_classif_dropout", self.seq_classif_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{key} is {p}, not a probability in [0, 1)");
            }
        }
        Ok(())
    }
}

// ---- blocks ----------------------------------------------------------------------------------

/// Word and position embeddings, LayerNorm and dropout (`distilbert.embeddings`), D:81–116.
struct Embeddings {
    path: VarPath,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn new(cfg: &DistilBertConfig, g: &mut Graph, vars: &mut Vars, path: VarPath) -> Result<Self> {
        let d = cfg.dim as i64;
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let positions = match cfg.sinusoidal_pos_embds {
            true => Init::Sinusoidal,
            false => w,
        };
        let rows = |n: usize| [n as i64, d];
        let word_embeddings = vars.get(
            g,
            &path.pp("word_embeddings"),
            "weight",
            &rows(cfg.vocab_size),
            w,
        )?;
        // The pad id's row takes no gradient (`padding_idx=config.pad_token_id`, default 0).
        g.set_padding_row(word_embeddings, config_pad_id(&cfg.other).unwrap_or(0));
        Ok(Embeddings {
            word_embeddings,
            position_embeddings: vars.get(
                g,
                &path.pp("position_embeddings"),
                "weight",
                &rows(cfg.max_position_embeddings),
                positions,
            )?,
            layer_norm: LayerNorm::new(g, vars, path.pp("LayerNorm"), cfg.dim, LAYER_NORM_EPS)?,
            path,
        })
    }

    fn forward(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let s = g.shape(input.tokens.per_position())[1].clone();
        let x = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let words = input.tokens.embed(g, self.word_embeddings)?; // [b, s, d]
            let pos = g.range(&s, DType::I64)?; // [s]
            let positions = g.gather(self.position_embeddings, pos, 0)?; // [s, d]
            g.add(words, positions)
        })?;
        let x = self.layer_norm.forward(g, x)?;
        g.with_scope(self.path.as_str(), |g| {
            dropout.apply(g, &self.path.join("dropout"), x)
        })
    }
}

/// One post-LN block (`distilbert.transformer.layer.<i>`), D:149–258.
struct Block {
    path: VarPath,
    heads: usize,
    head_dim: usize,
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    activation: Activation,
    output_layer_norm: LayerNorm,
}

impl Block {
    fn new(
        cfg: &DistilBertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (d, m) = (cfg.dim, cfg.hidden_dim);
        let w = (true, cfg.initializer_range);
        let (attn, ffn) = (path.pp("attention"), path.pp("ffn"));
        let eps = LAYER_NORM_EPS;
        // In `__init__`'s order, which is `named_parameters()`' order.
        Ok(Block {
            q_lin: Linear::new(g, vars, attn.pp("q_lin"), (d, d), w, lora)?,
            k_lin: Linear::new(g, vars, attn.pp("k_lin"), (d, d), w, lora)?,
            v_lin: Linear::new(g, vars, attn.pp("v_lin"), (d, d), w, lora)?,
            out_lin: Linear::new(g, vars, attn.pp("out_lin"), (d, d), w, lora)?,
            sa_layer_norm: LayerNorm::new(g, vars, path.pp("sa_layer_norm"), d, eps)?,
            lin1: Linear::new(g, vars, ffn.pp("lin1"), (d, m), w, lora)?,
            lin2: Linear::new(g, vars, ffn.pp("lin2"), (m, d), w, lora)?,
            output_layer_norm: LayerNorm::new(g, vars, path.pp("output_layer_norm"), d, eps)?,
            activation: cfg.activation,
            heads: cfg.n_heads,
            head_dim: cfg.head_dim(),
            path,
        })
    }

    /// `x` `[b, s, d]` → the block's output `[b, s, d]`, or with `first_only` its first row
    /// `[b, 1, d]` alone; `mask` `[b, 1, 1, s]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        first_only: bool,
        mask: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let rows = match first_only {
            true => g.with_scope(self.path.as_str(), |g| first_token(g, x))?,
            false => x,
        };
        let q = self.q_lin.forward(g, rows, dropout)?;
        let k = self.k_lin.forward(g, x, dropout)?;
        let v = self.v_lin.forward(g, x, dropout)?;
        let attn = self.path.pp("attention");
        let (heads, hd) = (self.heads, self.head_dim);
        let ctx = g.with_scope(attn.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let q = split_heads(g, q, heads, hd)?;
            let k = split_heads(g, k, heads, hd)?;
            let v = split_heads(g, v, heads, hd)?;
            let site = attn.join("dropout");
            let ctx = scaled_attention(g, (q, k, v), mask, hd, (dropout, &site))?;
            merge_heads(g, ctx, heads * hd)
        })?;
        let a = self.out_lin.forward(g, ctx, dropout)?;
        let a = g.with_scope(self.path.as_str(), |g| g.add(a, rows))?;
        let a = self.sa_layer_norm.forward(g, a)?;
        let f = self.lin1.forward(g, a, dropout)?;
        let ffn = self.path.pp("ffn");
        let f = g.with_scope(ffn.as_str(), |g| self.activation.apply(g, f))?;
        let f = self.lin2.forward(g, f, dropout)?;
        let f = g.with_scope(ffn.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let f = dropout.apply(g, &ffn.join("dropout"), f)?;
            g.add(f, a)
        })?;
        self.output_layer_norm.forward(g, f)
    }
}

// ---- the base model --------------------------------------------------------------------------

/// Embeddings and blocks (`distilbert`), D:316–420.
pub struct DistilBertModel {
    path: VarPath,
    embeddings: Embeddings,
    layers: Vec<Block>,
}

impl DistilBertModel {
    /// Declares the base model's parameters under `path`, with LoRA matrices where `lora` says.
    pub fn new(
        cfg: &DistilBertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let embeddings = Embeddings::new(cfg, g, vars, path.pp("embeddings"))?;
        let layers = (0..cfg.n_layers)
            .map(|i| Block::new(cfg, g, vars, path.pp("transformer").pp("layer").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        Ok(DistilBertModel {
            path,
            embeddings,
            layers,
        })
    }

    /// The last hidden state `[b, s, dim]` (values at padded positions are unspecified); with
    /// `first_only`, only its first row, `[b, dim]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        first_only: bool,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let x = self.embeddings.forward(g, input, dropout)?;
        let s = g.shape(x)[1].clone();
        let mask = g.with_scope(&self.path.join("mask"), |g| {
            padding_mask(g, input.lengths, &s)
        })?;
        let Some((last, earlier)) = self.layers.split_last() else {
            bail!("an encoder needs at least one layer");
        };
        let mut x = x;
        for layer in earlier {
            x = layer.forward(g, x, false, mask, dropout)?;
        }
        let x = last.forward(g, x, first_only, mask, dropout)?;
        if !first_only {
            return Ok(x);
        }
        let (b, d) = (g.shape(x)[0].clone(), g.shape(x)[2].clone());
        Ok(g.reshape(x, &[b, d])?)
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// DistilBERT with its sequence-classification head (`DistilBertForSequenceClassification`).
pub struct DistilBertForSequenceClassification {
    /// The base model.
    pub model: DistilBertModel,
    pre_classifier: Linear,
    classifier: Linear,
    dropout: Dropout,
    vars: Vars,
}

impl DistilBertForSequenceClassification {
    /// The head's modules: both start fresh on a base checkpoint.
    pub const HEAD_MODULES: [&'static str; 2] = ["pre_classifier", "classifier"];

    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name, with the LoRA matrices of `lora` after each targeted layer's weights.
    pub fn new(cfg: &DistilBertConfig, g: &mut Graph, lora: Option<&LoraParams>) -> Result<Self> {
        cfg.validate()?;
        let mut vars = Vars::new();
        let model = DistilBertModel::new(cfg, g, &mut vars, VarPath::root().pp(BASE), lora)?;
        let (d, n) = (cfg.dim, cfg.num_labels());
        let w = (true, cfg.initializer_range);
        let [pre, cls] = Self::HEAD_MODULES.map(|m| VarPath::root().pp(m));
        let pre_classifier = Linear::new(g, &mut vars, pre, (d, d), w, None)?;
        let classifier = Linear::new(g, &mut vars, cls, (d, n), w, None)?;
        Ok(DistilBertForSequenceClassification {
            model,
            pre_classifier,
            classifier,
            dropout: Dropout::none(),
            vars,
        })
    }
}

impl SequenceClassifier for DistilBertForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.dropout = dropout;
    }

    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        let d = &self.dropout;
        let cls = self.model.forward(g, input, true, d)?; // [b, dim]
        let x = self.pre_classifier.forward(g, cls, d)?;
        let x = g.with_scope(self.pre_classifier.path().as_str(), |g| g.relu(x))?;
        let x = d.apply(g, "dropout", x)?;
        Ok(self.classifier.forward(g, x, d)?)
    }
}

// ---- the family ------------------------------------------------------------------------------

impl DropoutSites for DistilBertConfig {
    fn num_heads(&self) -> usize {
        self.n_heads
    }
    /// `dropout` after the embeddings and on each feed-forward output, `attention_dropout` on
    /// the attention probabilities.
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: self.dropout,
            attention: self.attention_dropout,
            resid: self.dropout,
        }
    }
    /// The head's dropout is `seq_classif_dropout`.
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        let d = self.dim;
        let site = |module: String, shape, p| Site { module, shape, p };
        let mut sites = vec![site(
            format!("{BASE}.embeddings.dropout"),
            SiteShape::Rows(d),
            rates.embed,
        )];
        for i in 0..self.n_layers {
            let last = i + 1 == self.n_layers;
            let (rows, probs) = match last {
                true => (SiteShape::FirstRow(d), SiteShape::FirstRowAttention),
                false => (SiteShape::Rows(d), SiteShape::Attention),
            };
            let layer = format!("{BASE}.transformer.layer.{i}");
            sites.push(site(
                format!("{layer}.attention.dropout"),
                probs,
                rates.attention,
            ));
            sites.push(site(format!("{layer}.ffn.dropout"), rows, rates.resid));
        }
        sites.push(site(
            "dropout".into(),
            SiteShape::Pooled(d),
            self.seq_classif_dropout,
        ));
        sites
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        let d = self.dim;
        let mut modules = Vec::new();
        for i in 0..self.n_layers {
            let rows = match i + 1 == self.n_layers {
                true => SiteShape::FirstRow(d),
                false => SiteShape::Rows(d),
            };
            let layer = format!("{BASE}.transformer.layer.{i}.attention");
            modules.extend([
                (format!("{layer}.q_lin"), rows),
                (format!("{layer}.k_lin"), SiteShape::Rows(d)),
                (format!("{layer}.v_lin"), SiteShape::Rows(d)),
                (format!("{layer}.out_lin"), rows),
            ]);
        }
        modules
    }
}

impl Architecture for DistilBertConfig {
    fn model_type(&self) -> &'static str {
        "distilbert"
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.dim
    }
    fn num_layers(&self) -> usize {
        self.n_layers
    }
    fn max_length(&self) -> usize {
        self.max_position_embeddings
    }
    fn num_labels(&self) -> usize {
        DistilBertConfig::num_labels(self)
    }
    fn id2label(&self) -> Option<&BTreeMap<String, String>> {
        self.id2label.as_ref()
    }
    fn problem_type(&self) -> Option<ProblemType> {
        self.problem_type
    }
    fn pooling(&self) -> Pooling {
        Pooling::First
    }
    fn takes_token_types(&self) -> bool {
        false
    }
    fn validate(&self) -> Result<()> {
        DistilBertConfig::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        if pooling != Pooling::First {
            bail!(
                "a distilbert classifier reads its first token ([CLS]), as transformers' does; \
                 `pooling` applies to GPT-Neo only"
            );
        }
        Ok(())
    }
    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(DistilBertForSequenceClassification::new(
            self, g, lora,
        )?))
    }
    fn head_params(&self) -> Vec<String> {
        DistilBertForSequenceClassification::HEAD_MODULES
            .iter()
            .flat_map(|m| [format!("{m}.weight"), format!("{m}.bias")])
            .collect()
    }
    fn optional_params(&self) -> Vec<String> {
        Vec::new()
    }
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        let mut value = serde_json::to_value(self)?;
        classifier_keys(
            &mut value,
            "DistilBertForSequenceClassification",
            labels,
            problem,
        );
        Ok(value)
    }
}
