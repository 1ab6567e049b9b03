//! A Hugging Face model folder: `config.json` + `model.safetensors`, as
//! `save_pretrained` writes it and `from_pretrained` reads it.
//!
//! [`write`] is what finetune's `model/` output holds (plus the tokenizer and labels, copied by
//! the stage); [`read_config`] and [`read_weights`] take any such folder, ours or one
//! downloaded from the hub.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use pipe_onnx::HostTensor;
use serde_json::Value;

use super::checkpoint::bad_input;
use super::classifier::ProblemType;
use super::{Architecture, ModelConfig, ParamSpec};

/// The config file of a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Reads `dir/config.json` as the config of the family its `model_type` names.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = fs_err::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; a model folder needs config.json and model.safetensors",
            path.display()
        )
    })?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))
        .map_err(bad_input)?;
    if !value.is_object() {
        return Err(bad_input(anyhow::anyhow!(
            "{} is not a JSON object of config keys (such as {{\"model_type\": \"bert\", ...}})",
            path.display()
        )));
    }
    // Inline configs without a `model_type` are GPT-Neo's; a folder's names its family.
    if value.get("model_type").is_none() {
        return Err(bad_input(anyhow::anyhow!(
            "{} has no `model_type`, which names the model's family; add the one its model \
             has (pipe knows {})",
            path.display(),
            ModelConfig::MODEL_TYPES.join(", ")
        )));
    }
    ModelConfig::from_json(value)
        .with_context(|| {
            format!(
                "{} is not a config pipe can train (see transformers' configuration file of \
                 its model_type for the keys)",
                path.display()
            )
        })
        .map_err(bad_input)
}

/// The path of `dir/model.safetensors`, else of a sharded checkpoint's
/// `dir/model.safetensors.index.json`, or an error saying how to get one when the folder
/// only has PyTorch pickles (which `pipe` never unpickles).
pub fn weights_path(dir: &Path) -> Result<std::path::PathBuf> {
    for name in [WEIGHTS_FILE, super::checkpoint::INDEX_FILE] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
        if path.is_dir() {
            return Err(bad_input(anyhow::anyhow!(
                "{} is a folder, not a file; a model folder holds its weights as the file \
                 {WEIGHTS_FILE} (or the shards {} names)",
                path.display(),
                super::checkpoint::INDEX_FILE
            )));
        }
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(bad_input(anyhow::anyhow!(
            "{} has only pytorch_model.bin; pipe reads safetensors and never unpickles. \
             Convert it once with: python -c \"from transformers import AutoModel; \
             AutoModel.from_pretrained('{0}').save_pretrained('{0}', safe_serialization=True)\"",
            dir.display()
        )));
    }
    Err(bad_input(anyhow::anyhow!(
        "{} has neither {WEIGHTS_FILE} nor {} (a sharded checkpoint)",
        dir.display(),
        super::checkpoint::INDEX_FILE
    )))
}

/// The element type the weights of `dir` are stored in (`float32`, `bfloat16`, `float16`;
/// joined by `+` when mixed), read from the safetensors headers alone.
pub fn source_dtype(dir: &Path) -> Result<Option<String>> {
    Ok(super::checkpoint::Checkpoint::open(&weights_path(dir)?)?.source_dtype())
}

/// The specs whose tensors `dir`'s checkpoint stores as 16-bit floats, with that type, from
/// the safetensors headers alone ([`super::weights::half_dtypes`]).
pub fn half_dtypes(
    dir: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
) -> Result<BTreeMap<String, pipe_onnx::DType>> {
    let checkpoint = super::checkpoint::Checkpoint::open(&weights_path(dir)?)?;
    super::weights::half_dtypes(&checkpoint, specs, fresh)
}

/// Reads the weights of `dir` for `specs`; parameters named in `fresh` that the file lacks (a
/// classification head on a base checkpoint) start from `seed`. See [`super::weights::from_bytes`].
pub fn read_weights(
    dir: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    read_weights_with(dir, specs, fresh, seed, &super::weights::keep)
}

/// [`read_weights`], each tensor through `transform` as it is read.
pub fn read_weights_with(
    dir: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
    transform: super::weights::Transform,
) -> Result<BTreeMap<String, HostTensor>> {
    super::weights::load_with(&weights_path(dir)?, specs, fresh, seed, transform)
}

/// Writes `config.json` ([`Architecture::hf_config`]) and `model.safetensors` (the tensors of
/// `params` in the order of `specs`, under their Hugging Face names) into `dir`.
pub fn write(
    dir: &Path,
    cfg: &dyn Architecture,
    labels: &[String],
    problem: ProblemType,
    specs: &[ParamSpec],
    params: &BTreeMap<String, HostTensor>,
) -> Result<()> {
    let value = |spec: &ParamSpec| {
        (params.get(&spec.name).map(Cow::Borrowed))
            .with_context(|| format!("no value for parameter {}", spec.name))
    };
    write_with(dir, cfg, labels, problem, specs, &value)
}

/// [`write`] with each tensor made by `value` only when it is written, so writing holds one
/// tensor of the model at a time (a model read back from its checkpoint and merged tensor by
/// tensor).
pub fn write_with<'a>(
    dir: &Path,
    cfg: &dyn Architecture,
    labels: &[String],
    problem: ProblemType,
    specs: &[ParamSpec],
    value: &dyn Fn(&ParamSpec) -> Result<Cow<'a, HostTensor>>,
) -> Result<()> {
    fs_err::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = serde_json::to_vec_pretty(&cfg.hf_config(labels, problem)?)?;
    fs_err::write(dir.join(CONFIG_FILE), config)?;
    let entries: Vec<(&str, &[i64])> = (specs.iter())
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    super::weights::save_streamed(&dir.join(WEIGHTS_FILE), &entries, &|i| value(&specs[i]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gpt_neo::GptNeoConfig;

    fn written(cfg: &GptNeoConfig) -> Value {
        let labels = ["a".to_string(), "b".to_string()];
        cfg.hf_config(&labels, ProblemType::SingleLabelClassification)
            .expect("a config")
    }

    #[test]
    fn a_written_config_names_the_padding_token_transformers_needs_for_a_batch() {
        // A fresh model: pipe pads with 0, the trained tokenizers' end-of-text token.
        let fresh = written(&GptNeoConfig::test(50, 2));
        assert_eq!(fresh["pad_token_id"], 0);
        assert!(fresh.get("eos_token_id").is_none());
        // A hub checkpoint's special tokens are kept, and its end-of-text token pads.
        let hub: GptNeoConfig = serde_json::from_value(json!({
            "vocab_size": 50257, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
            "max_position_embeddings": 32,
            "attention_types": [[["global", "local"], 1]],
            "bos_token_id": 50256, "eos_token_id": 50256,
        }))
        .expect("a GPT-Neo config");
        let hub = written(&hub);
        assert_eq!(
            (
                &hub["bos_token_id"],
                &hub["eos_token_id"],
                &hub["pad_token_id"]
            ),
            (&json!(50256), &json!(50256), &json!(50256))
        );
        // A config's own padding token wins.
        let mut own = GptNeoConfig::test(50, 2);
        own.other.insert("pad_token_id".into(), json!(7));
        own.other.insert("eos_token_id".into(), json!(50256));
        assert_eq!(written(&own)["pad_token_id"], 7);
    }
}
