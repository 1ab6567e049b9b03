//! Training state in flat buffers and AdamW fused into one pass over them.
//!
//! The step graph of [`build_gradient_step`] computes only the loss and the gradients. The
//! trainable parameters, their gradients and AdamW's two moments each live in one contiguous
//! `f32` buffer ([`FlatState`]); a parameter is a view at an offset ([`FlatLayout`]). The graph
//! reads the parameters and writes the gradients in place through those views, and
//! [`AdamW::update_flat`] then clips and updates everything in two parallel passes over the
//! buffers, in place: one copy of the state, no per-parameter optimizer nodes.
//!
//! Gradient accumulation (one optimizer step over several micro-batches) adds each
//! micro-batch's gradient, times its share of the step's loss, into the gradient buffer
//! ([`add_scaled`], [`scale`]) before the one update.
//!
//! The arithmetic is `torch.optim.AdamW`'s operation by operation in `f32` (the tests check
//! it against the whole-graph oracle of the `oracle` feature); the clipping norm is summed in `f64` over fixed pieces of
//! the gradient buffer, in order, so the result does not depend on the number of threads.

pub mod graphs;

use rayon::prelude::*;

use crate::builder::{Dim, Graph, Tensor};
use crate::optim::{AdamW, StateKind, TrainParam};
use crate::{DType, Error, Result, gradients};

/// Elements per piece of the parallel passes (and of the norm's partial sums).
const PIECE: usize = 1 << 15;
/// Offsets in the flat buffers are multiples of this many elements (64 bytes).
const ALIGN: usize = 16;

/// One trainable parameter's place in the flat buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatEntry {
    /// The graph input the parameter is fed as.
    pub name: String,
    /// The graph output carrying its gradient (`<name>.grad`).
    pub grad: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Whether AdamW's decoupled weight decay applies to it.
    pub weight_decay: bool,
}

impl FlatEntry {
    /// The element range in the flat buffers.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Where every trainable parameter sits in the flat buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlatLayout {
    /// The parameters, in the order given to [`build_gradient_step`].
    pub entries: Vec<FlatEntry>,
    /// Length of each flat buffer (padding between parameters included).
    pub len: usize,
}

/// The moment suffixes of the state names (`<param>.exp_avg`, `<param>.exp_avg_sq`).
const EXP_AVG: &str = ".exp_avg";
const EXP_AVG_SQ: &str = ".exp_avg_sq";

impl FlatLayout {
    /// The entry of parameter `name`.
    pub fn entry(&self, name: &str) -> Option<&FlatEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The entry and kind of state `name`: a parameter, `<param>.exp_avg` or
    /// `<param>.exp_avg_sq`.
    pub fn locate(&self, name: &str) -> Result<(&FlatEntry, StateKind)> {
        let hit = if let Some(e) = self.entry(name) {
            Some((e, StateKind::Param))
        } else if let Some(e) = name.strip_suffix(EXP_AVG_SQ).and_then(|n| self.entry(n)) {
            Some((e, StateKind::ExpAvgSq))
        } else {
            name.strip_suffix(EXP_AVG)
                .and_then(|n| self.entry(n))
                .map(|e| (e, StateKind::ExpAvg))
        };
        hit.ok_or_else(|| Error::Data(format!("no training state named `{name}`")))
    }

    /// Names of every state tensor: each parameter, then its two moments.
    pub fn state_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .flat_map(|e| {
                [
                    e.name.clone(),
                    format!("{}{EXP_AVG}", e.name),
                    format!("{}{EXP_AVG_SQ}", e.name),
                ]
            })
            .collect()
    }
}

/// The interface of a gradient step graph, for [`crate::FlatTrainer`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradSignature {
    /// The loss output.
    pub loss: String,
    /// The trainable parameters and their gradient outputs.
    pub layout: FlatLayout,
}

/// Adds the gradients of `loss` with respect to `params` to `g` as outputs `<param>.grad`
/// (and `loss` as an output, unless it is one already). Every parameter must be an `f32`
/// graph input with a fixed shape.
pub fn build_gradient_step(
    g: &mut Graph,
    loss: Tensor,
    params: &[TrainParam],
) -> Result<GradSignature> {
    let outer = g.set_scope("gradients");
    let r = build_gradient_step_inner(g, loss, params);
    g.set_scope(outer);
    r
}

