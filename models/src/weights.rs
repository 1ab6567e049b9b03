//! Parameter values from a safetensors checkpoint (the `model.safetensors` of a Hugging Face
//! checkpoint, or its shards), checked against a model's declared [`ParamSpec`] list. The
//! files are memory-mapped ([`Checkpoint`]): each tensor is copied once, into its own `f32`
//! buffer (`bfloat16`/`float16` converted exactly on the way), or, for a frozen weight, read
//! in place from the map ([`Pending::in_place`]; in its stored 16-bit type where the graph
//! takes that, [`Pending::half`]). Models are written back a piece of a tensor at a time
//! ([`save_streamed`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use fs_err::File;
use pipe_onnx::quantize::round_bf16;
use pipe_onnx::{DType, FrozenDType, HostTensor, QuantizedWeight};
use safetensors::Dtype;
use safetensors::tensor::View;

use super::checkpoint::{Checkpoint, bad_input, half_dtype};
use super::{ParamSpec, init_param};

/// Reads `path` (a safetensors file, or a sharded checkpoint's `model.safetensors.index.json`)
/// and returns a value for every spec; see [`from_checkpoint`].
pub fn load(
    path: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    load_with(path, specs, fresh, seed, &keep)
}

/// A parameter's value as loading hands it to a [`Transform`], before it is read: the
/// transform chooses how ([`Pending::read`], [`Pending::in_place`]).
pub enum Pending<'a> {
    /// A tensor of a checkpoint (its shape and type already checked against the spec).
    Stored {
        /// The checkpoint.
        checkpoint: &'a Checkpoint,
        /// The tensor's name in it.
        name: &'a str,
        /// The spec's shape.
        shape: &'a [i64],
    },
    /// Initialised fresh (a head the checkpoint lacks, a LoRA matrix, a from-scratch model).
    Fresh(HostTensor),
}

impl Pending<'_> {
    /// The values in memory of their own (`float32`; `bfloat16`/`float16` converted).
    pub fn read(self) -> Result<HostTensor> {
        match self {
            Pending::Stored {
                checkpoint,
                name,
                shape,
            } => Ok(HostTensor::f32(shape, checkpoint.read_f32(name)?)?),
            Pending::Fresh(t) => Ok(t),
        }
    }

    /// The values read where they lie in the checkpoint's memory map when they can be
    /// ([`Checkpoint::in_place_f32`]), else [`Pending::read`]. For weights that are only
    /// read (frozen ones): no copy to make while loading, and only the pages a run reads
    /// become resident.
    pub fn in_place(self) -> Result<HostTensor> {
        match self {
            Pending::Stored {
                checkpoint,
                name,
                shape,
            } => match checkpoint.in_place_f32(name) {
                Some(values) => Ok(HostTensor::f32_shared(shape, values)?),
                None => Ok(HostTensor::f32(shape, checkpoint.read_f32(name)?)?),
            },
            Pending::Fresh(t) => Ok(t),
        }
    }

    /// The values in the 16-bit float type `dtype`: read in place when the checkpoint stores
    /// them so ([`Checkpoint::in_place_half`]), else read and rounded to `bfloat16` (ties to
    /// even) or `float16`. For frozen weights the graph reads in that type
    /// ([`pipe_onnx::Graph::gather_stored_tables`], `frozen_dtype: bf16`).
    pub fn half(self, dtype: DType) -> Result<HostTensor> {
        if let Pending::Stored {
            checkpoint,
            name,
            shape,
        } = &self
            && checkpoint.meta(name).and_then(|m| half_dtype(m.dtype)) == Some(dtype)
            && let Some(t) = checkpoint.in_place_half(name, shape)?
        {
            return Ok(t);
        }
        self.transient(|t| {
            let values = t.as_f32().context("f32 values")?;
            Ok(match dtype {
                DType::BF16 => HostTensor::bf16(t.shape(), round_bf16(values))?,
                DType::F16 => {
                    let values = values.iter().map(|&v| half::f16::from_f32(v));
                    HostTensor::f16(t.shape(), values.collect())?
                }
                other => bail!("{other} is not a 16-bit float type"),
            })
        })
    }

    /// `f` of the values, read in place when they can be and handed back to the kernel
    /// after ([`Checkpoint::release`]): for weights turned into something else as they are
    /// read (quantized), so that loading writes no fresh memory for them.
    pub fn transient<T>(self, f: impl FnOnce(&HostTensor) -> Result<T>) -> Result<T> {
        match self {
            Pending::Stored {
                checkpoint, name, ..
            } => {
                let out = f(&self.in_place()?);
                checkpoint.release(name);
                out
            }
            Pending::Fresh(t) => f(&t),
        }
    }
}

