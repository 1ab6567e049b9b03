//! The graphs of an export: the inference graph that goes into the bundle, and the training
//! forward it is checked against.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use pipe_onnx::{DType, Dim, ExternalDataWriter, Graph, Model, Tensor, TensorData};

use pipe_models::bundle::{DATA_FILE, INPUTS, OUTPUTS, TOKEN_TYPE_IDS};
use pipe_models::checkpoint::Checkpoint;
use pipe_models::classifier::{ClassifierInput, ProblemType};
use pipe_models::layers::Tokens;
use pipe_models::{Architecture, weights};

/// Under external data, tensors up to this size stay inside `model.onnx`.
const INLINE_TENSOR_BYTES: usize = 1024;

/// Writes the bundle's model to `path`: `input_ids` and `attention_mask` (int64
/// `[batch, seq]`; and `token_type_ids` when the family takes them) → `logits` and
/// `probabilities` (`[batch, num_labels]`), with the weights of the checkpoint `weights`
/// frozen into initializers and opset `opset` declared.
///
/// The weights are read one tensor at a time. With `external`, each tensor over
/// [`INLINE_TENSOR_BYTES`] is appended to [`DATA_FILE`] beside `path` as soon as it is read
/// and dropped, so the graph holds no weights and writing holds one tensor; without, the
/// weights are inline in `path` (small models).
///
/// Each row's length is the sum of its `attention_mask`, which is right only for right
/// padding (what [`pipe_models::bundle::Bundle`] feeds and what the bundle documents).
pub(crate) fn write_model(
    cfg: &dyn Architecture,
    problem: ProblemType,
    weights: &Path,
    path: &Path,
    opset: i64,
    external: bool,
) -> Result<()> {
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

    let inputs: BTreeMap<&str, Tensor> = model
        .specs()
        .iter()
        .map(|s| s.name.as_str())
        .zip(model.vars().tensors().iter().copied())
        .collect();
    let checkpoint = Checkpoint::open(weights)?;
    let mut data = match external {
        true => Some(ExternalDataWriter::create(path, DATA_FILE)?),
        false => None,
    };
    weights::for_each(&checkpoint, model.specs(), &[], 0, |spec, value| {
        let values = value
            .as_f32()
            .with_context(|| format!("no float32 value for parameter {}", spec.name))?;
        let tensor = *inputs
            .get(spec.name.as_str())
            .with_context(|| format!("no graph input for parameter {}", spec.name))?;
        match &mut data {
            Some(data) if size_of_val(values) > INLINE_TENSOR_BYTES => {
                g.freeze_input_external(tensor, data.append_f32(&spec.shape, values)?)?
            }
            _ => g.freeze_input(tensor, TensorData::f32(&spec.shape, values)?)?,
        }
        Ok(())
    })
    .with_context(|| format!("loading {}", weights.display()))?;
    if let Some(data) = data {
        data.finish()?;
    }
    g.build()?.with_opset(opset)?.write(path, DATA_FILE, None)?;
    Ok(())
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
