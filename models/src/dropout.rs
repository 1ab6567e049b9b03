//! Dropout for training graphs, with masks drawn on the host.
//!
//! Each family lists its sites ([`DropoutSites`]). Hugging Face's GPT-Neo drops (inverted
//! dropout: kept values are scaled by `1/(1-p)`)
//! after the embeddings (`transformer.drop`, `embed_dropout`), on the attention
//! probabilities (`attn.attention.attn_dropout`, `attention_dropout`), and on the outputs of
//! each attention and MLP block before the residual sum (`attn.attention.resid_dropout`,
//! `mlp.dropout`, `resid_dropout`). Only training graphs have dropout: evaluation and export
//! build the model without it, as `model.eval()` does.
//!
//! With LoRA, PEFT's `lora_dropout` drops the input of each adapter (`x` before `lora_A`;
//! the frozen layer sees `x` whole): one more site per adapted layer.
//!
//! Each site with a nonzero probability is a bool graph input named after the HF module
//! (`dropout:transformer.h.0.attn.attention.attn_dropout`), true where the value is kept.
//! [`DropoutPlan::masks`] draws them from a counter-based generator keyed by (seed, step,
//! micro-batch, site, element): every mask is a pure function of the run's seed, the
//! optimizer step and the micro-batch within it (gradient accumulation), so a resumed run and a run at another thread count see the same masks, bit for bit. Drawing
//! costs a hash per two elements on the host (a few milliseconds per step for the `tiny`
//! shape, under 2% of its step time), which buys that reproducibility without integer
//! hashing inside the graph, where ONNX Runtime's CPU kernels offer no unsigned arithmetic.

use std::collections::BTreeMap;

use anyhow::Result;
use pipe_onnx::{DType, Dim, Graph, HostTensor, Tensor};

use super::VarPath;

/// Dropout probabilities of the three kinds of site: GPT-Neo's `embed_dropout`,
/// `attention_dropout` and `resid_dropout`; BERT's `hidden_dropout_prob` (embeddings and
/// sub-layer outputs) and `attention_probs_dropout_prob`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DropoutRates {
    /// After the embeddings.
    pub embed: f64,
    /// On the attention probabilities.
    pub attention: f64,
    /// On each block's output.
    pub resid: f64,
}

impl DropoutRates {
    /// Whether every rate is 0.
    pub fn is_off(&self) -> bool {
        self.embed == 0.0 && self.attention == 0.0 && self.resid == 0.0
    }
}

/// What a model family tells [`DropoutPlan`]: where it drops, and which layers LoRA may
/// adapt (for PEFT's `lora_dropout` on their inputs).
pub trait DropoutSites {
    /// Attention heads per layer: the width of an attention-probabilities mask.
    fn num_heads(&self) -> usize;
    /// The dropout probabilities of the config.
    fn dropout_rates(&self) -> DropoutRates;
    /// Every dropout site under `rates`, in forward order (zero rates included).
    fn dropout_sites(&self, rates: DropoutRates) -> Vec<Site>;
    /// Every linear layer LoRA can adapt, in forward order, with the shape of its input.
    fn lora_modules(&self) -> Vec<(String, SiteShape)>;
    /// Whether those layers store their weights `[in, out]` (GPT-2's `Conv1D`; PEFT's
    /// `fan_in_fan_out`), which merging the update and the adapter's config must know.
    fn lora_fan_in_fan_out(&self) -> bool {
        false
    }
}

/// The shape of a site's mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteShape {
    /// `[batch, seq, n]`: hidden states (`n` = hidden size), or a LoRA adapter's input.
    Rows(usize),
    /// `[batch, 1, n]`: the first row only (an encoder's last layer runs on `[CLS]` alone).
    FirstRow(usize),
    /// `[batch, n]`: a pooled row.
    Pooled(usize),
    /// `[batch, heads, seq, seq]`.
    Attention,
    /// `[batch, heads, 1, seq]`: the first query's attention.
    FirstRowAttention,
}

/// A place where a training graph drops values: the Hugging Face module (`transformer.drop`),
/// the mask's shape and the probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The module's name, which names the mask input.
    pub module: String,
    /// The mask's shape.
    pub shape: SiteShape,
    /// The probability of dropping a value.
    pub p: f64,
}

/// The dropout sites of a model with nonzero probability, and how to draw their masks.
#[derive(Debug, Clone, PartialEq)]
pub struct DropoutPlan {
    sites: Vec<Site>,
    heads: usize,
}

/// Prefix of the mask inputs' names.
const INPUT_PREFIX: &str = "dropout:";

impl DropoutPlan {
    /// The sites of `config` under `rates`, in forward order; none when every rate is 0.
    pub fn new(config: &(impl DropoutSites + ?Sized), rates: DropoutRates) -> Self {
        DropoutPlan {
            sites: config
                .dropout_sites(rates)
                .into_iter()
                .filter(|s| s.p > 0.0)
                .collect(),
            heads: config.num_heads(),
        }
    }

    /// Adds a site after the others, unless its probability is 0.
    pub(crate) fn push(&mut self, site: Site) {
        if site.p > 0.0 {
            self.sites.push(site);
        }
    }