/// What loading does with each parameter: reads it and keeps it ([`keep`]), reads it in place,
/// or turns it into other tensors (frozen weights quantized), one at a time, so a model whose
/// tensors are transformed is never whole in f32.
pub type Transform<'a> =
    &'a (dyn Fn(&ParamSpec, Pending<'_>) -> Result<Vec<(String, HostTensor)>> + Sync);

/// The [`Transform`] that reads every tensor into memory of its own, under its spec's name.
pub fn keep(spec: &ParamSpec, t: Pending<'_>) -> Result<Vec<(String, HostTensor)>> {
    Ok(vec![(spec.name.clone(), t.read()?)])
}

/// The [`Transform`] of a training run: each weight named in `quantized` becomes its
/// quantized inputs ([`QuantizedWeight::quantize`]; a `bfloat16` one read in place when the
/// checkpoint stores it so), the tables named in `half` are read in their 16-bit type
/// ([`Pending::half`]), the other frozen weights (`frozen` says which) stay in place
/// ([`Pending::in_place`]), and the trained ones are read.
pub fn for_training<'a>(
    quantized: &'a [QuantizedWeight],
    half: &'a BTreeMap<String, DType>,
    frozen: impl Fn(&str) -> bool + Sync + 'a,
) -> impl Fn(&ParamSpec, Pending<'_>) -> Result<Vec<(String, HostTensor)>> + Sync + 'a {
    let by_name: BTreeMap<&str, &QuantizedWeight> =
        quantized.iter().map(|q| (q.name.as_str(), q)).collect();
    move |spec, t| {
        if let Some(q) = by_name.get(spec.name.as_str()) {
            return match q.dtype {
                FrozenDType::Bf16 => Ok(vec![(q.values_name(), t.half(DType::BF16)?)]),
                _ => t.transient(|w| Ok(q.quantize(w)?)),
            };
        }
        if let Some(&dtype) = half.get(&spec.name) {
            return Ok(vec![(spec.name.clone(), t.half(dtype)?)]);
        }
        match frozen(&spec.name) {
            true => Ok(vec![(spec.name.clone(), t.in_place()?)]),
            false => keep(spec, t),
        }
    }
}

/// [`load`], each tensor through `transform` as it is read.
pub fn load_with(
    path: &Path,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
    transform: Transform,
) -> Result<BTreeMap<String, HostTensor>> {
    let checkpoint = Checkpoint::open(path)?;
    from_checkpoint(&checkpoint, specs, fresh, seed, transform)
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
    from_checkpoint(&checkpoint, specs, fresh, seed, &keep)
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
/// checkpoint fails fast, before gigabytes are copied. Each value goes through `transform`.
pub fn from_checkpoint(
    checkpoint: &Checkpoint,
    specs: &[ParamSpec],
    fresh: &[&str],
    seed: u64,
    transform: Transform,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for_each_pending(checkpoint, specs, fresh, seed, |spec, pending| {
        out.extend(transform(spec, pending)?);
        Ok(())
    })?;
    Ok(out)
}

/// The specs whose tensors `checkpoint` stores as 16-bit floats, with that type (by the
/// names and checks of [`from_checkpoint`]).
pub fn half_dtypes(
    checkpoint: &Checkpoint,
    specs: &[ParamSpec],
    fresh: &[&str],
) -> Result<BTreeMap<String, DType>> {
    let mut out = BTreeMap::new();
    for (spec, stored) in plan(checkpoint, specs, fresh).map_err(bad_input)? {
        let dtype = stored
            .and_then(|name| checkpoint.meta(name))
            .map(|m| m.dtype);
        if let Some(half) = dtype.and_then(half_dtype) {
            out.insert(spec.name.clone(), half);
        }
    }
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
    for_each_pending(checkpoint, specs, fresh, seed, |spec, pending| {
        each(spec, pending.read()?)
    })
}

/// [`for_each`] with each value not yet read ([`Pending`]).
fn for_each_pending<'a>(
    checkpoint: &'a Checkpoint,
    specs: &'a [ParamSpec],
    fresh: &[&str],
    seed: u64,
    mut each: impl FnMut(&'a ParamSpec, Pending<'a>) -> Result<()>,
) -> Result<()> {
    for (spec, stored) in plan(checkpoint, specs, fresh).map_err(bad_input)? {
        let pending = match stored {
            Some(name) => Pending::Stored {
                checkpoint,
                name,
                shape: &spec.shape,
            },
            None => Pending::Fresh(init_param(spec, seed)),
        };
        each(spec, pending)?;
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
        let Some(values) = tensor.as_f32() else {
            bail!("tensor {name} is not float32");
        };
        views.push((*name, tensor.shape(), values));
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

/// Elements per piece when [`save_streamed`] writes a tensor (4 MiB of `f32`).
const WRITE_CHUNK: usize = 1 << 20;

/// [`save`] with each tensor made only when it is written: `value(i)` gives `entries[i]`
/// (name, shape), so writing a model holds one of its tensors at a time. Each is written
/// in pieces from where it lies, `f32` as it is and 16-bit floats widened a piece at a time
/// ([`HostTensor::f32_range`]), so writing makes no copy of a tensor. The first error of
/// `value` fails the save (the file is then incomplete; it is the caller's output).
pub fn save_streamed<'a>(
    path: &Path,
    entries: &[(&str, &[i64])],
    value: &dyn Fn(usize) -> Result<Cow<'a, HostTensor>>,
) -> Result<()> {
    let header = safetensors_header(entries)?;
    let write = || -> Result<()> {
        let mut out = BufWriter::with_capacity(WRITE_CHUNK, File::create(path)?);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (index, &(name, shape)) in entries.iter().enumerate() {
            let tensor = value(index).with_context(|| format!("writing {name}"))?;
            write_f32(&mut out, &tensor, shape).with_context(|| format!("writing {name}"))?;
        }
        out.flush()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The JSON header of a safetensors file of `f32` `entries`, in their order, with the
/// `format: pt` metadata `transformers` looks for, padded with spaces so the data that
/// follows it starts 8-byte aligned.
fn safetensors_header(entries: &[(&str, &[i64])]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for &(name, shape) in entries {
        let elements = shape.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        });
        let bytes = elements
            .and_then(|n| n.checked_mul(4))
            .with_context(|| format!("tensor {name} has a bad shape {shape:?}"))?;
        let info = serde_json::json!({
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + bytes],
        });
        if header.insert(name.to_string(), info).is_some() {
            bail!("tensor {name} is listed twice");
        }
        offset += bytes;
    }
    let mut bytes = serde_json::to_vec(&header)?;
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// Writes `tensor`'s elements as little-endian `f32`, a piece at a time; an error when it
/// is not a float tensor of `shape`'s size.
fn write_f32(out: &mut impl Write, tensor: &HostTensor, shape: &[i64]) -> Result<()> {
    let len: i64 = tensor.shape().iter().product();
    let declared: i64 = shape.iter().product();
    if len != declared || tensor.f32_range(0..0).is_none() {
        bail!(
            "a {} tensor of shape {:?} where f32 {shape:?} was declared",
            tensor.dtype(),
            tensor.shape(),
        );
    }
    let len = usize::try_from(len)?;
    for start in (0..len).step_by(WRITE_CHUNK) {
        let piece = tensor
            .f32_range(start..len.min(start + WRITE_CHUNK))
            .context("a piece of the tensor")?;
        out.write_all(&le_bytes(&piece))?;
    }
    Ok(())
}

/// `values` as the little-endian bytes safetensors stores: the same memory on a little-endian
/// host, a converted copy otherwise.
fn le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
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
        le_bytes(self.values)
    }

    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_save_writes_each_tensor_and_fails_on_the_first_bad_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("m.safetensors");
        let entries: Vec<(&str, &[i64])> = vec![("a", &[2]), ("b", &[1, 3])];
        let value = |i: usize| {
            Ok(Cow::Owned(HostTensor::f32(
                entries[i].1,
                vec![i as f32 + 0.5; 2 + i],
            )?))
        };
        save_streamed(&path, &entries, &value).expect("saved");
        let back = load_all(&path).expect("read back");
        assert_eq!(back["a"].as_f32(), Some(&[0.5, 0.5][..]));
        assert_eq!(back["b"].as_f32(), Some(&[1.5, 1.5, 1.5][..]));

        let failing = |i: usize| match i {
            0 => Ok(Cow::Owned(HostTensor::f32(&[2], vec![0.0; 2])?)),
            _ => bail!("no weights left"),
        };
        let err = format!(
            "{:#}",
            save_streamed(&path, &entries, &failing).unwrap_err()
        );
        assert!(
            err.contains("writing b") && err.contains("no weights left"),
            "{err}"
        );
        let wrong_shape = |_: usize| Ok(Cow::Owned(HostTensor::f32(&[1], vec![0.0])?));
        let err = format!(
            "{:#}",
            save_streamed(&path, &entries, &wrong_shape).unwrap_err()
        );
        assert!(err.contains("writing a") && err.contains("[1]"), "{err}");
    }
}
