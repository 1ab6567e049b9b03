//! A decoder's last layer run on each row's last real token alone.
//!
//! A decoder classifier (GPT-Neo, GPT-2, the Llama family) reads one hidden state per row:
//! the last real token's, at `lengths[b] - 1` with right padding. Every layer but the last
//! feeds keys and values of every position to the next, but nothing reads the last layer's
//! other positions: it can take its keys and values from every position and run its queries,
//! attention output and MLP on the pooled rows alone, which saves most of a layer (a quarter
//! of a 4-layer model). [`forward_to_last_tokens`] runs the layers so; a family's layer says
//! how it runs on the pooled rows, with [`LastTokens`] picking them.

use anyhow::Result;
use pipe_onnx::{Dim, Graph, Tensor};

use super::VarPath;
use super::dropout::Dropout;
use super::layers::last_position;

/// Each row's last real token in a batch of right-padded rows: the rows a layer running on
/// them alone picks from its inputs.
pub struct LastTokens {
    /// int64 `[b]`: each row's real length.
    lengths: Tensor,
    /// int64 `[b, 1, hidden]`: the gather indices of the last tokens along axis 1.
    index: Tensor,
}

impl LastTokens {
    /// The last tokens of the rows of `x` `[b, s, hidden]` of `lengths` real tokens.
    pub fn new(g: &mut Graph, x: Tensor, lengths: Tensor) -> pipe_onnx::Result<Self> {
        let (b, h) = (g.shape(x)[0].clone(), g.shape(x)[2].clone());
        let index = g.with_scope("pool", |g| last_position(g, lengths, &b, &h))?;
        Ok(LastTokens { lengths, index })
    }

    /// The last tokens' states of `x` `[b, s, hidden]` (as wide as the `x` of [`Self::new`]):
    /// `[b, 1, hidden]`.
    pub fn pick(&self, g: &mut Graph, x: Tensor) -> pipe_onnx::Result<Tensor> {
        g.gather_elements(x, self.index, 1)
    }

    /// The rows of the last tokens' queries of an attention mask `[b, 1, s, s]`:
    /// `[b, 1, 1, s]`.
    pub fn mask(&self, g: &mut Graph, mask: Tensor) -> pipe_onnx::Result<Tensor> {
        let shape = g.shape(mask).to_vec();
        g.with_scope("mask_rows", |g| {
            let one = Dim::Fixed(1);
            let idx = last_position(g, self.lengths, &shape[0], &one)?; // [b, 1, 1]
            let idx = g.unsqueeze(idx, &[1])?; // [b, 1, 1, 1]
            let idx = g.expand(idx, &[shape[0].clone(), one.clone(), one, shape[3].clone()])?;
            g.gather_elements(mask, idx, 2)
        })
    }

    /// The last tokens' positions, int64 `[b, 1, 1]` (rotary tables broadcast from there
    /// over heads and the one query).
    pub fn positions(&self, g: &mut Graph) -> pipe_onnx::Result<Tensor> {
        let one = Dim::Fixed(1);
        let b = g.shape(self.lengths)[0].clone();
        last_position(g, self.lengths, &b, &one)
    }
}

/// The state `[b, hidden]` after `layers` at each row's last real token, of `x`
/// `[b, s, hidden]` with `lengths` real tokens per row: `forward(g, layer, x, None)` runs a
/// layer on every position, `forward(g, layer, x, Some(last))` on the last tokens alone
/// (`[b, 1, hidden]`). The last layer runs so unless `dropout` has a site under its path
/// (`path(layer)`): its masks cover every position, so the whole state is computed and
/// then picked.
pub fn forward_to_last_tokens<L>(
    g: &mut Graph,
    x: Tensor,
    lengths: Tensor,
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
    let tokens = LastTokens::new(g, x, lengths)?;
    let x = if dropout.any_under(path(last)) {
        let x = forward(g, last, x, None)?;
        tokens.pick(g, x)?
    } else {
        forward(g, last, x, Some(&tokens))?
    };
    Ok(g.reshape(x, &[b, h])?)
}