fn build_gradient_step_inner(
    g: &mut Graph,
    loss: Tensor,
    params: &[TrainParam],
) -> Result<GradSignature> {
    let mut entries = Vec::with_capacity(params.len());
    let mut offset = 0;
    for p in params {
        let fixed: Option<Vec<i64>> = g.shape(p.tensor).iter().map(Dim::fixed).collect();
        let shape = match fixed {
            Some(s) if p.tensor.dtype() == DType::F32 && g.inputs().contains(&p.tensor) => s,
            _ => {
                return Err(Error::Build {
                    node: g.name(p.tensor).to_string(),
                    message: "a trained parameter must be an f32 graph input with a fixed shape"
                        .into(),
                });
            }
        };
        let len = shape.iter().product::<i64>() as usize;
        let name = g.name(p.tensor).to_string();
        entries.push(FlatEntry {
            grad: format!("{name}.grad"),
            name,
            shape,
            offset,
            len,
            weight_decay: p.weight_decay,
        });
        offset += len.div_ceil(ALIGN) * ALIGN;
    }
    let loss_out = match g.output_for(loss) {
        Some(o) => o,
        None => g.output(loss, "loss")?,
    };
    let wrt: Vec<Tensor> = params.iter().map(|p| p.tensor).collect();
    let grads = gradients(g, loss, &wrt)?;
    for (entry, grad) in entries.iter().zip(grads) {
        name_output(g, grad, &entry.grad)?;
    }
    Ok(GradSignature {
        loss: g.name(loss_out).to_string(),
        layout: FlatLayout {
            entries,
            len: offset,
        },
    })
}

/// Makes `t` the graph output `name`: renamed in place when it is a plain computed value (no
/// `Identity`, so ONNX Runtime writes it straight into a bound buffer), else through
/// [`Graph::output`].
pub(crate) fn name_output(g: &mut Graph, t: Tensor, name: &str) -> Result<()> {
    let info = &g.values[t.index()];
    let plain = info.producer.is_some()
        && info.data.is_none()
        && !g.outputs().contains(&t)
        && !g.values.iter().any(|v| v.name == name);
    if plain {
        g.values[t.index()].name = name.to_string();
    }
    g.output(t, name)?;
    Ok(())
}

/// Trainable parameters, gradients and AdamW moments, one flat `f32` buffer each, laid out
/// by a [`FlatLayout`] (padding elements stay zero).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlatState {
    /// Parameters.
    pub params: Vec<f32>,
    /// Gradients of the last step (summed over its micro-batches, each times its share).
    pub grads: Vec<f32>,
    /// First moments (`exp_avg`).
    pub exp_avg: Vec<f32>,
    /// Second moments (`exp_avg_sq`).
    pub exp_avg_sq: Vec<f32>,
}

impl FlatState {
    /// Zeroed buffers for `layout`.
    pub fn zeros(layout: &FlatLayout) -> Self {
        FlatState {
            params: vec![0.0; layout.len],
            grads: vec![0.0; layout.len],
            exp_avg: vec![0.0; layout.len],
            exp_avg_sq: vec![0.0; layout.len],
        }
    }
}

/// Pieces of one parameter's four buffers that a thread updates on its own.
struct Piece<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
    decay: bool,
}

fn pieces<'a>(layout: &FlatLayout, state: &'a mut FlatState) -> Vec<Piece<'a>> {
    let (mut p, mut m, mut v, mut g) = (
        &mut state.params[..],
        &mut state.exp_avg[..],
        &mut state.exp_avg_sq[..],
        &state.grads[..],
    );
    let mut at = 0;
    let mut out = Vec::new();
    for e in &layout.entries {
        let skip = e.offset - at;
        let take = |s: &'a mut [f32]| s.split_at_mut(skip).1.split_at_mut(e.len);
        let (p1, p_rest) = take(std::mem::take(&mut p));
        let (m1, m_rest) = take(std::mem::take(&mut m));
        let (v1, v_rest) = take(std::mem::take(&mut v));
        let (g1, g_rest) = g[skip..].split_at(e.len);
        (p, m, v, g) = (p_rest, m_rest, v_rest, g_rest);
        at = e.offset + e.len;
        for (((p, m), v), g) in p1
            .chunks_mut(PIECE)
            .zip(m1.chunks_mut(PIECE))
            .zip(v1.chunks_mut(PIECE))
            .zip(g1.chunks(PIECE))
        {
            out.push(Piece {
                p,
                m,
                v,
                g,
                decay: e.weight_decay,
            });
        }
    }
    out
}

