//! The self-check of an export: the written `model.onnx` against the training forward.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pipe_onnx::{HostTensor, Session, SessionOptions};

use super::graph::reference_model;
use pipe_models::bundle::{INPUTS, OUTPUTS, TOKEN_TYPE_IDS};
use pipe_models::{Architecture, ParamSpec, Xoshiro256, weights};

/// The largest difference allowed between the two graphs' logits.
pub(crate) const TOLERANCE: f32 = 1e-5;

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
/// largest logit difference, or an error when it passes [`TOLERANCE`].
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
    if max > TOLERANCE {
        bail!(
            "self-check failed: the exported model's logits differ from the training graph's by up to {max:e} (allowed {TOLERANCE:e}); \
             this is a bug in pipe, please report it with the model folder"
        );
    }
    Ok(max)
}
