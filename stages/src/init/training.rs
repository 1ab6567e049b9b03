//! The training questions of `pipe init`: which model, LoRA or not, how many epochs, which
//! device.

use std::fmt;
use std::path::Path;

use anyhow::bail;

use pipe_models::{Architecture as _, ModelConfig, embedded, hf_folder, hub};

/// The model `finetune` starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// GPT-Neo of the `tiny` shape, from scratch: trains in minutes on a CPU.
    Tiny,
    /// GPT-Neo of the 125M shape, from scratch.
    Small,
    /// A pretrained Hugging Face repository, such as `EleutherAI/gpt-neo-125m`.
    Hub(String),
    /// One of pipe's embedded pretrained models (`all-MiniLM-L6-v2`), fetched by
    /// `scripts/fetch-model.sh`.
    Embedded(&'static str),
}

impl ModelChoice {
    /// Parses `tiny`, `small`, an embedded model's name or a Hugging Face id (`owner/name`).
    pub fn parse(text: &str) -> anyhow::Result<ModelChoice> {
        let text = text.trim();
        match text {
            "tiny" => return Ok(ModelChoice::Tiny),
            "small" => return Ok(ModelChoice::Small),
            _ => {}
        }
        if let Ok(model) = embedded::lookup(text) {
            return Ok(ModelChoice::Embedded(model.name));
        }
        // A bare name is a hub id too, but here more likely a typo of `tiny` or `small`.
        if !text.contains('/') || pipe_models::hub::check_repo_id(text).is_err() {
            bail!(
                "`{text}` is not a model: answer tiny, small, or a Hugging Face id such as \
                 EleutherAI/gpt-neo-125m (or all-MiniLM-L6-v2, the embedded pretrained BERT)"
            );
        }
        Ok(ModelChoice::Hub(text.to_string()))
    }

    /// Whether the model is pretrained (and so large enough for LoRA to pay).
    pub fn is_pretrained(&self) -> bool {
        matches!(self, ModelChoice::Hub(_) | ModelChoice::Embedded(_))
    }

    /// The model's `model_type`: GPT-Neo for the shapes trained from scratch, the embedded
    /// model's, or what a hub model's `config.json` in `cache` says (`None` before it is
    /// downloaded, or when the file names none).
    pub fn model_type(&self, cache: &Path) -> Option<String> {
        match self {
            ModelChoice::Tiny | ModelChoice::Small => Some("gpt_neo".into()),
            ModelChoice::Embedded(name) => embedded::lookup(name)
                .ok()
                .map(|m| m.model_type.to_string()),
            ModelChoice::Hub(id) => {
                let dir = hub::snapshot_with(cache, id, hf_folder::CONFIG_FILE)?;
                let text = fs_err::read_to_string(dir.join(hf_folder::CONFIG_FILE)).ok()?;
                let config: serde_json::Value = serde_json::from_str(&text).ok()?;
                Some(config.get("model_type")?.as_str()?.to_string())
            }
        }
    }

    /// The longest row the model takes, when its `config.json` is at hand (the embedded
    /// model's, a hub model's in `cache`); `None` for the shapes trained from scratch.
    pub fn max_length(&self, cache: &Path) -> Option<usize> {
        let dir = match self {
            ModelChoice::Tiny | ModelChoice::Small => return None,
            ModelChoice::Embedded(name) => embedded::lookup(name).ok()?.locate().ok()?,
            ModelChoice::Hub(id) => hub::snapshot_with(cache, id, hf_folder::CONFIG_FILE)?,
        };
        Some(hf_folder::read_config(&dir).ok()?.max_length())
    }

    /// The default answer: the embedded pretrained model when it is fetched (a pretrained
    /// encoder beats anything trained from scratch on small data), else `tiny`.
    pub fn default_choice() -> ModelChoice {
        embedded::MODELS
            .first()
            .filter(|m| m.locate().is_ok())
            .map_or(ModelChoice::Tiny, |m| ModelChoice::Embedded(m.name))
    }
}

impl fmt::Display for ModelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelChoice::Tiny => write!(f, "tiny"),
            ModelChoice::Small => write!(f, "small"),
            ModelChoice::Hub(id) => write!(f, "{id}"),
            ModelChoice::Embedded(name) => write!(f, "{name}"),
        }
    }
}

/// What `pipe init` was told about training.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    /// The starting model.
    pub model: ModelChoice,
    /// Train LoRA adapters on these layers (module names) instead of every weight.
    pub lora: Option<&'static [&'static str]>,
    /// Passes over the train split.
    pub epochs: u64,
    /// `device:` as written.
    pub device: String,
    /// The tokenize stage's `max_length`: 128, or less when the model takes fewer tokens.
    pub max_length: usize,
}

/// The `max_length` written when the model allows it.
pub const DEFAULT_MAX_LENGTH: usize = 128;

/// The device written when none is asked for: `auto` when this build knows it, else `cpu`.
pub fn default_device() -> &'static str {
    if "auto".parse::<pipe_onnx::Device>().is_ok() {
        "auto"
    } else {
        "cpu"
    }
}

/// The layers a LoRA adapter of `model` targets: the family's defaults
/// ([`ModelConfig::default_lora_targets`]), with a note when the family is not known yet (a
/// hub model not downloaded): then q_proj and v_proj, the names of most decoders (Llama,
/// Mistral, Qwen, GPT-Neo), which `pipe run` checks against the model's layers.
pub fn lora_targets(
    model: &ModelChoice,
    cache: &Path,
) -> (&'static [&'static str], Option<String>) {
    let known = model
        .model_type(cache)
        .as_deref()
        .and_then(ModelConfig::default_lora_targets);
    match known {
        Some(targets) => (targets, None),
        None => (
            &["q_proj", "v_proj"],
            Some(format!(
                "  note: the family of {model} is not known before its config.json is in the \
                 Hugging Face cache; LoRA targets q_proj, v_proj (Llama, Mistral, Qwen, \
                 GPT-Neo names), and `pipe run` names the model's layers if it has no such"
            )),
        ),
    }
}

/// A note on where `model` is, when it is a hub model: in the cache, or how to get it there.
pub fn cache_note(model: &ModelChoice, cache: &Path) -> Option<String> {
    let ModelChoice::Hub(id) = model else {
        return None;
    };
    Some(
        match pipe_models::hub::snapshot_with(cache, id, pipe_models::hf_folder::CONFIG_FILE) {
            Some(dir) => format!("  {id} is in the Hugging Face cache ({})", dir.display()),
            None => format!(
                "  note: {id} is not in the Hugging Face cache ({}); `pipe pull-model {id}` \
                 downloads it now, or the first `pipe run` does when online",
                cache.display()
            ),
        },
    )
}
