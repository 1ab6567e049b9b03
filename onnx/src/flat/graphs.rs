//! The optimizer over flat buffers as ONNX graphs, for state that lives on a device (see
//! [`crate::DeviceTrainer`]): the same arithmetic as [`AdamW::update_flat`], one elementwise
//! pass per graph over a 1-D piece of the buffers (length `n`, chosen per run).
//!
//! Every output is written at the index its inputs were read at, and nothing else reads the
//! input it overwrites, so the outputs may be bound onto the input buffers (in place).

use super::name_output;
use crate::AdamW;
use crate::Result;
use crate::builder::{DType, Dim, Graph, Model};

/// Inputs and outputs of [`AdamW::flat_update_graph`].
pub mod update {
    /// Parameters (input).
    pub const PARAMS: &str = "params";
    /// Gradients (input).
    pub const GRADS: &str = "grads";
    /// First moments (input).
    pub const EXP_AVG: &str = "exp_avg";
    /// Second moments (input).
    pub const EXP_AVG_SQ: &str = "exp_avg_sq";
    /// Where weight decay applies (bool input; only when `weight_decay != 0`).
    pub const DECAY_MASK: &str = "decay_mask";
    /// Learning rate (f32 scalar input).
    pub const LR: &str = "lr";
    /// Step count, 1 for the first step (f32 scalar input).
    pub const STEP: &str = "step";
    /// Clipping factor the gradients are multiplied by, 1 without clipping (f32 scalar).
    pub const CLIP: &str = "clip";
    /// Updated parameters (output).
    pub const PARAMS_OUT: &str = "params.updated";
    /// Updated first moments (output).
    pub const EXP_AVG_OUT: &str = "exp_avg.updated";
    /// Updated second moments (output).
    pub const EXP_AVG_SQ_OUT: &str = "exp_avg_sq.updated";
}

/// Input `x`, output [`SUM_SQ`] of [`sum_sq_graph`]; inputs `x`, `s`, output [`OUT`] of
/// [`scale_graph`] and [`add_scaled_graph`] (which also takes [`ACC`]).
pub const X: &str = "x";
/// The factor of [`scale_graph`] and [`add_scaled_graph`] (f32 scalar).
pub const S: &str = "s";
/// The running sum of [`add_scaled_graph`].
pub const ACC: &str = "acc";
/// The result of [`scale_graph`] and [`add_scaled_graph`].
pub const OUT: &str = "out";
/// The result of [`sum_sq_graph`] (f64 scalar).
pub const SUM_SQ: &str = "sum_sq";

/// `out = x` over a 1-D tensor of `dtype`: with `x` and `out` bound to memory of different
/// devices, a copy between them.
pub fn copy_graph(dtype: DType) -> Result<Model> {
    let mut g = Graph::new("flat_copy");
    let x = flat_input(&mut g, X, dtype)?;
    g.output(x, OUT)?;
    g.build()
}

fn flat_input(g: &mut Graph, name: &str, dtype: DType) -> Result<crate::Tensor> {
    g.input(name, dtype, &[Dim::from("n")])
}

/// `Σ x²` of an f32 piece, summed in f64 (the pieces' sums are added on the host, in
/// order, as [`crate::flat::grad_norm`] adds its own).
pub fn sum_sq_graph() -> Result<Model> {
    let mut g = Graph::new("flat_sum_sq");
    let x = flat_input(&mut g, X, DType::F32)?;
    let x = g.cast(x, DType::F64)?;
    let sq = g.mul(x, x)?;
    let s = g.reduce_sum_all(sq)?;
    g.output(s, SUM_SQ)?;
    g.build()
}

/// `out = x · s` ([`crate::flat::scale`]).
pub fn scale_graph() -> Result<Model> {
    let mut g = Graph::new("flat_scale");
    let x = flat_input(&mut g, X, DType::F32)?;
    let s = g.input(S, DType::F32, &[])?;
    let y = g.mul(x, s)?;
    name_output(&mut g, y, OUT)?;
    g.build()
}

