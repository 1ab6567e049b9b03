//! A safetensors checkpoint read through memory maps: one `model.safetensors`, or the shards
//! a `model.safetensors.index.json` names, as `save_pretrained` writes them.
//!
//! Opening a checkpoint maps each file and reads only its header (every header is checked
//! against its file's length, so a truncated file is refused before any tensor is read).
//! [`Checkpoint::read_f32`] then reads one tensor into an `f32` buffer, converting `bfloat16`
//! and `float16` exactly (as `torch_dtype=float32` does), through large positioned reads of
//! the file rather than the map's page faults: as fast as `cat` from a cold disk, and no
//! mapped page stays in the process, so it never holds the file and its copy at once.

use fs_err::File;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fs_err::os::unix::fs::FileExt;
use memmap2::{Mmap, UncheckedAdvice};
use pipe_engine::BadInput;
use pipe_onnx::{DType, HostTensor, SharedF32};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// Bytes per read when a tensor is copied out of its file (a multiple of every element size).
const READ_CHUNK: usize = 8 << 20;

/// The file name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The bytes of one safetensors file.
enum Bytes {
    /// Mapped from the file (what [`Checkpoint::open`] does): tensors are read from the file,
    /// or in place from the map, which every tensor read in place shares.
    Mapped { map: Arc<Mmap>, file: File },
    /// Already in memory ([`Checkpoint::from_bytes`]).
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, .. } => map.as_ref(),
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// One safetensors file and its parsed header.
struct MappedFile {
    path: PathBuf,
    map: Bytes,
    /// Where the tensor data starts (after the 8-byte length and the header).
    data_start: usize,
    header: Metadata,
}

/// A checkpoint's tensors, by name, over one or more mapped files.
pub struct Checkpoint {
    files: Vec<MappedFile>,
    /// Each tensor's file (an index into `files`).
    by_name: BTreeMap<String, usize>,
}

/// The layout of `model.safetensors.index.json` that matters here.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// Where a tensor lives and what it holds, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// The file that holds it.
    pub file: PathBuf,
    /// Its element type in the file.
    pub dtype: Dtype,
    /// Its shape in the file.
    pub shape: Vec<usize>,
}

