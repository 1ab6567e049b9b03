//! Matrix products over quantized frozen weights (see [`crate::quantize`]): ONNX Runtime's
//! `com.microsoft` kernels, and the rewrite that puts them in a graph built in f32.

use std::collections::BTreeSet;

use super::{Attr, Dim, Graph, HOST_KERNELS_DOMAIN, Kernels, Node, Tensor};
use crate::quantize::{FrozenDType, INT4_BLOCK, Int8Storage, QuantizedWeight, WeightLayout};
use crate::{DType, Error, Result};

/// The operator-set domain of ONNX Runtime's contributed kernels.
pub const MICROSOFT_DOMAIN: &str = "com.microsoft";

/// The product over a `bfloat16` frozen weight before it is lowered
/// ([`Graph::lower_frozen_products`]); no kernel runs it.
pub(crate) const BF16_PRODUCT: &str = "Bf16MatMul";

/// The int8 grid a weight's 4-bit blocks are nested in: uint8 multipliers `[N, blocks]` and
/// f32 scales `[N]` (see [`crate::quantize::Int4Blocks`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Int4Grid {
    multipliers: Tensor,
    scales: Tensor,
}

impl Graph {
    /// Sets how [`Graph::quantize_frozen`] stores int8 integers: by default
    /// [`Int8Storage::for_this_cpu`], the storage whose products are exact on the CPU that
    /// builds the graph (set it for a graph run on another machine, or to test the other).
    pub fn set_int8_storage(&mut self, storage: Int8Storage) {
        self.int8_storage = storage;
    }

    /// `DynamicQuantizeMatMul(a, b, b_scale)`: `a` f32 `[.., K]` quantized to uint8 per tensor
    /// on the fly, times `b` `[K, N]` with `b_scale` (a scalar, or one per column); `b` is
    /// int8, or uint8 offset by [`Int8Storage::OFFSET`] (given as its zero point).
    pub fn dynamic_quantize_matmul(
        &mut self,
        a: Tensor,
        b: Tensor,
        b_scale: Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "DynamicQuantizeMatMul";
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if a.dtype() != DType::F32
            || !matches!(b.dtype(), DType::I8 | DType::U8)
            || sb.len() != 2
            || sa.last() != Some(&sb[0])
        {
            return Err(self.err(OP, "needs f32 [.., K] times int8 or uint8 [K, N]"));
        }
        let mut shape = sa;
        if let Some(last) = shape.last_mut() {
            *last = sb[1].clone();
        }
        let mut inputs = vec![a];
        inputs.extend(self.integer_weight(b, b_scale));
        Ok(self.push_microsoft(OP, &inputs, vec![], shape))
    }

    /// The inputs of `DynamicQuantizeMatMul` after `A` for the integers `b` with `b_scale`:
    /// with uint8 integers ([`Int8Storage::Offset`]) their zero point too.
    fn integer_weight(&mut self, b: Tensor, b_scale: Tensor) -> Vec<Tensor> {
        let mut inputs = vec![b, b_scale];
        if b.dtype() == DType::U8 {
            inputs.push(self.scalar(DType::U8, f64::from(Int8Storage::OFFSET)));
        }
        inputs
    }

    /// The f32 weight `[N, K]` of the `MatMulNBits` node `node` (its packed blocks and
    /// scales, `K` and `N`), made once `after` exists ([`Graph::dequantize_4bit`]).
    pub(crate) fn nbits_weight(&mut self, node: &Node, after: Tensor) -> Result<Tensor> {
        let (k, n) = (self.nbits_dim(node, "K")?, self.nbits_dim(node, "N")?);
        self.dequantize_4bit(node.input(1), node.input(2), k, n, after)
    }

