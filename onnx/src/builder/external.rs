//! ONNX external data: initializer bytes in a file beside `model.onnx`, written one tensor at
//! a time, so a model of any size is saved without holding its weights.
//!
//! Each tensor starts at a 4 KiB-aligned offset (zeros fill the gaps): ONNX Runtime then maps
//! the file on the CPU rather than reading it into a buffer, and a weight it folds (the
//! `Transpose` of a linear layer's weight) is copied once out of the map. An inline
//! initializer is held twice while a session loads (the parsed model and the folded copy);
//! `bench/README.md` has the measurement.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::DType;
use super::types::check_size;
use crate::proto;
use crate::{Error, Result};

/// The alignment of each tensor in the data file: a page, so ONNX Runtime can map it.
const ALIGNMENT: u64 = 4096;

/// Where one initializer's bytes lie in an external data file.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalTensor {
    dtype: DType,
    dims: Vec<i64>,
    location: String,
    offset: u64,
    length: u64,
}

impl ExternalTensor {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions.
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    /// The proto form: the data file's name (`location`), `offset` and `length`, and no data.
    pub(crate) fn to_proto(&self, name: Option<String>) -> proto::TensorProto {
        let entry = |k: &str, v: String| proto::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        proto::TensorProto {
            dims: self.dims.clone(),
            data_type: Some(self.dtype.onnx_code()),
            name,
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", self.offset.to_string()),
                entry("length", self.length.to_string()),
            ],
            data_location: Some(proto::DATA_LOCATION_EXTERNAL),
            ..Default::default()
        }
    }
}

/// Appends tensors to an external data file; [`ExternalDataWriter::finish`] flushes it.
pub struct ExternalDataWriter {
    path: PathBuf,
    location: String,
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl ExternalDataWriter {
    /// Creates `location` (a file name) in the folder of `model`, the model file that will
    /// name it.
    pub fn create(model: &Path, location: &str) -> Result<Self> {
        let path = model.with_file_name(location);
        let file = fs_err::File::create(&path)
            .map_err(io("failed to write external data", &path))?
            .into_file();
        Ok(ExternalDataWriter {
            path,
            location: location.to_string(),
            out: std::io::BufWriter::new(file),
            written: 0,
        })
    }

    /// Appends `bytes`, the little-endian data of a `dtype` tensor of `dims`.
    pub fn append_bytes(
        &mut self,
        dtype: DType,
        dims: &[i64],
        bytes: &[u8],
    ) -> Result<ExternalTensor> {
        check_size(dtype, dims, bytes.len())?;
        let tensor = self.start(dtype, dims, bytes.len())?;
        self.write(bytes)?;
        Ok(tensor)
    }

    /// Appends the float32 tensor `values` of `dims`, written from the values' own memory (no
    /// byte copy of the tensor).
    pub fn append_f32(&mut self, dims: &[i64], values: &[f32]) -> Result<ExternalTensor> {
        let length = std::mem::size_of_val(values);
        check_size(DType::F32, dims, length)?;
        let tensor = self.start(DType::F32, dims, length)?;
        self.write_f32(values)?;
        Ok(tensor)
    }

    #[cfg(target_endian = "little")]
    fn write_f32(&mut self, values: &[f32]) -> Result<()> {
        // SAFETY: the byte slice covers exactly the memory of `values` (4 bytes each, no
        // padding; any byte is a valid u8) and lives as long as the borrow of `values`; on a
        // little-endian target that memory is the values' little-endian encoding.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        self.write(bytes)
    }

    #[cfg(not(target_endian = "little"))]
    fn write_f32(&mut self, values: &[f32]) -> Result<()> {
        for chunk in values.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.write(&bytes)?;
        }
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(io("failed to write external data", &self.path))
    }

    /// Pads to the next aligned offset and describes the `length` bytes that go there.
    fn start(&mut self, dtype: DType, dims: &[i64], length: usize) -> Result<ExternalTensor> {
        let offset = self.written.next_multiple_of(ALIGNMENT);
        let padding = vec![0u8; (offset - self.written) as usize];
        self.write(&padding)?;
        Ok(ExternalTensor {
            dtype,
            dims: dims.to_vec(),
            location: self.location.clone(),
            offset,
            length: length as u64,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(io("failed to write external data", &self.path))?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// An I/O error's context, naming `path`.
pub(crate) fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        context,
        path,
        source,
    }
}
