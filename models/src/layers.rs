//! Layers the model families share: LayerNorm, linear layers with their LoRA update,
//! activations, the token embedding lookup ([`Tokens`]), the padding mask of bidirectional
//! attention and the poolings of a row's hidden states.

use pipe_onnx::{DType, Dim, Graph, Kernels, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::dropout::Dropout;
use super::lora::{self, LoraLayer, LoraParams};
use super::{Init, VarPath, Vars};

/// A feed-forward activation, by its Hugging Face name (`ACT2FN` in `activations.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (`NewGELUActivation`), GPT-Neo's default.
    GeluNew,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (`GELUActivation`), BERT's default.
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// `act(x)`.
    pub fn apply(self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        match self {
            Activation::GeluNew => g.gelu(x, true),
            Activation::Gelu => g.gelu(x, false),
            Activation::Relu => g.relu(x),
        }
    }
}

/// A LayerNorm's scale and shift over the last axis (`nn.LayerNorm`).
pub struct LayerNorm {
    path: VarPath,
    weight: Tensor,
    /// The shift: a parameter, or zeros as a constant (ONNX Runtime's CPU
    /// `LayerNormalization` crashes without its optional `B`).
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Declares `path.weight` (ones) and `path.bias` (zeros) of width `hidden`.
    pub fn new(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        hidden: usize,
        eps: f64,
    ) -> pipe_onnx::Result<Self> {
        Self::with_bias(g, vars, path, hidden, eps, true)
    }

    /// [`LayerNorm::new`], with a `path.bias` only when `bias` (`nn.LayerNorm(bias=False)`
    /// has none: ModernBERT's `norm_bias`).
    pub fn with_bias(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        hidden: usize,
        eps: f64,
        bias: bool,
    ) -> pipe_onnx::Result<Self> {
        let h = hidden as i64;
        let weight = vars.get(g, &path, "weight", &[h], Init::Ones)?;
        let bias = match bias {
            true => vars.get(g, &path, "bias", &[h], Init::Zeros)?,
            false => g.constant(TensorData::f32(&[h], &vec![0.0; hidden])?),
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: eps as f32,
            path,
        })
    }

    /// `LayerNormalization(x)` over the last axis, named after the module.
    pub fn forward(&self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        g.with_scope(self.path.as_str(), |g| {
            g.layer_normalization(x, self.weight, Some(self.bias), -1, self.eps)
        })
    }
}

/// A linear layer `x Wᵀ (+ b)` (`nn.Linear`, `W` `[out, in]`), with a LoRA update where the
/// run's LoRA settings target its module name.
pub struct Linear {
    path: VarPath,
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraLayer>,
}

impl Linear {
    /// Declares `path.weight` `[out, in]` (normal with standard deviation `std`), `path.bias`
    /// `[out]` (zeros) when `bias`, then the LoRA matrices when `lora` targets the last part of
    /// `path`.
    pub fn new(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        (in_features, out_features): (usize, usize),
        (bias, std): (bool, f64),
        lora: Option<&LoraParams>,
    ) -> anyhow::Result<Self> {
        let (i, o) = (in_features as i64, out_features as i64);
        let w = Init::Normal { std: std as f32 };
        let weight = vars.get(g, &path, "weight", &[o, i], w)?;
        let bias = match bias {
            true => Some(vars.get(g, &path, "bias", &[o], Init::Zeros)?),
            false => None,
        };
        let lora = LoraLayer::declare(lora, g, vars, &path, i, o)?;
        Ok(Linear {
            path,
            weight,
            bias,
            lora,
        })
    }

    /// The module's path (`bert.encoder.layer.0.attention.self.query`).
    pub fn path(&self) -> &VarPath {
        &self.path
    }

    /// `x Wᵀ + b` (plus the LoRA update, its input through `dropout`), named after the module.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        g.with_scope(self.path.as_str(), |g| {
            lora::linear(g, x, self.weight, self.bias, self.lora.as_ref(), dropout)
        })
    }
}

