//! The graphs of an export: the inference graph that goes into the bundle, and the training
//! forward it is checked against.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use pipe_onnx::{DType, Dim, Graph, HostTensor, Model, TensorData};

use pipe_models::ParamSpec;
use pipe_models::bundle::{INPUTS, OUTPUTS};
use pipe_models::gpt_neo::{GptNeoConfig, GptNeoForSequenceClassification, ProblemType};

/// The parameters of `cfg`'s classifier, in declaration order.
pub(crate) fn param_specs(cfg: &GptNeoConfig) -> Result<Vec<ParamSpec>> {
    let mut scratch = Graph::new("specs");
    Ok(GptNeoForSequenceClassification::new(cfg, &mut scratch)?
        .params()
        .to_vec())
}

/// The bundle's model: `input_ids` and `attention_mask` (int64 `[batch, seq]`) → `logits` and
/// `probabilities` (`[batch, num_labels]`), with `weights` frozen into initializers and
/// opset `opset` declared.
///
/// Each row's length is the sum of its `attention_mask`, which is right only for right
/// padding (what [`pipe_models::bundle::Bundle`] feeds and what the bundle documents).
pub(crate) fn inference_model(
    cfg: &GptNeoConfig,
    problem: ProblemType,
    weights: &BTreeMap<String, HostTensor>,
    opset: i64,
) -> Result<Model> {
    let mut g = Graph::new("gpt_neo_sequence_classification");
    let model = GptNeoForSequenceClassification::new(cfg, &mut g)?;
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input(INPUTS[0], DType::I64, &dims)?;
    let mask = g.input(INPUTS[1], DType::I64, &dims)?;
    let lengths = g.with_scope("lengths", |g| g.reduce_sum(mask, &[1], false))?; // [batch]
    let logits = model.forward(&mut g, ids, lengths)?;
    let probabilities = g.with_scope("probabilities", |g| match problem {
        ProblemType::SingleLabelClassification => g.softmax(logits, -1),
        ProblemType::MultiLabelClassification => g.sigmoid(logits),
    })?;
    g.output(logits, OUTPUTS[0])?;
    g.output(probabilities, OUTPUTS[1])?;
    for (spec, &tensor) in model.params().iter().zip(model.param_tensors()) {
        let values = weights
            .get(&spec.name)
            .and_then(HostTensor::as_f32)
            .with_context(|| format!("no float32 value for parameter {}", spec.name))?;
        g.freeze_input(tensor, TensorData::f32(&spec.shape, values)?)?;
    }
    Ok(g.build()?.with_opset(opset)?)
}

/// The training forward: parameters as inputs under their Hugging Face names, `input_ids`
/// and `lengths` → `logits`.
pub(crate) fn reference_model(cfg: &GptNeoConfig) -> Result<Model> {
    let mut g = Graph::new("gpt_neo_reference");
    let model = GptNeoForSequenceClassification::new(cfg, &mut g)?;
    let (ids, lengths) = GptNeoForSequenceClassification::declare_inputs(&mut g)?;
    let logits = model.forward(&mut g, ids, lengths)?;
    g.output(logits, OUTPUTS[0])?;
    Ok(g.build()?)
}
