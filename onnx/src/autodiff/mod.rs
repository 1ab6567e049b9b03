//! Reverse-mode automatic differentiation over a [`Graph`].
//!
//! [`gradients`] walks the recorded nodes backwards from the loss and, for each operator on the
//! path from the requested tensors, emits its vector-Jacobian product as more standard ONNX nodes
//! (the stock ONNX Runtime build has no gradient operators). The rules, one per operator with
//! its derivative in a comment, live in `autodiff/rules.rs`.
//!
//! - Only float tensors carry gradients: ids, masks, lengths and shapes are skipped.
//! - A value used several times gets the sum of its gradients.
//! - Broadcasting is undone by `ReduceSum` over the broadcast axes, then `Reshape`.
//! - An operator without a rule on the path to the loss is a build error naming it and its node.
//! - A requested tensor the loss does not depend on gets a zero gradient.
//! - Backward nodes are named after the forward node: `transformer.h.0.attn/Softmax.grad/Mul`.

mod rules;

use std::collections::BTreeMap;

use crate::builder::{Dim, Graph, Tensor};
use crate::{Error, Result};

/// Gradients of `loss` with respect to each of `wrt`, as new tensors in `g`.
///
/// `loss` is normally a scalar; a tensor loss is seeded with ones (the gradient of its sum).
pub fn gradients(g: &mut Graph, loss: Tensor, wrt: &[Tensor]) -> Result<Vec<Tensor>> {
    if !loss.dtype().is_float() {
        return Err(Error::Build {
            node: g.name(loss).to_string(),
            message: format!("the loss must be a float tensor, not {}", loss.dtype()),
        });
    }
    let forward_nodes = g.nodes.len();
    // Forward pass: which values depend on a requested tensor through float values.
    let mut needs = vec![false; g.values.len()];
    for &w in wrt {
        if !w.dtype().is_float() {
            return Err(Error::Build {
                node: g.name(w).to_string(),
                message: format!(
                    "cannot differentiate with respect to a {} tensor",
                    w.dtype()
                ),
            });
        }
        needs[w.index()] = true;
    }
    for node in &g.nodes[..forward_nodes] {
        if node.inputs.iter().flatten().any(|i| needs[i.index()]) {
            for o in &node.outputs {
                needs[o.index()] = o.dtype().is_float();
            }
        }
    }
    if !needs[loss.index()] {
        return wrt.iter().map(|&w| g.zeros_like(w)).collect();
    }

    let mut grads: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
    let outer = g.scope().to_string();
    let seed = if g.shape(loss).is_empty() {
        g.scalar(loss.dtype(), 1.0)
    } else {
        let one = g.scalar(loss.dtype(), 1.0);
        g.expand_like(one, loss)?
    };
    grads.insert(loss.index(), vec![seed]);

    for ni in (0..forward_nodes).rev() {
        let node = g.nodes[ni].clone();
        if !node.outputs.iter().any(|o| grads.contains_key(&o.index())) {
            continue;
        }
        let need: Vec<bool> = node
            .inputs
            .iter()
            .map(|i| i.is_some_and(|t| needs[t.index()]))
            .collect();
        if !need.contains(&true) {
            continue;
        }
        g.set_scope(format!("{}.grad", node.name));
        let mut gy = Vec::with_capacity(node.outputs.len());
        for o in &node.outputs {
            gy.push(match grads.remove(&o.index()) {
                Some(parts) => Some(sum(g, parts)?),
                None => None,
            });
        }
        let gx = rules::vjp(g, &node, &gy, &need);
        let gx = match gx {
            Ok(gx) => gx,
            Err(e) => {
                g.set_scope(outer);
                return Err(e);
            }
        };
        for ((input, gi), n) in node.inputs.iter().zip(gx).zip(&need) {
            if let (Some(t), Some(gi), true) = (input, gi, n) {
                grads.entry(t.index()).or_default().push(gi);
            }
        }
    }
    g.set_scope(outer.clone());
    let mut out = Vec::with_capacity(wrt.len());
    for &w in wrt {
        g.set_scope(format!("{}.grad", g.name(w)));
        let r = match grads.get(&w.index()) {
            Some(parts) => sum(g, parts.clone()),
            None => g.zeros_like(w),
        };
        g.set_scope(outer.clone());
        out.push(r?);
    }
    Ok(out)
}

/// Sums gradient contributions.
fn sum(g: &mut Graph, parts: Vec<Tensor>) -> Result<Tensor> {
    let mut it = parts.into_iter();
    let first = it.next().expect("a gradient entry holds at least one part");
    it.try_fold(first, |acc, p| g.add(acc, p))
}

/// Reduces `grad` (shaped like a broadcast result) back to the shape of `target`: sums over the
/// leading axes `target` lacks and over axes where `target` has size 1, then reshapes.
pub(crate) fn unbroadcast(g: &mut Graph, grad: Tensor, target: Tensor) -> Result<Tensor> {
    let gs = g.shape(grad).to_vec();
    let ts = g.shape(target).to_vec();
    if gs == ts {
        return Ok(grad);
    }
    let lead = gs.len().saturating_sub(ts.len());
    let mut axes: Vec<i64> = (0..lead as i64).collect();
    for (i, d) in ts.iter().enumerate() {
        if *d == Dim::Fixed(1) && gs.get(lead + i) != Some(&Dim::Fixed(1)) {
            axes.push((lead + i) as i64);
        }
    }
    let reduced = if axes.is_empty() {
        grad
    } else {
        g.reduce_sum(grad, &axes, true)?
    };
    if lead == 0 && g.shape(reduced) == ts.as_slice() {
        Ok(reduced)
    } else {
        g.reshape_like(reduced, target)
    }
}
