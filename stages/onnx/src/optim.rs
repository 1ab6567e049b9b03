//! AdamW compiled into the training step graph.
//!
//! [`AdamW::build_step`] takes a graph that computes a loss from parameter inputs and adds,
//! in the same graph, the gradients, optional global-norm clipping and the AdamW update. One
//! `run` of the result is one optimizer step:
//!
//! ```text
//! inputs:  parameters p, moments m (`<p>.exp_avg`), v (`<p>.exp_avg_sq`), batch inputs,
//!          `lr` (f32 scalar), `step` (f32 scalar, 1 for the first step)
//! outputs: `loss`, whatever outputs the caller declared (logits…), `grad_norm` when clipping,
//!          then `<p>.updated`, `<p>.exp_avg.updated`, `<p>.exp_avg_sq.updated`
//! ```
//!
//! The arithmetic is `torch.optim.AdamW` (decoupled weight decay, bias correction) and, when
//! `max_grad_norm > 0`, `torch.nn.utils.clip_grad_norm_` before it:
//! <https://github.com/pytorch/pytorch/blob/main/torch/optim/adamw.py>. The learning-rate
//! schedule stays on the host: `lr` is an input.

use crate::builder::{DType, Dim, Graph, Tensor};
use crate::{Error, Result, gradients};

/// AdamW hyper-parameters (the learning rate is a graph input, not a field).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// β1, decay of the first moment (torch default 0.9).
    pub beta1: f64,
    /// β2, decay of the second moment (torch default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (torch default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters flagged for it (torch default 0.01).
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold; 0 turns clipping off.
    pub max_grad_norm: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 0.0,
        }
    }
}

/// A parameter to train: a graph input, and whether weight decay applies to it (Hugging Face
/// training usually exempts biases and LayerNorm weights).
#[derive(Clone, Copy, Debug)]
pub struct TrainParam {
    /// The parameter, a float graph input with a fixed shape.
    pub tensor: Tensor,
    /// Apply weight decay to it.
    pub weight_decay: bool,
}

/// One piece of optimizer state carried from step to step: fed as `input`, produced as `output`.
#[derive(Clone, Debug, PartialEq)]
pub struct StateSlot {
    /// Graph input name (`transformer.wte.weight`, `transformer.wte.weight.exp_avg`…).
    pub input: String,
    /// Graph output with the next value (`<input>.updated`).
    pub output: String,
    /// Fixed shape.
    pub shape: Vec<i64>,
    /// Element type.
    pub dtype: DType,
    /// What it holds.
    pub kind: StateKind,
}

/// What a [`StateSlot`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// A parameter (starts from the model's weights).
    Param,
    /// AdamW's first moment `exp_avg` (starts at zero).
    ExpAvg,
    /// AdamW's second moment `exp_avg_sq` (starts at zero).
    ExpAvgSq,
}

/// Names of the step graph's interface, for the runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSignature {
    /// The learning-rate input (f32 scalar).
    pub lr: String,
    /// The step-count input (f32 scalar, starts at 1).
    pub step: String,
    /// The loss output.
    pub loss: String,
    /// The total gradient norm output (before clipping), when clipping is on.
    pub grad_norm: Option<String>,
    /// State carried between steps, three slots per parameter (param, exp_avg, exp_avg_sq).
    pub state: Vec<StateSlot>,
}

impl AdamW {
    /// Adds gradients of `loss` and the AdamW update of `params` to `g`; see the module docs
    /// for the inputs and outputs it declares.
    pub fn build_step(
        &self,
        g: &mut Graph,
        loss: Tensor,
        params: &[TrainParam],
    ) -> Result<StepSignature> {
        let outer = g.set_scope("optimizer");
        let r = self.build_step_inner(g, loss, params);
        g.set_scope(outer);
        r
    }

