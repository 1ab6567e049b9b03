//! The test oracle: AdamW compiled into the training step graph itself, with its state kept
//! in ONNX Runtime ([`crate::Trainer`]). Production trains over flat buffers
//! ([`crate::build_gradient_step`], [`crate::step_trainer`]); the tests check that path
//! against this one, operation by operation. Built with the `oracle` feature only.
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

use crate::builder::{DType, Dim, Graph, Tensor};
use crate::optim::{AdamW, StateKind, TrainParam};
use crate::{Error, Result, gradients};

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
