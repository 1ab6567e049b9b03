//! BERT and RoBERTa for sequence classification, built as ONNX training graphs.
//!
//! BERT (Devlin et al., 2018) is a bidirectional post-LayerNorm encoder; RoBERTa (Liu et al.,
//! 2019) is the same body with other position ids and another head, so one file serves both
//! (`model_type` picks, as candle's `bert.rs` and transformers' "Copied from Bert" do).
//! Reference implementation, transformers 5.25.0:
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py>
//! (`B:line`) and
//! <https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py>
//! (`R:line`).
//!
//! Quirks, each checked against the golden fixtures (`models/tests/fixtures/{bert,roberta}/`):
//! - Embeddings are `word + token_type + position`, then LayerNorm (B:100–107). Token types
//!   are 0 unless given (B:90–97): the training graph adds row 0 of `token_type_embeddings`;
//!   the exported graph takes `token_type_ids`.
//! - **Positions:** BERT's are `0..seq`. RoBERTa's count the tokens that are not the pad id
//!   from `padding_idx + 1`, and every pad id sits at `padding_idx`
//!   (`create_position_ids_from_input_ids`, R:141–154); with right padding and no pad id in
//!   the text that is `pos + padding_idx + 1` below each row's length.
//! - Attention scores are scaled by `1/√head_dim` (B:153, B:126) and padded keys get
//!   `f32::MIN` added (the eager mask of `create_bidirectional_mask`), so they get probability 0.
//! - **Post-LN:** `x = LN(x + dropout(dense(attn)))`, then `x = LN(x + dropout(dense(act(dense(x)))))`
//!   (B:290–294, B:349–353); the activation is `hidden_act` (`gelu` is erf GELU, B:331).
//! - **Heads:** BERT pools `[CLS]` through `pooler` (dense + tanh, B:455–467), then
//!   `dropout` + `classifier` (B:1081–1115). RoBERTa has no pooler: `classifier.dense` + tanh +
//!   `classifier.out_proj` on `<s>`, with dropout before each dense (R:1149–1168).
//! - Only `[CLS]` reaches the head, so the last layer runs its queries, attention output and
//!   feed-forward on that row alone (keys and values still come from every row).
//!
//! Graph inputs: the tokens ([`Tokens`]), `lengths` int64 `[batch]` (right padding), optionally
//! `token_type_ids` int64 `[batch, seq]`, and one f32 input per parameter under its Hugging
//! Face name (`bert.encoder.layer.0.attention.self.query.weight`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::{DType, Dim, Graph, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::architecture::{Architecture, check_positive, classifier_keys};
use super::classifier::{ClassifierInput, Pooling, ProblemType, SequenceClassifier};
use super::dropout::{Dropout, DropoutRates, DropoutSites, Site, SiteShape};
use super::layers::{
    Activation, LayerNorm, Linear, first_token, merge_heads, padding_mask, scaled_attention,
    split_heads,
};
use super::lora::LoraParams;
use super::{Init, VarPath, Vars};

// ---- configuration ---------------------------------------------------------------------------

/// Which of the two families a config describes (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BertFlavor {
    /// `BertForSequenceClassification`: positions from 0, pooler + `classifier`.
    Bert,
    /// `RobertaForSequenceClassification`: positions from `pad_token_id + 1`,
    /// `classifier.{dense,out_proj}`.
    Roberta,
}