/// How a batch's token ids reach an embedding table.
#[derive(Clone, Copy, Debug)]
pub enum Tokens {
    /// `input_ids` int64 `[b, s]`, looked up with `Gather`. The gradient of a `Gather` is a
    /// scatter-add over repeated ids, which ONNX Runtime's CPU kernel sums in a varying order
    /// when it has more than one thread: fine for inference, not bit-reproducible in training.
    Ids(Tensor),
    /// The batch's distinct ids (int64 `[distinct]`) and, per position, the index of its id
    /// among them (int64 `[b, s]`). Each distinct row of the table is gathered once and spread to
    /// the positions by a one-hot `MatMul`, so the gradient is a `MatMul` and a scatter
    /// without repeats: the same bits at any thread count. (With pipe's CPU kernels,
    /// [`Kernels::Host`], the rows are gathered per position and the gradient's kernel sums
    /// repeats in position order: the same guarantee, without the one-hot products.) The
    /// forward values are the same as [`Tokens::Ids`] (one-hot products add exact zeros).
    Distinct {
        /// `token_ids` `[distinct]`.
        ids: Tensor,
        /// `token_index` `[b, s]`.
        index: Tensor,
    },
}

impl Tokens {
    /// Declares the inputs of [`Tokens::Distinct`]: `token_ids` int64 `[distinct]` and
    /// `token_index` int64 `[batch, seq]`.
    pub fn declare_distinct(g: &mut Graph) -> anyhow::Result<Tokens> {
        let ids = g.input("token_ids", DType::I64, &[Dim::from("distinct")])?;
        let index = g.input(
            "token_index",
            DType::I64,
            &[Dim::from("batch"), Dim::from("seq")],
        )?;
        Ok(Tokens::Distinct { ids, index })
    }

    /// The `[b, s]` tensor: the ids, or the index.
    pub fn per_position(&self) -> Tensor {
        match *self {
            Tokens::Ids(ids) => ids,
            Tokens::Distinct { index, .. } => index,
        }
    }

    /// The ids themselves, int64 `[b, s]` (for [`Tokens::Distinct`], gathered by the index).
    pub fn ids(&self, g: &mut Graph) -> pipe_onnx::Result<Tensor> {
        match *self {
            Tokens::Ids(ids) => Ok(ids),
            Tokens::Distinct { ids, index } => g.gather(ids, index, 0),
        }
    }

    /// The token embeddings `[b, s, hidden]` from the table `wte` `[vocab, hidden]`.
    pub fn embed(&self, g: &mut Graph, wte: Tensor) -> pipe_onnx::Result<Tensor> {
        match *self {
            Tokens::Ids(ids) => g.gather(wte, ids, 0),
            // pipe's CPU kernels sum a Gather's gradient in a fixed order: no one-hot needed.
            Tokens::Distinct { ids, index } if g.kernels() == Kernels::Host => {
                let ids = g.gather(ids, index, 0)?; // [b, s]
                g.gather(wte, ids, 0)
            }
            Tokens::Distinct { ids, index } => {
                let rows = g.gather(wte, ids, 0)?; // [u, h]
                let (b, s) = (g.shape(index)[0].clone(), g.shape(index)[1].clone());
                let h = g.shape(wte)[1].clone();
                let u = g.shape(ids)[0].clone();
                let flat = g.reshape(index, &[Dim::Fixed(-1), Dim::Fixed(1)])?; // [n, 1]
                let which = g.range(&u, DType::I64)?; // [u]
                let hot = g.equal(flat, which)?; // [n, u]
                let hot = g.cast(hot, DType::F32)?;
                let tok = g.matmul(hot, rows)?; // [n, h]
                g.reshape(tok, &[b, s, h])
            }
        }
    }
}

/// The mean of the hidden states at positions `0..lengths[b]` of each row: `[b, s, h]` →
/// `[b, h]`. Padded positions are multiplied by 0 (their values are finite), so they add
/// nothing to the sum nor to the gradient.
pub fn pool_mean(g: &mut Graph, hidden: Tensor, lengths: Tensor) -> pipe_onnx::Result<Tensor> {
    let s = g.shape(hidden)[1].clone();
    let pos = g.range(&s, DType::I64)?;
    let pos = g.unsqueeze(pos, &[0])?; // [1, s]
    let len = g.unsqueeze(lengths, &[1])?; // [b, 1]
    let real = g.less(pos, len)?; // [b, s]
    let real = g.cast(real, DType::F32)?;
    let real = g.unsqueeze(real, &[2])?; // [b, s, 1]
    let masked = g.mul(hidden, real)?;
    let total = g.reduce_sum(masked, &[1], false)?; // [b, h]
    let count = g.reduce_sum(real, &[1], false)?; // [b, 1]
    g.div(total, count)
}

