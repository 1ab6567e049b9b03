//! AdamW's hyper-parameters ([`AdamW`]) and what is trained ([`TrainParam`]). The update
//! itself runs over flat buffers: on the host ([`AdamW::update_flat`](crate::flat)) or as
//! graphs on the session's device ([`crate::flat::graphs`]).
//!
//! The arithmetic is `torch.optim.AdamW` (decoupled weight decay, bias correction) and, when
//! `max_grad_norm > 0`, `torch.nn.utils.clip_grad_norm_` before it:
//! <https://github.com/pytorch/pytorch/blob/main/torch/optim/adamw.py>. The learning-rate
//! schedule stays on the host.

use crate::builder::Tensor;
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
