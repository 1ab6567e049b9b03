//! Math operators: element-wise, broadcasting binary ops, matrix products, reductions,
//! normalisation and losses. Each method is named after the ONNX operator it emits.

use super::{Attr, DType, Dim, Graph, Tensor, shape_string};
use crate::Result;

/// Broadcasts two shapes the numpy way; `None` when they are incompatible.
pub(crate) fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let one = Dim::Fixed(1);
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                &a[i + a.len() - rank]
            } else {
                &one
            };
            let db = if i + b.len() >= rank {
                &b[i + b.len() - rank]
            } else {
                &one
            };
            if da == db || *db == one {
                Some(da.clone())
            } else if *da == one {
                Some(db.clone())
            } else {
                None
            }
        })
        .collect()
}

/// Normalises a possibly negative axis against `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

impl Graph {
    fn check_axis(&self, op: &str, axis: i64, rank: usize) -> Result<usize> {
        norm_axis(axis, rank)
            .ok_or_else(|| self.err(op, format!("axis {axis} is out of range for rank {rank}")))
    }

    pub(crate) fn check_axes(&self, op: &str, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
        let mut v = axes
            .iter()
            .map(|&a| self.check_axis(op, a, rank))
            .collect::<Result<Vec<_>>>()?;
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    fn require_float(&self, op: &str, x: Tensor) -> Result<()> {
        if x.dtype().is_float() {
            Ok(())
        } else {
            Err(self.err(op, format!("expects a float tensor, got {}", x.dtype())))
        }
    }

    fn unary(
        &mut self,
        op: &'static str,
        x: Tensor,
        attrs: Vec<(&'static str, Attr)>,
    ) -> Result<Tensor> {
        self.require_float(op, x)?;
        let shape = self.shape(x).to_vec();
        Ok(self.push1(op, &[x], attrs, x.dtype(), shape))
    }

    /// A broadcasting binary op whose output has `out` as element type (or the inputs' type).
    fn binary(
        &mut self,
        op: &'static str,
        a: Tensor,
        b: Tensor,
        out: Option<DType>,
    ) -> Result<Tensor> {
        if a.dtype() != b.dtype() {
            return Err(self.err(
                op,
                format!("element types differ: {} and {}", a.dtype(), b.dtype()),
            ));
        }
        let shape = broadcast_shapes(self.shape(a), self.shape(b)).ok_or_else(|| {
            self.err(
                op,
                format!(
                    "shapes {} and {} do not broadcast",
                    shape_string(self.shape(a)),
                    shape_string(self.shape(b))
                ),
            )
        })?;
        Ok(self.push1(op, &[a, b], vec![], out.unwrap_or(a.dtype()), shape))
    }

    // ---- element-wise -----------------------------------------------------------------------

    /// `Add`: `a + b` with broadcasting.
    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Add", a, b, None)
    }
    /// `Sub`: `a - b` with broadcasting.
    pub fn sub(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Sub", a, b, None)
    }
    /// `Mul`: `a * b` with broadcasting.
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Mul", a, b, None)
    }
    /// `Div`: `a / b` with broadcasting.
    pub fn div(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Div", a, b, None)
    }
    /// `Pow`: `a ^ b` with broadcasting (same element type for both).
    pub fn pow(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Pow", a, b, None)
    }
    /// `Max` of two tensors with broadcasting.
    pub fn max(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Max", a, b, None)
    }
    /// `Min` of two tensors with broadcasting.
    pub fn min(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Min", a, b, None)
    }
    /// `Equal` (bool result).
    pub fn equal(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Equal", a, b, Some(DType::Bool))
    }
    /// `Less`: `a < b` (bool result).
    pub fn less(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Less", a, b, Some(DType::Bool))
    }
    /// `Greater`: `a > b` (bool result).
    pub fn greater(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("Greater", a, b, Some(DType::Bool))
    }
    /// `GreaterOrEqual`: `a >= b` (bool result).
    pub fn greater_or_equal(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary("GreaterOrEqual", a, b, Some(DType::Bool))
    }
    /// `And` of two bool tensors.
    pub fn and(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        if a.dtype() != DType::Bool {
            return Err(self.err("And", "expects bool tensors"));
        }
        self.binary("And", a, b, None)
    }

