//! Parameter values from a safetensors file (the `model.safetensors` of a Hugging Face
//! checkpoint), checked against a model's declared [`ParamSpec`] list.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::HostTensor;
use safetensors::tensor::View;
use safetensors::{Dtype, SafeTensors};

use pipe_onnx::HostData;

use super::{ParamSpec, init_param};

/// Reads `path` and returns a value for every spec; see [`from_bytes`].
pub fn load(
    path: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = fs_err::read(path).with_context(|| format!("reading {}", path.display()))?;
    from_bytes(&bytes, specs, fresh, seed).with_context(|| format!("loading {}", path.display()))
}

/// A value for every spec from the safetensors `bytes`, by name. A spec whose name is in
/// `fresh` and which the file lacks (a classification head on a base checkpoint) is
/// initialised from `seed`; any other missing tensor, a shape mismatch or a dtype other than
/// f32 is an error naming the tensor. Tensors the model does not declare are ignored (buffers
/// such as BERT's int64 `embeddings.position_ids`).
///
/// A checkpoint of the base model alone names its tensors without the base model's prefix
/// (`embeddings.word_embeddings.weight` for `bert.embeddings.word_embeddings.weight`, as
/// sentence-transformers saves BERT): when no tensor of the file carries the prefix of the
/// first spec, specs under that prefix are looked up without it, as transformers'
/// `from_pretrained` does with `base_model_prefix`.
pub fn from_bytes(
    bytes: &[u8],
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
    let names = st.names();
    let base = specs
        .first()
        .and_then(|s| s.name.split_once('.'))
        .map(|(prefix, _)| format!("{prefix}."));
    let bare = base
        .as_deref()
        .filter(|p| !names.iter().any(|n| n.starts_with(p)));
    let mut out = BTreeMap::new();
    for spec in specs {
        let stored = match bare.and_then(|p| spec.name.strip_prefix(p)) {
            Some(unprefixed) => unprefixed,
            None => spec.name.as_str(),
        };
        let view = match st.tensor(stored) {
            Ok(v) => v,
            Err(_) if fresh.contains(&spec.name.as_str()) => {
                out.insert(spec.name.clone(), init_param(spec, seed));
                continue;
            }
            Err(_) => {
                let mut held = names.clone();
                held.sort_unstable();
                bail!(
                    "the checkpoint has no tensor {stored} (of {} tensors, the first are {}); \
                     is it a checkpoint of this model type and size?",
                    held.len(),
                    held.iter().take(3).copied().collect::<Vec<_>>().join(", ")
                )
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != spec.shape {
            bail!(
                "shape mismatch for {stored}: checkpoint has {:?}, the config needs {:?}",
                shape,
                spec.shape
            );
        }
        if view.dtype() != Dtype::F32 {
            bail!(
                "{stored} is {:?}; only float32 checkpoints are supported (save the model with \
                 `model.float().save_pretrained(...)`)",
                view.dtype()
            );
        }
        out.insert(
            spec.name.clone(),
            HostTensor::f32(&shape, f32s(view.data()))?,
        );
    }
    Ok(out)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Every tensor of the safetensors file `path` (all must be f32), by name.
pub fn load_all(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = fs_err::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != Dtype::F32 {
                bail!("{name} in {} is not float32", path.display());
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            Ok((name, HostTensor::f32(&shape, f32s(view.data()))?))
        })
        .collect()
}

/// Writes f32 `tensors` (name, value; in this order) to the safetensors file `path`, with the
/// `format: pt` metadata `transformers` looks for.
pub fn save(path: &Path, tensors: &[(&str, &HostTensor)]) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let HostData::F32(values) = tensor.data() else {
            bail!("tensor {name} is not float32");
        };
        views.push((*name, tensor.shape(), values.as_slice()));
    }
    save_views(path, &views)
}

/// [`save`] from borrowed `(name, shape, values)` triples; each tensor is converted to bytes
/// only while it is written, so saving needs no second copy of the whole state.
pub fn save_views(path: &Path, tensors: &[(&str, &[i64], &[f32])]) -> Result<()> {
    let views = tensors.iter().map(|&(name, shape, values)| {
        (
            name,
            F32View {
                shape: shape.iter().map(|&d| d as usize).collect(),
                values,
            },
        )
    });
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// An f32 tensor for safetensors, turned into little-endian bytes when asked.
struct F32View<'a> {
    shape: Vec<usize>,
    values: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}
