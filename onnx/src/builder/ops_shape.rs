//! Shape and indexing operators: reshapes, slicing, gathers and scatters, shape queries.

use super::ops::{broadcast_shapes, norm_axis};
use super::{Attr, DType, Dim, Graph, Tensor, TensorData, shape_string};
use crate::Result;

/// Splits a dim into its fixed product and symbolic factors (`batch*seq` → 1, [batch, seq]).
fn factors(d: &Dim, fixed: &mut i64, syms: &mut Vec<String>) {
    match d {
        Dim::Fixed(n) => *fixed *= n,
        Dim::Sym(s) => {
            for f in s.split('*') {
                match f.parse::<i64>() {
                    Ok(n) => *fixed *= n,
                    Err(_) => syms.push(f.to_string()),
                }
            }
        }
    }
}

/// `Reduction` attribute of the scatter ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Overwrite.
    None,
    /// Accumulate (`reduction="add"`): what embedding gradients need.
    Add,
}

impl Reduction {
    fn as_str(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Add => "add",
        }
    }
}

impl Graph {
    /// `Reshape` to `shape`; one entry may be `Dim::Fixed(-1)` ("infer"). Symbolic entries are
    /// read at run time. An inferred product of symbolic dims is named `a*b`.
    pub fn reshape(&mut self, x: Tensor, shape: &[Dim]) -> Result<Tensor> {
        let xs = self.shape(x).to_vec();
        if shape
            .iter()
            .any(|d| matches!(d, Dim::Fixed(n) if *n == 0 || *n < -1))
            || shape.iter().filter(|d| **d == Dim::Fixed(-1)).count() > 1
        {
            return Err(self.err(
                "Reshape",
                format!("bad target shape {}", shape_string(shape)),
            ));
        }
        let (mut pin, mut sin) = (1, Vec::new());
        xs.iter().for_each(|d| factors(d, &mut pin, &mut sin));
        let (mut pout, mut sout) = (1, Vec::new());
        shape
            .iter()
            .filter(|d| **d != Dim::Fixed(-1))
            .for_each(|d| factors(d, &mut pout, &mut sout));
        let mut out = shape.to_vec();
        if let Some(pos) = shape.iter().position(|d| *d == Dim::Fixed(-1)) {
            let mut rest = sin.clone();
            let mut known = true;
            for s in &sout {
                match rest.iter().position(|r| r == s) {
                    Some(i) => {
                        rest.remove(i);
                    }
                    None => known = false,
                }
            }
            out[pos] = if known && pout != 0 && pin % pout == 0 {
                let q = pin / pout;
                rest.sort();
                match (rest.is_empty(), q) {
                    (true, q) => Dim::Fixed(q),
                    (false, 1) => Dim::Sym(rest.join("*")),
                    (false, q) => Dim::Sym(format!("{q}*{}", rest.join("*"))),
                }
            } else {
                self.unknown_dim()
            };
        } else if pin != pout && {
            let (mut a, mut b) = (sin.clone(), sout.clone());
            a.sort();
            b.sort();
            a == b
        } {
            return Err(self.err(
                "Reshape",
                format!(
                    "cannot reshape {} into {}",
                    shape_string(&xs),
                    shape_string(shape)
                ),
            ));
        }
        let target = self.shape_value(shape)?;
        Ok(self.push1("Reshape", &[x, target], vec![], x.dtype(), out))
    }

    /// `Transpose` with permutation `perm`. Transposing back what a `Transpose` node just
    /// transposed returns that node's input: no node is added (the backward pass of a linear
    /// layer relies on this to hand out its weight gradient in the weight's own layout).
    pub fn transpose(&mut self, x: Tensor, perm: &[i64]) -> Result<Tensor> {
        if let Some(source) = self.transposed_back(x, perm) {
            return Ok(source);
        }
        let xs = self.shape(x).to_vec();
        let mut seen = vec![false; xs.len()];
        let mut shape = Vec::with_capacity(xs.len());
        for &p in perm {
            match usize::try_from(p)
                .ok()
                .filter(|&p| p < xs.len() && !seen[p])
            {
                Some(p) => {
                    seen[p] = true;
                    shape.push(xs[p].clone());
                }
                None => {
                    return Err(self.err(
                        "Transpose",
                        format!("bad perm {perm:?} for rank {}", xs.len()),
                    ));
                }
            }
        }
        if shape.len() != xs.len() {
            return Err(self.err(
                "Transpose",
                format!("perm {perm:?} does not cover rank {}", xs.len()),
            ));
        }
        Ok(self.push1(
            "Transpose",
            &[x],
            vec![("perm", Attr::Ints(perm.to_vec()))],
            x.dtype(),
            shape,
        ))
    }