    /// `Not` of a bool tensor.
    pub fn not(&mut self, x: Tensor) -> Result<Tensor> {
        if x.dtype() != DType::Bool {
            return Err(self.err("Not", "expects a bool tensor"));
        }
        let shape = self.shape(x).to_vec();
        Ok(self.push1("Not", &[x], vec![], DType::Bool, shape))
    }

    /// `Where(cond, a, b)`: `a` where `cond` holds, else `b`, all three broadcast.
    pub fn where_(&mut self, cond: Tensor, a: Tensor, b: Tensor) -> Result<Tensor> {
        if cond.dtype() != DType::Bool || a.dtype() != b.dtype() {
            return Err(self.err(
                "Where",
                "expects a bool condition and two values of one type",
            ));
        }
        let ab = broadcast_shapes(self.shape(a), self.shape(b));
        let shape = ab
            .and_then(|ab| broadcast_shapes(self.shape(cond), &ab))
            .ok_or_else(|| self.err("Where", "condition and values do not broadcast"))?;
        Ok(self.push1("Where", &[cond, a, b], vec![], a.dtype(), shape))
    }

    /// `Neg`: `-x`.
    pub fn neg(&mut self, x: Tensor) -> Result<Tensor> {
        let shape = self.shape(x).to_vec();
        Ok(self.push1("Neg", &[x], vec![], x.dtype(), shape))
    }
    /// `Abs`: `|x|`.
    pub fn abs(&mut self, x: Tensor) -> Result<Tensor> {
        let shape = self.shape(x).to_vec();
        Ok(self.push1("Abs", &[x], vec![], x.dtype(), shape))
    }
    /// `Sign`: -1, 0 or 1.
    pub fn sign(&mut self, x: Tensor) -> Result<Tensor> {
        let shape = self.shape(x).to_vec();
        Ok(self.push1("Sign", &[x], vec![], x.dtype(), shape))
    }
    /// `Sqrt`.
    pub fn sqrt(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Sqrt", x, vec![])
    }
    /// `Reciprocal`: `1 / x`.
    pub fn reciprocal(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Reciprocal", x, vec![])
    }
    /// `Tanh`.
    pub fn tanh(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Tanh", x, vec![])
    }
    /// `Exp`.
    pub fn exp(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Exp", x, vec![])
    }
    /// `Sin`.
    pub fn sin(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Sin", x, vec![])
    }
    /// `Cos`.
    pub fn cos(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Cos", x, vec![])
    }
    /// `Log` (natural).
    pub fn log(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Log", x, vec![])
    }
    /// `Erf`.
    pub fn erf(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Erf", x, vec![])
    }
    /// `Sigmoid`: `1 / (1 + exp(-x))`.
    pub fn sigmoid(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Sigmoid", x, vec![])
    }
    /// SiLU (swish), `x · sigmoid(x)`: with [`super::Kernels::Host`] one node, ONNX Runtime's
    /// `QuickGelu` with `alpha` 1, whose gradient is pipe's fused `SiluGrad`; otherwise
    /// `Sigmoid` then `Mul` (standard operators: the graph runs anywhere).
    pub fn silu(&mut self, x: Tensor) -> Result<Tensor> {
        if self.kernels() == super::Kernels::Host && x.dtype() == DType::F32 {
            let shape = self.shape(x).to_vec();
            let attrs = vec![("alpha", Attr::Float(1.0))];
            return Ok(self.push_microsoft("QuickGelu", &[x], attrs, shape));
        }
        let s = self.sigmoid(x)?;
        self.mul(x, s)
    }
    /// `Relu`: `max(x, 0)`.
    pub fn relu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary("Relu", x, vec![])
    }
    /// `Gelu`; `tanh_approximation` selects `approximate="tanh"`, which is Hugging Face's
    /// `gelu_new` (<https://github.com/huggingface/transformers/blob/main/src/transformers/activations.py>,
    /// `NewGELUActivation`).
    pub fn gelu(&mut self, x: Tensor, tanh_approximation: bool) -> Result<Tensor> {
        let approx = if tanh_approximation { "tanh" } else { "none" };
        self.unary(
            "Gelu",
            x,
            vec![("approximate", Attr::String(approx.into()))],
        )
    }
    /// `Identity`.
    pub fn identity(&mut self, x: Tensor) -> Result<Tensor> {
        let shape = self.shape(x).to_vec();
        Ok(self.push1("Identity", &[x], vec![], x.dtype(), shape))
    }
    /// `Cast` to `to`.
    pub fn cast(&mut self, x: Tensor, to: DType) -> Result<Tensor> {
        let shape = self.shape(x).to_vec();
        Ok(self.push1(
            "Cast",
            &[x],
            vec![("to", Attr::Int(i64::from(to.onnx_code())))],
            to,
            shape,
        ))
    }

    // ---- matrix products --------------------------------------------------------------------

    /// `MatMul` with numpy semantics: batched, batch dims broadcast, rank-1 operands promoted.
    pub fn matmul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.require_float("MatMul", a)?;
        if a.dtype() != b.dtype() {
            return Err(self.err("MatMul", "element types differ"));
        }
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa.is_empty() || sb.is_empty() {
            return Err(self.err("MatMul", "operands must have rank 1 or more"));
        }
        let a2 = if sa.len() == 1 {
            vec![Dim::Fixed(1), sa[0].clone()]
        } else {
            sa.clone()
        };
        let b2 = if sb.len() == 1 {
            vec![sb[0].clone(), Dim::Fixed(1)]
        } else {
            sb.clone()
        };
        let (ra, rb) = (a2.len(), b2.len());
        if a2[ra - 1] != b2[rb - 2] {
            return Err(self.err(
                "MatMul",
                format!(
                    "inner dims differ: {} @ {}",
                    shape_string(&sa),
                    shape_string(&sb)
                ),
            ));
        }
        let batch = broadcast_shapes(&a2[..ra - 2], &b2[..rb - 2])
            .ok_or_else(|| self.err("MatMul", "batch dims do not broadcast"))?;
        let mut shape = batch;
        if sa.len() > 1 {
            shape.push(a2[ra - 2].clone());
        }
        if sb.len() > 1 {
            shape.push(b2[rb - 1].clone());
        }
        Ok(self.push1("MatMul", &[a, b], vec![], a.dtype(), shape))
    }

    /// `torch.nn.Linear`: `x @ weightᵀ + bias` with `weight` `[out, in]` as Hugging Face stores
    /// it; `x` may have any number of leading dims. Emits `Transpose`, `MatMul` and `Add`.
    pub fn linear(&mut self, x: Tensor, weight: Tensor, bias: Option<Tensor>) -> Result<Tensor> {
        if self.rank(weight) != 2 {
            return Err(self.err("MatMul", "a linear weight must be [out, in]"));
        }
        let wt = self.transpose(weight, &[1, 0])?;
        let y = self.matmul(x, wt)?;
        match bias {
            Some(b) => self.add(y, b),
            None => Ok(y),
        }
    }

    /// `Gemm`: `alpha * A' @ B' + beta * C` on matrices, `'` = optional transpose; `c` broadcasts.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        a: Tensor,
        b: Tensor,
        c: Option<Tensor>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Tensor> {
        self.require_float("Gemm", a)?;
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa.len() != 2 || sb.len() != 2 {
            return Err(self.err("Gemm", "A and B must be matrices"));
        }
        let (m, ka) = if trans_a {
            (&sa[1], &sa[0])
        } else {
            (&sa[0], &sa[1])
        };
        let (kb, n) = if trans_b {
            (&sb[1], &sb[0])
        } else {
            (&sb[0], &sb[1])
        };
        if ka != kb {
            return Err(self.err("Gemm", format!("inner dims differ: {ka} and {kb}")));
        }
        let shape = vec![m.clone(), n.clone()];
        if let Some(c) = c
            && broadcast_shapes(&shape, self.shape(c)).as_deref() != Some(shape.as_slice())
        {
            return Err(self.err("Gemm", "C does not broadcast to the output"));
        }
        let attrs = vec![
            ("alpha", Attr::Float(alpha)),
            ("beta", Attr::Float(beta)),
            ("transA", Attr::Int(i64::from(trans_a))),
            ("transB", Attr::Int(i64::from(trans_b))),
        ];
        let inputs = vec![Some(a), Some(b), c];
        Ok(self.push_node("Gemm", inputs, attrs, vec![(a.dtype(), shape)])[0])
    }

    // ---- reductions -------------------------------------------------------------------------

    fn reduce(
        &mut self,
        op: &'static str,
        x: Tensor,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<Tensor> {
        let rank = self.rank(x);
        let ax = self.check_axes(op, axes, rank)?;
        if ax.is_empty() {
            return Err(self.err(
                op,
                "give at least one axis (empty axes would reduce everything)",
            ));
        }
        let shape: Vec<Dim> = self
            .shape(x)
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (ax.contains(&i), keepdims) {
                (true, true) => Some(Dim::Fixed(1)),
                (true, false) => None,
                (false, _) => Some(d.clone()),
            })
            .collect();
        let axes_t = self.const_i64s(&ax.iter().map(|&a| a as i64).collect::<Vec<_>>());
        Ok(self.push1(
            op,
            &[x, axes_t],
            vec![("keepdims", Attr::Int(i64::from(keepdims)))],
            x.dtype(),
            shape,
        ))
    }

    /// `ReduceSum` over `axes` (given as an input tensor, as ONNX wants since opset 13).
    pub fn reduce_sum(&mut self, x: Tensor, axes: &[i64], keepdims: bool) -> Result<Tensor> {
        self.reduce("ReduceSum", x, axes, keepdims)
    }
    /// `ReduceMean` over `axes`.
    pub fn reduce_mean(&mut self, x: Tensor, axes: &[i64], keepdims: bool) -> Result<Tensor> {
        self.reduce("ReduceMean", x, axes, keepdims)
    }
    /// `ReduceMax` over `axes`.
    pub fn reduce_max(&mut self, x: Tensor, axes: &[i64], keepdims: bool) -> Result<Tensor> {
        self.reduce("ReduceMax", x, axes, keepdims)
    }
    /// `ReduceSum` over every axis, to a scalar.
    pub fn reduce_sum_all(&mut self, x: Tensor) -> Result<Tensor> {
        let axes: Vec<i64> = (0..self.rank(x) as i64).collect();
        if axes.is_empty() {
            return Ok(x);
        }
        self.reduce_sum(x, &axes, false)
    }
    /// `ReduceMean` over every axis, to a scalar.
    pub fn reduce_mean_all(&mut self, x: Tensor) -> Result<Tensor> {
        let axes: Vec<i64> = (0..self.rank(x) as i64).collect();
        if axes.is_empty() {
            return Ok(x);
        }
        self.reduce_mean(x, &axes, false)
    }

    // ---- normalisation and losses -----------------------------------------------------------

    /// `Softmax` along `axis`.
    pub fn softmax(&mut self, x: Tensor, axis: i64) -> Result<Tensor> {
        self.check_axis("Softmax", axis, self.rank(x))?;
        self.unary("Softmax", x, vec![("axis", Attr::Int(axis))])
    }
    /// `LogSoftmax` along `axis`.
    pub fn log_softmax(&mut self, x: Tensor, axis: i64) -> Result<Tensor> {
        self.check_axis("LogSoftmax", axis, self.rank(x))?;
        self.unary("LogSoftmax", x, vec![("axis", Attr::Int(axis))])
    }

    /// `LayerNormalization` over the axes from `axis` on; returns `Y`. The node also has its
    /// `Mean` and `InvStdDev` outputs, which the backward rule reuses.
    pub fn layer_normalization(
        &mut self,
        x: Tensor,
        scale: Tensor,
        bias: Option<Tensor>,
        axis: i64,
        epsilon: f32,
    ) -> Result<Tensor> {
        self.require_float("LayerNormalization", x)?;
        let rank = self.rank(x);
        let ax = self.check_axis("LayerNormalization", axis, rank)?;
        let shape = self.shape(x).to_vec();
        if self.shape(scale) != &shape[ax..] || bias.is_some_and(|b| self.shape(b) != &shape[ax..])
        {
            return Err(self.err(
                "LayerNormalization",
                format!(
                    "scale and bias must have shape {}",
                    shape_string(&shape[ax..])
                ),
            ));
        }
        let stats: Vec<Dim> = shape
            .iter()
            .enumerate()
            .map(|(i, d)| if i >= ax { Dim::Fixed(1) } else { d.clone() })
            .collect();
        // The spec types `Mean` and `InvStdDev` as float (`U`) whatever the input type.
        let stash = DType::F32;
        let attrs = vec![
            ("axis", Attr::Int(axis)),
            ("epsilon", Attr::Float(epsilon)),
            ("stash_type", Attr::Int(i64::from(stash.onnx_code()))),
        ];
        let outs = self.push_node(
            "LayerNormalization",
            vec![Some(x), Some(scale), bias],
            attrs,
            vec![(x.dtype(), shape), (stash, stats.clone()), (stash, stats)],
        );
        Ok(outs[0])
    }

    /// `SoftmaxCrossEntropyLoss` of `scores` `[N, C]` against integer `labels` `[N]`, averaged
    /// (`reduction="mean"`) like `torch.nn.CrossEntropyLoss`. Returns the scalar loss.
    pub fn softmax_cross_entropy_loss(&mut self, scores: Tensor, labels: Tensor) -> Result<Tensor> {
        Ok(self
            .softmax_cross_entropy_loss_with_log_prob(scores, labels)?
            .0)
    }

    /// [`Graph::softmax_cross_entropy_loss`] that also returns the node's `log_prob` output
    /// (log-softmax of `scores`, `[N, C]`).
    pub fn softmax_cross_entropy_loss_with_log_prob(
        &mut self,
        scores: Tensor,
        labels: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.require_float("SoftmaxCrossEntropyLoss", scores)?;
        let s = self.shape(scores).to_vec();
        if s.len() != 2
            || self.shape(labels) != &s[..1]
            || !matches!(labels.dtype(), DType::I64 | DType::I32)
        {
            return Err(self.err(
                "SoftmaxCrossEntropyLoss",
                "expects scores [N, C] and integer labels [N]",
            ));
        }
        let outs = self.push_node(
            "SoftmaxCrossEntropyLoss",
            vec![Some(scores), Some(labels)],
            vec![("reduction", Attr::String("mean".into()))],
            vec![(scores.dtype(), vec![]), (scores.dtype(), s)],
        );
        Ok((outs[0], outs[1]))
    }

    /// Binary cross-entropy with logits, averaged over every element, like
    /// `torch.nn.BCEWithLogitsLoss`: `mean(max(x, 0) - x·y + log(1 + exp(-|x|)))`, the
    /// numerically stable form. `targets` has the logits' shape and type.
    pub fn bce_with_logits(&mut self, logits: Tensor, targets: Tensor) -> Result<Tensor> {
        let relu = self.relu(logits)?;
        let xy = self.mul(logits, targets)?;
        let abs = self.abs(logits)?;
        let nabs = self.neg(abs)?;
        let e = self.exp(nabs)?;
        let one = self.scalar(logits.dtype(), 1.0);
        let onep = self.add(one, e)?;
        let sp = self.log(onep)?;
        let d = self.sub(relu, xy)?;
        let l = self.add(d, sp)?;
        self.reduce_mean_all(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dims;

    #[test]
    fn broadcasting_follows_numpy() {
        let b = broadcast_shapes;
        assert_eq!(
            b(&dims!["batch", 1, 4], &dims![3, 1]),
            Some(dims!["batch", 3, 4].to_vec())
        );
        assert_eq!(b(&dims!["seq"], &dims!["seq"]), Some(dims!["seq"].to_vec()));
        assert_eq!(b(&dims!["seq"], &dims!["batch"]), None);
        assert_eq!(b(&dims![2, 3], &dims![4, 3]), None);
        assert_eq!(b(&[], &dims![2]), Some(dims![2].to_vec()));
    }

    #[test]
    fn matmul_and_reductions_infer_shapes() {
        let mut g = Graph::new("t");
        let a = g.input("a", DType::F32, &dims!["batch", "seq", 8]).unwrap();
        let w = g.input("w", DType::F32, &dims![8, 3]).unwrap();
        let y = g.matmul(a, w).unwrap();
        assert_eq!(g.shape(y), dims!["batch", "seq", 3].as_slice());
        let s = g.reduce_sum(y, &[1], false).unwrap();
        assert_eq!(g.shape(s), dims!["batch", 3].as_slice());
        let m = g.reduce_mean(y, &[-1], true).unwrap();
        assert_eq!(g.shape(m), dims!["batch", "seq", 1].as_slice());
        let v = g.input("v", DType::F32, &dims![8]).unwrap();
        let mv = g.matmul(a, v).unwrap();
        assert_eq!(g.shape(mv), dims!["batch", "seq"].as_slice());
    }

    #[test]
    fn node_names_carry_the_scope_and_stay_unique() {
        let mut g = Graph::new("t");
        let x = g.input("x", DType::F32, &dims![2]).unwrap();
        let a = g
            .with_scope("transformer", |g| g.with_scope("h.3", |g| g.tanh(x)))
            .unwrap();
        let b = g.with_scope("transformer.h.3", |g| g.tanh(x)).unwrap();
        assert_eq!(g.name(a), "transformer.h.3/Tanh");
        assert_eq!(g.name(b), "transformer.h.3/Tanh_2");
        assert_eq!(g.scope(), "");
    }
}
