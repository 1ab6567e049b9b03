//! The self-check of an export: the written `model.onnx` against the training forward.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::{HostTensor, Session, SessionOptions};

use super::graph::reference_model;
use pipe_models::bundle::{INPUTS, OUTPUTS, TOKEN_TYPE_IDS};
use pipe_models::{Architecture, ParamSpec, Xoshiro256, weights};

/// The largest difference allowed between the two graphs' logits, per layer of the model and
/// per unit of the largest logit (see [`allowed_difference`]).
pub(crate) const TOLERANCE: f32 = 1e-5;

/// The largest logit difference the check allows for a model of `layers` layers whose
/// largest logit (in magnitude) is `largest`: [`TOLERANCE`] per layer, times the largest
/// logit when it is above 1. The two graphs differ in the order of their float operations
/// (ONNX Runtime fuses the exported one, the training forward pools before its last layer),
/// and that rounding grows with depth and with the logits' scale: GPT-Neo 2.7B's 32 layers
/// differed by 1.4e-5 with correct weights, where a wrong export differs by orders of
/// magnitude more.
pub(crate) fn allowed_difference(layers: usize, largest: f32) -> f32 {
    TOLERANCE * layers.max(1) as f32 * largest.abs().max(1.0)
}

/// A padded sample batch: three rows of different lengths (the whole width, about half, one
/// token), random ids everywhere, padding included, so the check also shows that what lies
/// under the padding does not matter.
struct Sample {
    ids: HostTensor,
    mask: HostTensor,
    /// All 0: what the training forward assumes.
    token_types: HostTensor,
    lengths: HostTensor,
}

impl Sample {
    fn new(cfg: &dyn Architecture) -> Result<Sample> {
        let seq = cfg.max_length().min(8);
        let lengths = [seq, seq.div_ceil(2), 1];
        let mut rng = Xoshiro256::new(0);
        let vocab = cfg.vocab_size() as u64;
        let ids = (0..lengths.len() * seq)
            .map(|_| (rng.next_u64() % vocab) as i64)
            .collect();
        let mask = lengths
            .iter()
            .flat_map(|&len| (0..seq).map(move |c| i64::from(c < len)))
            .collect();
        let shape = [lengths.len() as i64, seq as i64];
        Ok(Sample {
            ids: HostTensor::i64(&shape, ids)?,
            mask: HostTensor::i64(&shape, mask)?,
            token_types: HostTensor::i64(&shape, vec![0; lengths.len() * seq])?,
            lengths: HostTensor::i64(
                &[lengths.len() as i64],
                lengths.iter().map(|&l| l as i64).collect(),
            )?,
        })
    }
}

/// Runs `model` (the exported file) and the training forward fed the weights of `weights`
/// (the model folder's checkpoint, read again for `specs`) on a sample batch; returns the
/// largest logit difference, or an error when it passes [`allowed_difference`].
///
/// One copy of the weights at a time: the exported session (ONNX Runtime maps external data)
/// is dropped before the weights are read for the training forward, which reads them where
/// they lie ([`Session::run`] copies no input).
pub(crate) fn self_check(
    model: &Path,
    cfg: &dyn Architecture,
    weights: &Path,
    specs: &[ParamSpec],
    options: &SessionOptions,
) -> Result<f32> {
    let sample = Sample::new(cfg)?;
    let ours = {
        let mut exported = Session::from_file(model, options)
            .with_context(|| format!("self-check: cannot load {}", model.display()))?;
        let mut inputs = vec![(INPUTS[0], &sample.ids), (INPUTS[1], &sample.mask)];
        if cfg.takes_token_types() {
            inputs.push((TOKEN_TYPE_IDS, &sample.token_types));
        }
        exported
            .run(&inputs)
            .with_context(|| format!("self-check: cannot run {}", model.display()))?
    };
    let expected = {
        let weights = weights::load(weights, specs, &[], 0)?;
        let mut reference = Session::from_model(&reference_model(cfg)?, options)?;
        let mut feeds: Vec<(&str, &HostTensor)> =
            weights.iter().map(|(k, v)| (k.as_str(), v)).collect();
        feeds.push(("input_ids", &sample.ids));
        feeds.push(("lengths", &sample.lengths));
        reference
            .run(&feeds)
            .context("self-check: cannot run the training forward")?
    };

    let logits = |outputs: &BTreeMap<String, HostTensor>| -> Result<Vec<f32>> {
        outputs
            .get(OUTPUTS[0])
            .and_then(HostTensor::as_f32)
            .map(<[f32]>::to_vec)
            .context("self-check: no float `logits` output")
    };
    let (a, b) = (logits(&ours)?, logits(&expected)?);
    if a.len() != b.len() {
        bail!(
            "self-check: the exported model gives {} logits for the sample batch, the training graph {}",
            a.len(),
            b.len()
        );
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("self-check failed: the exported model gives non-finite logits {a:?}");
    }
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let allowed = allowed_difference(cfg.num_layers(), largest);
    if max > allowed {
        bail!(
            "self-check failed: the exported model's logits differ from the training graph's by up to {max:e} \
             (allowed {allowed:e}: {TOLERANCE:e} for each of {} layers, times the largest logit {largest:e} when above 1); \
             this is a bug in pipe, please report it with the model folder",
            cfg.num_layers()
        );
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_grows_with_depth_and_with_logits_above_one() {
        assert_eq!(allowed_difference(1, 0.3), 1e-5);
        assert_eq!(allowed_difference(0, 0.3), 1e-5);
        // GPT-Neo 2.7B: 32 layers; its 1.4e-5 passes, a difference of 1e-2 does not.
        let big = allowed_difference(32, -2.0);
        assert!((big - 6.4e-4).abs() < 1e-9, "{big}");
        assert!(1.4e-5 < big && 1e-2 > big);
    }
}
