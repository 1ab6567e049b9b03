//! Tensors in host memory, the currency between callers and ONNX Runtime.

use ort::memory::AllocationDevice;
use ort::session::SessionInputValue;
use ort::value::{
    DynValue, DynValueRef, Tensor as OrtTensor, TensorElementType, TensorRef,
    TensorValueTypeMarker, Value, ValueType,
};

use std::ops::Range;
use std::sync::Arc;

use crate::error::OrtContext;
use crate::{DType, Error, Result};

/// The elements of a [`HostTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// `float`.
    F32(Vec<f32>),
    /// `float`, read in place from memory another owner keeps (a checkpoint's memory map).
    F32Shared(SharedF32),
    /// `double`.
    F64(Vec<f64>),
    /// `int64`.
    I64(Vec<i64>),
    /// `int32`.
    I32(Vec<i32>),
    /// `bool`.
    Bool(Vec<bool>),
    /// `int8`.
    I8(Vec<i8>),
    /// `uint8`.
    U8(Vec<u8>),
    /// `bfloat16`: frozen weights, read in place from a bfloat16 checkpoint or rounded.
    Bf16(Elements<half::bf16>),
    /// `float16`: frozen tables, read in place from a float16 checkpoint.
    F16(Elements<half::f16>),
}

impl HostData {
    fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F32Shared(v) => v.as_slice().len(),
            HostData::F64(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::Bool(v) => v.len(),
            HostData::I8(v) => v.len(),
            HostData::U8(v) => v.len(),
            HostData::Bf16(v) => v.as_slice().len(),
            HostData::F16(v) => v.as_slice().len(),
        }
    }
}

/// The bytes behind a [`Shared`]: anything that holds them immutably for as long as it
/// lives (a read-only memory map).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Elements of type `T` inside bytes another owner holds, read where they lie: a tensor over
/// them takes no memory of its own, and over a memory-mapped checkpoint only the pages a run
/// reads are ever resident (a frozen embedding's unused rows never are).
#[derive(Clone)]
pub struct Shared<T> {
    owner: SharedBytes,
    /// The elements' bytes in `owner`.
    range: Range<usize>,
    element: std::marker::PhantomData<T>,
}

/// `f32` elements read in place.
pub type SharedF32 = Shared<f32>;

/// Elements of their own, or read in place ([`Shared`]).
#[derive(Clone)]
pub enum Elements<T> {
    /// In memory of their own.
    Owned(Vec<T>),
    /// Read in place.
    Shared(Shared<T>),
}

impl<T: bytemuck::Pod> Elements<T> {
    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        match self {
            Elements::Owned(v) => v,
            Elements::Shared(v) => v.as_slice(),
        }
    }
}

impl<T: bytemuck::Pod + std::fmt::Debug> std::fmt::Debug for Elements<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Elements::Owned(v) => write!(f, "Owned({} elements)", v.len()),
            Elements::Shared(v) => v.fmt(f),
        }
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Elements<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: bytemuck::Pod> Shared<T> {
    /// The little-endian elements at bytes `range` of `owner`, when they can be read in
    /// place: inside it, at an address aligned for `T`, a whole number of elements, on a
    /// little-endian host. `None` otherwise (copy them instead).
    pub fn new(owner: SharedBytes, range: Range<usize>) -> Option<Shared<T>> {
        let bytes = (*owner).as_ref().get(range.clone())?;
        let fits =
            cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, T>(bytes).is_ok();
        fits.then_some(Shared {
            owner,
            range,
            element: std::marker::PhantomData,
        })
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        // `new` checked range, alignment and size, and the owner's bytes never change.
        bytemuck::cast_slice(&(*self.owner).as_ref()[self.range.clone()])
    }
}

impl<T: bytemuck::Pod> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("?");
        write!(
            f,
            "Shared<{name}>({} elements in place)",
            self.as_slice().len()
        )
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// 16-bit floats as the f32 values they stand for (exact).
fn widen<T: Copy + Into<f32>>(values: &[T]) -> Vec<f32> {
    values.iter().map(|&x| x.into()).collect()
}

/// A tensor in host memory: shape and row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<i64>,
    data: HostData,
}