impl Checkpoint {
    /// Opens `path`: a safetensors file, or a sharded checkpoint's index (a file ending in
    /// `.index.json`), whose shards are looked up beside it. Every error is a
    /// [`BadInput`]: the checkpoint is the user's.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Self::open_files(path).map_err(bad_input)
    }

    fn open_files(path: &Path) -> Result<Checkpoint> {
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        if is_index {
            return Self::open_index(path);
        }
        Ok(Self::single(map_file(path, None)?))
    }

    /// The safetensors file held in `bytes` (called `label` in errors).
    pub fn from_bytes(bytes: Vec<u8>, label: &str) -> Result<Checkpoint> {
        Ok(Self::single(parse(
            PathBuf::from(label),
            Bytes::Owned(bytes),
            None,
        )?))
    }

    fn single(file: MappedFile) -> Checkpoint {
        let by_name = file.header.tensors().into_keys().map(|n| (n, 0)).collect();
        Checkpoint {
            files: vec![file],
            by_name,
        }
    }

    /// Opens the shards `index` (a `model.safetensors.index.json`) names, each checked for
    /// presence, completeness and for holding the tensors the index puts in it.
    fn open_index(index: &Path) -> Result<Checkpoint> {
        let (weight_map, shards) = read_index(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = Vec::with_capacity(shards.len());
        let mut position = BTreeMap::new();
        for (shard, first_tensor) in &shards {
            let path = dir.join(shard);
            if !path.is_file() {
                bail!(
                    "{} names the shard {shard} (holding tensor {first_tensor}, among others), \
                     but {} {}; copy or download every shard the index names",
                    index.display(),
                    path.display(),
                    if path.is_dir() {
                        "is a folder, not a file"
                    } else {
                        "does not exist"
                    }
                );
            }
            position.insert(shard.as_str(), files.len());
            files.push(map_file(&path, Some(first_tensor.as_str()))?);
        }
        let mut by_name = BTreeMap::new();
        for (tensor, shard) in &weight_map {
            let at = position[shard.as_str()];
            if files[at].header.info(tensor).is_none() {
                bail!(
                    "{} puts tensor {tensor} in {}, but that shard has no such tensor; the index \
                     and its shards do not belong together (download them again)",
                    index.display(),
                    files[at].path.display()
                );
            }
            by_name.insert(tensor.clone(), at);
        }
        Ok(Checkpoint { files, by_name })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The file, dtype and shape of `name`, if the checkpoint holds it.
    pub fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (file, info) = self.locate(name)?;
        Some(TensorMeta {
            file: file.path.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
        })
    }

    /// The element types of the floating-point tensors, as `torch` names them (`float32`,
    /// `bfloat16`, `float16`), joined by `+` when they differ; `None` when there are none.
    pub fn source_dtype(&self) -> Option<String> {
        let dtypes: BTreeSet<&'static str> = self
            .by_name
            .keys()
            .filter_map(|n| self.locate(n))
            .filter_map(|(_, info)| float_name(info.dtype))
            .collect();
        (!dtypes.is_empty()).then(|| dtypes.into_iter().collect::<Vec<_>>().join("+"))
    }

    /// The values of tensor `name` as `f32` (`float32` copied, `bfloat16` and `float16`
    /// converted exactly). An error names the file and the tensor when the checkpoint lacks
    /// it or holds another element type.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let Some((file, info)) = self.locate(name) else {
            bail!("the checkpoint has no tensor {name}");
        };
        let std::ops::Range { start, end } = file.bytes_of(info);
        match info.dtype {
            Dtype::F32 => file.read_as(name, start, end, |c: [u8; 4]| f32::from_le_bytes(c)),
            Dtype::BF16 => file.read_as(name, start, end, |c: [u8; 2]| {
                half::bf16::from_le_bytes(c).to_f32()
            }),
            Dtype::F16 => file.read_as(name, start, end, |c: [u8; 2]| {
                half::f16::from_le_bytes(c).to_f32()
            }),
            other => Err(bad_input(anyhow::anyhow!(
                "{}: tensor {name} is {other:?}; pipe reads float32, bfloat16 and float16 \
                 weights (save the model with `model.float().save_pretrained(...)`)",
                file.path.display()
            ))),
        }
    }

    /// Tensor `name` read where it lies, when it can be: `float32`, in a mapped file, at an
    /// offset aligned for `f32` (safetensors aligns its data; a `bfloat16` tensor before it can
    /// misalign it). `None` otherwise: read it with [`Checkpoint::read_f32`].
    pub fn in_place_f32(&self, name: &str) -> Option<SharedF32> {
        let (file, info) = self.locate(name)?;
        let Bytes::Mapped { map, .. } = &file.map else {
            return None;
        };
        if info.dtype != Dtype::F32 {
            return None;
        }
        let owner: pipe_onnx::SharedBytes = map.clone();
        SharedF32::new(owner, file.bytes_of(info))
    }

    /// Tensor `name` of shape `shape` read where it lies in its stored 16-bit type, when it is
    /// `bfloat16` or `float16` in a mapped file at an aligned offset; `None` otherwise.
    pub fn in_place_half(&self, name: &str, shape: &[i64]) -> Result<Option<HostTensor>> {
        let Some((file, info)) = self.locate(name) else {
            return Ok(None);
        };
        let (Bytes::Mapped { map, .. }, Some(dtype)) = (&file.map, half_dtype(info.dtype)) else {
            return Ok(None);
        };
        let owner: pipe_onnx::SharedBytes = map.clone();
        Ok(HostTensor::half_shared(
            shape,
            dtype,
            owner,
            file.bytes_of(info),
        )?)
    }

    /// Hands the mapped pages of tensor `name` back to the kernel, once what was read in
    /// place from them is no longer needed: they leave this process's resident set (they stay
    /// in the page cache, and a later read faults them in again from the file).
    pub fn release(&self, name: &str) {
        let Some((file, info)) = self.locate(name) else {
            return;
        };
        if let Bytes::Mapped { map, .. } = &file.map {
            let range = file.bytes_of(info);
            // SAFETY: the map is a read-only shared mapping of a file: MADV_DONTNEED only drops
            // the pages from this process, and any slice still reading them faults them in
            // again from the file. Failing to release them costs memory, not correctness.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
            };
        }
    }

    fn locate(&self, name: &str) -> Option<(&MappedFile, &TensorInfo)> {
        let file = &self.files[*self.by_name.get(name)?];
        Some((file, file.header.info(name)?))
    }
}

/// The graph's element type of a 16-bit float type of safetensors.
pub fn half_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

/// `error` marked as the user's input ([`BadInput`]: `pipe run` exits 2 when it fails a stage).
pub(crate) fn bad_input(error: anyhow::Error) -> anyhow::Error {
    BadInput(error).into()
}

/// The shard files a `model.safetensors.index.json` names, each once, in order; an error when
/// one is not a plain file name beside the index.
pub fn shard_files(index: &Path) -> Result<Vec<String>> {
    Ok(read_index(index)?.1.into_keys().collect())
}