/// A BERT or RoBERTa configuration, read from a Hugging Face `config.json`. Keys pipe does not
/// use are kept in [`BertConfig::other`] and written back, so a trained model's config says
/// everything its source's did.
/// Upstream: <https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/configuration_bert.py>
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct BertConfig {
    /// `bert` or `roberta`.
    pub model_type: BertFlavor,
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Dropout after the embeddings and on each sub-layer's output while training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities while training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; `None`: `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Rows of `position_embeddings`.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Rows of `token_type_embeddings`.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Standard deviation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The padding token (RoBERTa's positions start after it).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Only `absolute` (the default) is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
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
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
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

    /// The prefix of the base model's parameters (`bert`, `roberta`).
    pub fn base_prefix(&self) -> &'static str {
        match self.model_type {
            BertFlavor::Bert => "bert",
            BertFlavor::Roberta => "roberta",
        }
    }

    /// The pad token, transformers' `padding_idx` of the word embeddings (and RoBERTa's
    /// positions start at `padding_idx + 1`): the config's, else the family's default (BERT 0,
    /// RoBERTa 1).
    fn padding_idx(&self) -> i64 {
        self.pad_token_id.unwrap_or(match self.model_type {
            BertFlavor::Bert => 0,
            BertFlavor::Roberta => 1,
        })
    }

    /// The longest row the position table takes: RoBERTa spends `padding_idx + 1` rows.
    pub fn max_length(&self) -> usize {
        match self.model_type {
            BertFlavor::Bert => self.max_position_embeddings,
            BertFlavor::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.padding_idx().max(0) as usize + 1),
        }
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
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("type_vocab_size", self.type_vocab_size),
            ("num_labels", self.num_labels()),
        ])?;
        if self.max_length() == 0 {
            bail!(
                "max_position_embeddings {} leaves no position",
                self.max_position_embeddings
            );
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            bail!(
                "position_embedding_type `{kind}` is not supported; only `absolute` (learned \
                 positions) is"
            );
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{key} is {p}, not a probability in [0, 1)");
            }
        }
        Ok(())
    }
}

fn dim(n: usize) -> i64 {
    n as i64
}

// ---- blocks ----------------------------------------------------------------------------------

