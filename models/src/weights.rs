//! Parameter values from a safetensors checkpoint (the `model.safetensors` of a Hugging Face
//! checkpoint, or its shards), checked against a model's declared [`ParamSpec`] list. The
//! files are read through memory maps ([`Checkpoint`]): each tensor is copied once, into its
//! own `f32` buffer, and `bfloat16`/`float16` tensors are converted exactly on the way.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::HostTensor;
use safetensors::Dtype;
use safetensors::tensor::View;

use pipe_onnx::HostData;

use super::checkpoint::{Checkpoint, bad_input};
use super::{ParamSpec, init_param};

/// Reads `path` (a safetensors file, or a sharded checkpoint's `model.safetensors.index.json`)
/// and returns a value for every spec; see [`from_checkpoint`].
pub fn load(
    path: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let checkpoint = Checkpoint::open(path)?;
    from_checkpoint(&checkpoint, specs, fresh, seed)
        .with_context(|| format!("loading {}", path.display()))
}

/// [`from_checkpoint`] over the safetensors file held in `bytes`.
pub fn from_bytes(
    bytes: &[u8],
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let checkpoint = Checkpoint::from_bytes(bytes.to_vec(), "the safetensors bytes")
        .context("not a safetensors file")?;
    from_checkpoint(&checkpoint, specs, fresh, seed)
}

/// A value for every spec from `checkpoint`, by name. A spec whose name is in `fresh` and
/// which the checkpoint lacks (a classification head on a base checkpoint) is initialised
/// from `seed`; any other missing tensor, a shape mismatch or an element type other than
/// float32, bfloat16 or float16 is an error naming the tensor and its file. Tensors the model
/// does not declare are ignored (buffers such as BERT's int64 `embeddings.position_ids`).
///
/// A checkpoint of the base model alone names its tensors without the base model's prefix
/// (`embeddings.word_embeddings.weight` for `bert.embeddings.word_embeddings.weight`, as
/// sentence-transformers saves BERT): when no tensor of the checkpoint carries the prefix of
/// the first spec, specs under that prefix are looked up without it, as transformers'
/// `from_pretrained` does with `base_model_prefix`.
///
/// Every tensor's shape and type is checked before the first one is read, so a bad
/// checkpoint fails fast, before gigabytes are copied.
pub fn from_checkpoint(
    checkpoint: &Checkpoint,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for_each(checkpoint, specs, fresh, seed, |spec, value| {
        out.insert(spec.name.clone(), value);
        Ok(())
    })?;
    Ok(out)
}

/// [`from_checkpoint`] one tensor at a time: after the same checks, calls `each` with every
/// spec and its value, in the order of `specs`; a caller that drops each value holds one
/// tensor of the checkpoint at a time (export streams the weights this way).
pub fn for_each(
    checkpoint: &Checkpoint,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
    mut each: impl FnMut(&ParamSpec, HostTensor) -> Result<()>,
) -> Result<()> {
    for (spec, stored) in plan(checkpoint, specs, fresh).map_err(bad_input)? {
        let value = match stored {
            Some(stored) => HostTensor::f32(&spec.shape, checkpoint.read_f32(stored)?)?,
            None => init_param(spec, seed),
        };
        each(spec, value)?;
    }
    Ok(())
}

/// Each spec with the name its tensor has in `checkpoint`, or `None` for one of `fresh` that
/// it lacks; an error naming the tensor (and its file) for a missing tensor, a shape or an
/// element type that does not fit.
fn plan<'a>(
    checkpoint: &'a Checkpoint,
    specs: &'a [ParamSpec],
    fresh: &[&str],
) -> Result<Vec<(&'a ParamSpec, Option<&'a str>)>> {
    let base = specs
        .first()
        .and_then(|s| s.name.split_once('.'))
        .map(|(prefix, _)| format!("{prefix}."));
    let bare = base
        .as_deref()
        .filter(|p| !checkpoint.names().any(|n| n.starts_with(p)));
    let mut planned = Vec::with_capacity(specs.len());
    for spec in specs {
        let stored = match bare.and_then(|p| spec.name.strip_prefix(p)) {
            Some(unprefixed) => unprefixed,
            None => spec.name.as_str(),
        };
        let Some(meta) = checkpoint.meta(stored) else {
            if fresh.contains(&spec.name.as_str()) {
                planned.push((spec, None));
                continue;
            }
            let held: Vec<&str> = checkpoint.names().collect();
            bail!(
                "the checkpoint has no tensor {stored} (of {} tensors, the first are {}); \
                 is it a checkpoint of this model type and size?",
                held.len(),
                held.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            )
        };
        let shape: Vec<i64> = meta.shape.iter().map(|&d| d as i64).collect();
        if shape != spec.shape {
            bail!(
                "shape mismatch for {stored}: checkpoint has {:?}, the config needs {:?} (in {})",
                shape,
                spec.shape,
                meta.file.display()
            );
        }
        if !matches!(meta.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            bail!(
                "{stored} in {} is {:?}; pipe reads float32, bfloat16 and float16 checkpoints \
                 (save the model with `model.float().save_pretrained(...)`)",
                meta.file.display(),
                meta.dtype
            );
        }
        planned.push((spec, Some(stored)));
    }
    Ok(planned)
}

/// Every tensor of the safetensors file `path` (float32, bfloat16 or float16; read as f32),
/// by name.
pub fn load_all(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let checkpoint = Checkpoint::open(path)?;
    let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
    names
        .into_iter()
        .map(|name| {
            let meta = checkpoint.meta(&name).context("a listed tensor")?;
            let shape: Vec<i64> = meta.shape.iter().map(|&d| d as i64).collect();
            let values = checkpoint.read_f32(&name)?;
            Ok((name, HostTensor::f32(&shape, values)?))
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