/// The additive mask of bidirectional attention over right-padded rows: `[b, 1, 1, s]`, 0 where
/// key `k < lengths[b]` and `f32::MIN` on padding (transformers' eager mask: `finfo.min` where
/// `attention_mask` is 0). Added to the scores, a padded key gets probability 0 exactly.
pub fn padding_mask(g: &mut Graph, lengths: Tensor, seq: &Dim) -> pipe_onnx::Result<Tensor> {
    let pos = g.range(seq, DType::I64)?;
    let k = g.unsqueeze(pos, &[0])?; // [1, s]
    let len = g.unsqueeze(lengths, &[1])?; // [b, 1]
    let real = g.less(k, len)?; // [b, s]
    let real = g.unsqueeze(real, &[1, 2])?; // [b, 1, 1, s]
    let zero = g.scalar(DType::F32, 0.0);
    let min = g.scalar(DType::F32, f64::from(f32::MIN));
    g.where_(real, zero, min)
}

/// The first position of each row of `x` `[b, s, h]`: `[b, 1, h]` (the `[CLS]` / `<s>` token).
pub fn first_token(g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
    g.slice(x, &[0], &[Dim::Fixed(1)], &[1], &[])
}

/// `[b, s, heads·head_dim]` → `[b, heads, s, head_dim]`.
pub fn split_heads(
    g: &mut Graph,
    t: Tensor,
    heads: usize,
    head_dim: usize,
) -> pipe_onnx::Result<Tensor> {
    let (b, s) = (g.shape(t)[0].clone(), g.shape(t)[1].clone());
    let (nh, hd) = (Dim::Fixed(heads as i64), Dim::Fixed(head_dim as i64));
    let t = g.reshape(t, &[b, s, nh, hd])?;
    g.transpose(t, &[0, 2, 1, 3])
}

/// `[b, heads, s, head_dim]` → `[b, s, width]` (`width` = heads·head_dim).
pub fn merge_heads(g: &mut Graph, t: Tensor, width: usize) -> pipe_onnx::Result<Tensor> {
    let (b, s) = (g.shape(t)[0].clone(), g.shape(t)[2].clone());
    let t = g.transpose(t, &[0, 2, 1, 3])?; // [b, s, heads, head_dim]
    g.reshape(t, &[b, s, Dim::Fixed(width as i64)])
}

/// Eager scaled dot-product attention as transformers' `eager_attention_forward` computes it:
/// `dropout(softmax(q·kᵀ/√head_dim + mask)) · v` for `q` `[b, heads, q, head_dim]`, `k`, `v`
/// `[b, heads, s, head_dim]` and an additive `mask` broadcast to `[b, heads, q, s]`. The
/// probabilities go through `dropout`'s site `site` (the attention module's `dropout`).
/// Scaling `q` before the product is the same up to rounding, and cheaper.
pub fn scaled_attention(
    g: &mut Graph,
    (q, k, v): (Tensor, Tensor, Tensor),
    mask: Tensor,
    head_dim: usize,
    (dropout, site): (&Dropout, &str),
) -> pipe_onnx::Result<Tensor> {
    let scale = g.scalar(DType::F32, 1.0 / (head_dim as f64).sqrt());
    let q = g.mul(q, scale)?;
    let kt = g.transpose(k, &[0, 1, 3, 2])?; // [b, heads, head_dim, s]
    let scores = g.matmul(q, kt)?; // [b, heads, q, s]
    let scores = g.add(scores, mask)?;
    let probs = g.softmax(scores, -1)?;
    let probs = dropout.apply(g, site, probs)?;
    g.matmul(probs, v) // [b, heads, q, head_dim]
}

/// Root-mean-square normalisation over the last axis with a learned scale (`LlamaRMSNorm`,
/// `Qwen3RMSNorm`): `w · x / √(mean(x²) + ε)`, no shift, no mean subtraction.
pub struct RmsNorm {
    path: VarPath,
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Declares `path.weight` (ones) of width `width`.
    pub fn new(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        width: usize,
        eps: f64,
    ) -> pipe_onnx::Result<Self> {
        Ok(RmsNorm {
            weight: vars.get(g, &path, "weight", &[width as i64], Init::Ones)?,
            eps,
            path,
        })
    }