/// Word, position and token-type embeddings, LayerNorm and dropout (`<base>.embeddings`),
/// B:54–108, R:57–120.
struct Embeddings {
    path: VarPath,
    flavor: BertFlavor,
    padding_idx: i64,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn new(cfg: &BertConfig, g: &mut Graph, vars: &mut Vars, path: VarPath) -> Result<Self> {
        let h = dim(cfg.hidden_size);
        let w = Init::Normal {
            std: cfg.initializer_range as f32,
        };
        let table = |g: &mut Graph, vars: &mut Vars, name: &str, rows: usize| {
            vars.get(g, &path.pp(name), "weight", &[dim(rows), h], w)
        };
        let ln = |g: &mut Graph, vars: &mut Vars| {
            LayerNorm::new(
                g,
                vars,
                path.pp("LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )
        };
        // In each `__init__`'s order, which is `named_parameters()`' order.
        let word_embeddings = table(g, vars, "word_embeddings", cfg.vocab_size)?;
        let (position_embeddings, token_type_embeddings, layer_norm) = match cfg.model_type {
            BertFlavor::Bert => {
                let p = table(g, vars, "position_embeddings", cfg.max_position_embeddings)?;
                let t = table(g, vars, "token_type_embeddings", cfg.type_vocab_size)?;
                (p, t, ln(g, vars)?)
            }
            BertFlavor::Roberta => {
                let t = table(g, vars, "token_type_embeddings", cfg.type_vocab_size)?;
                let norm = ln(g, vars)?;
                let p = table(g, vars, "position_embeddings", cfg.max_position_embeddings)?;
                (p, t, norm)
            }
        };
        // The pad id's rows take no gradient (`nn.Embedding(…, padding_idx=…)`): the words'
        // and RoBERTa's positions'.
        g.set_padding_row(word_embeddings, cfg.padding_idx());
        if cfg.model_type == BertFlavor::Roberta {
            g.set_padding_row(position_embeddings, cfg.padding_idx());
        }
        Ok(Embeddings {
            path,
            flavor: cfg.model_type,
            padding_idx: cfg.padding_idx(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            layer_norm,
        })
    }

    /// The embedded rows `[b, s, hidden]`.
    fn forward(
        &self,
        g: &mut Graph,
        input: &ClassifierInput,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let s = g.shape(input.tokens.per_position())[1].clone();
        let x = g.with_scope(self.path.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let words = input.tokens.embed(g, self.word_embeddings)?; // [b, s, h]
            let types = match input.token_type_ids {
                Some(ids) => g.gather(self.token_type_embeddings, ids, 0)?, // [b, s, h]
                // All type 0 (B:90–97): row 0, broadcast over every position.
                None => g.slice(
                    self.token_type_embeddings,
                    &[0],
                    &[Dim::Fixed(1)],
                    &[0],
                    &[],
                )?, // [1, h]
            };
            let x = g.add(words, types)?;
            let pos = g.range(&s, DType::I64)?; // [s]
            let pos = match self.flavor {
                BertFlavor::Bert => pos,
                // Tokens that are not the pad id count from padding_idx + 1, every pad id
                // (padding, or one in the text) sits at padding_idx (R:141–154).
                BertFlavor::Roberta => {
                    let row = g.unsqueeze(pos, &[0])?; // [1, s]
                    let len = g.unsqueeze(input.lengths, &[1])?; // [b, 1]
                    let real = g.less(row, len)?; // [b, s]
                    let ids = input.tokens.ids(g)?;
                    let pad = g.scalar(DType::I64, self.padding_idx as f64);
                    let is_pad = g.equal(ids, pad)?;
                    let not_pad = g.not(is_pad)?;
                    let counted = g.and(real, not_pad)?;
                    let count = g.cast(counted, DType::I64)?;
                    let count = g.cumsum(count, 1)?; // [b, s]: 1 at the first counted token
                    let shifted = g.add(count, pad)?;
                    g.where_(counted, shifted, pad)? // [b, s]
                }
            };
            let positions = g.gather(self.position_embeddings, pos, 0)?;
            g.add(x, positions)
        })?;
        let x = self.layer_norm.forward(g, x)?;
        g.with_scope(self.path.as_str(), |g| {
            dropout.apply(g, &self.path.join("dropout"), x)
        })
    }
}

/// Self-attention and its output sub-layer (`encoder.layer.<i>.attention`), B:140–324.
struct Attention {
    path: VarPath,
    num_heads: usize,
    head_dim: usize,
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
}

impl Attention {
    fn new(
        cfg: &BertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let w = (true, cfg.initializer_range);
        let (own, out) = (path.pp("self"), path.pp("output"));
        Ok(Attention {
            query: Linear::new(g, vars, own.pp("query"), (h, h), w, lora)?,
            key: Linear::new(g, vars, own.pp("key"), (h, h), w, lora)?,
            value: Linear::new(g, vars, own.pp("value"), (h, h), w, lora)?,
            dense: Linear::new(g, vars, out.pp("dense"), (h, h), w, lora)?,
            layer_norm: LayerNorm::new(g, vars, out.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            path,
        })
    }

    /// `LN(rows + dropout(dense(attention)))` for the query `rows` (`x` itself, or its first
    /// row `[b, 1, h]`), keys and values from every row of `x` `[b, s, h]`; `mask`
    /// `[b, 1, 1, s]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        rows: Tensor,
        mask: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let q = self.query.forward(g, rows, dropout)?;
        let k = self.key.forward(g, x, dropout)?;
        let v = self.value.forward(g, x, dropout)?;
        let own = self.path.pp("self");
        let (heads, hd) = (self.num_heads, self.head_dim);
        let ctx = g.with_scope(own.as_str(), |g| -> pipe_onnx::Result<Tensor> {
            let q = split_heads(g, q, heads, hd)?;
            let k = split_heads(g, k, heads, hd)?;
            let v = split_heads(g, v, heads, hd)?;
            // q·kᵀ/√d (B:126) with the padding mask.
            let site = own.join("dropout");
            let ctx = scaled_attention(g, (q, k, v), mask, hd, (dropout, &site))?;
            merge_heads(g, ctx, heads * hd) // [b, q, h]
        })?;
        let y = self.dense.forward(g, ctx, dropout)?;
        residual(
            g,
            &self.path.pp("output"),
            y,
            rows,
            &self.layer_norm,
            dropout,
        )
    }
}

/// `LN(residual + dropout(y))`, the end of BERT's `SelfOutput` and `Output` (B:290–294,
/// B:349–353); `path` is the module that holds the dropout and the LayerNorm.
fn residual(
    g: &mut Graph,
    path: &VarPath,
    y: Tensor,
    residual: Tensor,
    layer_norm: &LayerNorm,
    dropout: &Dropout,
) -> pipe_onnx::Result<Tensor> {
    let sum = g.with_scope(path.as_str(), |g| {
        let y = dropout.apply(g, &path.join("dropout"), y)?;
        g.add(y, residual)
    })?;
    layer_norm.forward(g, sum)
}

/// One post-LN encoder layer (`encoder.layer.<i>`), B:356–419.
struct Layer {
    path: VarPath,
    attention: Attention,
    activation: Activation,
    intermediate: Linear,
    output: Linear,
    layer_norm: LayerNorm,
}

impl Layer {
    fn new(
        cfg: &BertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        let w = (true, cfg.initializer_range);
        let attention = Attention::new(cfg, g, vars, path.pp("attention"), lora)?;
        let intermediate = path.pp("intermediate").pp("dense");
        let intermediate = Linear::new(g, vars, intermediate, (h, m), w, lora)?;
        let out = path.pp("output");
        let output = Linear::new(g, vars, out.pp("dense"), (m, h), w, lora)?;
        let layer_norm = LayerNorm::new(g, vars, out.pp("LayerNorm"), h, cfg.layer_norm_eps)?;
        Ok(Layer {
            path,
            attention,
            activation: cfg.hidden_act,
            intermediate,
            output,
            layer_norm,
        })
    }

    /// `x` `[b, s, h]` → the layer's output `[b, s, h]`, or with `first_only` its first row
    /// `[b, 1, h]` alone (computed from that row's query only).
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
        let x = self.attention.forward(g, x, rows, mask, dropout)?;
        let t = self.intermediate.forward(g, x, dropout)?;
        let t = g.with_scope(&self.path.join("intermediate"), |g| {
            self.activation.apply(g, t)
        })?;
        let y = self.output.forward(g, t, dropout)?;
        residual(g, &self.path.pp("output"), y, x, &self.layer_norm, dropout)
    }
}

// ---- the base model --------------------------------------------------------------------------

/// Embeddings and encoder layers (`bert`, `roberta`), B:597–690.
pub struct BertModel {
    path: VarPath,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Declares the base model's parameters under `path`, with LoRA matrices where `lora` says.
    pub fn new(
        cfg: &BertConfig,
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        lora: Option<&LoraParams>,
    ) -> Result<Self> {
        let embeddings = Embeddings::new(cfg, g, vars, path.pp("embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, g, vars, path.pp("encoder").pp("layer").pp(i), lora))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            path,
            embeddings,
            layers,
        })
    }