/// `out = acc + s · x` ([`crate::flat::add_scaled`]).
pub fn add_scaled_graph() -> Result<Model> {
    let mut g = Graph::new("flat_add_scaled");
    let acc = flat_input(&mut g, ACC, DType::F32)?;
    let x = flat_input(&mut g, X, DType::F32)?;
    let s = g.input(S, DType::F32, &[])?;
    let sx = g.mul(s, x)?;
    let y = g.add(acc, sx)?;
    name_output(&mut g, y, OUT)?;
    g.build()
}

impl AdamW {
    /// One AdamW step over a piece of the flat buffers, as a graph (see [`update`] for
    /// its interface): the arithmetic of [`AdamW::update_flat`] operation by operation,
    /// the scalars (bias corrections from `step`, decay from `lr`) in f64 then cast to
    /// f32 as there. Clipping comes in as its factor, computed from the global norm.
    pub fn flat_update_graph(&self) -> Result<Model> {
        use update::*;
        let mut g = Graph::new("flat_adamw");
        let p = flat_input(&mut g, PARAMS, DType::F32)?;
        let grad = flat_input(&mut g, GRADS, DType::F32)?;
        let m = flat_input(&mut g, EXP_AVG, DType::F32)?;
        let v = flat_input(&mut g, EXP_AVG_SQ, DType::F32)?;
        let mask = if self.weight_decay != 0.0 {
            Some(flat_input(&mut g, DECAY_MASK, DType::Bool)?)
        } else {
            None
        };
        let lr = g.input(LR, DType::F32, &[])?;
        let step = g.input(STEP, DType::F32, &[])?;
        let clip = g.input(CLIP, DType::F32, &[])?;

        let lr64 = g.cast(lr, DType::F64)?;
        let t = g.cast(step, DType::F64)?;
        let f64c = |g: &mut Graph, x: f64| g.scalar(DType::F64, x);
        let (b1, b2, one) = (
            f64c(&mut g, self.beta1),
            f64c(&mut g, self.beta2),
            f64c(&mut g, 1.0),
        );
        let b1t = g.pow(b1, t)?;
        let bc1 = g.sub(one, b1t)?;
        let step_size = g.div(lr64, bc1)?;
        let step_size = g.cast(step_size, DType::F32)?;
        let b2t = g.pow(b2, t)?;
        let bc2 = g.sub(one, b2t)?;
        let bc2_sqrt = g.sqrt(bc2)?;
        let bc2_sqrt = g.cast(bc2_sqrt, DType::F32)?;

        let f32c = |g: &mut Graph, x: f64| g.scalar(DType::F32, x);
        let grad = g.mul(grad, clip)?;
        let p1 = match mask {
            Some(mask) => {
                let wd = f64c(&mut g, self.weight_decay);
                let lr_wd = g.mul(lr64, wd)?;
                let decay = g.sub(one, lr_wd)?;
                let decay = g.cast(decay, DType::F32)?;
                let decayed = g.mul(p, decay)?;
                g.where_(mask, decayed, p)?
            }
            None => p,
        };
        // m ← β1 m + (1 - β1) g
        let (cb1, c1) = (f32c(&mut g, self.beta1), f32c(&mut g, 1.0 - self.beta1));
        let t1 = g.mul(m, cb1)?;
        let t2 = g.mul(grad, c1)?;
        let m1 = g.add(t1, t2)?;
        // v ← β2 v + (1 - β2) g²
        let (cb2, c2) = (f32c(&mut g, self.beta2), f32c(&mut g, 1.0 - self.beta2));
        let t1 = g.mul(v, cb2)?;
        let g2 = g.mul(grad, grad)?;
        let t2 = g.mul(g2, c2)?;
        let v1 = g.add(t1, t2)?;
        // p ← p - lr/(1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε)
        let sv = g.sqrt(v1)?;
        let den = g.div(sv, bc2_sqrt)?;
        let eps = f32c(&mut g, self.eps);
        let den = g.add(den, eps)?;
        let ratio = g.div(m1, den)?;
        let upd = g.mul(ratio, step_size)?;
        let p2 = g.sub(p1, upd)?;
        // Renamed, not copied through `Identity`: written straight into the bound buffers.
        for (t, name) in [(p2, PARAMS_OUT), (m1, EXP_AVG_OUT), (v1, EXP_AVG_SQ_OUT)] {
            name_output(&mut g, t, name)?;
        }
        g.build()
    }
}
