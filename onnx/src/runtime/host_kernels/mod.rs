//! pipe's fused CPU kernels (domain [`HOST_KERNELS_DOMAIN`]), registered with every CPU
//! [`Session`](super::Session): the backward operators [`Kernels::Host`](crate::Kernels) lets
//! the autodiff rules emit. Each kernel splits its work into fixed chunks run on ONNX
//! Runtime's own intra-op threads, so results are the same for any thread count.
//!
//! - `GeluTanhGrad(x, gy) → gx`: the tanh GELU's input gradient (one pass instead of 18).
//! - `GeluErfGrad(x, gy) → gx`: the exact (erf) GELU's input gradient (one pass instead of 13).
//! - `SiluGrad(x, gy) → gx`: SiLU's input gradient (one pass instead of 6), for ONNX
//!   Runtime's `QuickGelu` with `alpha` 1 in the forward.
//! - `LayerNormGrad(gy, x, scale, mean, inv_std) → gx`: a last-axis LayerNormalization's input
//!   gradient (one pass per row instead of 11 nodes).
//! - `GatherGrad(data, idx, gy) → gdata`: the gradient of `Gather(data, idx, axis 0)` with
//!   repeated indices summed in position order (ONNX Runtime's ScatterND sums them in an
//!   order that varies with its threads), written once into zeroed rows.
//! - `Int4ToInt8(packed, multipliers, after) → w` and `Int4ToInt8T(...) → wᵀ`: 4-bit blocks
//!   nested in an int8 grid ([`crate::quantize::Int4Blocks`]) unpacked to the exact int8
//!   weight `[N, blocks · 32]` or its transpose, for `DynamicQuantizeMatMul`. `after` is
//!   not read: it orders the unpacking just before the product that needs it.
//!   `Int4ToUint8` and `Int4ToUint8T` write the same integers as uint8 offset by 128
//!   ([`crate::quantize::Int8Storage::Offset`]).
//! - `Bf16ToF32(w, after) → w32`: a `bfloat16` weight widened to f32 (exact), for one f32
//!   product; `after` orders it as for `Int4ToInt8`.

mod int4;
mod math;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::PrimitiveTensorElementType;
use ort::value::{TensorElementType, ValueRef};

use crate::builder::HOST_KERNELS_DOMAIN;
use crate::quantize::INT4_BLOCK;

/// The domain with every kernel, for one session.
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    use TensorElementType::{
        Bfloat16 as BF16, Float32 as F32, Int8 as I8, Int64 as I64, Uint8 as U8,
    };
    OperatorDomain::new(HOST_KERNELS_DOMAIN)?
        .add(HostOp {
            name: "GeluTanhGrad",
            inputs: &[F32, F32],
            output: F32,
            compute: gelu_tanh_grad,
        })?
        .add(HostOp {
            name: "GeluErfGrad",
            inputs: &[F32, F32],
            output: F32,
            compute: gelu_erf_grad,
        })?
        .add(HostOp {
            name: "SiluGrad",
            inputs: &[F32, F32],
            output: F32,
            compute: silu_grad,
        })?
        .add(HostOp {
            name: "LayerNormGrad",
            inputs: &[F32, F32, F32, F32, F32],
            output: F32,
            compute: layer_norm_grad,
        })?
        .add(HostOp {
            name: "GatherGrad",
            inputs: &[F32, I64, F32],
            output: F32,
            compute: gather_grad,
        })?
        .add(HostOp {
            name: "Int4ToInt8",
            inputs: &[U8, U8, F32],
            output: I8,
            compute: int4_to_int8::<i8>,
        })?
        .add(HostOp {
            name: "Int4ToInt8T",
            inputs: &[U8, U8, F32],
            output: I8,
            compute: int4_to_int8_transposed::<i8>,
        })?
        .add(HostOp {
            name: "Int4ToUint8",
            inputs: &[U8, U8, F32],
            output: U8,
            compute: int4_to_int8::<u8>,
        })?
        .add(HostOp {
            name: "Int4ToUint8T",
            inputs: &[U8, U8, F32],
            output: U8,
            compute: int4_to_int8_transposed::<u8>,
        })?
        .add(HostOp {
            name: "Bf16ToF32",
            inputs: &[BF16, F32],
            output: F32,
            compute: bf16_to_f32,
        })
}

