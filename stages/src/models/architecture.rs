//! The model families behind one trait: what the stages need to know about a model without
//! naming its family.
//!
//! | `model_type` | config | classifier |
//! | --- | --- | --- |
//! | `gpt_neo` | [`GptNeoConfig`] | [`GptNeoForSequenceClassification`](super::gpt_neo::GptNeoForSequenceClassification) |
//! | `bert`, `roberta` | [`BertConfig`] | [`BertForSequenceClassification`](super::bert::BertForSequenceClassification) |
//!
//! [`ModelConfig::from_json`] picks the family from `config.json`'s `model_type`, in one
//! table (as transformers' `AutoModel` mapping does). Everything else goes through
//! [`Architecture`]: the classifier's parameters and forward graph, which parameters a base
//! checkpoint lacks (the head) or may lack (BERT's pooler), the dropout sites, the layers
//! LoRA can adapt, and the `config.json` written after training. Loss, autodiff, the
//! optimizer, checkpoints, export and evaluation are the same for every family.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::Graph;
use serde_json::{Map, Value, json};

use super::bert::BertConfig;
use super::classifier::{ProblemType, SequenceClassifier};
use super::dropout::{DropoutRates, Site, SiteShape};
use super::gpt_neo::{AsGptNeo, GptNeoConfig, Pooling};
use super::lora::LoraParams;

/// A model family's configuration, as the stages see it.
pub trait Architecture: std::fmt::Debug + Send + Sync {
    /// `model_type` as `config.json` writes it (`gpt_neo`, `bert`, `roberta`).
    fn model_type(&self) -> &'static str;
    /// Token vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;
    /// Number of transformer layers.
    fn num_layers(&self) -> usize;
    /// Attention heads per layer.
    fn num_heads(&self) -> usize;
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

    /// The dropout probabilities of the config.
    fn dropout_rates(&self) -> DropoutRates;
    /// Every dropout site under `rates`, in forward order (zero rates included).
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site>;
    /// Every linear layer LoRA can adapt, in forward order, with the shape of its input.
    fn lora_modules(&self) -> Vec<(String, SiteShape)>;

    /// The `config.json` that `transformers` loads as the family's
    /// `…ForSequenceClassification`: every key of the source config, with the architecture,
    /// `num_labels`, `id2label`/`label2id` from `labels` and the problem type.
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value>;
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

/// A parsed model config of any family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// `gpt_neo`.
    GptNeo(GptNeoConfig),
    /// `bert`, `roberta`.
    Bert(BertConfig),
}

impl ModelConfig {
    /// The `model_type`s pipe knows.
    pub const MODEL_TYPES: [&'static str; 3] = ["gpt_neo", "bert", "roberta"];

    /// The config `value` (a `config.json`, or an inline config of a manifest), by its
    /// `model_type`; without one it is a GPT-Neo config (pipe's own inline configs).
    pub fn from_json(value: Value) -> Result<Self> {
        let model_type = match value.get("model_type") {
            None => "gpt_neo".to_string(),
            Some(Value::String(t)) => t.clone(),
            Some(other) => bail!("`model_type` is {other}, not a name such as `bert`"),
        };
        let config = match model_type.as_str() {
            "gpt_neo" => ModelConfig::GptNeo(serde_json::from_value(value)?),
            "bert" | "roberta" => ModelConfig::Bert(serde_json::from_value(value)?),
            other => bail!(
                "`model_type: {other}` is not a family pipe knows; it knows {}",
                Self::MODEL_TYPES.join(", ")
            ),
        };
        config.validate()?;
        Ok(config)
    }
}

impl ModelConfig {
    fn family(&self) -> &dyn Architecture {
        match self {
            ModelConfig::GptNeo(c) => c,
            ModelConfig::Bert(c) => c,
        }
    }

    fn family_mut(&mut self) -> &mut dyn Architecture {
        match self {
            ModelConfig::GptNeo(c) => c,
            ModelConfig::Bert(c) => c,
        }
    }
}

impl AsGptNeo for ModelConfig {
    fn as_gpt_neo(&self) -> Result<&GptNeoConfig> {
        match self {
            ModelConfig::GptNeo(c) => Ok(c),
            other => bail!("a `{}` config is not a GPT-Neo config", other.model_type()),
        }
    }
}

/// Every method is the family's.
impl Architecture for ModelConfig {
    fn model_type(&self) -> &'static str {
        self.family().model_type()
    }
    fn vocab_size(&self) -> usize {
        self.family().vocab_size()
    }
    fn hidden_size(&self) -> usize {
        self.family().hidden_size()
    }
    fn num_layers(&self) -> usize {
        self.family().num_layers()
    }
    fn num_heads(&self) -> usize {
        self.family().num_heads()
    }
    fn max_length(&self) -> usize {
        self.family().max_length()
    }
    fn num_labels(&self) -> usize {
        self.family().num_labels()
    }
    fn id2label(&self) -> Option<&BTreeMap<String, String>> {
        self.family().id2label()
    }
    fn problem_type(&self) -> Option<ProblemType> {
        self.family().problem_type()
    }
    fn pooling(&self) -> Pooling {
        self.family().pooling()
    }
    fn takes_token_types(&self) -> bool {
        self.family().takes_token_types()
    }
    fn validate(&self) -> Result<()> {
        self.family().validate()
    }
    fn head_params(&self) -> Vec<String> {
        self.family().head_params()
    }
    fn optional_params(&self) -> Vec<String> {
        self.family().optional_params()
    }
    fn dropout_rates(&self) -> DropoutRates {
        self.family().dropout_rates()
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        self.family().lora_modules()
    }
    fn set_labels(&mut self, num_labels: usize) {
        self.family_mut().set_labels(num_labels)
    }
    fn set_pooling(&mut self, pooling: Pooling) -> Result<()> {
        self.family_mut().set_pooling(pooling)
    }
    fn classifier(
        &self,
        g: &mut Graph,
        lora: Option<&LoraParams>,
    ) -> Result<Box<dyn SequenceClassifier>> {
        self.family().classifier(g, lora)
    }
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        self.family().dropout_sites(rates)
    }
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        self.family().hf_config(labels, problem)
    }
}

/// The parts `freeze:` names, per family: the embedding modules (`embeddings`) and the prefix
/// of layer `N` (`layers.N` is `<prefix>.N`). Parameter names never collide between families,
/// so a name is in a part when any family's pattern covers it.
pub const FREEZE_GROUPS: [(&[&str], &str); 3] = [
    (&["transformer.wte", "transformer.wpe"], "transformer.h"),
    (&["bert.embeddings"], "bert.encoder.layer"),
    (&["roberta.embeddings"], "roberta.encoder.layer"),
];

/// The modules that hold a classification head in some family (`score`, `classifier`).
pub const HEAD_MODULES: [&str; 2] = ["score", "classifier"];

/// The first parts of the parameter names of every family's base model.
pub const BASE_PREFIXES: [&str; 3] = ["transformer", "bert", "roberta"];
