//! The single-label classification loss with label smoothing and class weights, as
//! `torch.nn.CrossEntropyLoss(weight=w, label_smoothing=ε)` computes it (mean reduction).
//!
//! With `logp = log_softmax(logits)`, `C` classes, targets `y_i` and class weights `w`
//! (all 1 without weights), PyTorch's loss is
//!
//! ```text
//! (1 − ε) · Σ_i w[y_i]·(−logp[i, y_i]) / Σ_i w[y_i]  +  (ε / C) · Σ_i Σ_c w[c]·(−logp[i, c]) / Σ_i w[y_i]
//! ```
//!
//! (`cross_entropy_loss_label_smoothing` in ATen's `LossNLL.cpp`: the smoothing term is
//! normalised by the same sum of target weights as the weighted NLL). Both terms share the
//! form `Σ_i Σ_c q[i, c]·(−logp[i, c]) / Σ_i w[y_i]` with the target distribution
//! `q[i, c] = w[c]·((1 − ε)·[c = y_i] + ε / C)`, which is what the graph computes: `q` depends
//! on the labels only, so the gradient flows through `LogSoftmax` alone.
//!
//! Without smoothing or weights the plain `SoftmaxCrossEntropyLoss` node is used, so the graph
//! (and every number it gives) stays what it was.

use anyhow::Result;
use pipe_onnx::{DType, Dim, Graph, Tensor, TensorData};

/// How the cross-entropy is shaped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrossEntropy {
    /// ε in `[0, 1)`: the share of the target spread evenly over every class.
    pub label_smoothing: f64,
    /// One positive weight per class, in class-index order; `None`: all 1.
    pub class_weights: Option<Vec<f32>>,
}

impl CrossEntropy {
    /// Whether this is the plain, unweighted, unsmoothed loss.
    pub fn is_plain(&self) -> bool {
        self.label_smoothing == 0.0 && self.class_weights.is_none()
    }

    /// The scalar loss of `logits` f32 `[N, C]` against class indices `labels` int64 `[N]`.
    pub fn loss(&self, g: &mut Graph, logits: Tensor, labels: Tensor) -> Result<Tensor> {
        if self.is_plain() {
            return Ok(g.softmax_cross_entropy_loss(logits, labels)?);
        }
        let Some(c) = g.shape(logits).get(1).and_then(Dim::fixed) else {
            anyhow::bail!("the loss needs logits [N, C] with a fixed number of classes C");
        };
        let logp = g.log_softmax(logits, -1)?; // [N, C]
        let column = g.unsqueeze(labels, &[1])?; // [N, 1]
        let class = g.range(&Dim::Fixed(c), DType::I64)?; // [C]
        let hot = g.equal(column, class)?; // [N, C]
        let hot = g.cast(hot, DType::F32)?;
        let eps = self.label_smoothing;
        // q = (1 − ε)·onehot + ε/C, then times w[c]
        let keep = g.scalar(DType::F32, 1.0 - eps);
        let spread = g.scalar(DType::F32, eps / c as f64);
        let q = g.mul(hot, keep)?;
        let mut q = g.add(q, spread)?;
        let weights = match &self.class_weights {
            Some(w) => {
                let w = g.constant(TensorData::f32(&[c], w)?);
                q = g.mul(q, w)?;
                Some(w)
            }
            None => None,
        };
        let terms = g.mul(q, logp)?;
        let total = g.reduce_sum_all(terms)?;
        let total = g.neg(total)?;
        let norm = match weights {
            // Σ_i w[y_i]
            Some(w) => {
                let target_w = g.mul(hot, w)?;
                g.reduce_sum_all(target_w)?
            }
            // N, as a float
            None => g.reduce_sum_all(hot)?,
        };
        Ok(g.div(total, norm)?)
    }
}

/// Weights that balance the classes of `labels` the way scikit-learn's
/// `compute_class_weight("balanced", …)` does: `n_samples / (n_classes · count[c])`.
/// `Err` names the first class with no row (its weight would be infinite).
pub fn balanced_class_weights(labels: &[i64], num_classes: usize) -> Result<Vec<f32>, usize> {
    let mut counts = vec![0usize; num_classes];
    for &l in labels {
        if let Some(c) = usize::try_from(l).ok().and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    if let Some(empty) = counts.iter().position(|&n| n == 0) {
        return Err(empty);
    }
    let n = labels.len() as f64;
    Ok(counts
        .iter()
        .map(|&k| (n / (num_classes as f64 * k as f64)) as f32)
        .collect())
}
