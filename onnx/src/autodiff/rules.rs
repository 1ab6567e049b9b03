//! Vector-Jacobian products, one per operator. Notation: `x`, `a`, `b` are inputs, `y` the
//! output, `gy` the gradient flowing into `y`, `unb(t, a)` sums `t` back to `a`'s shape.

use super::unbroadcast as unb;
use crate::builder::{DType, Graph, Kernels, Node, Reduction, Tensor};
use crate::{Error, Result};

type Grads = Vec<Option<Tensor>>;

/// The gradients of a node's inputs given those of its outputs (`None` = not needed / zero).
pub(super) fn vjp(
    g: &mut Graph,
    node: &Node,
    gy: &[Option<Tensor>],
    need: &[bool],
) -> Result<Grads> {
    let no_rule = || Error::NoGradient {
        op: node.op.to_string(),
        node: node.name.clone(),
    };
    if node.op == "Split" {
        return split(g, node, gy);
    }
    let Some(gy0) = gy[0] else {
        // Only secondary outputs (LayerNormalization's statistics, the loss's log_prob) carry a
        // gradient; those are handled in the rules that have them.
        return match node.op {
            "SoftmaxCrossEntropyLoss" => sce(g, node, None, gy[1]),
            _ => Err(no_rule()),
        };
    };
    let y = node.outputs[0];
    let x = node.inputs.first().copied().flatten();
    let x0 = || x.expect("unary ops have an input");
    let n = node.inputs.len();
    let mut out: Grads = vec![None; n];
    match node.op {
        // d/da (a + b) = 1, d/db = 1
        "Add" => {
            out[0] = Some(unb(g, gy0, node.input(0))?);
            out[1] = Some(unb(g, gy0, node.input(1))?);
        }
        // d/da (a - b) = 1, d/db = -1
        "Sub" => {
            out[0] = Some(unb(g, gy0, node.input(0))?);
            if need[1] {
                let neg = g.neg(gy0)?;
                out[1] = Some(unb(g, neg, node.input(1))?);
            }
        }
        // d/da (a * b) = b, d/db = a
        "Mul" => {
            let (a, b) = (node.input(0), node.input(1));
            if need[0] {
                let t = g.mul(gy0, b)?;
                out[0] = Some(unb(g, t, a)?);
            }
            if need[1] {
                let t = g.mul(gy0, a)?;
                out[1] = Some(unb(g, t, b)?);
            }
        }
        // d/da (a / b) = 1/b, d/db = -a/b^2 = -y/b
        "Div" => {
            let (a, b) = (node.input(0), node.input(1));
            if need[0] {
                let t = g.div(gy0, b)?;
                out[0] = Some(unb(g, t, a)?);
            }
            if need[1] {
                let t = g.mul(gy0, y)?;
                let t = g.div(t, b)?;
                let t = g.neg(t)?;
                out[1] = Some(unb(g, t, b)?);
            }
        }
        // d/da a^b = b a^(b-1), d/db a^b = a^b ln a
        "Pow" => {
            let (a, b) = (node.input(0), node.input(1));
            if need[0] {
                let one = g.scalar(b.dtype(), 1.0);
                let bm1 = g.sub(b, one)?;
                let p = g.pow(a, bm1)?;
                let t = g.mul(p, b)?;
                let t = g.mul(gy0, t)?;
                out[0] = Some(unb(g, t, a)?);
            }
            if need[1] {
                let la = g.log(a)?;
                let t = g.mul(y, la)?;
                let t = g.mul(gy0, t)?;
                out[1] = Some(unb(g, t, b)?);
            }
        }
        // d/dx -x = -1
        "Neg" => out[0] = Some(g.neg(gy0)?),
        // d/dx |x| = sign(x)
        "Abs" => {
            let s = g.sign(x0())?;
            out[0] = Some(g.mul(gy0, s)?);
        }
        // d/dx sqrt(x) = 1 / (2 sqrt(x)) = 0.5 / y
        "Sqrt" => {
            let half = g.scalar(y.dtype(), 0.5);
            let t = g.div(half, y)?;
            out[0] = Some(g.mul(gy0, t)?);
        }
        // d/dx 1/x = -1/x^2 = -y^2
        "Reciprocal" => {
            let y2 = g.mul(y, y)?;
            let t = g.mul(gy0, y2)?;
            out[0] = Some(g.neg(t)?);
        }
        // d/dx tanh(x) = 1 - tanh(x)^2
        "Tanh" => {
            let one = g.scalar(y.dtype(), 1.0);
            let y2 = g.mul(y, y)?;
            let d = g.sub(one, y2)?;
            out[0] = Some(g.mul(gy0, d)?);
        }
        // d/dx exp(x) = exp(x)
        "Exp" => out[0] = Some(g.mul(gy0, y)?),
        // d/dx sin(x) = cos(x)
        "Sin" => {
            let c = g.cos(x0())?;
            out[0] = Some(g.mul(gy0, c)?);
        }
        // d/dx cos(x) = -sin(x)
        "Cos" => {
            let s = g.sin(x0())?;
            let t = g.mul(gy0, s)?;
            out[0] = Some(g.neg(t)?);
        }
        // d/dx ln(x) = 1/x
        "Log" => out[0] = Some(g.div(gy0, x0())?),
        // d/dx erf(x) = 2/sqrt(pi) exp(-x^2)
        "Erf" => {
            let x = x0();
            let x2 = g.mul(x, x)?;
            let n = g.neg(x2)?;
            let e = g.exp(n)?;
            let c = g.scalar(x.dtype(), std::f64::consts::FRAC_2_SQRT_PI);
            let d = g.mul(e, c)?;
            out[0] = Some(g.mul(gy0, d)?);
        }
        // d/dx sigmoid(x) = y (1 - y)
        "Sigmoid" => {
            let one = g.scalar(y.dtype(), 1.0);
            let omy = g.sub(one, y)?;
            let d = g.mul(y, omy)?;
            out[0] = Some(g.mul(gy0, d)?);
        }
        // d/dx relu(x) = 1 if x > 0 else 0 (0 at 0, as torch)
        "Relu" => {
            let x = x0();
            let zero = g.scalar(x.dtype(), 0.0);
            let pos = g.greater(x, zero)?;
            out[0] = Some(g.where_(pos, gy0, zero)?);
        }
        "Gelu" => out[0] = Some(gelu(g, node, x0(), gy0)?),
        // QuickGelu with alpha 1 is SiLU ([`Graph::silu`], emitted with pipe's CPU kernels
        // only): d/dx x s(x) = s + x s (1 - s), one fused node.
        "QuickGelu" if node.attr_float("alpha") == Some(1.0) && g.kernels() == Kernels::Host => {
            out[0] = Some(g.silu_grad(x0(), gy0)?)
        }
        // d/dx x = 1
        "Identity" => out[0] = Some(gy0),
        // A float-to-float cast passes the gradient back, cast to the input type.
        "Cast" => {
            let x = x0();
            if !x.dtype().is_float() {
                return Err(no_rule());
            }
            out[0] = Some(if x.dtype() == y.dtype() {
                gy0
            } else {
                g.cast(gy0, x.dtype())?
            });
        }
        // d/da where(c, a, b) = [c], d/db = [!c]
        "Where" => {
            let c = node.input(0);
            let zero = g.scalar(gy0.dtype(), 0.0);
            if need[1] {
                let t = g.where_(c, gy0, zero)?;
                out[1] = Some(unb(g, t, node.input(1))?);
            }
            if need[2] {
                let t = g.where_(c, zero, gy0)?;
                out[2] = Some(unb(g, t, node.input(2))?);
            }
        }
        "MatMul" => return matmul(g, node, gy0, need),
        "DynamicQuantizeMatMul" => out[0] = Some(int8_product_grad(g, node, gy0)?),
        "MatMulNBits" => out[0] = Some(int4_product_grad(g, node, gy0)?),
        "Bf16MatMul" => out[0] = Some(bf16_product_grad(g, node, gy0)?),
        "Gemm" => return gemm(g, node, gy0, need),
        // Shape-only ops: the gradient is gy reshaped back.
        "Reshape" | "Unsqueeze" | "Squeeze" => out[0] = Some(g.reshape_like(gy0, x0())?),
        // Transpose by the inverse permutation.
        "Transpose" => {
            let perm = node.attr_ints("perm").ok_or_else(no_rule)?;
            let mut inv = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            out[0] = Some(g.transpose(gy0, &inv)?);
        }
        // Concat: split gy into the inputs' sizes along the axis.
        "Concat" => {
            let axis = node.attr_int("axis").ok_or_else(no_rule)?;
            let rank = g.rank(y);
            let ax = crate::builder::norm_axis(axis, rank).ok_or_else(no_rule)?;
            let sizes: Vec<_> = node
                .inputs
                .iter()
                .flatten()
                .map(|&t| g.shape(t)[ax].clone())
                .collect();
            let parts = g.split(gy0, &sizes, axis)?;
            return Ok(parts.into_iter().map(Some).collect());
        }
        "Slice" => out[0] = Some(slice(g, node, gy0).map_err(|_| no_rule())?),
        // Expand is a broadcast: sum back.
        "Expand" => out[0] = Some(unb(g, gy0, x0())?),
        // Gather(axis 0): scatter-add rows back, d data[i] = sum of gy over positions with index i
        // (one fused CPU node, summing in position order, with Kernels::Host); none to a
        // padding row.
        "Gather" => {
            if node.attr_int("axis") != Some(0) {
                return Err(no_rule());
            }
            let (data, idx) = (node.input(0), node.input(1));
            let idx = if idx.dtype() == DType::I64 {
                idx
            } else {
                g.cast(idx, DType::I64)?
            };
            // A padding row takes nothing: the positions that read it pass no gradient.
            let gy0 = match g.padding_row(data) {
                Some(row) => {
                    let row = g.scalar(DType::I64, row as f64);
                    let at_row = g.equal(idx, row)?;
                    let kept = g.not(at_row)?;
                    let kept = g.cast(kept, gy0.dtype())?;
                    let kept = g.unsqueeze(kept, &[-1])?;
                    g.mul(gy0, kept)?
                }
                None => gy0,
            };
            if g.kernels() == Kernels::Host && data.dtype() == DType::F32 {
                return Ok(vec![Some(g.gather_grad(data, idx, gy0)?), None]);
            }
            let idx = g.unsqueeze(idx, &[-1])?;
            let zeros = g.zeros_like(data)?;
            out[0] = Some(g.scatter_nd(zeros, idx, gy0, Reduction::Add)?);
        }
        // GatherElements: scatter-add gy back at the same indices.
        "GatherElements" => {
            let axis = node.attr_int("axis").ok_or_else(no_rule)?;
            let (data, idx) = (node.input(0), node.input(1));
            let zeros = g.zeros_like(data)?;
            out[0] = Some(g.scatter_elements(zeros, idx, gy0, axis, Reduction::Add)?);
        }
        // ScatterElements(add): d data = gy, d updates = gy gathered at the indices.
        "ScatterElements" if node.attr_string("reduction") == Some("add") => {
            let axis = node.attr_int("axis").ok_or_else(no_rule)?;
            out[0] = Some(gy0);
            if need[2] {
                out[2] = Some(g.gather_elements(gy0, node.input(1), axis)?);
            }
        }
        // ScatterND(add): d data = gy, d updates = GatherND(gy, indices).
        "ScatterND" if node.attr_string("reduction") == Some("add") => {
            out[0] = Some(gy0);
            if need[2] {
                out[2] = Some(g.gather_nd(gy0, node.input(1))?);
            }
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" => out[0] = Some(reduce(g, node, gy0)?),
        // d softmax: dx = y (gy - sum(gy y, axis))
        "Softmax" => {
            let axis = node.attr_int("axis").ok_or_else(no_rule)?;
            let gyy = g.mul(gy0, y)?;
            let s = g.reduce_sum(gyy, &[axis], true)?;
            let d = g.sub(gy0, s)?;
            out[0] = Some(g.mul(y, d)?);
        }
        // d log_softmax: dx = gy - exp(y) sum(gy, axis)
        "LogSoftmax" => {
            let axis = node.attr_int("axis").ok_or_else(no_rule)?;
            let s = g.reduce_sum(gy0, &[axis], true)?;
            let p = g.exp(y)?;
            let t = g.mul(p, s)?;
            out[0] = Some(g.sub(gy0, t)?);
        }
        "LayerNormalization" => return layer_norm(g, node, gy0, need),
        "SoftmaxCrossEntropyLoss" => return sce(g, node, Some(gy0), gy.get(1).copied().flatten()),
        // Trilu masks a fixed triangle: the gradient is masked the same way.
        "Trilu" => {
            let upper = node.attr_int("upper").unwrap_or(1) != 0;
            let k = node
                .inputs
                .get(1)
                .copied()
                .flatten()
                .and_then(|k| g.constant_value(k))
                .and_then(|d| d.to_i64s())
                .and_then(|v| v.first().copied())
                .unwrap_or(0);
            out[0] = Some(g.trilu(gy0, k, upper)?);
        }
        _ => return Err(no_rule()),
    }
    Ok(out)
}

/// `Split`: the input's gradient is the pieces' gradients concatenated (zeros for unused pieces).
fn split(g: &mut Graph, node: &Node, gy: &[Option<Tensor>]) -> Result<Grads> {
    let axis = node.attr_int("axis").unwrap_or(0);
    let mut parts = Vec::with_capacity(gy.len());
    for (o, gi) in node.outputs.iter().zip(gy) {
        parts.push(match gi {
            Some(t) => *t,
            None => g.zeros_like(*o)?,
        });
    }
    Ok(vec![Some(g.concat(&parts, axis)?), None])
}

/// `Gelu`.
/// - `approximate="none"`: y = x Φ(x); dy/dx = Φ(x) + x φ(x), φ(x) = exp(-x²/2) / sqrt(2π).
/// - `approximate="tanh"`: y = ½ x (1 + t), t = tanh(u), u = c (x + 0.044715 x³), c = sqrt(2/π);
///   dy/dx = ½ (1 + t) + ½ x (1 - t²) c (1 + 3·0.044715 x²).
///
/// With [`Kernels::Host`] each form is one fused CPU node.
fn gelu(g: &mut Graph, node: &Node, x: Tensor, gy: Tensor) -> Result<Tensor> {
    let tanh = node.attr_string("approximate") == Some("tanh");
    if g.kernels() == Kernels::Host && x.dtype() == DType::F32 {
        return match tanh {
            true => g.gelu_tanh_grad(x, gy),
            false => g.gelu_erf_grad(x, gy),
        };
    }
    let dt = x.dtype();
    let half = g.scalar(dt, 0.5);
    let one = g.scalar(dt, 1.0);
    let x2 = g.mul(x, x)?;
    let d = if tanh {
        let c = g.scalar(dt, (2.0 / std::f64::consts::PI).sqrt());
        let k = g.scalar(dt, 0.044715);
        let k3 = g.scalar(dt, 3.0 * 0.044715);
        let x3 = g.mul(x2, x)?;
        let kx3 = g.mul(k, x3)?;
        let inner = g.add(x, kx3)?;
        let u = g.mul(c, inner)?;
        let t = g.tanh(u)?;
        let opt = g.add(one, t)?;
        let left = g.mul(half, opt)?;
        let t2 = g.mul(t, t)?;
        let sech2 = g.sub(one, t2)?;
        let k3x2 = g.mul(k3, x2)?;
        let du = g.add(one, k3x2)?;
        let du = g.mul(c, du)?;
        let r = g.mul(sech2, du)?;
        let r = g.mul(x, r)?;
        let right = g.mul(half, r)?;
        g.add(left, right)?
    } else {
        let inv_sqrt2 = g.scalar(dt, std::f64::consts::FRAC_1_SQRT_2);
        let xs = g.mul(x, inv_sqrt2)?;
        let e = g.erf(xs)?;
        let ope = g.add(one, e)?;
        let cdf = g.mul(half, ope)?;
        let nhx2 = g.mul(x2, half)?;
        let nhx2 = g.neg(nhx2)?;
        let ex = g.exp(nhx2)?;
        let inv_sqrt_2pi = g.scalar(dt, 1.0 / (2.0 * std::f64::consts::PI).sqrt());
        let pdf = g.mul(ex, inv_sqrt_2pi)?;
        let xpdf = g.mul(x, pdf)?;
        g.add(cdf, xpdf)?
    };
    g.mul(gy, d)
}

/// Last two axes swapped.
fn mt(g: &mut Graph, t: Tensor) -> Result<Tensor> {
    let r = g.rank(t) as i64;
    let mut perm: Vec<i64> = (0..r).collect();
    perm.swap((r - 1) as usize, (r - 2) as usize);
    g.transpose(t, &perm)
}

/// `MatMul`, y = a @ b: da = gy @ bᵀ, db = aᵀ @ gy, each summed over broadcast batch dims.
/// For the usual `[…, k] @ [k, n]` the weight gradient is one matmul of the flattened batch.
/// The input gradient of `y = DynamicQuantizeMatMul(a, q, s)` (int8 weight `q` `[K, N]`
/// with a scale per column): `gy · (q diag(s))ᵀ = (gy ⊙ s) · qᵀ`, the same kernel on the same
/// integers transposed ([`Graph::transposed_twin`]). The weight takes no gradient.
fn int8_product_grad(g: &mut Graph, node: &Node, gy: Tensor) -> Result<Tensor> {
    let (q, scale) = (node.input(1), node.input(2));
    let qt = g.transposed_twin(q).ok_or_else(|| Error::NoGradient {
        op: "DynamicQuantizeMatMul (an int8 weight without its transposed copy)".into(),
        node: node.name.clone(),
    })?;
    let scaled = g.mul(gy, scale)?;
    let one = g.scalar(DType::F32, 1.0);
    g.dynamic_quantize_matmul(scaled, qt, one)
}

/// The input gradient of `y = MatMulNBits(a, packed, scales)`: `gy · W`, with `W` `[N, K]`
/// unpacked from the same blocks for this product: as int8 integers and row scales where
/// [`Graph::nbits_weight_int8`] can (`(gy ⊙ s) · Q`, as for int8 weights), else dequantized
/// to f32. The weight takes no gradient.
fn int4_product_grad(g: &mut Graph, node: &Node, gy: Tensor) -> Result<Tensor> {
    if let Some((q, scale)) = g.nbits_weight_int8(node, gy, false)? {
        let scaled = g.mul(gy, scale)?;
        let one = g.scalar(DType::F32, 1.0);
        return g.dynamic_quantize_matmul(scaled, q, one);
    }
    let w = g.nbits_weight(node, gy)?;
    g.matmul(gy, w)
}

/// The input gradient of `y = Bf16MatMul(a, w, transB)` (`a · wᵀ`, or `a · w`): `gy · w`, or
/// `gy · wᵀ`, over the same `bfloat16` weight, widened again for this product when lowered.
/// The weight takes no gradient.
fn bf16_product_grad(g: &mut Graph, node: &Node, gy: Tensor) -> Result<Tensor> {
    let trans_b = node.attr_int("transB") == Some(1);
    g.bf16_matmul(gy, node.input(1), !trans_b)
}

fn matmul(g: &mut Graph, node: &Node, gy: Tensor, need: &[bool]) -> Result<Grads> {
    let (a, b) = (node.input(0), node.input(1));
    if g.rank(a) < 2 || g.rank(b) < 2 {
        return Err(Error::NoGradient {
            op: "MatMul (rank-1 operand)".into(),
            node: node.name.clone(),
        });
    }
    let mut out = vec![None, None];
    if need[0] {
        let bt = mt(g, b)?;
        let t = g.matmul(gy, bt)?;
        out[0] = Some(unb(g, t, a)?);
    }
    if need[1] {
        if g.rank(b) == 2 {
            let (a2, g2) = if g.rank(a) > 2 {
                let k = g.shape(a)[g.rank(a) - 1].clone();
                let n = g.shape(gy)[g.rank(gy) - 1].clone();
                (
                    g.reshape(a, &[crate::Dim::Fixed(-1), k])?,
                    g.reshape(gy, &[crate::Dim::Fixed(-1), n])?,
                )
            } else {
                (a, gy)
            };
            out[1] = Some(if is_matrix_transpose(g, b) {
                // b = wᵀ (a linear layer): dw = gyᵀ a in w's layout, handed back as its
                // transpose, which the `Transpose` rule turns back into dw without a node.
                let dw = g.gemm(g2, a2, None, 1.0, 0.0, true, false)?;
                g.transpose(dw, &[1, 0])?
            } else {
                g.gemm(a2, g2, None, 1.0, 0.0, true, false)?
            });
        } else {
            let at = mt(g, a)?;
            let t = g.matmul(at, gy)?;
            out[1] = Some(unb(g, t, b)?);
        }
    }
    Ok(out)
}

/// Whether `t` is a matrix transposed by a `Transpose` node.
fn is_matrix_transpose(g: &Graph, t: Tensor) -> bool {
    g.values[t.index()].producer.is_some_and(|p| {
        let node = &g.nodes[p];
        node.op == "Transpose" && node.attr_ints("perm") == Some(&[1, 0][..])
    })
}

/// `Gemm`, y = α A'B' + β C with A' = op(A), B' = op(B):
/// dA' = α gy B'ᵀ, dB' = α A'ᵀ gy, dC = β gy (summed to C's shape); transposes undone.
fn gemm(g: &mut Graph, node: &Node, gy: Tensor, need: &[bool]) -> Result<Grads> {
    let (a, b) = (node.input(0), node.input(1));
    let alpha = node.attr_float("alpha").unwrap_or(1.0);
    let beta = node.attr_float("beta").unwrap_or(1.0);
    let ta = node.attr_int("transA").unwrap_or(0) != 0;
    let tb = node.attr_int("transB").unwrap_or(0) != 0;
    let mut out = vec![None; node.inputs.len()];
    if need[0] {
        out[0] = Some(if ta {
            g.gemm(b, gy, None, alpha, 0.0, tb, true)?
        } else {
            g.gemm(gy, b, None, alpha, 0.0, false, !tb)?
        });
    }
    if need[1] {
        out[1] = Some(if tb {
            g.gemm(gy, a, None, alpha, 0.0, true, ta)?
        } else {
            g.gemm(a, gy, None, alpha, 0.0, !ta, false)?
        });
    }
    if let Some(c) = node.inputs.get(2).copied().flatten()
        && need[2]
    {
        let s = g.scalar(gy.dtype(), f64::from(beta));
        let t = g.mul(gy, s)?;
        out[2] = Some(unb(g, t, c)?);
    }
    Ok(out)
}

/// `Slice` (steps of 1): the gradient is gy zero-padded back to x's shape. The pads are
/// computed at run time from the node's own starts/ends, clamped as ONNX clamps them:
/// begin = clamp(s < 0 ? s + d : s, 0, d), pad_end = d - clamp(e < 0 ? e + d : e, 0, d).
fn slice(g: &mut Graph, node: &Node, gy: Tensor) -> Result<Tensor> {
    let x = node.input(0);
    let steps = node.inputs.get(4).copied().flatten();
    let ok_steps = steps
        .and_then(|s| g.constant_value(s))
        .and_then(|d| d.to_i64s())
        .is_some_and(|v| v.iter().all(|&s| s == 1));
    let axes = node.inputs.get(3).copied().flatten();
    if !ok_steps || axes.is_none() {
        return Err(Error::NoGradient {
            op: "Slice".into(),
            node: node.name.clone(),
        });
    }
    let axes = axes.expect("checked above");
    let shape = g.shape_op(x, None, None)?;
    let d = g.gather(shape, axes, 0)?;
    let zero = g.scalar(DType::I64, 0.0);
    let clamp = |g: &mut Graph, v: Tensor| -> Result<Tensor> {
        let neg = g.less(v, zero)?;
        let shifted = g.add(v, d)?;
        let v = g.where_(neg, shifted, v)?;
        let v = g.max(v, zero)?;
        g.min(v, d)
    };
    let s = clamp(g, node.input(1))?;
    let e = clamp(g, node.input(2))?;
    let end_pad = g.sub(d, e)?;
    let pads = g.concat(&[s, end_pad], 0)?;
    let out_shape = g.shape(x).to_vec();
    g.pad_zero(gy, pads, axes, out_shape)
}

/// Reductions over constant `axes`:
/// - `ReduceSum`: dx = gy broadcast back;
/// - `ReduceMean`: dx = gy broadcast back / (size(x) / size(y));
/// - `ReduceMax`: dx = gy broadcast back where x equals the max, shared among ties.
fn reduce(g: &mut Graph, node: &Node, gy: Tensor) -> Result<Tensor> {
    let x = node.input(0);
    let y = node.outputs[0];
    let axes = node
        .inputs
        .get(1)
        .copied()
        .flatten()
        .and_then(|a| g.constant_value(a))
        .and_then(|d| d.to_i64s())
        .ok_or_else(|| Error::NoGradient {
            op: format!("{} (axes not constant)", node.op),
            node: node.name.clone(),
        })?;
    let keep = node.attr_int("keepdims").unwrap_or(1) != 0;
    let (gk, yk) = if keep {
        (gy, y)
    } else {
        (g.unsqueeze(gy, &axes)?, g.unsqueeze(y, &axes)?)
    };
    let ge = g.expand_like(gk, x)?;
    match node.op {
        "ReduceSum" => Ok(ge),
        "ReduceMean" => {
            let sx = g.size(x)?;
            let sy = g.size(y)?;
            let n = g.div(sx, sy)?;
            let n = g.cast(n, x.dtype())?;
            g.div(ge, n)
        }
        _ => {
            let eq = g.equal(x, yk)?;
            let mask = g.cast(eq, x.dtype())?;
            let count = g.reduce_sum(mask, &axes, true)?;
            let share = g.div(mask, count)?;
            g.mul(ge, share)
        }
    }
}

/// `LayerNormalization` over the axes `A` from `axis` on, with x̂ = (x - μ) σ⁻¹ (the node's own
/// `Mean` and `InvStdDev` outputs) and y = x̂ γ + β:
/// dγ = Σ_lead gy x̂, dβ = Σ_lead gy,
/// dx = σ⁻¹ (ĝ - mean_A(ĝ) - x̂ mean_A(ĝ x̂)) with ĝ = gy γ (one fused CPU node with
/// [`Kernels::Host`] when `A` is the last axis).
fn layer_norm(g: &mut Graph, node: &Node, gy: Tensor, need: &[bool]) -> Result<Grads> {
    let x = node.input(0);
    let scale = node.input(1);
    let rank = g.rank(x);
    let axis = node.attr_int("axis").unwrap_or(-1);
    let ax = crate::builder::norm_axis(axis, rank).ok_or_else(|| Error::NoGradient {
        op: "LayerNormalization (bad axis)".into(),
        node: node.name.clone(),
    })?;
    let dt = x.dtype();
    let as_dt = |g: &mut Graph, t: Tensor| {
        if t.dtype() == dt {
            Ok(t)
        } else {
            g.cast(t, dt)
        }
    };
    let mean = as_dt(g, node.outputs[1])?;
    let inv = as_dt(g, node.outputs[2])?;
    let xc = g.sub(x, mean)?;
    let xhat = g.mul(xc, inv)?;
    let lead: Vec<i64> = (0..ax as i64).collect();
    let norm: Vec<i64> = (ax as i64..rank as i64).collect();
    let mut out = vec![None; node.inputs.len()];
    let fused = g.kernels() == Kernels::Host
        && ax + 1 == rank
        && dt == DType::F32
        && g.rank(scale) == 1
        && scale.dtype() == DType::F32;
    if need[0] && fused {
        out[0] = Some(g.layer_norm_grad(gy, x, scale, mean, inv)?);
    } else if need[0] {
        let gh = g.mul(gy, scale)?;
        let m1 = g.reduce_mean(gh, &norm, true)?;
        let ghx = g.mul(gh, xhat)?;
        let m2 = g.reduce_mean(ghx, &norm, true)?;
        let t = g.mul(xhat, m2)?;
        let d = g.sub(gh, m1)?;
        let d = g.sub(d, t)?;
        out[0] = Some(g.mul(inv, d)?);
    }
    let sum_lead = |g: &mut Graph, t: Tensor| {
        if lead.is_empty() {
            Ok(t)
        } else {
            g.reduce_sum(t, &lead, false)
        }
    };
    if need[1] {
        let t = g.mul(gy, xhat)?;
        out[1] = Some(sum_lead(g, t)?);
    }
    if need.get(2) == Some(&true) {
        out[2] = Some(sum_lead(g, gy)?);
    }
    Ok(out)
}

/// `SoftmaxCrossEntropyLoss` (mean over N) with p = exp(log_prob), one-hot labels e:
/// d scores = gy (p - e) / N; a gradient g_lp on the `log_prob` output adds g_lp - p Σ_c g_lp.
fn sce(g: &mut Graph, node: &Node, gy: Option<Tensor>, glp: Option<Tensor>) -> Result<Grads> {
    let (scores, labels) = (node.input(0), node.input(1));
    if node.attr_string("reduction") != Some("mean") || node.inputs.len() > 2 {
        return Err(Error::NoGradient {
            op: "SoftmaxCrossEntropyLoss (only reduction=mean without weights)".into(),
            node: node.name.clone(),
        });
    }
    let dt = scores.dtype();
    let log_prob = node.outputs[1];
    let p = g.exp(log_prob)?;
    let s = g.shape(scores).to_vec();
    let mut total: Option<Tensor> = None;
    if let Some(gy) = gy {
        // OneHot's CPU kernel has float outputs and int64 indices; cast around it.
        let labels = if labels.dtype() == DType::I64 {
            labels
        } else {
            g.cast(labels, DType::I64)?
        };
        let e = g.one_hot(labels, &s[1], DType::F32, 0.0, 1.0)?;
        let e = if dt == DType::F32 { e } else { g.cast(e, dt)? };
        let d = g.sub(p, e)?;
        let n = g.dim_value(&s[0])?;
        let n = g.cast(n, dt)?;
        let scale = g.div(gy, n)?;
        total = Some(g.mul(d, scale)?);
    }
    if let Some(glp) = glp {
        let sum = g.reduce_sum(glp, &[1], true)?;
        let t = g.mul(p, sum)?;
        let d = g.sub(glp, t)?;
        total = Some(match total {
            Some(t0) => g.add(t0, d)?,
            None => d,
        });
    }
    Ok(vec![total, None])
}