/// The global L2 norm of `grads`, summed in `f64` over fixed pieces in order (the same bits
/// at any thread count).
pub fn grad_norm(grads: &[f32]) -> f64 {
    let partial: Vec<f64> = grads.par_chunks(PIECE).map(sum_of_squares).collect();
    partial.iter().sum::<f64>().sqrt()
}

/// `Σ x²` in f64, over 8 interleaved running sums: a single running sum is a chain of
/// dependent additions the compiler may not reorder (about 3× slower); fixed lanes keep
/// the result independent of threads.
fn sum_of_squares(xs: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f64; LANES];
    let mut rows = xs.chunks_exact(LANES);
    for row in &mut rows {
        for (lane, &x) in lanes.iter_mut().zip(row) {
            *lane += f64::from(x) * f64::from(x);
        }
    }
    let rest: f64 = rows
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    lanes.iter().sum::<f64>() + rest
}

/// `acc[i] += s · x[i]` for every element, in parallel pieces (each element's result is
/// the same at any thread count).
pub fn add_scaled(acc: &mut [f32], x: &[f32], s: f32) {
    acc.par_chunks_mut(PIECE)
        .zip(x.par_chunks(PIECE))
        .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, &x)| *a += s * x));
}

/// `x[i] *= s` for every element, in parallel pieces.
pub fn scale(x: &mut [f32], s: f32) {
    x.par_chunks_mut(PIECE)
        .for_each(|x| x.iter_mut().for_each(|v| *v *= s));
}

impl AdamW {
    /// One optimizer step over `state.grads`, in place: global-norm clipping (when
    /// `max_grad_norm > 0`), then the AdamW update of parameters and moments at learning rate
    /// `lr` and step count `step` (1 for the first step). Returns the gradient norm before
    /// clipping. The gradients are left as they came.
    pub fn update_flat(
        &self,
        layout: &FlatLayout,
        state: &mut FlatState,
        lr: f32,
        step: u64,
    ) -> f32 {
        let norm = grad_norm(&state.grads);
        let coef = if self.max_grad_norm > 0.0 {
            (self.max_grad_norm / (norm + 1e-6)).min(1.0) as f32
        } else {
            1.0
        };
        // Scalars as the graph variant computes them: in f64, then cast to f32.
        let lr = f64::from(lr);
        let t = step as f64;
        let step_size = (lr / (1.0 - self.beta1.powf(t))) as f32;
        let bc2_sqrt = (1.0 - self.beta2.powf(t)).sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let apply_decay = self.weight_decay != 0.0;
        let (b1, c1) = (self.beta1 as f32, (1.0 - self.beta1) as f32);
        let (b2, c2) = (self.beta2 as f32, (1.0 - self.beta2) as f32);
        let eps = self.eps as f32;
        let clip = coef < 1.0;
        pieces(layout, state).into_par_iter().for_each(|piece| {
            let decay = if piece.decay && apply_decay {
                decay
            } else {
                1.0
            };
            for (((p, m), v), &g) in piece
                .p
                .iter_mut()
                .zip(piece.m.iter_mut())
                .zip(piece.v.iter_mut())
                .zip(piece.g)
            {
                let g = if clip { g * coef } else { g };
                let p1 = *p * decay;
                let m1 = *m * b1 + g * c1;
                let v1 = *v * b2 + g * g * c2;
                let den = v1.sqrt() / bc2_sqrt + eps;
                *p = p1 - m1 / den * step_size;
                *m = m1;
                *v = v1;
            }
        });
        norm as f32
    }
}
