//! Fused backward operators that run on the CPU only: pipe's own kernels
//! (`crate::runtime::host_kernels`), registered with every CPU [`crate::Session`].
//!
//! Stock ONNX Runtime has no gradient operators, so a backward rule written in standard ONNX
//! becomes a chain of elementwise nodes, each one a pass over memory (the tanh GELU's
//! derivative is 18 of them over the MLP's widest tensor). On the CPU, where those passes
//! cost about as much as the layer's matrix products, [`Kernels::Host`] lets the rules emit
//! one fused node instead. A graph that uses them runs only in this crate's CPU sessions,
//! so the choice belongs to whoever picks the device; CUDA keeps the standard nodes.

use super::{Dim, Graph, Tensor};
use crate::quantize::Int8Storage;
use crate::{DType, Result};

/// The operator-set domain of pipe's CPU kernels.
pub const HOST_KERNELS_DOMAIN: &str = "ai.pipe.host";

/// Which operators the backward rules may emit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// Standard ONNX operators only: the graph runs anywhere.
    #[default]
    Standard,
    /// Also pipe's fused CPU kernels ([`HOST_KERNELS_DOMAIN`]): faster backward passes, for
    /// graphs run on the CPU by this crate.
    Host,
}

impl Kernels {
    /// The fastest choice for graphs run on `device`.
    pub fn for_device(device: crate::Device) -> Self {
        match device {
            crate::Device::Cpu => Kernels::Host,
            crate::Device::Cuda(_) => Kernels::Standard,
        }
    }
}

impl Graph {
    /// Lets the backward rules use `kernels` from now on.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Which operators the backward rules may emit.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// `GeluTanhGrad(x, gy)`: `gy · gelu_tanh'(x)`, f32 tensors of one shape.
    pub(crate) fn gelu_tanh_grad(&mut self, x: Tensor, gy: Tensor) -> Result<Tensor> {
        self.same_f32("GeluTanhGrad", &[x, gy])?;
        let shape = self.shape(x).to_vec();
        Ok(self.push_host("GeluTanhGrad", &[x, gy], DType::F32, shape))
    }

    /// `SiluGrad(x, gy)`: `gy · silu'(x)`, f32 tensors of one shape.
    pub(crate) fn silu_grad(&mut self, x: Tensor, gy: Tensor) -> Result<Tensor> {
        self.same_f32("SiluGrad", &[x, gy])?;
        let shape = self.shape(x).to_vec();
        Ok(self.push_host("SiluGrad", &[x, gy], DType::F32, shape))
    }

    /// `GeluErfGrad(x, gy)`: `gy · gelu'(x)` for the exact GELU, f32 tensors of one shape.
    pub(crate) fn gelu_erf_grad(&mut self, x: Tensor, gy: Tensor) -> Result<Tensor> {
        self.same_f32("GeluErfGrad", &[x, gy])?;
        let shape = self.shape(x).to_vec();
        Ok(self.push_host("GeluErfGrad", &[x, gy], DType::F32, shape))
    }

    /// `LayerNormGrad(gy, x, scale, mean, inv_std)`: the input gradient of a LayerNormalization
    /// over the last axis, `inv_std (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))` with `ĝ = gy scale` and
    /// `x̂ = (x - mean) inv_std`; `mean`/`inv_std` are the forward node's statistics (last
    /// axis of size 1), `scale` is 1-D.
    pub(crate) fn layer_norm_grad(
        &mut self,
        gy: Tensor,
        x: Tensor,
        scale: Tensor,
        mean: Tensor,
        inv_std: Tensor,
    ) -> Result<Tensor> {
        self.same_f32("LayerNormGrad", &[gy, x])?;
        let rank = self.rank(x);
        let width = self.shape(x)[rank - 1].clone();
        let stats_ok = [mean, inv_std].iter().all(|&s| {
            s.dtype() == DType::F32
                && self.rank(s) == rank
                && self.shape(s)[rank - 1] == Dim::Fixed(1)
        });
        if !stats_ok || self.shape(scale) != [width] || scale.dtype() != DType::F32 {
            return Err(self.err(
                "LayerNormGrad",
                "needs f32 statistics of shape [..., 1] and a 1-D f32 scale over the last axis",
            ));
        }
        let shape = self.shape(x).to_vec();
        Ok(self.push_host(
            "LayerNormGrad",
            &[gy, x, scale, mean, inv_std],
            DType::F32,
            shape,
        ))
    }