    /// The size `name` (`K` or `N`) of the `MatMulNBits` node `node`.
    fn nbits_dim(&self, node: &Node, name: &str) -> Result<usize> {
        node.attr_int(name)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.err("MatMulNBits", format!("`{}` has no `{name}`", node.name)))
    }

    /// With [`Kernels::Host`], the weight of the `MatMulNBits` node `node` as the exact int8
    /// integers its blocks stand for (stored as [`Graph::set_int8_storage`] says), made once
    /// `after` exists (`[N, K]`, or with
    /// `transposed` `[K, N]`), and the scale of each of its `N` rows; `None` on other
    /// kernels or for blocks [`Graph::quantize_frozen`] did not nest in an int8 grid.
    pub(crate) fn nbits_weight_int8(
        &mut self,
        node: &Node,
        after: Tensor,
        transposed: bool,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let packed = node.input(1);
        let grid = match (self.kernels(), self.int4_grids.get(&packed)) {
            (Kernels::Host, Some(&grid)) => grid,
            _ => return Ok(None),
        };
        let storage = self.int8_storage;
        let w = self.int4_to_int8(packed, grid.multipliers, after, transposed, storage)?;
        let k = self.nbits_dim(node, "K")?;
        let padded = self.shape(w)[usize::from(!transposed)].fixed();
        let w = match padded == i64::try_from(k).ok() {
            true => w,
            false => self.slice(w, &[0], &[Dim::from(k)], &[i64::from(!transposed)], &[])?,
        };
        Ok(Some((w, grid.scales)))
    }

    /// The f32 weight `[N, K]` that `MatMulNBits`' `packed` and `scales` stand for, made by
    /// ONNX Runtime's `GatherBlockQuantized` gathering every row (one node, one f32 output;
    /// the same nibbles, zero point 8 and scales), the padding of a last block cut.
    ///
    /// Made only once `after` exists: the scales are multiplied by 1 computed from `after`'s
    /// size. Without that tie ONNX Runtime may run the dequantization (which reads only graph
    /// inputs) at the start of the step, and every layer's f32 weight would wait there for
    /// the backward pass: the f32 model again.
    fn dequantize_4bit(
        &mut self,
        packed: Tensor,
        scales: Tensor,
        k: usize,
        n: usize,
        after: Tensor,
    ) -> Result<Tensor> {
        let size = self.size(after)?;
        let size = self.cast(size, DType::F32)?;
        let one = self.sign(size)?;
        let blocks = k.div_ceil(INT4_BLOCK);
        let scales = self.reshape(scales, &[Dim::from(n), Dim::from(blocks)])?;
        let scales = self.mul(scales, one)?;
        let rows = self.reshape(packed, &[Dim::from(n), Dim::from(blocks * INT4_BLOCK / 2)])?;
        let all = self.range(&Dim::from(n), DType::I64)?;
        let attrs = vec![
            ("gather_axis", Attr::Int(0)),
            ("quantize_axis", Attr::Int(1)),
            ("block_size", Attr::Int(INT4_BLOCK as i64)),
            ("bits", Attr::Int(4)),
        ];
        let padded = Dim::from(blocks * INT4_BLOCK);
        let w = self.push_microsoft(
            "GatherBlockQuantized",
            &[rows, all, scales],
            attrs,
            vec![Dim::from(n), padded],
        );
        if blocks * INT4_BLOCK == k {
            return Ok(w);
        }
        self.slice(w, &[0], &[Dim::from(k)], &[1], &[])
    }

    /// Replaces each frozen input named in `names` by its `dtype` form, where the graph reads
    /// it only as the weight of matrix products (`x · wᵀ` through a transpose, or `x · w`): each
    /// such `MatMul` becomes the quantized product, in place. Inputs read any other way (an
    /// embedding's `Gather`, a tied head) stay f32. Returns what each replaced input became;
    /// feed them with [`QuantizedWeight::quantize`].
    pub fn quantize_frozen(
        &mut self,
        names: &BTreeSet<String>,
        dtype: FrozenDType,
    ) -> Result<Vec<QuantizedWeight>> {
        if dtype == FrozenDType::F32 {
            return Ok(Vec::new());
        }
        let candidates: Vec<Tensor> = self
            .inputs()
            .iter()
            .copied()
            .filter(|&t| {
                t.dtype() == DType::F32 && self.rank(t) == 2 && names.contains(self.name(t))
            })
            .collect();
        let mut done = Vec::new();
        for w in candidates {
            let Some((layout, products)) = self.weight_products(w) else {
                continue;
            };
            let dims: Vec<usize> = self
                .shape(w)
                .iter()
                .map(|d| d.fixed().and_then(|v| usize::try_from(v).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    self.err("MatMul", format!("`{}` needs a fixed shape", self.name(w)))
                })?;
            let (k, n) = match layout {
                WeightLayout::OutIn => (dims[1], dims[0]),
                WeightLayout::InOut => (dims[0], dims[1]),
            };
            let q = QuantizedWeight {
                name: self.name(w).to_string(),
                layout,
                k,
                n,
                dtype,
                storage: self.int8_storage,
            };
            self.replace_products(&q, &products)?;
            self.inputs.retain(|&t| t != w);
            done.push(q);
        }
        Ok(done)
    }

    /// The layout of `w` and the `MatMul` nodes that read it, when those are its only uses
    /// (each directly as the right operand, or each through its own `Transpose` to one).
    fn weight_products(&self, w: Tensor) -> Option<(WeightLayout, Vec<usize>)> {
        let users = self.users(w);
        let is_product = |&(i, slot): &(usize, usize)| self.nodes[i].op == "MatMul" && slot == 1;
        if !users.is_empty() && users.iter().all(is_product) {
            return Some((WeightLayout::InOut, users.iter().map(|u| u.0).collect()));
        }
        let mut products = Vec::new();
        for &(i, _) in &users {
            let node = &self.nodes[i];
            if node.op != "Transpose" || node.attr_ints("perm") != Some(&[1, 0]) {
                return None;
            }
            let reads = self.users(node.outputs[0]);
            if reads.is_empty() || !reads.iter().all(is_product) {
                return None;
            }
            products.extend(reads.iter().map(|u| u.0));
        }
        (!products.is_empty()).then_some((WeightLayout::OutIn, products))
    }

    /// Declares the inputs of `q` and turns each `MatMul` of `products` into its quantized
    /// product (same output, same place in the graph).
    fn replace_products(&mut self, q: &QuantizedWeight, products: &[usize]) -> Result<()> {
        let (k, n) = (Dim::from(q.k), Dim::from(q.n));
        let (op, domain, inputs, attrs) = match q.dtype {
            FrozenDType::Int8 => {
                let scale = self.input(&q.scales_name(), DType::F32, std::slice::from_ref(&n))?;
                let ints = q.storage.dtype();
                let values = self.input(&q.values_name(), ints, &[k.clone(), n.clone()])?;
                let transposed = self.input(&q.transposed_name(), ints, &[n, k])?;
                self.transposed_twins.insert(values, transposed);
                (
                    "DynamicQuantizeMatMul",
                    MICROSOFT_DOMAIN,
                    self.integer_weight(values, scale),
                    vec![],
                )
            }
            FrozenDType::Int4 => {
                let scale = self.input(&q.scales_name(), DType::F32, std::slice::from_ref(&n))?;
                let blocks = Dim::from(q.k.div_ceil(INT4_BLOCK));
                let shape = [n.clone(), blocks.clone(), Dim::from(INT4_BLOCK / 2)];
                let packed = self.input(&q.values_name(), DType::U8, &shape)?;
                let multipliers = self.input(&q.multipliers_name(), DType::U8, &[n, blocks])?;
                self.int4_grids.insert(
                    packed,
                    Int4Grid {
                        multipliers,
                        scales: scale,
                    },
                );
                let block_scales = self.int4_block_scales(multipliers, scale)?;
                // accuracy_level 0: the blocks dequantized, f32 products.
                let attrs = vec![
                    ("K", Attr::Int(q.k as i64)),
                    ("N", Attr::Int(q.n as i64)),
                    ("bits", Attr::Int(4)),
                    ("block_size", Attr::Int(INT4_BLOCK as i64)),
                    ("accuracy_level", Attr::Int(0)),
                ];
                (
                    "MatMulNBits",
                    MICROSOFT_DOMAIN,
                    vec![packed, block_scales],
                    attrs,
                )
            }
            FrozenDType::Bf16 => {
                let shape: Vec<Dim> = q.shape().iter().map(|&d| Dim::Fixed(d)).collect();
                let w = self.input(&q.values_name(), DType::BF16, &shape)?;
                let trans_b = i64::from(q.layout == WeightLayout::OutIn);
                (
                    BF16_PRODUCT,
                    HOST_KERNELS_DOMAIN,
                    vec![w],
                    vec![("transB", Attr::Int(trans_b))],
                )
            }
            FrozenDType::F32 => return Err(Error::Data("f32 weights are not quantized".into())),
        };
        for &i in products {
            let node = &mut self.nodes[i];
            let a = node.inputs[0];
            node.op = op;
            node.domain = domain;
            node.inputs = std::iter::once(a)
                .chain(inputs.iter().copied().map(Some))
                .collect();
            node.attrs = attrs.clone();
        }
        Ok(())
    }

    /// `a · w` (`w` `[K, N]`), or with `trans_b` `a · wᵀ` (`w` `[N, K]`), over a `bfloat16`
    /// weight: a placeholder the autodiff differentiates and [`Graph::lower_frozen_products`]
    /// turns into an f32 product of the weight widened for it.
    pub(crate) fn bf16_matmul(&mut self, a: Tensor, w: Tensor, trans_b: bool) -> Result<Tensor> {
        let (sa, sw) = (self.shape(a).to_vec(), self.shape(w).to_vec());
        let (k, n) = match trans_b {
            true => (sw.get(1), sw.first()),
            false => (sw.first(), sw.get(1)),
        };
        let fits = a.dtype() == DType::F32 && w.dtype() == DType::BF16 && sw.len() == 2;
        let (true, Some(k), Some(n)) = (fits, k, n) else {
            return Err(self.err(BF16_PRODUCT, "needs f32 [.., K] times a bfloat16 matrix"));
        };
        if sa.last() != Some(k) {
            return Err(self.err(BF16_PRODUCT, format!("{sa:?} times {sw:?}")));
        }
        let mut shape = sa.clone();
        if let Some(last) = shape.last_mut() {
            *last = n.clone();
        }
        let attrs = vec![("transB", Attr::Int(i64::from(trans_b)))];
        let y = self.push1(BF16_PRODUCT, &[a, w], attrs, DType::F32, shape);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = HOST_KERNELS_DOMAIN;
        }
        Ok(y)
    }

    /// The scale of each block, `multipliers · scales` (`[N, blocks]` times `[N]`), flat
    /// `[N · blocks]` as `MatMulNBits` takes it.
    fn int4_block_scales(&mut self, multipliers: Tensor, scales: Tensor) -> Result<Tensor> {
        let n = self.shape(scales)[0].clone();
        let m = self.cast(multipliers, DType::F32)?;
        let column = self.reshape(scales, &[n, Dim::from(1)])?;
        let block_scales = self.mul(m, column)?;
        self.reshape(block_scales, &[Dim::from(-1)])
    }

    /// Turns every product over a frozen weight that no kernel runs as it is into ones that
    /// run, each reading its weight for itself:
    ///
    /// - `MatMulNBits` (ONNX Runtime's CPU kernel is fast only over constant weights it can
    ///   prepack, and otherwise dequantizes each call on a slow path: `bench/README.md`):
    ///   - with [`Kernels::Host`] and blocks in an int8 grid, `DynamicQuantizeMatMul` over the
    ///     int8 integers the blocks stand for, unpacked for this product
    ///     ([`Graph::int4_to_int8`] tied to its input), as int8 weights are multiplied;
    ///   - otherwise the f32 product of the weights dequantized for this product alone
    ///     ([`Graph::dequantize_4bit`] tied to its input, then `FusedMatMul` with `transB`:
    ///     the same values in f32 arithmetic, like `accuracy_level` 0).
    /// - the `bfloat16` placeholder ([`Graph::bf16_matmul`]): `FusedMatMul` over the weight
    ///   widened to f32 for this product ([`Graph::widen_bf16`] tied to its input).
    ///
    /// Call it once the gradients are built: the backward of each product reads the same
    /// weight again for itself, so no unpacked or widened weight lives from the forward to
    /// the backward.
    pub fn lower_frozen_products(&mut self) -> Result<()> {
        let products: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].op, "MatMulNBits" | BF16_PRODUCT))
            .collect();
        for i in products {
            let node = self.nodes[i].clone();
            let a = node.input(0);
            let f32_product = |w: Tensor, trans_b: bool| {
                let attrs = vec![
                    ("alpha", Attr::Float(1.0)),
                    ("transA", Attr::Int(0)),
                    ("transB", Attr::Int(i64::from(trans_b))),
                ];
                ("FusedMatMul", MICROSOFT_DOMAIN, vec![a, w], attrs)
            };
            let (op, domain, inputs, attrs) = if node.op == BF16_PRODUCT {
                let w = self.widen_bf16(node.input(1), a)?;
                f32_product(w, node.attr_int("transB") == Some(1))
            } else if let Some((w, scales)) = self.nbits_weight_int8(&node, a, true)? {
                let mut inputs = vec![a];
                inputs.extend(self.integer_weight(w, scales));
                ("DynamicQuantizeMatMul", MICROSOFT_DOMAIN, inputs, vec![])
            } else {
                f32_product(self.nbits_weight(&node, a)?, true)
            };
            let node = &mut self.nodes[i];
            node.op = op;
            node.domain = domain;
            node.inputs = inputs.into_iter().map(Some).collect();
            node.attrs = attrs;
        }
        Ok(())
    }

    /// The `bfloat16` weight `w` as f32, made once `after` exists: pipe's `Bf16ToF32` with
    /// [`Kernels::Host`], else a `Cast` (standard kernels: the device keeps f32 weights, so
    /// this runs only in tests of the graph).
    fn widen_bf16(&mut self, w: Tensor, after: Tensor) -> Result<Tensor> {
        match self.kernels() {
            Kernels::Host => self.bf16_to_f32(w, after),
            Kernels::Standard => self.cast(w, DType::F32),
        }
    }

    /// The int8 weight `b` of a `DynamicQuantizeMatMul` transposed, as
    /// [`Graph::quantize_frozen`] declared it for the input gradient.
    pub(crate) fn transposed_twin(&self, b: Tensor) -> Option<Tensor> {
        self.transposed_twins.get(&b).copied()
    }

    /// A one-output node of ONNX Runtime's contributed operators (f32 output of `shape`).
    pub(crate) fn push_microsoft(
        &mut self,
        op: &'static str,
        inputs: &[Tensor],
        attrs: Vec<(&'static str, Attr)>,
        shape: Vec<Dim>,
    ) -> Tensor {
        let y = self.push1(op, inputs, attrs, DType::F32, shape);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = MICROSOFT_DOMAIN;
        }
        y
    }
}