/// One of pipe's kernels: required inputs of the given types, one output, no attributes.
struct HostOp {
    name: &'static str,
    inputs: &'static [TensorElementType],
    output: TensorElementType,
    compute: fn(&ComputeContext) -> ort::Result<()>,
}

impl Operator for HostOp {
    type Kernel<'attr> = HostKernel;

    fn name(&self) -> &str {
        self.name
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        self.inputs.iter().map(|&t| OperatorInput::required(t))
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.output)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<HostKernel> {
        Ok(HostKernel(self.compute))
    }
}

/// A [`HostOp`]'s kernel: its compute function (the kernels keep no state).
struct HostKernel(fn(&ComputeContext) -> ort::Result<()>);

impl Kernel for HostKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        (self.0)(ctx)
    }
}

/// Input `i` (required by the operator's declaration, so present).
fn input(ctx: &ComputeContext, i: usize) -> ort::Result<ValueRef<'_>> {
    ctx.input(i)?
        .ok_or_else(|| ort::Error::new(format!("input {i} is missing")))
}

/// Runs `work(range, out)` over `0..len` in chunks of `chunk` elements on ONNX Runtime's
/// threads, `out` being output 0 (shape `shape`) cut to the chunk.
fn par_chunks<T, F>(ctx: &ComputeContext, shape: &[i64], chunk: usize, work: F) -> ort::Result<()>
where
    T: PrimitiveTensorElementType,
    F: Fn(std::ops::Range<usize>, &mut [T]) + Sync + Send,
{
    let mut value = ctx
        .output(0, shape.to_vec())?
        .ok_or_else(|| ort::Error::new("output 0 is missing"))?;
    let (_, out) = value.try_extract_tensor_mut::<T>()?;
    let len = out.len();
    if len == 0 {
        return Ok(());
    }
    let base = SharedOut(out.as_mut_ptr());
    let chunks = len.div_ceil(chunk);
    ctx.par_for(chunks, 0, |c| {
        let range = c * chunk..((c + 1) * chunk).min(len);
        // SAFETY: the chunks are disjoint ranges inside the output buffer, which lives until
        // `par_for` returns; each range is handed to exactly one call.
        let out = unsafe { std::slice::from_raw_parts_mut(base.at(range.start), range.len()) };
        work(range, out);
    })
}

/// The output buffer shared by the chunks of [`par_chunks`], each writing its own range.
struct SharedOut<T>(*mut T);

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedOut<T> {}

