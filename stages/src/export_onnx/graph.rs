//! The graphs of an export: the inference graph that goes into the bundle, and the training
//! forward it is checked against.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use pipe_onnx::{DType, Dim, Graph, HostTensor, Model, TensorData};

use pipe_models::bundle::{INPUTS, OUTPUTS, TOKEN_TYPE_IDS};
use pipe_models::classifier::{ClassifierInput, ProblemType};
use pipe_models::layers::Tokens;
use pipe_models::{Architecture, ParamSpec};

/// The parameters of `cfg`'s classifier, in declaration order.
pub(crate) fn param_specs(cfg: &dyn Architecture) -> Result<Vec<ParamSpec>> {
    let mut scratch = Graph::new("specs");
    Ok(cfg.classifier(&mut scratch, None)?.specs().to_vec())
}

/// The bundle's model: `input_ids` and `attention_mask` (int64 `[batch, seq]`; and
/// `token_type_ids` when the family takes them) → `logits` and `probabilities`
/// (`[batch, num_labels]`), with `weights` frozen into initializers and opset `opset` declared.
/// Each weight is dropped as soon as it is frozen, so the weights are not held twice.
///
/// Each row's length is the sum of its `attention_mask`, which is right only for right
/// padding (what [`pipe_models::bundle::Bundle`] feeds and what the bundle documents).
pub(crate) fn inference_model(
    cfg: &dyn Architecture,
    problem: ProblemType,
    mut weights: BTreeMap<String, HostTensor>,
    opset: i64,
) -> Result<Model> {
    let mut g = Graph::new(&format!("{}_sequence_classification", cfg.model_type()));
    let model = cfg.classifier(&mut g, None)?;
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input(INPUTS[0], DType::I64, &dims)?;
    let mask = g.input(INPUTS[1], DType::I64, &dims)?;
    let token_type_ids = match cfg.takes_token_types() {
        true => Some(g.input(TOKEN_TYPE_IDS, DType::I64, &dims)?),
        false => None,
    };
    let lengths = g.with_scope("lengths", |g| g.reduce_sum(mask, &[1], false))?; // [batch]
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids,
    };
    let logits = model.logits(&mut g, &input)?;
    let probabilities = g.with_scope("probabilities", |g| match problem {
        ProblemType::SingleLabelClassification => g.softmax(logits, -1),
        ProblemType::MultiLabelClassification => g.sigmoid(logits),
    })?;
    g.output(logits, OUTPUTS[0])?;
    g.output(probabilities, OUTPUTS[1])?;
    for (spec, &tensor) in model.specs().iter().zip(model.vars().tensors()) {
        let value = weights
            .remove(&spec.name)
            .with_context(|| format!("no value for parameter {}", spec.name))?;
        let values = value
            .as_f32()
            .with_context(|| format!("no float32 value for parameter {}", spec.name))?;
        g.freeze_input(tensor, TensorData::f32(&spec.shape, values)?)?;
    }
    Ok(g.build()?.with_opset(opset)?)
}

/// The training forward: parameters as inputs under their Hugging Face names, `input_ids`
/// and `lengths` → `logits`.
pub(crate) fn reference_model(cfg: &dyn Architecture) -> Result<Model> {
    let mut g = Graph::new(&format!("{}_reference", cfg.model_type()));
    let model = cfg.classifier(&mut g, None)?;
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims)?;
    let lengths = g.input("lengths", DType::I64, &[Dim::from("batch")])?;
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    };
    let logits = model.logits(&mut g, &input)?;
    g.output(logits, OUTPUTS[0])?;
    Ok(g.build()?)
}