macro_rules! ctor_and_view {
    ($ctor:ident, $view:ident, $t:ty, $variant:ident) => {
        #[doc = concat!("A `", stringify!($t), "` tensor; fails when `shape` does not hold `data.len()` elements.")]
        pub fn $ctor(shape: &[i64], data: Vec<$t>) -> Result<Self> {
            Self::new(shape, HostData::$variant(data))
        }

        #[doc = concat!("The elements, when the tensor holds `", stringify!($t), "`.")]
        pub fn $view(&self) -> Option<&[$t]> {
            match &self.data {
                HostData::$variant(v) => Some(v),
                _ => None,
            }
        }
    };
}

impl HostTensor {
    ctor_and_view!(f64, as_f64, f64, F64);
    ctor_and_view!(i64, as_i64, i64, I64);
    ctor_and_view!(i32, as_i32, i32, I32);
    ctor_and_view!(bool, as_bool, bool, Bool);
    ctor_and_view!(i8, as_i8, i8, I8);
    ctor_and_view!(u8, as_u8, u8, U8);

    /// A `f32` tensor; fails when `shape` does not hold `data.len()` elements.
    pub fn f32(shape: &[i64], data: Vec<f32>) -> Result<Self> {
        Self::new(shape, HostData::F32(data))
    }

    /// A `f32` tensor over elements read in place ([`SharedF32`]); fails when `shape` does
    /// not hold them.
    pub fn f32_shared(shape: &[i64], data: SharedF32) -> Result<Self> {
        Self::new(shape, HostData::F32Shared(data))
    }

    /// A `bfloat16` tensor of its own; fails when `shape` does not hold `data.len()` elements.
    pub fn bf16(shape: &[i64], data: Vec<half::bf16>) -> Result<Self> {
        Self::new(shape, HostData::Bf16(Elements::Owned(data)))
    }

    /// A `float16` tensor of its own; fails when `shape` does not hold `data.len()` elements.
    pub fn f16(shape: &[i64], data: Vec<half::f16>) -> Result<Self> {
        Self::new(shape, HostData::F16(Elements::Owned(data)))
    }

    /// A tensor over 16-bit floats read in place: `bfloat16` or `float16` as `dtype` says;
    /// `None` for another `dtype`, or when `owner`'s `range` cannot be read in place.
    pub fn half_shared(
        shape: &[i64],
        dtype: DType,
        owner: SharedBytes,
        range: Range<usize>,
    ) -> Result<Option<Self>> {
        let data = match dtype {
            DType::BF16 => Shared::new(owner, range).map(|v| HostData::Bf16(Elements::Shared(v))),
            DType::F16 => Shared::new(owner, range).map(|v| HostData::F16(Elements::Shared(v))),
            _ => None,
        };
        data.map(|d| Self::new(shape, d)).transpose()
    }

