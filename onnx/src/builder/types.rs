//! Element types, dimensions and host tensor data.

use std::fmt;

use crate::proto::{self, data_type};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    /// `float` (32 bit).
    F32,
    /// `double`.
    F64,
    /// `int64`.
    I64,
    /// `int32`.
    I32,
    /// `bool`.
    Bool,
    /// `int8`: quantized weights.
    I8,
    /// `uint8`: packed 4-bit weights.
    U8,
    /// `bfloat16`: frozen tables read as a checkpoint stores them.
    BF16,
    /// `float16`: frozen tables read as a checkpoint stores them.
    F16,
}

impl DType {
    /// The `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => data_type::FLOAT,
            DType::F64 => data_type::DOUBLE,
            DType::I64 => data_type::INT64,
            DType::I32 => data_type::INT32,
            DType::Bool => data_type::BOOL,
            DType::I8 => data_type::INT8,
            DType::U8 => data_type::UINT8,
            DType::BF16 => data_type::BFLOAT16,
            DType::F16 => data_type::FLOAT16,
        }
    }

    /// The type of a `TensorProto.DataType` code, when it is one of these.
    pub fn from_onnx_code(code: i32) -> Option<DType> {
        [DType::F32, DType::F64, DType::I64, DType::I32, DType::Bool]
            .into_iter()
            .find(|d| d.onnx_code() == code)
    }

    /// Whether gradients flow through values of this type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::Bool => "bool",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// One axis of a shape: a fixed size or a symbolic name such as `batch`.
///
/// Symbolic dims compare by name. A product of symbolic dims made by `Reshape` with `-1` is named
/// by its factors joined with `*` (`batch*seq`), so the same product built twice compares equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    /// A size known when the graph is built. In a `Reshape` target, `-1` means "infer".
    Fixed(i64),
    /// A size known only at run time, named.
    Sym(String),
}

impl Dim {
    /// The fixed size, if known.
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// A fresh name for a size nothing else is known about.
    pub(crate) fn unknown(id: usize) -> Dim {
        Dim::Sym(format!("?{id}"))
    }

    /// Whether this is a placeholder made by [`Dim::unknown`].
    pub(crate) fn is_unknown(&self) -> bool {
        matches!(self, Dim::Sym(s) if s.starts_with('?'))
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Self {
        Dim::Fixed(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(i64::try_from(n).expect("tensor dimension fits in i64"))
    }
}

impl From<i32> for Dim {
    fn from(n: i32) -> Self {
        Dim::Fixed(i64::from(n))
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Dim::Sym(s.to_string())
    }
}

impl From<String> for Dim {
    fn from(s: String) -> Self {
        Dim::Sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// Builds an array of [`Dim`]s from a mix of numbers and names: `&dims!["batch", 16]`.
#[macro_export]
macro_rules! dims {
    ($($d:expr),* $(,)?) => { [$($crate::Dim::from($d)),*] };
}

/// Formats a shape as `[batch, 16]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// An error unless `length` bytes are exactly a `dtype` tensor of `dims`.
pub(crate) fn check_size(dtype: DType, dims: &[i64], length: usize) -> crate::Result<()> {
    let count: i64 = dims.iter().product();
    if dims.iter().any(|&d| d < 0)
        || usize::try_from(count).ok().map(|c| c * dtype.size()) != Some(length)
    {
        return Err(crate::Error::Data(format!(
            "tensor data of {length} bytes does not fit dims {dims:?} of {dtype}"
        )));
    }
    Ok(())
}

/// Host data for a constant or initializer: element type, fixed dims and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    dtype: DType,
    dims: Vec<i64>,
    bytes: Vec<u8>,
}

macro_rules! from_slice {
    ($name:ident, $t:ty, $dtype:expr) => {
        #[doc = concat!("A tensor of `", stringify!($t), "` values; `dims` must multiply to `values.len()`.")]
        pub fn $name(dims: &[i64], values: &[$t]) -> crate::Result<Self> {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Self::from_bytes($dtype, dims, bytes)
        }
    };
}

impl TensorData {
    from_slice!(f32, f32, DType::F32);
    from_slice!(f64, f64, DType::F64);
    from_slice!(i64, i64, DType::I64);
    from_slice!(i32, i32, DType::I32);

    /// A tensor of booleans.
    pub fn bool(dims: &[i64], values: &[bool]) -> crate::Result<Self> {
        Self::from_bytes(
            DType::Bool,
            dims,
            values.iter().map(|&b| u8::from(b)).collect(),
        )
    }

    /// A tensor from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, dims: &[i64], bytes: Vec<u8>) -> crate::Result<Self> {
        check_size(dtype, dims, bytes.len())?;
        Ok(TensorData {
            dtype,
            dims: dims.to_vec(),
            bytes,
        })
    }

    /// A scalar (rank 0) of type `dtype` holding `value` (rounded or truncated to the type).
    pub fn scalar(dtype: DType, value: f64) -> Self {
        let bytes = match dtype {
            DType::F32 => (value as f32).to_le_bytes().to_vec(),
            DType::F64 => value.to_le_bytes().to_vec(),
            DType::I64 => (value as i64).to_le_bytes().to_vec(),
            DType::I32 => (value as i32).to_le_bytes().to_vec(),
            DType::Bool => vec![u8::from(value != 0.0)],
            DType::I8 => (value as i8).to_le_bytes().to_vec(),
            DType::U8 => vec![value as u8],
            DType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        };
        TensorData {
            dtype,
            dims: Vec::new(),
            bytes,
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions.
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    /// Raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The values as `i64`, when the type is an integer type.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        match self.dtype {
            DType::I64 => Some(
                self.bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                    .collect(),
            ),
            DType::I32 => Some(
                self.bytes
                    .chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("chunk of 4"))))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The value of a one-element float or integer tensor.
    pub fn to_f64_scalar(&self) -> Option<f64> {
        if self.bytes.len() != self.dtype.size() {
            return None;
        }
        let b = self.bytes.as_slice();
        Some(match self.dtype {
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            DType::F64 => f64::from_le_bytes(b.try_into().ok()?),
            DType::I64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
            DType::I32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
            DType::Bool | DType::U8 => f64::from(b[0]),
            DType::I8 => f64::from(i8::from_le_bytes([b[0]])),
            DType::BF16 => half::bf16::from_le_bytes(b.try_into().ok()?).to_f64(),
            DType::F16 => half::f16::from_le_bytes(b.try_into().ok()?).to_f64(),
        })
    }

    /// The proto form, with the data inline in `raw_data`.
    pub(crate) fn to_proto(&self, name: Option<String>) -> proto::TensorProto {
        proto::TensorProto {
            dims: self.dims.clone(),
            data_type: Some(self.dtype.onnx_code()),
            name,
            raw_data: Some(self.bytes.clone()),
            ..Default::default()
        }
    }
}