    /// Whether no site drops anything.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Declares one bool mask input per site in `g`.
    pub fn declare(&self, g: &mut Graph) -> Result<Dropout> {
        let mut sites = BTreeMap::new();
        for site in &self.sites {
            let (b, s) = (Dim::from("batch"), Dim::from("seq"));
            let (one, heads) = (Dim::Fixed(1), Dim::Fixed(self.heads as i64));
            let shape = match site.shape {
                SiteShape::Rows(n) => vec![b, s, Dim::Fixed(n as i64)],
                SiteShape::FirstRow(n) => vec![b, one, Dim::Fixed(n as i64)],
                SiteShape::Pooled(n) => vec![b, Dim::Fixed(n as i64)],
                SiteShape::Attention => vec![b, heads, s.clone(), s],
                SiteShape::FirstRowAttention => vec![b, heads, one, s],
            };
            let mask = g.input(
                &format!("{INPUT_PREFIX}{}", site.module),
                DType::Bool,
                &shape,
            )?;
            sites.insert(site.module.clone(), (mask, 1.0 / (1.0 - site.p)));
        }
        Ok(Dropout { sites })
    }

    /// The masks of micro-batch `micro` (0-based) of the step after `step` completed ones,
    /// for a batch of `batch` rows of `seq` positions: graph feeds named as
    /// [`Self::declare`] names the inputs. Micro-batch 0 draws what a step without
    /// accumulation draws (`mix(0)` is 0).
    pub fn masks(
        &self,
        seed: u64,
        step: u64,
        micro: u64,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<(String, HostTensor)>> {
        let step_key = mix(mix(seed ^ 0x6472_6f70_6f75_7421) ^ step) ^ mix(micro);
        self.sites
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let dims: Vec<usize> = match site.shape {
                    SiteShape::Rows(n) => vec![batch, seq, n],
                    SiteShape::FirstRow(n) => vec![batch, 1, n],
                    SiteShape::Pooled(n) => vec![batch, n],
                    SiteShape::Attention => vec![batch, self.heads, seq, seq],
                    SiteShape::FirstRowAttention => vec![batch, self.heads, 1, seq],
                };
                let n: usize = dims.iter().product();
                let key = mix(step_key ^ (i as u64).wrapping_mul(GOLDEN));
                let mask = keep_mask(key, site.p, n);
                let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                Ok((
                    format!("{INPUT_PREFIX}{}", site.module),
                    HostTensor::bool(&dims, mask)?,
                ))
            })
            .collect()
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` keep flags, each false with probability `p` (to 2⁻³² resolution): element `j` uses
/// half of the SplitMix64 output for counter `j / 2` under `key`.
fn keep_mask(key: u64, p: f64, n: usize) -> Vec<bool> {
    let threshold = (p * 4_294_967_296.0).round() as u64;
    let mut out = Vec::with_capacity(n);
    for j in 0..n.div_ceil(2) as u64 {
        let r = mix(key.wrapping_add((j + 1).wrapping_mul(GOLDEN)));
        out.push((r & 0xffff_ffff) >= threshold);
        out.push(r >> 32 >= threshold);
    }
    out.truncate(n);
    out
}

/// The declared mask inputs of a graph, by site.
#[derive(Debug, Clone, Default)]
pub struct Dropout {
    sites: BTreeMap<String, (Tensor, f64)>,
}

impl Dropout {
    /// No dropout anywhere.
    pub fn none() -> Self {
        Dropout::default()
    }

    /// Whether a dropout site lies inside the module at `path` (`transformer.h.3`).
    pub fn any_under(&self, path: &VarPath) -> bool {
        let prefix = format!("{}.", path.as_str());
        self.sites.keys().any(|site| site.starts_with(&prefix))
    }

    /// `x` through the dropout of `module` (`x · mask / (1 − p)`), or `x` itself when that
    /// site has none.
    pub fn apply(&self, g: &mut Graph, module: &str, x: Tensor) -> pipe_onnx::Result<Tensor> {
        let Some(&(mask, scale)) = self.sites.get(module) else {
            return Ok(x);
        };
        // The caller's scope is the module's parent: name the nodes after the last part.
        let leaf = module.rsplit('.').next().unwrap_or(module);
        g.with_scope(leaf, |g| {
            let scale = g.scalar(x.dtype(), scale);
            let scaled = g.mul(x, scale)?;
            let zero = g.scalar(x.dtype(), 0.0);
            g.where_(mask, scaled, zero)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt_neo::GptNeoConfig;

    #[test]
    fn masks_drop_the_asked_share_and_depend_on_seed_step_micro_batch_and_site() {
        let cfg = GptNeoConfig::test(50, 2);
        let rates = DropoutRates {
            embed: 0.1,
            attention: 0.3,
            resid: 0.0,
        };
        let plan = DropoutPlan::new(&cfg, rates);
        // embed + one attention site per layer; resid 0 adds none.
        assert_eq!(plan.sites.len(), 1 + cfg.num_layers);
        let a = plan.masks(7, 3, 0, 4, 16).unwrap();
        assert_eq!(a, plan.masks(7, 3, 0, 4, 16).unwrap());
        assert_ne!(a, plan.masks(7, 4, 0, 4, 16).unwrap());
        assert_ne!(a, plan.masks(8, 3, 0, 4, 16).unwrap());
        assert_ne!(a, plan.masks(7, 3, 1, 4, 16).unwrap());
        assert_ne!(
            plan.masks(7, 3, 1, 4, 16).unwrap(),
            plan.masks(7, 3, 2, 4, 16).unwrap()
        );
        assert_ne!(a[1].1, a[2].1, "two attention sites share a mask");
        // 4·4·16·16 = 4,096 flags per attention site at p = 0.3: the dropped share is within
        // 5 standard deviations (√(0.3·0.7/4096) ≈ 0.0072) of 0.3.
        let flags = a[1].1.as_bool().unwrap();
        let dropped = flags.iter().filter(|k| !**k).count() as f64 / flags.len() as f64;
        assert!((dropped - 0.3).abs() < 5.0 * 0.0072, "dropped {dropped}");
    }
}