// SAFETY: chunks write disjoint ranges (see `par_chunks`).
unsafe impl<T> Send for SharedOut<T> {}
// SAFETY: as above; the pointer itself is never written.
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    fn at(self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// Elements per chunk of an elementwise kernel (64 KiB of each input).
const ELEMENTWISE_CHUNK: usize = 16_384;

/// `GeluTanhGrad(x, gy) → gx`.
fn gelu_tanh_grad(ctx: &ComputeContext) -> ort::Result<()> {
    elementwise_grad(ctx, "GeluTanhGrad", math::gelu_tanh_grad)
}

/// `GeluErfGrad(x, gy) → gx`.
fn gelu_erf_grad(ctx: &ComputeContext) -> ort::Result<()> {
    elementwise_grad(ctx, "GeluErfGrad", math::gelu_erf_grad)
}

/// `SiluGrad(x, gy) → gx`.
fn silu_grad(ctx: &ComputeContext) -> ort::Result<()> {
    elementwise_grad(ctx, "SiluGrad", math::silu_grad)
}

/// An elementwise input gradient `grad(x, gy) → gx` over two f32 inputs of one shape.
fn elementwise_grad(
    ctx: &ComputeContext,
    op: &str,
    grad: fn(&[f32], &[f32], &mut [f32]),
) -> ort::Result<()> {
    let (x, gy) = (input(ctx, 0)?, input(ctx, 1)?);
    let (shape, x) = x.try_extract_tensor::<f32>()?;
    let (gy_shape, gy) = gy.try_extract_tensor::<f32>()?;
    if gy_shape != shape {
        return Err(ort::Error::new(format!(
            "{op}: x is {shape:?} but gy is {gy_shape:?}"
        )));
    }
    par_chunks(ctx, shape, ELEMENTWISE_CHUNK, |r, out| {
        grad(&x[r.clone()], &gy[r], out)
    })
}

/// `LayerNormGrad(gy, x, scale, mean, inv_std) → gx`.
fn layer_norm_grad(ctx: &ComputeContext) -> ort::Result<()> {
    let values = (0..5)
        .map(|i| input(ctx, i))
        .collect::<ort::Result<Vec<_>>>()?;
    let (shape, gy) = values[0].try_extract_tensor::<f32>()?;
    let (x_shape, x) = values[1].try_extract_tensor::<f32>()?;
    let (_, scale) = values[2].try_extract_tensor::<f32>()?;
    let (_, mean) = values[3].try_extract_tensor::<f32>()?;
    let (_, inv_std) = values[4].try_extract_tensor::<f32>()?;
    let width = scale.len();
    let rows = gy.len().checked_div(width).unwrap_or(0);
    if x_shape != shape
        || shape.last().copied() != i64::try_from(width).ok()
        || mean.len() != rows
        || inv_std.len() != rows
    {
        return Err(ort::Error::new(format!(
            "LayerNormGrad: gy {shape:?}, x {x_shape:?}, a scale of {width} and {} / {} \
                 statistics do not fit together",
            mean.len(),
            inv_std.len()
        )));
    }
    // Whole rows per chunk, about as many elements as an elementwise chunk.
    let rows_per_chunk = (ELEMENTWISE_CHUNK / width.max(1)).max(1);
    par_chunks(ctx, shape, rows_per_chunk * width, |r, out| {
        let rows = r.start / width..r.end / width;
        math::layer_norm_grad(
            &gy[r.clone()],
            &x[r],
            scale,
            &mean[rows.clone()],
            &inv_std[rows],
            out,
        )
    })
}

/// `GatherGrad(data, idx, gy) → gdata` (`data` only gives the shape `[rows, ...]`).
fn gather_grad(ctx: &ComputeContext) -> ort::Result<()> {
    let (data, idx, gy) = (input(ctx, 0)?, input(ctx, 1)?, input(ctx, 2)?);
    let (shape, _) = data.try_extract_tensor::<f32>()?;
    let (_, idx) = idx.try_extract_tensor::<i64>()?;
    let (_, gy) = gy.try_extract_tensor::<f32>()?;
    let shape = shape.to_vec();
    let rows = shape.first().copied().unwrap_or(0);
    let width = shape.iter().skip(1).product::<i64>() as usize;
    if gy.len() != idx.len() * width {
        return Err(ort::Error::new(format!(
            "GatherGrad: {} indices of rows of {width} need {} gradient values, not {}",
            idx.len(),
            idx.len() * width,
            gy.len()
        )));
    }
    // Gather's rule: an index in -rows..rows, negative ones counting from the end.
    let idx = idx
        .iter()
        .map(|&i| {
            let row = if i < 0 { i + rows } else { i };
            usize::try_from(row)
                .ok()
                .filter(|_| (0..rows).contains(&row))
                .ok_or_else(|| {
                    ort::Error::new(format!("GatherGrad: index {i} is outside 0..{rows}"))
                })
        })
        .collect::<ort::Result<Vec<usize>>>()?;
    let rows_per_chunk = (ELEMENTWISE_CHUNK / width.max(1)).max(1);
    par_chunks(ctx, &shape, rows_per_chunk * width, |r, out| {
        math::gather_grad_rows(r.start / width.max(1), width, &idx, gy, out)
    })
}

/// The packed blocks `[N, blocks, 16]` and multipliers `[N, blocks]` of an `Int4ToInt8`
/// node, and `(N, blocks)`.
fn int4_inputs<'a>(
    packed: &'a ValueRef<'_>,
    multipliers: &'a ValueRef<'_>,
) -> ort::Result<(&'a [u8], &'a [u8], usize, usize)> {
    let (shape, packed) = packed.try_extract_tensor::<u8>()?;
    let (m_shape, multipliers) = multipliers.try_extract_tensor::<u8>()?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    if dims.len() != 3
        || dims[2] != INT4_BLOCK / 2
        || m_shape.len() != 2
        || m_shape[0] != shape[0]
        || m_shape[1] != shape[1]
    {
        return Err(ort::Error::new(format!(
            "Int4ToInt8: packed blocks {shape:?} and multipliers {m_shape:?} do not fit \
             [N, blocks, {}] and [N, blocks]",
            INT4_BLOCK / 2
        )));
    }
    Ok((packed, multipliers, dims[0], dims[1]))
}