    /// `w · x / √(mean(x²) + ε)` over the last axis of `x`, named after the module.
    pub fn forward(&self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        g.with_scope(self.path.as_str(), |g| {
            let sq = g.mul(x, x)?;
            let var = g.reduce_mean(sq, &[-1], true)?;
            let eps = g.scalar(DType::F32, self.eps);
            let var = g.add(var, eps)?;
            let rms = g.sqrt(var)?;
            let inv = g.reciprocal(rms)?;
            let normed = g.mul(x, inv)?;
            g.mul(normed, self.weight)
        })
    }
}

/// The `head_dim / 2` inverse frequencies of the default rotary embedding with base `theta`,
/// `1 / theta^(2i / head_dim)`, in f32 as transformers' `_compute_default_rope_parameters`.
pub fn rope_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    let base = theta as f32;
    (0..head_dim)
        .step_by(2)
        .map(|i| 1.0f32 / base.powf(i as f32 / head_dim as f32))
        .collect()
}

/// Rotary position embeddings (RoFormer; transformers' `…RotaryEmbedding` and
/// `apply_rotary_pos_emb`): the cosines and sines of `position · inv_freq`, each frequency
/// used for dimension `i` and `i + head_dim/2` (`rotate_half` pairs the two halves).
#[derive(Clone, Copy, Debug)]
pub struct Rotary {
    /// f32 `[s, head_dim]`.
    pub cos: Tensor,
    /// f32 `[s, head_dim]`.
    pub sin: Tensor,
    /// `head_dim / 2`.
    half: i64,
}

impl Rotary {
    /// The tables for positions `positions` (int64, any shape `[..]`), from the inverse
    /// frequencies `inv_freq` (`head_dim / 2` of them): `[.., head_dim]` each.
    pub fn new(g: &mut Graph, positions: Tensor, inv_freq: &[f32]) -> anyhow::Result<Self> {
        let half = inv_freq.len() as i64;
        let mut both = inv_freq.to_vec();
        both.extend_from_slice(inv_freq);
        let freqs = g.constant(pipe_onnx::TensorData::f32(&[2 * half], &both)?);
        let pos = g.cast(positions, DType::F32)?;
        let pos = g.unsqueeze(pos, &[-1])?; // [.., 1]
        // f32 products, as transformers computes them (`position_ids.float() * inv_freq`).
        let angles = g.mul(pos, freqs)?; // [.., head_dim]
        Ok(Rotary {
            cos: g.cos(angles)?,
            sin: g.sin(angles)?,
            half,
        })
    }

    /// `x · cos + rotate_half(x) · sin` for `x` `[b, heads, s, head_dim]`, with `cos`/`sin`
    /// broadcast over the heads (`[b, 1, s, head_dim]` or `[s, head_dim]`).
    pub fn apply(&self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        let half = self.half;
        let halves = g.split(x, &[Dim::Fixed(half), Dim::Fixed(half)], 3)?;
        let minus_x2 = g.neg(halves[1])?;
        let rotated = g.concat(&[minus_x2, halves[0]], 3)?;
        let a = g.mul(x, self.cos)?;
        let b = g.mul(rotated, self.sin)?;
        g.add(a, b)
    }
}

/// A gated linear unit's activation (GeGLU with GELU, Shazeer 2020): `x` `[.., 2·width]` is
/// cut into `input` and `gate` halves and becomes `act(input) · gate` `[.., width]`, as
/// ModernBERT's `Wi(x).chunk(2, dim=-1)`.
pub fn gated(g: &mut Graph, x: Tensor, width: usize, act: Activation) -> pipe_onnx::Result<Tensor> {
    let w = Dim::Fixed(width as i64);
    let parts = g.split(x, &[w.clone(), w], -1)?;
    let input = act.apply(g, parts[0])?;
    g.mul(input, parts[1])
}

