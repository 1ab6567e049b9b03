//! A decoder's last layer run on each row's pooled token alone.
//!
//! A decoder classifier (GPT-Neo, GPT-2, the Llama family) reads one hidden state per row:
//! as transformers' `*ForSequenceClassification` does, the rightmost real token's that is
//! not the pad id ([`last_non_pad`]; `lengths[b] - 1` unless the text itself ends in that
//! id). Every layer but the last feeds keys and values of every position to the next, but
//! nothing reads the last layer's other positions: it can take its keys and values from
//! every position and run its queries, attention output and MLP on the pooled rows alone,
//! which saves most of a layer (a quarter of a 4-layer model). [`forward_to_last_tokens`]
//! runs the layers so; a family's layer says how it runs on the pooled rows, with
//! [`LastTokens`] picking them.

use anyhow::Result;
use pipe_onnx::{DType, Dim, Graph, Tensor};

use super::VarPath;
use super::dropout::Dropout;
use super::layers::Tokens;

/// Each row's pooled position, int64 `[b]`, as transformers' decoder classifiers pick it:
/// the rightmost real position (`< lengths[b]`) whose token is not `pad`, 0 when there is
/// none (`(arange(s) * (input_ids != pad)).argmax(-1)` over right-padded rows).
pub fn last_non_pad(
    g: &mut Graph,
    tokens: &Tokens,
    lengths: Tensor,
    pad: i64,
) -> pipe_onnx::Result<Tensor> {
    g.with_scope("last_non_pad", |g| {
        let ids = tokens.ids(g)?; // [b, s]
        let s = g.shape(ids)[1].clone();
        let pos = g.range(&s, DType::I64)?;
        let pos = g.unsqueeze(pos, &[0])?; // [1, s]
        let len = g.unsqueeze(lengths, &[1])?; // [b, 1]
        let real = g.less(pos, len)?; // [b, s]
        let pad = g.scalar(DType::I64, pad as f64);
        let is_pad = g.equal(ids, pad)?;
        let not_pad = g.not(is_pad)?;
        let kept = g.and(real, not_pad)?;
        let kept = g.cast(kept, DType::I64)?;
        let kept_pos = g.mul(pos, kept)?; // [b, s]: the position where kept, else 0
        g.reduce_max(kept_pos, &[1], false)
    })
}

/// Each row's pooled token in a batch: the rows a layer running on them alone picks from
/// its inputs.
pub struct LastTokens {
    /// int64 `[b]`: each row's pooled position ([`last_non_pad`]).
    positions: Tensor,
    /// int64 `[b, 1, hidden]`: the gather indices of the pooled tokens along axis 1.
    index: Tensor,
}

impl LastTokens {
    /// The tokens at `positions` (int64 `[b]`) of the rows of `x` `[b, s, hidden]`.
    pub fn new(g: &mut Graph, x: Tensor, positions: Tensor) -> pipe_onnx::Result<Self> {
        let (b, h) = (g.shape(x)[0].clone(), g.shape(x)[2].clone());
        let index = g.with_scope("pool", |g| gather_index(g, positions, &b, &h))?;
        Ok(LastTokens { positions, index })
    }

    /// The pooled tokens' states of `x` `[b, s, hidden]` (as wide as the `x` of
    /// [`Self::new`]): `[b, 1, hidden]`.
    pub fn pick(&self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        g.gather_elements(x, self.index, 1)
    }

    /// The rows of the pooled tokens' queries of an attention mask `[b, 1, s, s]`:
    /// `[b, 1, 1, s]`.
    pub fn mask(&self, g: &mut Graph, mask: Tensor) -> pipe_onnx::Result<Tensor> {
        let shape = g.shape(mask).to_vec();
        g.with_scope("mask_rows", |g| {
            let one = Dim::Fixed(1);
            let idx = gather_index(g, self.positions, &shape[0], &one)?; // [b, 1, 1]
            let idx = g.unsqueeze(idx, &[1])?; // [b, 1, 1, 1]
            let idx = g.expand(idx, &[shape[0].clone(), one.clone(), one, shape[3].clone()])?;
            g.gather_elements(mask, idx, 2)
        })
    }

    /// The pooled tokens' positions, int64 `[b, 1, 1]` (rotary tables broadcast from there
    /// over heads and the one query).
    pub fn positions(&self, g: &mut Graph) -> pipe_onnx::Result<Tensor> {
        let b = g.shape(self.positions)[0].clone();
        g.reshape(self.positions, &[b, Dim::Fixed(1), Dim::Fixed(1)])
    }
}

/// `positions` `[b]` as `GatherElements` indices along axis 1 of a `[b, s, width]` tensor:
/// int64 `[b, 1, width]`.
fn gather_index(
    g: &mut Graph,
    positions: Tensor,
    b: &Dim,
    width: &Dim,
) -> pipe_onnx::Result<Tensor> {
    let at = g.reshape(positions, &[b.clone(), Dim::Fixed(1), Dim::Fixed(1)])?;
    g.expand(at, &[b.clone(), Dim::Fixed(1), width.clone()])
}

/// The state `[b, hidden]` after `layers` at each row's pooled token (`positions`, int64
/// `[b]`, from [`last_non_pad`]), of `x` `[b, s, hidden]`: `forward(g, layer, x, None)` runs a
/// layer on every position, `forward(g, layer, x, Some(last))` on the pooled tokens alone
/// (`[b, 1, hidden]`). The last layer runs so unless `dropout` has a site under its path
/// (`path(layer)`): its masks cover every position, so the whole state is computed and
/// then picked.
pub fn forward_to_last_tokens<L>(
    g: &mut Graph,
    x: Tensor,
    positions: Tensor,
    layers: &[L],
    dropout: &Dropout,
    path: impl Fn(&L) -> &VarPath,
    mut forward: impl FnMut(&mut Graph, &L, Tensor, Option<&LastTokens>) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, h) = (g.shape(x)[0].clone(), g.shape(x)[2].clone());
    let Some((last, earlier)) = layers.split_last() else {
        anyhow::bail!("a decoder needs at least one layer");
    };
    let mut x = x;
    for layer in earlier {
        x = forward(g, layer, x, None)?;
    }
    let tokens = LastTokens::new(g, x, positions)?;
    let x = if dropout.any_under(path(last)) {
        let x = forward(g, last, x, None)?;
        tokens.pick(g, x)?
    } else {
        forward(g, last, x, Some(&tokens))?
    };
    Ok(g.reshape(x, &[b, h])?)
}