    /// Elements `range` as `f32`: borrowed when the tensor holds `f32`, widened (exactly)
    /// from 16-bit floats; `None` for other types or a range past the end. Lets a writer
    /// stream a half-precision tensor as `f32` a piece at a time.
    pub fn f32_range(&self, range: Range<usize>) -> Option<std::borrow::Cow<'_, [f32]>> {
        use std::borrow::Cow;
        match &self.data {
            HostData::Bf16(v) => Some(Cow::Owned(widen(v.as_slice().get(range)?))),
            HostData::F16(v) => Some(Cow::Owned(widen(v.as_slice().get(range)?))),
            _ => self.as_f32()?.get(range).map(Cow::Borrowed),
        }
    }

    /// The elements, when the tensor holds `f32` (its own or read in place).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::F32Shared(v) => Some(v.as_slice()),
            _ => None,
        }
    }

    /// A tensor from shape and data.
    pub fn new(shape: &[i64], data: HostData) -> Result<Self> {
        let n: i64 = shape.iter().product();
        if shape.iter().any(|&d| d < 0) || usize::try_from(n).ok() != Some(data.len()) {
            return Err(Error::Data(format!(
                "shape {shape:?} does not hold {} elements",
                data.len()
            )));
        }
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// A rank-0 `f32` tensor.
    pub fn scalar_f32(v: f32) -> Self {
        HostTensor {
            shape: vec![],
            data: HostData::F32(vec![v]),
        }
    }

    /// Zeros of the given type and shape.
    pub fn zeros(dtype: DType, shape: &[i64]) -> Result<Self> {
        let n = usize::try_from(shape.iter().product::<i64>())
            .map_err(|_| Error::Data(format!("bad shape {shape:?}")))?;
        let data = match dtype {
            DType::F32 => HostData::F32(vec![0.0; n]),
            DType::F64 => HostData::F64(vec![0.0; n]),
            DType::I64 => HostData::I64(vec![0; n]),
            DType::I32 => HostData::I32(vec![0; n]),
            DType::Bool => HostData::Bool(vec![false; n]),
            DType::I8 => HostData::I8(vec![0; n]),
            DType::U8 => HostData::U8(vec![0; n]),
            DType::BF16 => HostData::Bf16(Elements::Owned(vec![half::bf16::ZERO; n])),
            DType::F16 => HostData::F16(Elements::Owned(vec![half::f16::ZERO; n])),
        };
        Self::new(shape, data)
    }

    /// Shape.
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// Elements.
    pub fn data(&self) -> &HostData {
        &self.data
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) | HostData::F32Shared(_) => DType::F32,
            HostData::F64(_) => DType::F64,
            HostData::I64(_) => DType::I64,
            HostData::I32(_) => DType::I32,
            HostData::Bool(_) => DType::Bool,
            HostData::I8(_) => DType::I8,
            HostData::U8(_) => DType::U8,
            HostData::Bf16(_) => DType::BF16,
            HostData::F16(_) => DType::F16,
        }
    }

    /// The elements as `f64` (floats and integers; bools as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::F32Shared(v) => v.as_slice().iter().map(|&x| f64::from(x)).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
            HostData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::Bf16(v) => v.as_slice().iter().map(|x| x.to_f64()).collect(),
            HostData::F16(v) => v.as_slice().iter().map(|x| x.to_f64()).collect(),
        }
    }

    /// An owned ONNX Runtime value with a copy of the data.
    pub fn to_value(&self) -> Result<DynValue> {
        let shape = self.shape.clone();
        let ctx = || format!("failed to create a tensor of shape {:?}", self.shape);
        Ok(match &self.data {
            HostData::F32(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F32Shared(v) => OrtTensor::from_array((shape, v.as_slice().to_vec()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F64(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I64(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I32(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::Bool(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I8(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::U8(v) => OrtTensor::from_array((shape, v.clone()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::Bf16(v) => OrtTensor::from_array((shape, v.as_slice().to_vec()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F16(v) => OrtTensor::from_array((shape, v.as_slice().to_vec()))
                .ort_context(ctx)?
                .into_dyn(),
        })
    }

    /// An ONNX Runtime value over this tensor's data, without a copy: feeding a model its
    /// weights this way holds them once.
    pub fn view(&self) -> Result<SessionInputValue<'_>> {
        Ok(self.value_ref()?.into())
    }

    /// [`HostTensor::view`] as a value reference (what an `IoBinding` binds).
    pub fn value_ref(&self) -> Result<DynValueRef<'_>> {
        let shape = self.shape.clone();
        let ctx = || format!("failed to view a tensor of shape {:?}", self.shape);
        Ok(match &self.data {
            HostData::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F32Shared(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::I8(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::U8(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::Bf16(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
            HostData::F16(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .ort_context(ctx)?
                .into_dyn(),
        })
    }

    /// Copies an ONNX Runtime tensor to the host, from device memory (CUDA) through ONNX
    /// Runtime when it is not in host memory.
    pub fn from_value<T: TensorValueTypeMarker + ?Sized>(v: &Value<T>) -> Result<Self> {
        let ty = match v.dtype() {
            ValueType::Tensor { ty, .. } => *ty,
            other => return Err(Error::Data(format!("expected a tensor, got {other:?}"))),
        };
        // Only tensors have memory info (checked just above).
        let tensor = v.upcast_ref();
        if !tensor.memory_info().is_cpu_accessible() {
            let host = tensor
                .to(AllocationDevice::CPU, 0)
                .ort_context(|| "failed to copy a tensor from the device to the host".into())?;
            return Self::from_value(&host);
        }
        let ctx = || "failed to read a tensor".to_string();
        macro_rules! read {
            ($t:ty, $variant:ident) => {{
                let (shape, data) = v.try_extract_tensor::<$t>().ort_context(ctx)?;
                HostTensor::new(&shape.to_vec(), HostData::$variant(data.to_vec()))?
            }};
        }
        Ok(match ty {
            TensorElementType::Float32 => read!(f32, F32),
            TensorElementType::Float64 => read!(f64, F64),
            TensorElementType::Int64 => read!(i64, I64),
            TensorElementType::Int32 => read!(i32, I32),
            TensorElementType::Bool => read!(bool, Bool),
            TensorElementType::Int8 => read!(i8, I8),
            TensorElementType::Uint8 => read!(u8, U8),
            other => return Err(Error::Data(format!("unsupported element type {other:?}"))),
        })
    }
}