/// The additive mask of causal attention over right-padded rows: `[b, 1, s, s]`, 0 where
/// query `q` sees key `k` (`k <= q`, `k < lengths[b]` and, with a `window`, `q - k < window`,
/// transformers' `sliding_window_overlay`) and `f32::MIN` elsewhere (the eager mask's
/// `finfo.min`).
pub fn causal_mask(
    g: &mut Graph,
    lengths: Tensor,
    seq: &Dim,
    window: Option<usize>,
) -> pipe_onnx::Result<Tensor> {
    let pos = g.range(seq, DType::I64)?;
    let q = g.unsqueeze(pos, &[1])?; // [s, 1]
    let k = g.unsqueeze(pos, &[0])?; // [1, s]
    let future = g.less(q, k)?;
    let mut visible = g.not(future)?; // [s, s]
    if let Some(w) = window {
        let dist = g.sub(q, k)?;
        let w = g.scalar(DType::I64, w as f64);
        let near = g.less(dist, w)?;
        visible = g.and(visible, near)?;
    }
    let len = g.unsqueeze(lengths, &[1])?; // [b, 1]
    let real = g.less(k, len)?; // [b, s]
    let real = g.unsqueeze(real, &[1, 2])?; // [b, 1, 1, s]
    let visible = g.and(visible, real)?; // [b, 1, s, s]
    let zero = g.scalar(DType::F32, 0.0);
    let min = g.scalar(DType::F32, f64::from(f32::MIN));
    g.where_(visible, zero, min)
}

/// The gated feed-forward of Llama-family models (`LlamaMLP`): `down(act(gate(x)) · up(x))`
/// with SiLU, `x · sigmoid(x)`, as `act` (Shazeer 2020, SwiGLU).
pub struct SwiGlu {
    path: VarPath,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl SwiGlu {
    /// Declares `gate_proj`, `up_proj` (`hidden → intermediate`) and `down_proj` under `path`,
    /// with biases when `bias` (`mlp_bias`), in `LlamaMLP.__init__`'s order.
    pub fn new(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        (hidden, intermediate): (usize, usize),
        (bias, std): (bool, f64),
        lora: Option<&LoraParams>,
    ) -> anyhow::Result<Self> {
        let w = (bias, std);
        Ok(SwiGlu {
            gate_proj: Linear::new(
                g,
                vars,
                path.pp("gate_proj"),
                (hidden, intermediate),
                w,
                lora,
            )?,
            up_proj: Linear::new(g, vars, path.pp("up_proj"), (hidden, intermediate), w, lora)?,
            down_proj: Linear::new(
                g,
                vars,
                path.pp("down_proj"),
                (intermediate, hidden),
                w,
                lora,
            )?,
            path,
        })
    }

    /// `down(silu(gate(x)) · up(x))`.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        let gate = self.gate_proj.forward(g, x, dropout)?;
        let up = self.up_proj.forward(g, x, dropout)?;
        let h = g.with_scope(self.path.as_str(), |g| {
            let act = g.silu(gate)?;
            g.mul(act, up)
        })?;
        self.down_proj.forward(g, h, dropout)
    }
}

/// GPT-2's `Conv1D`: a linear layer with its weight stored `[in, out]` (`x W + b`, the
/// transpose of `nn.Linear`'s layout), with a LoRA update where the run's LoRA settings
/// target its module name (PEFT's `fan_in_fan_out`: the LoRA matrices keep their usual shapes).
pub struct Conv1D {
    path: VarPath,
    weight: Tensor,
    bias: Tensor,
    lora: Option<LoraLayer>,
}

impl Conv1D {
    /// Declares `path.weight` `[in, out]` (normal with standard deviation `std`) and
    /// `path.bias` `[out]` (zeros), then the LoRA matrices when `lora` targets the last part of
    /// `path`.
    pub fn new(
        g: &mut Graph,
        vars: &mut Vars,
        path: VarPath,
        (in_features, out_features): (usize, usize),
        std: f64,
        lora: Option<&LoraParams>,
    ) -> anyhow::Result<Self> {
        let (i, o) = (in_features as i64, out_features as i64);
        let w = Init::Normal { std: std as f32 };
        let weight = vars.get(g, &path, "weight", &[i, o], w)?;
        let bias = vars.get(g, &path, "bias", &[o], Init::Zeros)?;
        let lora = LoraLayer::declare(lora, g, vars, &path, i, o)?;
        Ok(Conv1D {
            path,
            weight,
            bias,
            lora,
        })
    }

    /// `x W + b` (plus the LoRA update, its input through `dropout`), named after the module.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: Tensor,
        dropout: &Dropout,
    ) -> pipe_onnx::Result<Tensor> {
        g.with_scope(self.path.as_str(), |g| {
            let y = g.matmul(x, self.weight)?;
            let y = g.add(y, self.bias)?;
            match &self.lora {
                Some(l) => l.apply(g, x, y, dropout),
                None => Ok(y),
            }
        })
    }
}