    fn build_step_inner(
        &self,
        g: &mut Graph,
        loss: Tensor,
        params: &[TrainParam],
    ) -> Result<StepSignature> {
        let mut shapes = Vec::with_capacity(params.len());
        for p in params {
            let fixed: Option<Vec<i64>> = g.shape(p.tensor).iter().map(Dim::fixed).collect();
            match fixed {
                Some(s) if p.tensor.dtype().is_float() && g.inputs().contains(&p.tensor) => {
                    shapes.push(s)
                }
                _ => {
                    return Err(Error::Build {
                        node: g.name(p.tensor).to_string(),
                        message:
                            "a trained parameter must be a float graph input with a fixed shape"
                                .into(),
                    });
                }
            }
        }
        let loss_out = match g.output_for(loss) {
            Some(o) => o,
            None => g.output(loss, "loss")?,
        };
        let wrt: Vec<Tensor> = params.iter().map(|p| p.tensor).collect();
        let mut grads = gradients(g, loss, &wrt)?;

        let lr = g.input("lr", DType::F32, &[])?;
        let step = g.input("step", DType::F32, &[])?;
        let lr64 = g.cast(lr, DType::F64)?;
        let step64 = g.cast(step, DType::F64)?;

        // Global-norm clipping, as torch.nn.utils.clip_grad_norm_:
        // total = ‖(‖g_i‖)_i‖₂, coef = min(max_norm / (total + 1e-6), 1), g_i ← g_i · coef.
        let mut grad_norm = None;
        if self.max_grad_norm > 0.0 && !grads.is_empty() {
            let mut sumsq: Option<Tensor> = None;
            for &gr in &grads {
                let sq = g.mul(gr, gr)?;
                let s = g.reduce_sum_all(sq)?;
                let s = g.cast(s, DType::F64)?;
                sumsq = Some(match sumsq {
                    None => s,
                    Some(acc) => g.add(acc, s)?,
                });
            }
            let total = g.sqrt(sumsq.expect("at least one gradient"))?;
            let total32 = g.cast(total, DType::F32)?;
            grad_norm = Some(g.output(total32, "grad_norm")?);
            let eps = g.scalar(DType::F64, 1e-6);
            let den = g.add(total, eps)?;
            let maxn = g.scalar(DType::F64, self.max_grad_norm);
            let coef = g.div(maxn, den)?;
            let one = g.scalar(DType::F64, 1.0);
            let coef = g.min(coef, one)?;
            for gr in &mut grads {
                let c = g.cast(coef, gr.dtype())?;
                *gr = g.mul(*gr, c)?;
            }
        }

        // Bias corrections in double, as torch computes them on Python floats.
        let b1 = g.scalar(DType::F64, self.beta1);
        let b2 = g.scalar(DType::F64, self.beta2);
        let one = g.scalar(DType::F64, 1.0);
        let b1t = g.pow(b1, step64)?;
        let b2t = g.pow(b2, step64)?;
        let bc1 = g.sub(one, b1t)?;
        let bc2 = g.sub(one, b2t)?;
        let step_size = g.div(lr64, bc1)?;
        let bc2_sqrt = g.sqrt(bc2)?;
        let wd = g.scalar(DType::F64, self.weight_decay);
        let lr_wd = g.mul(lr64, wd)?;
        let decay = g.sub(one, lr_wd)?;

        let mut state = Vec::with_capacity(params.len() * 3);
        for ((p, grad), shape) in params.iter().zip(grads).zip(shapes) {
            let dt = p.tensor.dtype();
            let pname = g.name(p.tensor).to_string();
            let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d)).collect();
            let m = g.input(&format!("{pname}.exp_avg"), dt, &dims)?;
            let v = g.input(&format!("{pname}.exp_avg_sq"), dt, &dims)?;
            let c = |g: &mut Graph, x: f64| g.scalar(dt, x);
            // p ← p (1 - lr wd)   (decoupled weight decay, before the Adam step)
            let p1 = if p.weight_decay && self.weight_decay != 0.0 {
                let f = g.cast(decay, dt)?;
                g.mul(p.tensor, f)?
            } else {
                p.tensor
            };
            // m ← β1 m + (1 - β1) g
            let (cb1, c1b1) = (c(g, self.beta1), c(g, 1.0 - self.beta1));
            let t1 = g.mul(m, cb1)?;
            let t2 = g.mul(grad, c1b1)?;
            let m1 = g.add(t1, t2)?;
            // v ← β2 v + (1 - β2) g²
            let (cb2, c1b2) = (c(g, self.beta2), c(g, 1.0 - self.beta2));
            let t1 = g.mul(v, cb2)?;
            let g2 = g.mul(grad, grad)?;
            let t2 = g.mul(g2, c1b2)?;
            let v1 = g.add(t1, t2)?;
            // p ← p - lr/(1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε)
            let sv = g.sqrt(v1)?;
            let bc2s = g.cast(bc2_sqrt, dt)?;
            let den = g.div(sv, bc2s)?;
            let eps = c(g, self.eps);
            let den = g.add(den, eps)?;
            let ratio = g.div(m1, den)?;
            let ss = g.cast(step_size, dt)?;
            let upd = g.mul(ratio, ss)?;
            let p2 = g.sub(p1, upd)?;

            for (input, next, kind) in [
                (p.tensor, p2, StateKind::Param),
                (m, m1, StateKind::ExpAvg),
                (v, v1, StateKind::ExpAvgSq),
            ] {
                let input_name = g.name(input).to_string();
                let output = format!("{input_name}.updated");
                g.output(next, &output)?;
                state.push(StateSlot {
                    input: input_name,
                    output,
                    shape: shape.clone(),
                    dtype: dt,
                    kind,
                });
            }
        }
        Ok(StepSignature {
            lr: g.name(lr).to_string(),
            step: g.name(step).to_string(),
            loss: g.name(loss_out).to_string(),
            grad_norm: grad_norm.map(|t| g.name(t).to_string()),
            state,
        })
    }
}

/// The optimizer over flat buffers as ONNX graphs, for state that lives on a device (see
/// [`crate::DeviceTrainer`]): the same arithmetic as [`AdamW::update_flat`], one elementwise
/// pass per graph over a 1-D piece of the buffers (length `n`, chosen per run).
///
/// Every output is written at the index its inputs were read at, and nothing else reads the
/// input it overwrites, so the outputs may be bound onto the input buffers (in place).
pub mod flat_graphs {
    use super::AdamW;
    use crate::Result;
    use crate::builder::{DType, Dim, Graph, Model};
    use crate::flat::name_output;

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
}