/// The index's `weight_map` (tensor → shard file), and each shard with the first tensor the
/// index puts in it (to name in errors).
type IndexMaps = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Reads and checks `index`; see [`IndexMaps`].
fn read_index(index: &Path) -> Result<IndexMaps> {
    let text = fs_err::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a sharded checkpoint's index (a JSON object with a `weight_map` of \
             tensor name → shard file)",
            index.display()
        )
    })?;
    let mut shards = BTreeMap::new();
    for (tensor, shard) in &parsed.weight_map {
        if shard.is_empty() || shard.contains(['/', '\\']) || shard.starts_with('.') {
            bail!(
                "{} puts tensor {tensor} in `{shard}`, which is not a file name beside the \
                 index; a shard must be a plain file name in the same folder",
                index.display()
            );
        }
        shards
            .entry(shard.clone())
            .or_insert_with(|| tensor.clone());
    }
    Ok((parsed.weight_map, shards))
}

/// `torch`'s name of a floating-point dtype.
fn float_name(dtype: Dtype) -> Option<&'static str> {
    match dtype {
        Dtype::F32 => Some("float32"),
        Dtype::BF16 => Some("bfloat16"),
        Dtype::F16 => Some("float16"),
        Dtype::F64 => Some("float64"),
        _ => None,
    }
}

impl MappedFile {
    /// Where the data of tensor `info` lies in the file.
    fn bytes_of(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let (start, end) = info.data_offsets;
        self.data_start + start..self.data_start + end
    }

    /// The elements of bytes `start..end` (tensor `name`), each `W` bytes turned into an `f32`
    /// by `convert`: from the file in reads of [`READ_CHUNK`], or from bytes held in memory.
    fn read_as<const W: usize>(
        &self,
        name: &str,
        start: usize,
        end: usize,
        convert: impl Fn([u8; W]) -> f32,
    ) -> Result<Vec<f32>> {
        let element = |c: &[u8]| convert(c.try_into().expect("chunks_exact(W) yields W bytes"));
        match &self.map {
            Bytes::Owned(bytes) => Ok(bytes[start..end].chunks_exact(W).map(element).collect()),
            Bytes::Mapped { file, .. } => {
                let mut values = Vec::with_capacity((end - start) / W);
                let mut chunk = vec![0u8; READ_CHUNK.min(end - start)];
                let mut at = start;
                while at < end {
                    let n = chunk.len().min(end - at);
                    file.read_exact_at(&mut chunk[..n], at as u64)
                        .with_context(|| format!("cannot read tensor {name}"))?;
                    values.extend(chunk[..n].chunks_exact(W).map(element));
                    at += n;
                }
                Ok(values)
            }
        }
    }
}

/// Maps `path` and parses its header; `tensor` (one the index puts in it) is named in the
/// error when the file is not a complete safetensors file.
fn map_file(path: &Path, tensor: Option<&str>) -> Result<MappedFile> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the file is mapped read-only. Another process truncating it while it is mapped
    // would fault this one; checkpoints are not rewritten in place by pipe or transformers
    // (the hub cache replaces files by renaming).
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot map {} into memory", path.display()))?;
    let map = Arc::new(map);
    parse(path.to_path_buf(), Bytes::Mapped { map, file }, tensor)
}

/// Parses the header of the safetensors file `map` (read from `path`).
fn parse(path: PathBuf, map: Bytes, tensor: Option<&str>) -> Result<MappedFile> {
    let (header_len, header) = SafeTensors::read_metadata(&map).map_err(|e| {
        let holding = tensor.map_or(String::new(), |t| format!(" (it holds tensor {t})"));
        let entry = mismatched_entry(&map).map_or(String::new(), |e| format!(": {e}"));
        anyhow::anyhow!(
            "{}{holding} is not a complete safetensors file ({e}){entry}; it may be truncated \
             or corrupt: download or copy it again",
            path.display()
        )
    })?;
    Ok(MappedFile {
        path,
        map,
        data_start: 8 + header_len,
        header,
    })
}

