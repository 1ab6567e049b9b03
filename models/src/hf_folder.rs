//! A Hugging Face GPT-Neo model folder: `config.json` + `model.safetensors`, as
//! `save_pretrained` writes it and `from_pretrained` reads it.
//!
//! [`write`] is what finetune's `model/` output holds (plus the tokenizer and labels, copied by
//! the stage); [`read_config`] and [`read_weights`] take any such folder, ours or one
//! downloaded from the hub.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::HostTensor;
use serde_json::{Value, json};

use super::ParamSpec;
use super::gpt_neo::{GptNeoConfig, ProblemType};

/// The config file of a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Reads `dir/config.json` as a GPT-Neo config, refusing other model types.
pub fn read_config(dir: &Path) -> Result<GptNeoConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; a model folder needs config.json and model.safetensors",
            path.display()
        )
    })?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    match value.get("model_type").and_then(Value::as_str) {
        Some("gpt_neo") | None => {}
        Some(other) => bail!(
            "{} describes a `{other}` model; only GPT-Neo (`model_type: gpt_neo`) is supported",
            path.display()
        ),
    }
    let cfg: GptNeoConfig = serde_json::from_value(value)
        .with_context(|| format!("{} is not a GPT-Neo config", path.display()))?;
    cfg.validate()
        .with_context(|| format!("in {}", path.display()))?;
    Ok(cfg)
}

/// The path of `dir/model.safetensors`, or an error saying how to get one when the folder
/// only has PyTorch pickles (which `pipe` never unpickles).
pub fn weights_path(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join(WEIGHTS_FILE);
    if path.is_file() {
        return Ok(path);
    }
    if dir.join("pytorch_model.bin").is_file() {
        bail!(
            "{} has only pytorch_model.bin; pipe reads safetensors and never unpickles. \
             Convert it once with: python -c \"from transformers import AutoModel; \
             AutoModel.from_pretrained('{0}').save_pretrained('{0}', safe_serialization=True)\"",
            dir.display()
        );
    }
    bail!("{} has no {WEIGHTS_FILE}", dir.display())
}

/// Reads the weights of `dir` for `specs`; parameters named in `fresh` that the file lacks (a
/// classification head on a base checkpoint) start from `seed`. See [`super::weights::from_bytes`].
pub fn read_weights(
    dir: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    super::weights::load(&weights_path(dir)?, specs, fresh, seed)
}

/// The `config.json` that `transformers` loads as `GPTNeoForSequenceClassification`:
/// `cfg` plus the model type, the architecture, `num_labels`, `id2label`/`label2id` from
/// `labels`, the problem type and a `pad_token_id` ([`GptNeoConfig::pad_token`]), without
/// which `transformers` refuses a batch of more than one row.
pub fn hf_config(cfg: &GptNeoConfig, labels: &[String], problem: ProblemType) -> Result<Value> {
    let mut cfg = cfg.clone();
    cfg.num_labels = Some(labels.len());
    cfg.id2label = Some(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect(),
    );
    cfg.problem_type = Some(problem);
    cfg.pad_token_id = Some(cfg.pad_token());
    let mut value = serde_json::to_value(&cfg)?;
    let layers: Vec<Value> = cfg
        .attention_layers()
        .iter()
        .map(|k| serde_json::to_value(k).unwrap_or(Value::Null))
        .collect();
    let label2id: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    let extra = json!({
        "model_type": "gpt_neo",
        "architectures": ["GPTNeoForSequenceClassification"],
        "attention_layers": layers,
        "label2id": label2id,
        "dtype": "float32",
        "use_cache": false,
    });
    if let (Value::Object(map), Value::Object(extra)) = (&mut value, extra) {
        map.extend(extra);
    }
    Ok(value)
}

/// Writes `config.json` (see [`hf_config`]) and `model.safetensors` (the tensors of `params`
/// in the order of `specs`, under their Hugging Face names) into `dir`.
pub fn write(
    dir: &Path,
    cfg: &GptNeoConfig,
    labels: &[String],
    problem: ProblemType,
    specs: &[ParamSpec],
    params: &BTreeMap<String, HostTensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = serde_json::to_vec_pretty(&hf_config(cfg, labels, problem)?)?;
    std::fs::write(dir.join(CONFIG_FILE), config)?;
    let tensors = specs
        .iter()
        .map(|spec| {
            params
                .get(&spec.name)
                .map(|t| (spec.name.as_str(), t))
                .with_context(|| format!("no value for parameter {}", spec.name))
        })
        .collect::<Result<Vec<_>>>()?;
    super::weights::save(&dir.join(WEIGHTS_FILE), &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(cfg: &GptNeoConfig) -> Value {
        let labels = ["a".to_string(), "b".to_string()];
        hf_config(cfg, &labels, ProblemType::SingleLabelClassification).expect("a config")
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
        let own = GptNeoConfig {
            pad_token_id: Some(7),
            eos_token_id: Some(50256),
            ..GptNeoConfig::test(50, 2)
        };
        assert_eq!(written(&own)["pad_token_id"], 7);
    }
}