    /// `GatherGrad(data, idx, gy)`: the gradient of `Gather(data, idx, axis 0)`, shaped like
    /// `data`, repeated indices summed in position order (the same bits at any thread count).
    pub(crate) fn gather_grad(&mut self, data: Tensor, idx: Tensor, gy: Tensor) -> Result<Tensor> {
        if data.dtype() != DType::F32 || gy.dtype() != DType::F32 || idx.dtype() != DType::I64 {
            return Err(self.err("GatherGrad", "needs f32 data and gradient, int64 indices"));
        }
        let shape = self.shape(data).to_vec();
        Ok(self.push_host("GatherGrad", &[data, idx, gy], DType::F32, shape))
    }

    /// `Int4ToInt8(packed, multipliers, after)`: the int8 weight `[N, blocks · 32]` that
    /// 4-bit blocks `[N, blocks, 16]` with `multipliers` `[N, blocks]` stand for
    /// ([`crate::quantize::Int4Blocks`]), or with `transposed` its transpose `[blocks · 32,
    /// N]`, in `storage` (`Int4ToUint8` for [`Int8Storage::Offset`]). `after` is not read;
    /// it makes the node wait until `after` exists.
    pub(crate) fn int4_to_int8(
        &mut self,
        packed: Tensor,
        multipliers: Tensor,
        after: Tensor,
        transposed: bool,
        storage: Int8Storage,
    ) -> Result<Tensor> {
        let shape = self.shape(packed).to_vec();
        let fits = packed.dtype() == DType::U8
            && multipliers.dtype() == DType::U8
            && after.dtype() == DType::F32
            && shape.len() == 3
            && self.shape(multipliers) == &shape[..2];
        let blocks = shape.get(1).and_then(Dim::fixed);
        let (true, Some(blocks)) = (fits, blocks) else {
            return Err(self.err(
                "Int4ToInt8",
                "needs uint8 blocks [N, blocks, 16] and multipliers [N, blocks], an f32 `after`",
            ));
        };
        let width = Dim::from(blocks * crate::quantize::INT4_BLOCK as i64);
        let (op, shape) = match (transposed, storage) {
            (true, Int8Storage::Signed) => ("Int4ToInt8T", vec![width, shape[0].clone()]),
            (false, Int8Storage::Signed) => ("Int4ToInt8", vec![shape[0].clone(), width]),
            (true, Int8Storage::Offset) => ("Int4ToUint8T", vec![width, shape[0].clone()]),
            (false, Int8Storage::Offset) => ("Int4ToUint8", vec![shape[0].clone(), width]),
        };
        let ints = storage.dtype();
        Ok(self.push_host(op, &[packed, multipliers, after], ints, shape))
    }

    /// `Bf16ToF32(w, after)`: the `bfloat16` tensor `w` as f32 (exact). `after` is not
    /// read; it makes the node wait until `after` exists.
    pub(crate) fn bf16_to_f32(&mut self, w: Tensor, after: Tensor) -> Result<Tensor> {
        if w.dtype() != DType::BF16 || after.dtype() != DType::F32 {
            return Err(self.err("Bf16ToF32", "needs a bfloat16 tensor and an f32 `after`"));
        }
        let shape = self.shape(w).to_vec();
        Ok(self.push_host("Bf16ToF32", &[w, after], DType::F32, shape))
    }

    fn same_f32(&self, op: &str, ts: &[Tensor]) -> Result<()> {
        let shape = self.shape(ts[0]);
        if ts
            .iter()
            .any(|&t| t.dtype() != DType::F32 || self.shape(t) != shape)
        {
            return Err(self.err(op, "needs f32 tensors of one shape"));
        }
        Ok(())
    }

    fn push_host(
        &mut self,
        op: &'static str,
        inputs: &[Tensor],
        dtype: DType,
        shape: Vec<Dim>,
    ) -> Tensor {
        let y = self.push1(op, inputs, vec![], dtype, shape);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = HOST_KERNELS_DOMAIN;
        }
        y
    }
}