    /// The input of the `Transpose` node that produced `x`, when `perm` undoes it.
    fn transposed_back(&self, x: Tensor, perm: &[i64]) -> Option<Tensor> {
        let node = &self.nodes[self.values[x.index()].producer?];
        if node.op != "Transpose" {
            return None;
        }
        let first = node.attr_ints("perm")?;
        let undone = first.len() == perm.len()
            && perm.iter().enumerate().all(|(i, &p)| {
                usize::try_from(p).ok().and_then(|p| first.get(p)) == Some(&(i as i64))
            });
        if undone { node.inputs[0] } else { None }
    }

    /// `Unsqueeze`: inserts size-1 axes at `axes` (positions in the output).
    pub fn unsqueeze(&mut self, x: Tensor, axes: &[i64]) -> Result<Tensor> {
        let xs = self.shape(x).to_vec();
        let rank = xs.len() + axes.len();
        let ax = self.check_axes("Unsqueeze", axes, rank)?;
        if ax.len() != axes.len() {
            return Err(self.err("Unsqueeze", "repeated axis"));
        }
        let mut it = xs.into_iter();
        let shape = (0..rank)
            .map(|i| {
                if ax.contains(&i) {
                    Dim::Fixed(1)
                } else {
                    it.next().expect("rank counts match")
                }
            })
            .collect();
        let axes_t = self.const_i64s(&ax.iter().map(|&a| a as i64).collect::<Vec<_>>());
        Ok(self.push1("Unsqueeze", &[x, axes_t], vec![], x.dtype(), shape))
    }

    /// `Squeeze`: removes the size-1 axes `axes`.
    pub fn squeeze(&mut self, x: Tensor, axes: &[i64]) -> Result<Tensor> {
        let xs = self.shape(x).to_vec();
        let ax = self.check_axes("Squeeze", axes, xs.len())?;
        if ax.iter().any(|&a| xs[a] != Dim::Fixed(1)) {
            return Err(self.err(
                "Squeeze",
                format!("axes {axes:?} of {} are not all 1", shape_string(&xs)),
            ));
        }
        let shape = xs
            .iter()
            .enumerate()
            .filter(|(i, _)| !ax.contains(i))
            .map(|(_, d)| d.clone())
            .collect();
        let axes_t = self.const_i64s(&ax.iter().map(|&a| a as i64).collect::<Vec<_>>());
        Ok(self.push1("Squeeze", &[x, axes_t], vec![], x.dtype(), shape))
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, xs: &[Tensor], axis: i64) -> Result<Tensor> {
        let first = *xs.first().ok_or_else(|| self.err("Concat", "no inputs"))?;
        let rank = self.rank(first);
        let ax = norm_axis(axis, rank)
            .ok_or_else(|| self.err("Concat", format!("axis {axis} out of range")))?;
        let mut shape = self.shape(first).to_vec();
        let mut total = Some(0i64);
        for &x in xs {
            let s = self.shape(x);
            if x.dtype() != first.dtype()
                || s.len() != rank
                || s.iter()
                    .zip(&shape)
                    .enumerate()
                    .any(|(i, (a, b))| i != ax && a != b)
            {
                return Err(self.err("Concat", "inputs differ in type, rank or a non-concat dim"));
            }
            total = total.zip(s[ax].fixed()).map(|(t, n)| t + n);
        }
        shape[ax] = match total {
            Some(n) => Dim::Fixed(n),
            None if xs.len() == 1 => shape[ax].clone(),
            None => self.unknown_dim(),
        };
        Ok(self.push1(
            "Concat",
            xs,
            vec![("axis", Attr::Int(axis))],
            first.dtype(),
            shape,
        ))
    }