/// The element type 4-bit blocks are unpacked into: the int8 integers as they are, or
/// offset by 128 as uint8 ([`crate::quantize::Int8Storage`]).
trait UnpackedInt: PrimitiveTensorElementType + Send + Sized {
    /// Fills `out` through `unpack`, which writes the int8 integers.
    fn unpack(out: &mut [Self], unpack: impl FnOnce(&mut [i8]));
}

impl UnpackedInt for i8 {
    fn unpack(out: &mut [i8], unpack: impl FnOnce(&mut [i8])) {
        unpack(out);
    }
}

impl UnpackedInt for u8 {
    fn unpack(out: &mut [u8], unpack: impl FnOnce(&mut [i8])) {
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid
        // for both; the reinterpreted slice is dropped before `out` is used again.
        let ints = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), out.len()) };
        unpack(ints);
        // q as u8 XOR 0x80 is q + 128.
        out.iter_mut().for_each(|v| *v ^= 0x80);
    }
}

/// `Int4ToInt8(packed, multipliers, after) → w` `[N, blocks · 32]` (`Int4ToUint8` with `T`
/// u8).
fn int4_to_int8<T: UnpackedInt>(ctx: &ComputeContext) -> ort::Result<()> {
    let (packed, multipliers) = (input(ctx, 0)?, input(ctx, 1)?);
    let (packed, multipliers, n, blocks) = int4_inputs(&packed, &multipliers)?;
    let width = blocks * INT4_BLOCK;
    let shape = [n as i64, width as i64];
    // Whole rows per chunk, about 64 KiB of output.
    let rows_per_chunk = (ELEMENTWISE_CHUNK * 4 / width.max(1)).max(1);
    par_chunks(ctx, &shape, rows_per_chunk * width, |r, out: &mut [T]| {
        let rows = r.start / width..r.end / width;
        T::unpack(out, |out| {
            int4::rows(packed, multipliers, blocks, rows, out)
        })
    })
}

/// `Int4ToInt8T(packed, multipliers, after) → wᵀ` `[blocks · 32, N]` (`Int4ToUint8T` with
/// `T` u8).
fn int4_to_int8_transposed<T: UnpackedInt>(ctx: &ComputeContext) -> ort::Result<()> {
    let (packed, multipliers) = (input(ctx, 0)?, input(ctx, 1)?);
    let (packed, multipliers, n, blocks) = int4_inputs(&packed, &multipliers)?;
    let shape = [(blocks * INT4_BLOCK) as i64, n as i64];
    // One block (32 output rows) per chunk.
    par_chunks(ctx, &shape, INT4_BLOCK * n.max(1), |r, out: &mut [T]| {
        let block = r.start / (INT4_BLOCK * n);
        T::unpack(out, |out| {
            int4::transposed_block(packed, multipliers, blocks, block, out)
        })
    })
}

/// `Bf16ToF32(w, after) → w32`: each `bfloat16` of `w` as the f32 it stands for (its bits in
/// the high half), same shape.
fn bf16_to_f32(ctx: &ComputeContext) -> ort::Result<()> {
    let w = input(ctx, 0)?;
    let (shape, w) = w.try_extract_tensor::<half::bf16>()?;
    let shape = shape.to_vec();
    par_chunks(ctx, &shape, ELEMENTWISE_CHUNK * 4, |r, out: &mut [f32]| {
        for (o, x) in out.iter_mut().zip(&w[r]) {
            *o = f32::from_bits(u32::from(x.to_bits()) << 16);
        }
    })
}
