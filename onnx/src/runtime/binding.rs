//! What the trainers share: the result of a step ([`StepResult`]), running a bound step graph
//! and reading its host outputs back ([`run_bound`]), and ONNX Runtime's element types.

use std::collections::BTreeMap;

use ort::memory::MemoryInfo;
use ort::value::TensorElementType;

use super::{HostTensor, Session};
use crate::error::OrtContext;
use crate::{DType, Error, Result};

/// ONNX Runtime's element type of `d`.
#[cfg_attr(not(feature = "oracle"), allow(dead_code))] // only the oracle `Trainer` uses it
pub(super) fn element_type(d: DType) -> TensorElementType {
    match d {
        DType::F32 => TensorElementType::Float32,
        DType::F64 => TensorElementType::Float64,
        DType::I64 => TensorElementType::Int64,
        DType::I32 => TensorElementType::Int32,
        DType::Bool => TensorElementType::Bool,
        DType::I8 => TensorElementType::Int8,
        DType::U8 => TensorElementType::Uint8,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::F16 => TensorElementType::Float16,
    }
}

/// What one training step returns.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The loss before the update.
    pub loss: f32,
    /// The global gradient norm before clipping, when the graph clips.
    pub grad_norm: Option<f32>,
    /// Every other non-state output (logits…), by name.
    pub outputs: BTreeMap<String, HostTensor>,
}

/// Binds a step graph's host outputs (`outputs`, into `memory`) to `binding`, runs it, and
/// reads them back: `names.0` is the loss, `names.1` the clipping norm when the graph has one,
/// the rest go to [`StepResult::outputs`]. Both trainers end their step with it.
pub(super) fn run_bound(
    session: &mut Session,
    binding: &mut ort::session::IoBinding,
    outputs: &[String],
    memory: &MemoryInfo<'static>,
    names: (&str, Option<&str>),
    step: impl std::fmt::Display,
) -> Result<StepResult> {
    for name in outputs {
        binding
            .bind_output_to_device(name.as_str(), memory)
            .map_err(|e| Error::Ort {
                context: "failed to bind step inputs and outputs".into(),
                source: e,
            })?;
    }
    let values = session
        .inner
        .run_binding(binding)
        .ort_context(|| format!("training step {step} failed"))?;
    let mut result = StepResult {
        loss: f32::NAN,
        grad_norm: None,
        outputs: BTreeMap::new(),
    };
    for name in outputs {
        let v = values
            .get(name.as_str())
            .ok_or_else(|| Error::Data(format!("step graph did not return `{name}`")))?;
        let h = HostTensor::from_value(v)?;
        let first = h.to_f64_vec().first().copied().map(|x| x as f32);
        if name == names.0 {
            result.loss = first.unwrap_or(f32::NAN);
        } else if Some(name.as_str()) == names.1 {
            result.grad_norm = first;
        } else {
            result.outputs.insert(name.clone(), h);
        }
    }
    Ok(result)
}
