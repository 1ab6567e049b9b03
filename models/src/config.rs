//! [`ModelConfig`]: a model config of any family, picked by `config.json`'s `model_type` in
//! one table (as transformers' `AutoModel` mapping does), and the names every family's
//! parameters are grouped by (`freeze:`, the head, the base model's prefix).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_onnx::Graph;
use serde_json::Value;

use super::architecture::Architecture;
use super::bert::BertConfig;
use super::classifier::{Pooling, ProblemType, SequenceClassifier};
use super::distilbert::DistilBertConfig;
use super::dropout::{DropoutRates, DropoutSites, Site, SiteShape};
use super::gpt_neo::{AsGptNeo, GptNeoConfig};
use super::gpt2::Gpt2Config;
use super::llama::LlamaConfig;
use super::lora::LoraParams;
use super::modernbert::ModernBertConfig;

/// A parsed model config of any family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// `gpt_neo`.
    GptNeo(GptNeoConfig),
    /// `bert`, `roberta`.
    Bert(BertConfig),
    /// `distilbert`.
    DistilBert(DistilBertConfig),
    /// `modernbert`.
    ModernBert(ModernBertConfig),
    /// `llama`, `mistral`, `qwen2`, `qwen3`.
    Llama(LlamaConfig),
    /// `gpt2`.
    Gpt2(Gpt2Config),
}

impl ModelConfig {
    /// The `model_type`s pipe knows.
    pub const MODEL_TYPES: [&'static str; 10] = [
        "gpt_neo",
        "bert",
        "roberta",
        "distilbert",
        "modernbert",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
    ];

    /// The layers a LoRA adapter of a `model_type` model targets unless told otherwise: its
    /// attention's query and value projections by the family's names, PEFT's defaults
    /// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`). `None` for a type pipe does not
    /// know.
    pub fn default_lora_targets(model_type: &str) -> Option<&'static [&'static str]> {
        Some(match model_type {
            "gpt_neo" | "llama" | "mistral" | "qwen2" | "qwen3" => &["q_proj", "v_proj"],
            "bert" | "roberta" => &["query", "value"],
            "distilbert" => &["q_lin", "v_lin"],
            // One fused projection of q, k and v in both.
            "modernbert" => &["Wqkv"],
            "gpt2" => &["c_attn"],
            _ => return None,
        })
    }

    /// The config `value` (a `config.json`, or an inline config of a manifest), by its
    /// `model_type`; without one it is a GPT-Neo config (pipe's own inline configs).
    pub fn from_json(value: Value) -> Result<Self> {
        if !value.is_object() {
            bail!("a model config is a map of keys (such as `model_type` and `hidden_size`)");
        }
        let model_type = match value.get("model_type") {
            None => "gpt_neo".to_string(),
            Some(Value::String(t)) => t.clone(),
            Some(other) => bail!("`model_type` is {other}, not a name such as `bert`"),
        };
        let config = match model_type.as_str() {
            "gpt_neo" => ModelConfig::GptNeo(serde_json::from_value(value)?),
            "bert" | "roberta" => ModelConfig::Bert(serde_json::from_value(value)?),
            "distilbert" => ModelConfig::DistilBert(serde_json::from_value(value)?),
            "modernbert" => ModelConfig::ModernBert(serde_json::from_value(value)?),
            "llama" | "mistral" | "qwen2" | "qwen3" => {
                ModelConfig::Llama(serde_json::from_value(value)?)
            }
            "gpt2" => ModelConfig::Gpt2(serde_json::from_value(value)?),
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
            ModelConfig::DistilBert(c) => c,
            ModelConfig::ModernBert(c) => c,
            ModelConfig::Llama(c) => c,
            ModelConfig::Gpt2(c) => c,
        }
    }

    fn family_mut(&mut self) -> &mut dyn Architecture {
        match self {
            ModelConfig::GptNeo(c) => c,
            ModelConfig::Bert(c) => c,
            ModelConfig::DistilBert(c) => c,
            ModelConfig::ModernBert(c) => c,
            ModelConfig::Llama(c) => c,
            ModelConfig::Gpt2(c) => c,
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
impl DropoutSites for ModelConfig {
    fn num_heads(&self) -> usize {
        self.family().num_heads()
    }
    fn dropout_rates(&self) -> DropoutRates {
        self.family().dropout_rates()
    }
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site> {
        self.family().dropout_sites(rates)
    }
    fn lora_modules(&self) -> Vec<(String, SiteShape)> {
        self.family().lora_modules()
    }
    fn lora_fan_in_fan_out(&self) -> bool {
        self.family().lora_fan_in_fan_out()
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
    fn hf_config(&self, labels: &[String], problem: ProblemType) -> Result<Value> {
        self.family().hf_config(labels, problem)
    }
}

/// The parts `freeze:` names, per family: the embedding modules (`embeddings`) and the prefix
/// of layer `N` (`layers.N` is `<prefix>.N`). Parameter names never collide between families,
/// so a name is in a part when any family's pattern covers it.
pub const FREEZE_GROUPS: [(&[&str], &str); 5] = [
    (&["transformer.wte", "transformer.wpe"], "transformer.h"),
    (&["bert.embeddings"], "bert.encoder.layer"),
    (&["roberta.embeddings"], "roberta.encoder.layer"),
    (&["distilbert.embeddings"], "distilbert.transformer.layer"),
    (&["model.embeddings", "model.embed_tokens"], "model.layers"),
];

/// The modules that hold a classification head in some family (`score`, `classifier`,
/// DistilBERT's `pre_classifier`).
pub const HEAD_MODULES: [&str; 3] = ["score", "classifier", "pre_classifier"];

/// The first parts of the parameter names of every family's base model.
pub const BASE_PREFIXES: [&str; 5] = ["transformer", "bert", "roberta", "distilbert", "model"];
