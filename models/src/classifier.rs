//! What every family's classifier shares: the inputs, the problem type, the labels input and
//! the loss. A family builds its forward graph behind [`SequenceClassifier`].

use anyhow::Result;
use pipe_onnx::{DType, Dim, Graph, Tensor, TrainParam};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::dropout::Dropout;
use super::layers::Tokens;
use super::{ParamSpec, Vars};

/// What the classification loss is (`problem_type` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// One class per row: cross-entropy, mean over rows.
    SingleLabelClassification,
    /// Independent labels per row: binary cross-entropy with logits, mean over all elements.
    MultiLabelClassification,
}

/// The inputs of a classifier's forward graph: right-padded rows.
#[derive(Clone, Copy, Debug)]
pub struct ClassifierInput {
    /// The token ids.
    pub tokens: Tokens,
    /// int64 `[batch]`: each row's real tokens, `1..=seq`.
    pub lengths: Tensor,
    /// int64 `[batch, seq]` segment ids, for families that take them; `None`: all 0.
    pub token_type_ids: Option<Tensor>,
}

/// A family's classifier, declared in a graph: its parameters and its forward pass.
pub trait SequenceClassifier {
    /// The declared parameters.
    fn vars(&self) -> &Vars;

    /// Makes the forward pass a training one with `dropout`'s masks.
    fn set_dropout(&mut self, dropout: Dropout);

    /// The logits `[batch, num_labels]` of `input`.
    fn logits(&self, g: &mut Graph, input: &ClassifierInput) -> Result<Tensor>;

    /// Every parameter, in declaration order (`named_parameters()` order in HF).
    fn specs(&self) -> &[ParamSpec] {
        self.vars().specs()
    }

    /// The parameters for [`pipe_onnx::build_gradient_step`]; `decay` says which get weight
    /// decay (see [`hf_trainer_decay`]).
    fn train_params(&self, decay: &dyn Fn(&ParamSpec) -> bool) -> Vec<TrainParam> {
        self.vars()
            .specs()
            .iter()
            .zip(self.vars().tensors())
            .map(|(spec, &tensor)| TrainParam {
                tensor,
                weight_decay: decay(spec),
            })
            .collect()
    }
}

/// Declares the labels input for `problem`: `labels` int64 `[batch]` or f32
/// `[batch, num_labels]`.
pub fn declare_labels(g: &mut Graph, problem: ProblemType, num_labels: usize) -> Result<Tensor> {
    let batch = Dim::from("batch");
    Ok(match problem {
        ProblemType::SingleLabelClassification => g.input("labels", DType::I64, &[batch])?,
        ProblemType::MultiLabelClassification => g.input(
            "labels",
            DType::F32,
            &[batch, Dim::Fixed(num_labels as i64)],
        )?,
    })
}

/// The loss of `logits` `[b, num_labels]`: for single-label, `labels` is int64 `[b]` and the
/// loss is the mean cross-entropy; for multi-label, `labels` is f32 `[b, num_labels]` of 0/1
/// targets and the loss is BCE-with-logits averaged over every element (what each family's
/// `…ForSequenceClassification` computes for its `problem_type`).
pub fn loss(g: &mut Graph, logits: Tensor, labels: Tensor, problem: ProblemType) -> Result<Tensor> {
    Ok(g.with_scope("loss", |g| match problem {
        ProblemType::SingleLabelClassification => g.softmax_cross_entropy_loss(logits, labels),
        ProblemType::MultiLabelClassification => g.bce_with_logits(logits, labels),
    })?)
}

/// The Hugging Face `Trainer` rule: weight decay on every parameter except biases and
/// norm weights, as `Trainer.get_decay_parameter_names` picks them: no parameter whose
/// lower-cased name contains `bias`, `layernorm` or `rmsnorm` or has a part `norm` or `…_norm`
/// (BERT's `LayerNorm`, DistilBERT's `sa_layer_norm`, ModernBERT's `final_norm`, Llama's
/// `input_layernorm`, Qwen3's `q_norm`), nor one of an `nn.LayerNorm` module whose name says
/// nothing of it (GPT-Neo's and GPT-2's `ln_1`, `ln_2`, `ln_f`).
pub fn hf_trainer_decay(spec: &ParamSpec) -> bool {
    let name = spec.name.to_ascii_lowercase();
    let mut parts = name.split('.');
    let by_name = name.contains("bias")
        || name.contains("layernorm")
        || name.contains("rmsnorm")
        || parts.any(|part| part == "norm" || part.ends_with("_norm"));
    let module = name.rsplit_once('.').map_or("", |(m, _)| m);
    let layer_norm_module = module
        .rsplit('.')
        .next()
        .is_some_and(|m| m.starts_with("ln_"));
    !(by_name || layer_norm_module)
}

/// The pad id a decoder's classifier needs (transformers reads each row's last token that is
/// not `pad_token_id`, and refuses a batch without one): `pad`, else the config's
/// `eos_token_id` (its first when a list), which transformers then takes for padding; an
/// error saying how to set one when `other` (the rest of the config) has neither, or when the
/// id is not one of the `vocab_size` tokens (transformers refuses to load such a model).
pub fn decoder_pad_id(
    model_type: &str,
    pad: Option<i64>,
    other: &serde_json::Map<String, serde_json::Value>,
    vocab_size: usize,
) -> Result<i64> {
    use anyhow::Context;
    use serde_json::Value;
    let (id, key) = match pad {
        Some(pad) => (pad, "pad_token_id"),
        None => {
            let eos = match other.get("eos_token_id") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::Array(ids)) => ids.first().and_then(Value::as_i64),
                _ => None,
            };
            let eos = eos.with_context(|| {
                format!(
                    "this {model_type} config has no `pad_token_id` (nor an `eos_token_id` to \
                     pad with): a classifier reads each row's last non-pad token, as \
                     transformers' does, so it must know the pad id; add `pad_token_id: <id>` \
                     (the tokenizer's pad or end-of-text token) to the model's config.json, or \
                     to `model.config` in the manifest"
                )
            })?;
            (eos, "eos_token_id")
        }
    };
    anyhow::ensure!(
        usize::try_from(id).is_ok_and(|id| id < vocab_size),
        "this {model_type} config's `{key}` is {id}, not a token of its vocabulary (0 to {}): \
         the classifier pads with it, and transformers refuses to load such a model; set \
         `pad_token_id` to the tokenizer's pad or end-of-text id",
        vocab_size.saturating_sub(1)
    );
    Ok(id)
}

/// The `pad_token_id` a config keeps among its other keys, when it names one.
pub fn config_pad_id(other: &serde_json::Map<String, serde_json::Value>) -> Option<i64> {
    other
        .get("pad_token_id")
        .and_then(serde_json::Value::as_i64)
}

/// How the classifier reduces a row's hidden states `[seq, hidden]` to one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The state of the last real token, as Hugging Face's `GPTNeoForSequenceClassification`.
    #[default]
    Last,
    /// The mean of the states of the real tokens. Not a Hugging Face option: `transformers`
    /// loads such a model folder but pools the last token; the ONNX export pools the mean.
    Mean,
    /// The state of the first token (`[CLS]`, `<s>`), where the encoders' heads read (not
    /// for GPT-Neo, whose first token has seen nothing else).
    First,
}

impl Pooling {
    /// Whether this is [`Pooling::Last`] (the default, left out of written configs).
    pub fn is_last(&self) -> bool {
        *self == Pooling::Last
    }
}
