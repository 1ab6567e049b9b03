//! What the training graph optimises besides the model: the loss options (label smoothing,
//! class weights) and the dropout, resolved from the parameters, the labels and the data.
//!
//! The labels are known only from the data, so settings that name them are checked here,
//! when the stage runs; their errors are [`ParamError`]s, which the engine shows at the
//! setting's place in the manifest.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use pipe_engine::ParamError;
use pipe_onnx::{DType, FrozenDType, Kernels};

use super::data::{Labels, TokenTable};
use super::params::{ClassWeightRule, ClassWeights, DropoutParams, Params};
use pipe_models::Architecture;
use pipe_models::classifier::ProblemType;
use pipe_models::dropout::{DropoutPlan, DropoutRates};
use pipe_models::loss::{CrossEntropy, balanced_class_weights};

/// The training-only parts of the step graph.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    /// The single-label loss.
    pub loss: CrossEntropy,
    /// The dropout sites.
    pub dropout: DropoutPlan,
    /// Which operators the backward pass may use: pipe's fused CPU kernels by default;
    /// training picks them by the device the step runs on (standard operators on CUDA).
    pub kernels: Kernels,
    /// The precision of the frozen weights (see [`pipe_onnx::quantize`]).
    pub frozen_dtype: FrozenDType,
    /// The parameters the starting checkpoint stores as 16-bit floats, with that type
    /// ([`super::model_source::StartingModel::half_dtypes`]): frozen ones the graph only
    /// gathers from (embeddings) are read in that type, in place
    /// ([`pipe_onnx::Graph::gather_stored_tables`]).
    pub half_dtypes: BTreeMap<String, DType>,
}

impl StepOptions {
    /// No label smoothing, no class weights, no dropout: the plain graph.
    pub fn plain(config: &dyn Architecture) -> Self {
        StepOptions {
            loss: CrossEntropy::default(),
            dropout: DropoutPlan::new(config, DropoutRates::default()),
            kernels: Kernels::Host,
            frozen_dtype: FrozenDType::F32,
            half_dtypes: BTreeMap::new(),
        }
    }

    /// The options `params` ask for, for `config` trained on `train` with `labels`.
    pub fn resolve(
        params: &Params,
        config: &dyn Architecture,
        labels: &[String],
        train: &TokenTable,
    ) -> Result<Self> {
        let defaults = config.dropout_rates();
        let d = params.dropout;
        let rates = DropoutRates {
            embed: d.embed.unwrap_or(defaults.embed),
            attention: d.attention.unwrap_or(defaults.attention),
            resid: d.resid.unwrap_or(defaults.resid),
        };
        for (key, p) in [
            ("embed", rates.embed),
            ("attention", rates.attention),
            ("resid", rates.resid),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!(
                    "the model config's {key} dropout is {p}, not a probability in [0, 1); \
                     override it with `dropout: {{ {key}: ... }}` in the finetune parameters"
                );
            }
        }
        refuse_missing_sites(config, d)?;
        let loss = CrossEntropy {
            label_smoothing: params.label_smoothing,
            class_weights: class_weights(params.class_weights.as_ref(), labels, train)?,
        };
        if !loss.is_plain() && train.problem() == ProblemType::MultiLabelClassification {
            let key = if params.class_weights.is_some() {
                "class_weights"
            } else {
                "label_smoothing"
            };
            return Err(ParamError::new(
                &[key],
                "`label_smoothing` and `class_weights` shape the single-label cross-entropy, \
                 but this data is multi-label",
            )
            .with_help("remove them")
            .into());
        }
        Ok(StepOptions {
            loss,
            dropout: DropoutPlan::new(config, rates).with_lora(config, params.lora.as_ref()),
            kernels: Kernels::Host,
            frozen_dtype: params.frozen_dtype.graph_dtype(),
            half_dtypes: BTreeMap::new(),
        })
    }
}

/// Refuses a nonzero `dropout` rate the manifest sets for a kind of site the family does not
/// have (the Llama family drops only attention probabilities), which would do nothing.
fn refuse_missing_sites(config: &dyn Architecture, set: DropoutParams) -> Result<(), ParamError> {
    let has = |rates: DropoutRates| config.dropout_sites(rates).iter().any(|s| s.p > 0.0);
    let present: Vec<&str> = [
        (
            "embed",
            DropoutRates {
                embed: 0.5,
                ..Default::default()
            },
        ),
        (
            "attention",
            DropoutRates {
                attention: 0.5,
                ..Default::default()
            },
        ),
        (
            "resid",
            DropoutRates {
                resid: 0.5,
                ..Default::default()
            },
        ),
    ]
    .into_iter()
    .filter(|(_, rates)| has(*rates))
    .map(|(key, _)| key)
    .collect();
    for (key, p) in [
        ("embed", set.embed),
        ("attention", set.attention),
        ("resid", set.resid),
    ] {
        if p.is_some_and(|p| p > 0.0) && !present.contains(&key) {
            return Err(ParamError::new(
                &["dropout", key],
                format!(
                    "a {} model has no {key} dropout, so `{key}` would change nothing",
                    config.model_type()
                ),
            )
            .with_help(if present.is_empty() {
                "this family drops nothing: remove `dropout`".to_string()
            } else {
                format!("it drops at: {}", present.join(", "))
            }));
        }
    }
    Ok(())
}

impl StepOptions {
    /// What the training loss of `rows` of `train` is a mean over: the sum of their target
    /// class weights with `class_weights` (with or without label smoothing, see
    /// [`CrossEntropy`]), else their number (a multi-label row has as many targets as any
    /// other). A micro-batch's share of an accumulated step is its denominator over the
    /// step's.
    pub fn loss_denominator(&self, train: &TokenTable, rows: &[usize]) -> f64 {
        match (&self.loss.class_weights, train.labels()) {
            (Some(w), Labels::Single(ids)) => {
                rows.iter().map(|&r| f64::from(w[ids[r] as usize])).sum()
            }
            _ => rows.len() as f64,
        }
    }
}

/// The weight of each label, in class-index order.
fn class_weights(
    rule: Option<&ClassWeights>,
    labels: &[String],
    train: &TokenTable,
) -> Result<Option<Vec<f32>>> {
    Ok(match rule {
        None => None,
        Some(ClassWeights::Rule(ClassWeightRule::Balanced)) => {
            let Labels::Single(ids) = train.labels() else {
                return Ok(None); // refused above for multi-label data
            };
            match balanced_class_weights(ids, labels.len()) {
                Ok(w) => Some(w),
                Err(empty) => {
                    return Err(ParamError::new(
                        &["class_weights"],
                        format!(
                            "`class_weights: balanced` needs every label in the train split, \
                             but `{}` has no row there",
                            labels[empty]
                        ),
                    )
                    .with_help("give weights by label instead")
                    .into());
                }
            }
        }
        Some(ClassWeights::ByLabel(map)) => {
            if let Some(unknown) = map.keys().find(|k| !labels.contains(k)) {
                return Err(ParamError::new(
                    &["class_weights", unknown],
                    format!(
                        "`class_weights` names the label `{unknown}`, which the data does not \
                         have (its labels: {})",
                        labels.join(", ")
                    ),
                )
                .with_help("name labels of the data, or remove this one")
                .into());
            }
            Some(
                labels
                    .iter()
                    .map(|l| map.get(l).copied().unwrap_or(1.0) as f32)
                    .collect(),
            )
        }
    })
}
