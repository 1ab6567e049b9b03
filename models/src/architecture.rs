//! The model families behind one trait: what the stages need to know about a model without
//! naming its family.
//!
//! | `model_type` | config | classifier |
//! | --- | --- | --- |
//! | `gpt_neo` | [`GptNeoConfig`](super::gpt_neo::GptNeoConfig) | [`GptNeoForSequenceClassification`](super::gpt_neo::GptNeoForSequenceClassification) |
//! | `bert`, `roberta` | [`BertConfig`](super::bert::BertConfig) | [`BertForSequenceClassification`](super::bert::BertForSequenceClassification) |
//! | `llama`, `mistral`, `qwen2`, `qwen3` | [`LlamaConfig`](super::llama::LlamaConfig) | [`LlamaForSequenceClassification`](super::llama::LlamaForSequenceClassification) |
//! | `gpt2` | [`Gpt2Config`](super::gpt2::Gpt2Config) | [`Gpt2ForSequenceClassification`](super::gpt2::Gpt2ForSequenceClassification) |
//!
//! [`ModelConfig::from_json`](super::ModelConfig::from_json) picks the family from `config.json`'s `model_type`, in one
//! table (as transformers' `AutoModel` mapping does). Everything else goes through
//! [`Architecture`]: the classifier's parameters and forward graph, which parameters a base
//! checkpoint lacks (the head) or may lack (BERT's pooler), the dropout sites, the layers
//! LoRA can adapt, and the `config.json` written after training. Loss, autodiff, the
//! optimizer, checkpoints, export and evaluation are the same for every family.

use std::collections::BTreeMap;

use anyhow::Result;
use pipe_onnx::Graph;
use serde_json::{Map, Value, json};

use super::ParamSpec;
use super::classifier::{Pooling, ProblemType, SequenceClassifier};
use super::dropout::DropoutSites;
use super::lora::LoraParams;

/// The parameters of `cfg`'s classifier (without LoRA), in declaration order.
pub fn param_specs(cfg: &dyn Architecture) -> Result<Vec<ParamSpec>> {
    let mut scratch = Graph::new("specs");
    Ok(cfg.classifier(&mut scratch, None)?.specs().to_vec())
}

/// A model family's configuration, as the stages see it. Its dropout sites, attention heads
/// and the layers LoRA can adapt are its [`DropoutSites`].
pub trait Architecture: DropoutSites + std::fmt::Debug + Send + Sync {
    /// `model_type` as `config.json` writes it (`gpt_neo`, `bert`, `roberta`).
    fn model_type(&self) -> &'static str;
    /// Token vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;
    /// Number of transformer layers.
    fn num_layers(&self) -> usize;
    /// The longest row (in tokens) the model takes.
    fn max_length(&self) -> usize;
    /// Number of labels of the classifier.
    fn num_labels(&self) -> usize;
    /// Label names by index, when the config names them.
    fn id2label(&self) -> Option<&BTreeMap<String, String>>;
    /// The config's `problem_type`, when set.
    fn problem_type(&self) -> Option<ProblemType>;
    /// How the classifier pools a row.
    fn pooling(&self) -> Pooling;
    /// Whether the exported model takes `token_type_ids`.
    fn takes_token_types(&self) -> bool;
    /// Checks that the numbers fit together.
    fn validate(&self) -> Result<()>;

    /// Sets the number of labels and forgets the label names (the data's labels take over).
    fn set_labels(&mut self, num_labels: usize);
    /// Makes the classifier pool rows this way; an error when the family cannot.
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()>;

    /// Declares the classifier's parameters in `g` (with the LoRA matrices of `lora`).
    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>>;
    /// The head's parameters: a base checkpoint lacks them, so they start fresh (and LoRA and
    /// `freeze` always train them).
    fn head_params(&self) -> Vec<String>;
    /// Parameters a checkpoint may lack without being wrong (BERT's pooler, which
    /// sentence-transformers' exports sometimes leave out); they start fresh too.
    fn optional_params(&self) -> Vec<String>;

    /// The `config.json` that `transformers` loads as the family's
    /// `…ForSequenceClassification`: every key of the source config, with the architecture,
    /// `num_labels`, `id2label`/`label2id` from `labels` and the problem type.
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value>;
}

/// Checks that each named size of a config is positive: the error names the first that is
/// not (`num_labels must be positive`).
pub(super) fn check_positive(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((what, _)) => anyhow::bail!("{what} must be positive"),
        None => Ok(()),
    }
}

/// The `config.json` keys every family's classifier writes the same way.
pub(super) fn classifier_keys(
    value: &mut Value,
    architecture: &str,
    labels: &[String],
    problem: ProblemType,
) {
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    if let Value::Object(map) = value {
        map.insert("architectures".into(), json!([architecture]));
        map.insert("num_labels".into(), json!(labels.len()));
        map.insert("id2label".into(), Value::Object(id2label));
        map.insert("label2id".into(), Value::Object(label2id));
        map.insert("problem_type".into(), json!(problem));
    }
}
