//! The starting model: a fresh one of a preset or inline shape, or a Hugging Face folder from
//! the workspace or the local hub cache; and its first weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use pipe_onnx::{DType, HostTensor};

use super::params::ModelSource;
use pipe_models::{
    Architecture, ModelConfig, ParamSpec, hf_folder, init_param, init_params_with, lora, weights,
};

/// What training starts from.
pub struct StartingModel {
    /// The model's shape, with `num_labels` set to the data's.
    pub config: ModelConfig,
    /// Where the weights come from: a model folder, or `None` for a fresh initialisation.
    pub folder: Option<PathBuf>,
    /// Whether the classification head is fresh (always for fresh models; for a folder, when
    /// its labels differ from the data's or it has none).
    pub fresh_head: bool,
}

/// Resolves `source` for data with `labels` and a tokenizer of `vocab_size` tokens.
pub fn resolve(
    source: &ModelSource,
    workspace: &Path,
    hub_cache: &Path,
    vocab_size: usize,
    labels: &[String],
) -> Result<StartingModel> {
    let (mut config, folder) = match source {
        ModelSource::Config(shape) => (shape.fresh(vocab_size, labels.len())?, None),
        ModelSource::Path(path) => {
            let dir = workspace.join(path);
            (hf_folder::read_config(&dir)?, Some(dir))
        }
        ModelSource::Hub(repo) => {
            let Some(dir) =
                pipe_models::hub::snapshot_with(hub_cache, repo, hf_folder::CONFIG_FILE)
            else {
                bail!(
                    "model `{repo}` is not in the Hugging Face cache ({}); download it with \
                     `hf download {repo} config.json model.safetensors` (or \
                     `huggingface-cli download ...`), or point `model: {{ path: ... }}` at a \
                     local copy",
                    hub_cache.display()
                );
            };
            (hf_folder::read_config(&dir)?, Some(dir))
        }
        ModelSource::Embedded(model) => {
            let dir = model.verified()?;
            (hf_folder::read_config(&dir)?, Some(dir))
        }
    };
    if vocab_size > config.vocab_size() {
        bail!(
            "the tokenizer has {vocab_size} tokens but the model's embedding has only {} rows; \
             use the model's own tokenizer (`tokenizer: {{ hub: ... }}`) or a smaller trained \
             vocabulary",
            config.vocab_size()
        );
    }
    let fresh_head = match &folder {
        None => true,
        Some(_) => !same_labels(&config, labels),
    };
    config.set_labels(labels.len());
    config.validate()?;
    Ok(StartingModel {
        config,
        folder,
        fresh_head,
    })
}

/// Whether a checkpoint's `id2label` names exactly `labels`, in order.
fn same_labels(config: &ModelConfig, labels: &[String]) -> bool {
    let Some(id2label) = config.id2label() else {
        return false;
    };
    id2label.len() == labels.len()
        && labels
            .iter()
            .enumerate()
            .all(|(i, l)| id2label.get(&i.to_string()) == Some(l))
}

impl StartingModel {
    /// The first value of every parameter of `specs`: read from the folder (the head fresh
    /// when [`Self::fresh_head`], LoRA matrices always) or initialised from `seed`.
    pub fn weights(&self, specs: &[ParamSpec], seed: u64) -> Result<BTreeMap<String, HostTensor>> {
        self.weights_with(specs, seed, &weights::keep)
    }

    /// [`Self::weights`], each tensor through `transform` as it is read or initialised, so a
    /// transformed model (frozen weights quantized) is never whole in f32.
    pub fn weights_with(
        &self,
        specs: &[ParamSpec],
        seed: u64,
        transform: weights::Transform,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let Some(dir) = &self.folder else {
            return init_params_with(specs, seed, transform);
        };
        let (read, fresh, may_lack) = self.split(specs);
        let may_lack: Vec<&str> = may_lack.iter().map(String::as_str).collect();
        let mut weights = hf_folder::read_weights_with(dir, &read, &may_lack, seed, transform)?;
        for spec in fresh {
            weights.extend(transform(
                spec,
                weights::Pending::Fresh(init_param(spec, seed)),
            )?);
        }
        Ok(weights)
    }

    /// The first parameter of `specs` the folder's checkpoint holds a value that is not
    /// finite in, with that value's index; `None` when every value is finite, or for a fresh
    /// model. Reads one tensor at a time.
    pub fn first_non_finite(&self, specs: &[ParamSpec]) -> Result<Option<(String, usize)>> {
        if self.folder.is_none() {
            return Ok(None);
        }
        let (read, _, _) = self.split(specs);
        for spec in &read {
            for (name, tensor) in self.weights(std::slice::from_ref(spec), 0)? {
                let values = tensor.f32_range(0..spec.numel()).unwrap_or_default();
                if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                    return Ok(Some((name, at)));
                }
            }
        }
        Ok(None)
    }

    /// The parameters of the model (its base: no LoRA) that its checkpoint stores as 16-bit
    /// floats, with that type, from the checkpoint's headers; none for a fresh model.
    pub fn half_dtypes(&self) -> Result<BTreeMap<String, DType>> {
        let Some(dir) = &self.folder else {
            return Ok(BTreeMap::new());
        };
        let specs = pipe_models::param_specs(&self.config)?;
        let (read, _, may_lack) = self.split(&specs);
        let may_lack: Vec<&str> = may_lack.iter().map(String::as_str).collect();
        hf_folder::half_dtypes(dir, &read, &may_lack)
    }

    /// `specs` as read from the folder, the ones initialised fresh (the head when
    /// [`Self::fresh_head`], LoRA matrices), and the names the folder may lack.
    fn split<'s>(
        &self,
        specs: &'s [ParamSpec],
    ) -> (Vec<ParamSpec>, Vec<&'s ParamSpec>, Vec<String>) {
        let head = self.config.head_params();
        let (fresh, read): (Vec<&ParamSpec>, Vec<&ParamSpec>) = specs
            .iter()
            .partition(|s| (self.fresh_head && head.contains(&s.name)) || lora::is_lora(&s.name));
        let read = read.into_iter().cloned().collect();
        let may_lack = head
            .into_iter()
            .chain(self.config.optional_params())
            .collect();
        (read, fresh, may_lack)
    }
}