/// The first header entry of the safetensors bytes `file` whose byte range does not hold its
/// shape and element type, described (name, type, shape, range), when the header itself parses.
fn mismatched_entry(file: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let header = file.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    entries.iter().find_map(|(name, entry)| {
        let dtype = entry.get("dtype")?.as_str()?;
        let shape: Vec<u64> = serde_json::from_value(entry.get("shape")?.clone()).ok()?;
        let [start, end]: [u64; 2] =
            serde_json::from_value(entry.get("data_offsets")?.clone()).ok()?;
        let width: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let needed = shape
            .iter()
            .try_fold(width, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX);
        let held = end.checked_sub(start);
        (held != Some(needed)).then(|| {
            format!(
                "tensor {name} is {dtype} of shape {shape:?}, {needed} bytes, but its \
                 data_offsets [{start}, {end}] hold {}",
                held.map_or("a negative range".to_string(), |h| format!("{h} bytes"))
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;

    use super::*;

    fn one_tensor(dtype: Dtype, bits: &[u16]) -> Checkpoint {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = TensorView::new(dtype, vec![bits.len()], &bytes).expect("a view");
        let file = safetensors::serialize([("t", view)], None).expect("serialized");
        Checkpoint::from_bytes(file, "t.safetensors").expect("a checkpoint")
    }

    #[test]
    fn an_entry_whose_range_does_not_fit_its_type_is_named() {
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F64","shape":[2],"data_offsets":[8,16]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0; 16]);
        let err = Checkpoint::from_bytes(file, "m.safetensors")
            .err()
            .expect("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains(
                "tensor t is F64 of shape [2], 16 bytes, but its data_offsets [8, 16] hold 8 bytes"
            ),
            "{text}"
        );
    }

    #[test]
    fn half_precision_values_widen_exactly() {
        // IEEE 754 binary16: 1, -2, the smallest subnormal 2^-24, the largest finite 65504,
        // infinity.
        let f16 = one_tensor(Dtype::F16, &[0x3C00, 0xC000, 0x0001, 0x7BFF, 0x7C00]);
        assert_eq!(
            f16.read_f32("t").unwrap(),
            [1.0, -2.0, 2f32.powi(-24), 65504.0, f32::INFINITY]
        );
        assert_eq!(f16.source_dtype().as_deref(), Some("float16"));
        // bfloat16 is the top half of a float32: 1, -2, 1 + 2^-7, the smallest normal 2^-126.
        let bf16 = one_tensor(Dtype::BF16, &[0x3F80, 0xC000, 0x3F81, 0x0080]);
        assert_eq!(
            bf16.read_f32("t").unwrap(),
            [1.0, -2.0, 1.0 + 2f32.powi(-7), 2f32.powi(-126)]
        );
        assert_eq!(bf16.source_dtype().as_deref(), Some("bfloat16"));
    }

    /// A safetensors file written by hand: one f32 tensor `t` of `values`, its data starting
    /// `data_start` bytes into the file (the header padded with spaces to get there).
    fn write_f32_file(dir: &Path, data_start: usize, values: &[f32]) -> PathBuf {
        let header = format!(
            r#"{{"t":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            values.len(),
            4 * values.len()
        );
        let header = format!("{header:<width$}", width = data_start - 8);
        assert_eq!(
            header.len(),
            data_start - 8,
            "the header fits before the data"
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let path = dir.join(format!("at{data_start}.safetensors"));
        fs_err::write(&path, bytes).expect("written");
        path
    }

    #[test]
    fn a_mapped_f32_tensor_reads_in_place_when_aligned_and_is_copied_otherwise() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let values: Vec<f32> = (0..3000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let path = write_f32_file(dir.path(), 128, &values);
        let before = fs_err::read(&path).unwrap();
        let aligned = Checkpoint::open(&path).unwrap();
        let view = aligned
            .in_place_f32("t")
            .expect("an aligned f32 tensor reads in place");
        assert_eq!(view.as_slice(), values.as_slice());
        // Handing the pages back drops them from this process only: the view reads them
        // again from the file, and the user's file keeps its bytes.
        aligned.release("t");
        assert_eq!(view.as_slice(), values.as_slice());
        assert_eq!(
            aligned.read_f32("t").unwrap(),
            values,
            "read through the file"
        );
        drop((view, aligned));
        assert_eq!(
            fs_err::read(&path).unwrap(),
            before,
            "the checkpoint is unchanged"
        );
        // Data at byte 130 of the file: a map (page-aligned) cannot give it as f32.
        let odd = Checkpoint::open(&write_f32_file(dir.path(), 130, &values)).unwrap();
        assert!(odd.in_place_f32("t").is_none());
        assert_eq!(odd.read_f32("t").unwrap(), values);
        // Not in place either: other element types, and bytes already in memory.
        let bf16 = one_tensor(Dtype::BF16, &[0x3F80]);
        assert!(bf16.in_place_f32("t").is_none());
        let in_memory = fs_err::read(dir.path().join("at128.safetensors")).unwrap();
        let owned = Checkpoint::from_bytes(in_memory, "bytes").unwrap();
        assert!(owned.in_place_f32("t").is_none());
    }

    #[test]
    fn other_element_types_are_refused_with_file_and_tensor() {
        let i16 = one_tensor(Dtype::I16, &[1, 2]);
        let e = i16.read_f32("t").unwrap_err().to_string();
        assert!(e.contains("t.safetensors: tensor t is I16"), "{e}");
    }
}