    /// The last hidden state `[b, s, hidden]` (values at padded positions are unspecified);
    /// with `first_only`, only its first row, `[b, hidden]`, for which the last layer runs on
    /// that row alone.
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
        let (b, h) = (g.shape(x)[0].clone(), g.shape(x)[2].clone());
        Ok(g.reshape(x, &[b, h])?)
    }
}

// ---- sequence classification -----------------------------------------------------------------

/// The head on the first token.
enum Head {
    /// `<base>.pooler.dense` + tanh, `dropout`, `classifier` (B:455–467, B:1081–1115).
    Bert { pooler: Linear, classifier: Linear },
    /// dropout, `classifier.dense` + tanh, dropout, `classifier.out_proj` (R:1149–1168).
    Roberta { dense: Linear, out_proj: Linear },
}

/// BERT or RoBERTa with its sequence-classification head
/// (`BertForSequenceClassification`, `RobertaForSequenceClassification`).
pub struct BertForSequenceClassification {
    /// The base model.
    pub model: BertModel,
    head: Head,
    dropout: Dropout,
    vars: Vars,
}

impl BertForSequenceClassification {
    /// The head's dropout sites, in the order the forward pass applies them: BERT's on the
    /// pooled output; RoBERTa's two, before each of its dense layers.
    pub const HEAD_DROPOUT: [&'static str; 2] = ["dropout", "classifier.dropout"];

    /// Validates `cfg` and declares every parameter in `g` as an f32 input under its Hugging
    /// Face name, with the LoRA matrices of `lora` after each targeted layer's weights.
    pub fn new(cfg: &BertConfig, g: &mut Graph, lora: Option<&LoraParams>) -> Result<Self> {
        cfg.validate()?;
        let mut vars = Vars::new();
        let base = VarPath::root().pp(cfg.base_prefix());
        let model = BertModel::new(cfg, g, &mut vars, base.clone(), lora)?;
        let (h, n) = (cfg.hidden_size, cfg.num_labels());
        let w = (true, cfg.initializer_range);
        let classifier = VarPath::root().pp("classifier");
        let head = match cfg.model_type {
            BertFlavor::Bert => {
                let pooler = base.pp("pooler").pp("dense");
                Head::Bert {
                    pooler: Linear::new(g, &mut vars, pooler, (h, h), w, lora)?,
                    classifier: Linear::new(g, &mut vars, classifier, (h, n), w, None)?,
                }
            }
            BertFlavor::Roberta => Head::Roberta {
                dense: Linear::new(g, &mut vars, classifier.pp("dense"), (h, h), w, None)?,
                out_proj: Linear::new(g, &mut vars, classifier.pp("out_proj"), (h, n), w, None)?,
            },
        };
        Ok(BertForSequenceClassification {
            model,
            head,
            dropout: Dropout::none(),
            vars,
        })
    }

    /// BERT's pooled output `[b, hidden]` (`pooler_output` of `BertModel`: tanh of
    /// `pooler.dense` on `[CLS]`); `None` for RoBERTa, which has no pooler.
    pub fn pooled(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Option<Tensor>> {
        let Head::Bert { pooler, .. } = &self.head else {
            return Ok(None);
        };
        let cls = self.model.forward(g, input, true, &self.dropout)?;
        Ok(Some(dense_tanh(g, pooler, cls, &self.dropout)?))
    }
}

/// `tanh(dense(x))`.
fn dense_tanh(
    g: &mut Graph,
    dense: &Linear,
    x: Tensor,
    dropout: &Dropout,
) -> pipe_onnx::Result<Tensor> {
    let y = dense.forward(g, x, dropout)?;
    g.with_scope(dense.path().as_str(), |g| g.tanh(y))
}

impl SequenceClassifier for BertForSequenceClassification {
    fn vars(&self) -> &Vars {
        &self.vars
    }

    fn set_dropout(&mut self, dropout: Dropout) {
        self.dropout = dropout;
    }

    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor> {
        let d = &self.dropout;
        let cls = self.model.forward(g, input, true, d)?; // [b, h]
        let [bert_dropout, roberta_dropout] = Self::HEAD_DROPOUT;
        Ok(match &self.head {
            Head::Bert { pooler, classifier } => {
                let pooled = dense_tanh(g, pooler, cls, d)?;
                let pooled = d.apply(g, bert_dropout, pooled)?;
                classifier.forward(g, pooled, d)?
            }
            Head::Roberta { dense, out_proj } => {
                let x = d.apply(g, roberta_dropout, cls)?;
                let x = dense_tanh(g, dense, x, d)?;
                let x = d.apply(g, &format!("{roberta_dropout}#2"), x)?;
                out_proj.forward(g, x, d)?
            }
        })
    }
}

// ---- the family ------------------------------------------------------------------------------

impl DropoutSites for BertConfig {
    fn num_heads(&self) -> usize {
        self.num_attention_heads
    }
    /// `hidden_dropout_prob` after the embeddings and on each sub-layer's output,
    /// `attention_probs_dropout_prob` on the attention probabilities.
    fn dropout_rates(&self) -> DropoutRates {
        DropoutRates {
            embed: self.hidden_dropout_prob,
            attention: self.attention_probs_dropout_prob,
            resid: self.hidden_dropout_prob,
        }
    }
    /// The head's dropout is `classifier_dropout`, else the sub-layers' rate (B:1081–1084).
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        let h = self.hidden_size;
        let site = |module: String, shape, p| Site { module, shape, p };
        let base = self.base_prefix();
        let mut sites = vec![site(
            format!("{base}.embeddings.dropout"),
            SiteShape::Rows(h),
            rates.embed,
        )];
        for i in 0..self.num_hidden_layers {
            let last = i + 1 == self.num_hidden_layers;
            let (rows, probs) = match last {
                true => (SiteShape::FirstRow(h), SiteShape::FirstRowAttention),
                false => (SiteShape::Rows(h), SiteShape::Attention),
            };
            let layer = format!("{base}.encoder.layer.{i}");
            sites.push(site(
                format!("{layer}.attention.self.dropout"),
                probs,
                rates.attention,
            ));
            sites.push(site(
                format!("{layer}.attention.output.dropout"),
                rows,
                rates.resid,
            ));
            sites.push(site(format!("{layer}.output.dropout"), rows, rates.resid));
        }
        let head = self.classifier_dropout.unwrap_or(rates.resid);
        let [bert, roberta] = BertForSequenceClassification::HEAD_DROPOUT;
        match self.model_type {
            BertFlavor::Bert => sites.push(site(bert.into(), SiteShape::Pooled(h), head)),
            BertFlavor::Roberta => {
                sites.push(site(roberta.into(), SiteShape::Pooled(h), head));
                sites.push(site(format!("{roberta}#2"), SiteShape::Pooled(h), head));
            }
        }
        sites
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        let (h, m) = (self.hidden_size, self.intermediate_size);
        let base = self.base_prefix();
        let mut modules = Vec::new();
        for i in 0..self.num_hidden_layers {
            let last = i + 1 == self.num_hidden_layers;
            let rows = |n| match last {
                true => SiteShape::FirstRow(n),
                false => SiteShape::Rows(n),
            };
            let layer = format!("{base}.encoder.layer.{i}");
            modules.extend([
                (format!("{layer}.attention.self.query"), rows(h)),
                (format!("{layer}.attention.self.key"), SiteShape::Rows(h)),
                (format!("{layer}.attention.self.value"), SiteShape::Rows(h)),
                (format!("{layer}.attention.output.dense"), rows(h)),
                (format!("{layer}.intermediate.dense"), rows(h)),
                (format!("{layer}.output.dense"), rows(m)),
            ]);
        }
        if self.model_type == BertFlavor::Bert {
            modules.push((format!("{base}.pooler.dense"), SiteShape::Pooled(h)));
        }
        modules
    }
}

impl Architecture for BertConfig {
    fn model_type(&self) -> &'static str {
        match self.model_type {
            BertFlavor::Bert => "bert",
            BertFlavor::Roberta => "roberta",
        }
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
        BertConfig::max_length(self)
    }
    fn num_labels(&self) -> usize {
        BertConfig::num_labels(self)
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
        true
    }
    fn validate(&self) -> Result<()> {
        BertConfig::validate(self)
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.num_labels = Some(num_labels);
        self.id2label = None;
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        if pooling != Pooling::First {
            bail!(
                "a {} classifier reads its first token ([CLS]), as transformers' does; \
                 `pooling` applies to GPT-Neo only",
                Architecture::model_type(self)
            );
        }
        Ok(())
    }

    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(BertForSequenceClassification::new(self, g, lora)?))
    }
    fn head_params(&self) -> Vec<String> {
        let modules: &[&str] = match self.model_type {
            BertFlavor::Bert => &["classifier"],
            BertFlavor::Roberta => &["classifier.dense", "classifier.out_proj"],
        };
        modules
            .iter()
            .flat_map(|m| [format!("{m}.weight"), format!("{m}.bias")])
            .collect()
    }
    fn optional_params(&self) -> Vec<String> {
        match self.model_type {
            BertFlavor::Bert => ["weight", "bias"]
                .map(|p| format!("{}.pooler.dense.{p}", self.base_prefix()))
                .to_vec(),
            BertFlavor::Roberta => Vec::new(),
        }
    }

    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        let mut value = serde_json::to_value(self)?;
        let architecture = match self.model_type {
            BertFlavor::Bert => "BertForSequenceClassification",
            BertFlavor::Roberta => "RobertaForSequenceClassification",
        };
        classifier_keys(&mut value, architecture, labels, problem);
        Ok(value)
    }
}