    /// `Split` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: Tensor, sizes: &[Dim], axis: i64) -> Result<Vec<Tensor>> {
        let xs = self.shape(x).to_vec();
        let ax = norm_axis(axis, xs.len())
            .ok_or_else(|| self.err("Split", format!("axis {axis} out of range")))?;
        let split = self.shape_value(sizes)?;
        let outs = sizes
            .iter()
            .map(|d| {
                let mut s = xs.clone();
                s[ax] = d.clone();
                (x.dtype(), s)
            })
            .collect();
        Ok(self.push_node(
            "Split",
            vec![Some(x), Some(split)],
            vec![("axis", Attr::Int(axis))],
            outs,
        ))
    }

    /// `Slice` with fixed `starts`, `ends` as dims (a symbolic end is read at run time, e.g.
    /// `x[:, :seq]`), `axes` and `steps` (empty = all 1). `i64::MAX` as an end means "to the end".
    pub fn slice(
        &mut self,
        x: Tensor,
        starts: &[i64],
        ends: &[Dim],
        axes: &[i64],
        steps: &[i64],
    ) -> Result<Tensor> {
        let xs = self.shape(x).to_vec();
        let steps = if steps.is_empty() {
            vec![1; axes.len()]
        } else {
            steps.to_vec()
        };
        if starts.len() != axes.len()
            || ends.len() != axes.len()
            || steps.len() != axes.len()
            || steps.contains(&0)
        {
            return Err(self.err(
                "Slice",
                "starts, ends, axes and steps must have one entry per axis",
            ));
        }
        let mut shape = xs.clone();
        for i in 0..axes.len() {
            let a = norm_axis(axes[i], xs.len())
                .ok_or_else(|| self.err("Slice", "axis out of range"))?;
            let (s, e, st) = (starts[i], &ends[i], steps[i]);
            shape[a] = match (&xs[a], e) {
                (Dim::Fixed(n), Dim::Fixed(e)) => {
                    let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
                    let norm = |v: i64| if v < 0 { v + n } else { v };
                    let (s, e) = if st > 0 {
                        (clamp(norm(s), 0, *n), clamp(norm(*e), 0, *n))
                    } else {
                        (clamp(norm(s), -1, n - 1), clamp(norm(*e), -1, n - 1))
                    };
                    let len = if st > 0 {
                        (e - s + st - 1) / st
                    } else {
                        (s - e - st - 1) / -st
                    };
                    Dim::Fixed(len.max(0))
                }
                (_, Dim::Sym(_)) if s == 0 && st == 1 => e.clone(),
                (d, Dim::Fixed(e)) if s == 0 && st == 1 && *e >= i64::MAX / 2 => d.clone(),
                _ => self.unknown_dim(),
            };
        }
        let starts_t = self.const_i64s(starts);
        let ends_t = self.shape_value(ends)?;
        let axes_t = self.const_i64s(axes);
        let steps_t = self.const_i64s(&steps);
        Ok(self.push1(
            "Slice",
            &[x, starts_t, ends_t, axes_t, steps_t],
            vec![],
            x.dtype(),
            shape,
        ))
    }

    /// `Expand`: broadcasts `x` to `shape` (numpy rules).
    pub fn expand(&mut self, x: Tensor, shape: &[Dim]) -> Result<Tensor> {
        let out = broadcast_shapes(self.shape(x), shape).ok_or_else(|| {
            self.err(
                "Expand",
                format!(
                    "{} does not broadcast to {}",
                    shape_string(self.shape(x)),
                    shape_string(shape)
                ),
            )
        })?;
        let target = self.shape_value(shape)?;
        Ok(self.push1("Expand", &[x, target], vec![], x.dtype(), out))
    }

    /// `Gather` along `axis` (embedding lookup with `axis = 0`).
    pub fn gather(&mut self, data: Tensor, indices: Tensor, axis: i64) -> Result<Tensor> {
        let ds = self.shape(data).to_vec();
        let ax =
            norm_axis(axis, ds.len()).ok_or_else(|| self.err("Gather", "axis out of range"))?;
        if !matches!(indices.dtype(), DType::I64 | DType::I32) {
            return Err(self.err("Gather", "indices must be int64 or int32"));
        }
        let mut shape = ds[..ax].to_vec();
        shape.extend_from_slice(self.shape(indices));
        shape.extend_from_slice(&ds[ax + 1..]);
        Ok(self.push1(
            "Gather",
            &[data, indices],
            vec![("axis", Attr::Int(axis))],
            data.dtype(),
            shape,
        ))
    }

    /// `GatherElements` along `axis`; the output has the shape of `indices`.
    pub fn gather_elements(&mut self, data: Tensor, indices: Tensor, axis: i64) -> Result<Tensor> {
        if self.rank(data) != self.rank(indices) || norm_axis(axis, self.rank(data)).is_none() {
            return Err(self.err(
                "GatherElements",
                "data and indices must have one rank; axis in range",
            ));
        }
        let shape = self.shape(indices).to_vec();
        Ok(self.push1(
            "GatherElements",
            &[data, indices],
            vec![("axis", Attr::Int(axis))],
            data.dtype(),
            shape,
        ))
    }

    /// `GatherND` (`batch_dims = 0`): `indices` `[..., k]` pick slices of `data`.
    pub fn gather_nd(&mut self, data: Tensor, indices: Tensor) -> Result<Tensor> {
        let is = self.shape(indices).to_vec();
        let k = is
            .last()
            .and_then(Dim::fixed)
            .ok_or_else(|| self.err("GatherND", "the last dim of indices must be fixed"))?;
        let ds = self.shape(data).to_vec();
        let k = usize::try_from(k).ok().filter(|&k| k <= ds.len());
        let k = k.ok_or_else(|| self.err("GatherND", "indices reach past data's rank"))?;
        let mut shape = is[..is.len() - 1].to_vec();
        shape.extend_from_slice(&ds[k..]);
        Ok(self.push1("GatherND", &[data, indices], vec![], data.dtype(), shape))
    }

    /// `ScatterND` of `updates` into `data` at `indices` (`[..., k]`).
    pub fn scatter_nd(
        &mut self,
        data: Tensor,
        indices: Tensor,
        updates: Tensor,
        reduction: Reduction,
    ) -> Result<Tensor> {
        let shape = self.shape(data).to_vec();
        Ok(self.push1(
            "ScatterND",
            &[data, indices, updates],
            vec![("reduction", Attr::String(reduction.as_str().into()))],
            data.dtype(),
            shape,
        ))
    }

    /// `ScatterElements` of `updates` into `data` at `indices` along `axis`.
    pub fn scatter_elements(
        &mut self,
        data: Tensor,
        indices: Tensor,
        updates: Tensor,
        axis: i64,
        reduction: Reduction,
    ) -> Result<Tensor> {
        if self.rank(data) != self.rank(indices) || self.shape(indices) != self.shape(updates) {
            return Err(self.err(
                "ScatterElements",
                "indices and updates must match and have data's rank",
            ));
        }
        let shape = self.shape(data).to_vec();
        Ok(self.push1(
            "ScatterElements",
            &[data, indices, updates],
            vec![
                ("axis", Attr::Int(axis)),
                ("reduction", Attr::String(reduction.as_str().into())),
            ],
            data.dtype(),
            shape,
        ))
    }

    /// `OneHot` of integer `indices` with `depth` classes as a new last axis; `off`/`on` values
    /// of type `dtype`.
    pub fn one_hot(
        &mut self,
        indices: Tensor,
        depth: &Dim,
        dtype: DType,
        off: f64,
        on: f64,
    ) -> Result<Tensor> {
        let depth_t = self.dim_value(depth)?;
        let values = match dtype {
            DType::F32 => TensorData::f32(&[2], &[off as f32, on as f32])?,
            DType::F64 => TensorData::f64(&[2], &[off, on])?,
            DType::I64 => TensorData::i64(&[2], &[off as i64, on as i64])?,
            DType::I32 => TensorData::i32(&[2], &[off as i32, on as i32])?,
            DType::Bool => TensorData::bool(&[2], &[off != 0.0, on != 0.0])?,
            DType::I8 | DType::U8 | DType::BF16 | DType::F16 => {
                return Err(self.err("OneHot", "one-hot values are f32/f64, int32/64 or bool"));
            }
        };
        let values_t = self.constant(values);
        let mut shape = self.shape(indices).to_vec();
        shape.push(depth.clone());
        Ok(self.push1(
            "OneHot",
            &[indices, depth_t, values_t],
            vec![("axis", Attr::Int(-1))],
            dtype,
            shape,
        ))
    }

    /// `Trilu`: keeps the upper (`upper = true`) or lower triangle of the last two axes,
    /// offset by diagonal `k`; zeroes (or `false`s) the rest.
    pub fn trilu(&mut self, x: Tensor, k: i64, upper: bool) -> Result<Tensor> {
        if self.rank(x) < 2 {
            return Err(self.err("Trilu", "needs rank 2 or more"));
        }
        let k_t = self.scalar(DType::I64, k as f64);
        let shape = self.shape(x).to_vec();
        Ok(self.push1(
            "Trilu",
            &[x, k_t],
            vec![("upper", Attr::Int(i64::from(upper)))],
            x.dtype(),
            shape,
        ))
    }

    /// `Range(0, n, 1)` of type `dtype` (int64, int32 or a float type): positions `0..n`.
    pub fn range(&mut self, n: &Dim, dtype: DType) -> Result<Tensor> {
        let start = self.scalar(dtype, 0.0);
        let delta = self.scalar(dtype, 1.0);
        let limit = match n {
            Dim::Fixed(v) => self.scalar(dtype, *v as f64),
            d => {
                let v = self.dim_value(d)?;
                let s = self.squeeze(v, &[0])?;
                if dtype == DType::I64 {
                    s
                } else {
                    self.cast(s, dtype)?
                }
            }
        };
        Ok(self.push1(
            "Range",
            &[start, limit, delta],
            vec![],
            dtype,
            vec![n.clone()],
        ))
    }

    /// `CumSum` of `x` along `axis`: each element the sum of those up to it, itself included.
    /// For index arithmetic (positions); it takes no gradient.
    pub fn cumsum(&mut self, x: Tensor, axis: i64) -> Result<Tensor> {
        let rank = self.rank(x);
        self.check_axes("CumSum", &[axis], rank)?;
        let axis = self.scalar(DType::I64, axis as f64);
        let shape = self.shape(x).to_vec();
        Ok(self.push1("CumSum", &[x, axis], vec![], x.dtype(), shape))
    }

    /// `Shape` of `x` (optionally the axes `start..end`): a rank-1 `int64` tensor.
    pub fn shape_op(&mut self, x: Tensor, start: Option<i64>, end: Option<i64>) -> Result<Tensor> {
        let rank = self.rank(x) as i64;
        let norm = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank);
        let (s, e) = (start.map_or(0, norm), end.map_or(rank, norm));
        let mut attrs = vec![];
        if let Some(s) = start {
            attrs.push(("start", Attr::Int(s)));
        }
        if let Some(e) = end {
            attrs.push(("end", Attr::Int(e)));
        }
        Ok(self.push1(
            "Shape",
            &[x],
            attrs,
            DType::I64,
            vec![Dim::Fixed((e - s).max(0))],
        ))
    }

    /// `Size`: number of elements of `x`, as an `int64` scalar.
    pub fn size(&mut self, x: Tensor) -> Result<Tensor> {
        Ok(self.push1("Size", &[x], vec![], DType::I64, vec![]))
    }

    /// `ConstantOfShape`: a tensor of `shape` filled with `value` of type `dtype`.
    pub fn constant_of_shape(&mut self, shape: &[Dim], dtype: DType, value: f64) -> Result<Tensor> {
        let s = self.shape_value(shape)?;
        let mut v = TensorData::scalar(dtype, value);
        v = TensorData::from_bytes(dtype, &[1], v.bytes().to_vec())?;
        Ok(self.push1(
            "ConstantOfShape",
            &[s],
            vec![("value", Attr::Tensor(v))],
            dtype,
            shape.to_vec(),
        ))
    }

    /// Zeros with the run-time shape of `x` (read with `Shape`, so unknown dims are fine).
    pub fn zeros_like(&mut self, x: Tensor) -> Result<Tensor> {
        let s = self.shape_op(x, None, None)?;
        let v = TensorData::from_bytes(
            x.dtype(),
            &[1],
            TensorData::scalar(x.dtype(), 0.0).bytes().to_vec(),
        )?;
        let shape = self.shape(x).to_vec();
        Ok(self.push1(
            "ConstantOfShape",
            &[s],
            vec![("value", Attr::Tensor(v))],
            x.dtype(),
            shape,
        ))
    }

    /// `Reshape` of `x` to the run-time shape of `like` (whose static shape the result takes).
    pub fn reshape_like(&mut self, x: Tensor, like: Tensor) -> Result<Tensor> {
        let s = self.shape_op(like, None, None)?;
        let shape = self.shape(like).to_vec();
        Ok(self.push1("Reshape", &[x, s], vec![], x.dtype(), shape))
    }

    /// `Expand` of `x` to the run-time shape of `like`.
    pub fn expand_like(&mut self, x: Tensor, like: Tensor) -> Result<Tensor> {
        let s = self.shape_op(like, None, None)?;
        let shape = self.shape(like).to_vec();
        Ok(self.push1("Expand", &[x, s], vec![], x.dtype(), shape))
    }

    /// `Pad` with run-time `pads` (`[begin…, end…]` for `axes`), constant zero.
    pub(crate) fn pad_zero(
        &mut self,
        x: Tensor,
        pads: Tensor,
        axes: Tensor,
        shape: Vec<Dim>,
    ) -> Result<Tensor> {
        let zero = self.scalar(x.dtype(), 0.0);
        Ok(self.push1(
            "Pad",
            &[x, pads, zero, axes],
            vec![("mode", Attr::String("constant".into()))],
            x.dtype(),
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::dims;
    use crate::{DType, Dim, Graph};

    #[test]
    fn reshape_infers_products_of_symbolic_dims() {
        let mut g = Graph::new("t");
        let x = g
            .input("x", DType::F32, &dims!["batch", "seq", 4, 8])
            .unwrap();
        let flat = g.reshape(x, &[Dim::Fixed(-1), Dim::Fixed(32)]).unwrap();
        assert_eq!(g.shape(flat), dims!["batch*seq", 32].as_slice());
        let back = g.reshape(flat, &dims!["batch", "seq", -1]).unwrap();
        assert_eq!(g.shape(back), dims!["batch", "seq", 32].as_slice());
        let heads = g.reshape(x, &dims!["batch", -1, 8]).unwrap();
        assert_eq!(g.shape(heads), dims!["batch", "4*seq", 8].as_slice());
        assert!(g.reshape(x, &dims!["seq", "batch", 5]).is_err());
    }

    #[test]
    fn shape_ops_infer_shapes() {
        let mut g = Graph::new("t");
        let x = g.input("x", DType::F32, &dims!["batch", "seq", 6]).unwrap();
        let t = g.transpose(x, &[2, 0, 1]).unwrap();
        assert_eq!(g.shape(t), dims![6, "batch", "seq"].as_slice());
        let u = g.unsqueeze(x, &[1, -1]).unwrap();
        assert_eq!(g.shape(u), dims!["batch", 1, "seq", 6, 1].as_slice());
        let s = g.squeeze(u, &[1, 4]).unwrap();
        assert_eq!(g.shape(s), g.shape(x));
        let c = g.concat(&[x, x], -1).unwrap();
        assert_eq!(g.shape(c), dims!["batch", "seq", 12].as_slice());
        let sl = g.slice(x, &[1], &[Dim::Fixed(-1)], &[2], &[]).unwrap();
        assert_eq!(g.shape(sl), dims!["batch", "seq", 4].as_slice());
        let ids = g.input("ids", DType::I64, &dims!["batch", "seq"]).unwrap();
        let table = g.input("table", DType::F32, &dims![100, 6]).unwrap();
        let e = g.gather(table, ids, 0).unwrap();
        assert_eq!(g.shape(e), g.shape(x));
        let r = g.range(&Dim::from("seq"), DType::I64).unwrap();
        assert_eq!(g.shape(r), dims!["seq"].as_slice());
        let oh = g
            .one_hot(ids, &Dim::Fixed(5), DType::F32, 0.0, 1.0)
            .unwrap();
        assert_eq!(g.shape(oh), dims!["batch", "seq", 5].as_slice());
    }

    #[test]
    fn symbolic_dims_are_read_from_a_tensor_that_has_them() {
        let mut g = Graph::new("t");
        g.input("x", DType::F32, &dims!["batch", 3]).unwrap();
        assert!(g.dim_value(&Dim::from("batch")).is_ok());
        assert!(g.dim_value(&Dim::from("nowhere")).is_err());
    }
}
