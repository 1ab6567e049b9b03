//! Running a gradient step graph ([`crate::build_gradient_step`]) with the training state in
//! flat host buffers, updated in place by [`AdamW::update_flat`].
//!
//! Each step binds every parameter input to a view of the flat parameter buffer and every
//! gradient output to a view of the flat gradient buffer, so ONNX Runtime reads the weights
//! and writes the gradients where they live: parameters, gradients and both moments exist
//! once. Frozen inputs (weights that take no gradient) are bound the same way from buffers
//! filled once. A step may add up the gradients of several micro-batches before its one
//! update ([`FlatTrainer::accumulate`], [`FlatTrainer::apply`]). Inputs are bound through the C API ([`bind_borrowed`]): `ort`'s safe binding
//! copies borrowed tensors.

use std::collections::BTreeMap;
use std::ffi::CString;

use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::{TensorRef, TensorRefMut, Value, ValueTypeMarker};

use super::binding::run_bound;
use super::{HostTensor, Session, StepResult, status_message};
use crate::error::OrtContext;
use crate::flat::{self, FlatEntry, FlatState, GradSignature};
use crate::optim::StateKind;
use crate::{AdamW, DType, Error, Result};

/// Trains with a gradient step graph and a host-side fused AdamW; see the module docs.
pub struct FlatTrainer {
    session: Session,
    sig: GradSignature,
    adamw: AdamW,
    state: FlatState,
    frozen: Vec<(String, HostTensor)>,
    steps_done: u64,
    /// Micro-batches accumulated into `state.grads` since the last optimizer step.
    micro_batches: usize,
    /// Where micro-batches after a step's first write their gradients (empty until needed).
    micro_grads: Vec<f32>,
    other_outputs: Vec<String>,
    output_memory: MemoryInfo<'static>,
}

impl std::fmt::Debug for FlatTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatTrainer")
            .field("params", &self.sig.layout.entries.len())
            .field("elements", &self.sig.layout.len)
            .field("steps_done", &self.steps_done)
            .finish_non_exhaustive()
    }
}

impl FlatTrainer {
    /// Moves the trainable parameters from `params` (by input name; a missing one is an
    /// error) into the flat buffer, one tensor at a time, with zero moments; `frozen` holds the
    /// graph inputs that stay fixed. The step count starts at 0.
    pub fn new(
        session: Session,
        sig: GradSignature,
        adamw: AdamW,
        mut params: BTreeMap<String, HostTensor>,
        frozen: BTreeMap<String, HostTensor>,
    ) -> Result<Self> {
        check_session(&session, &sig, frozen.keys())?;
        let mut state = FlatState::zeros(&sig.layout);
        for e in &sig.layout.entries {
            let p = params.remove(&e.name).ok_or_else(|| {
                Error::Data(format!("no initial value for parameter `{}`", e.name))
            })?;
            write(&mut state.params, e, &p, &e.name)?;
        }
        let other_outputs = other_outputs(&session, &sig);
        let output_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .ort_context(|| "failed to describe CPU memory".into())?;
        Ok(FlatTrainer {
            session,
            sig,
            adamw,
            state,
            frozen: frozen.into_iter().collect(),
            steps_done: 0,
            micro_batches: 0,
            micro_grads: Vec::new(),
            other_outputs,
            output_memory,
        })
    }

    /// Runs one optimizer step on `batch` (graph inputs by name) with learning rate `lr`:
    /// [`Self::accumulate`] with share 1, then [`Self::apply`].
    pub fn step(&mut self, batch: &[(&str, &HostTensor)], lr: f32) -> Result<StepResult> {
        let mut result = self.accumulate(batch, 1.0)?;
        result.grad_norm = self.apply(lr)?;
        Ok(result)
    }

    /// Runs the gradient graph on one micro-batch and adds its gradients, times `share`, to
    /// those of the optimizer step under way (the first micro-batch of a step starts them
    /// afresh). When the loss is a mean over rows, the step's loss is
    /// `Σ_k share_k · loss_k` with `share_k` the micro-batch's part of the step's
    /// denominator (its rows, or its total weight, over the step's), and so is its gradient.
    ///
    /// The first micro-batch's gradients are written straight into the flat gradient buffer
    /// (scaled in place unless `share` is 1); later ones go to a second buffer of the same
    /// layout, allocated on first use, and are added from there: ONNX Runtime overwrites an
    /// output, it cannot add to one.
    pub fn accumulate(&mut self, batch: &[(&str, &HostTensor)], share: f32) -> Result<StepResult> {
        let step = self.steps_done + 1;
        let first = self.micro_batches == 0;
        if !first && self.micro_grads.is_empty() {
            self.micro_grads = vec![0.0; self.sig.layout.len];
        }
        let bind = |e| Error::Ort {
            context: "failed to bind step inputs and outputs".into(),
            source: e,
        };
        let view = |e| Error::Ort {
            context: "failed to view the training state".into(),
            source: e,
        };
        let mut binding = self
            .session
            .inner
            .create_binding()
            .ort_context(|| "failed to create an IoBinding".into())?;
        for (name, t) in batch {
            binding.bind_input(*name, &t.to_value()?).map_err(bind)?;
        }
        for (name, t) in &self.frozen {
            bind_frozen(&mut binding, name, t)?;
        }
        let FlatState { params, grads, .. } = &mut self.state;
        let target = if first {
            &mut grads[..]
        } else {
            &mut self.micro_grads[..]
        };
        let mut grads_left = target;
        let mut at = 0;
        for e in &self.sig.layout.entries {
            let p =
                TensorRef::from_array_view((e.shape.clone(), &params[e.range()])).map_err(view)?;
            bind_borrowed(&mut binding, &e.name, &p)?;
            let (_, rest) = std::mem::take(&mut grads_left).split_at_mut(e.offset - at);
            let (g, rest) = rest.split_at_mut(e.len);
            grads_left = rest;
            at = e.offset + e.len;
            let g = TensorRefMut::from_array_view_mut((e.shape.clone(), g)).map_err(view)?;
            binding.bind_output(e.grad.as_str(), g).map_err(bind)?;
        }
        let result = run_bound(
            &mut self.session,
            &mut binding,
            &self.other_outputs,
            &self.output_memory,
            (&self.sig.loss, None),
            step,
        )?;
        drop(binding);
        match (first, share == 1.0) {
            (true, true) => {}
            (true, false) => flat::scale(&mut self.state.grads, share),
            (false, _) => flat::add_scaled(&mut self.state.grads, &self.micro_grads, share),
        }
        self.micro_batches += 1;
        Ok(result)
    }

    /// One optimizer step with the gradients accumulated since the last one: global-norm
    /// clipping and AdamW at learning rate `lr` ([`AdamW::update_flat`]). Returns the
    /// gradient norm before clipping when clipping is on. An error when no micro-batch was
    /// accumulated.
    pub fn apply(&mut self, lr: f32) -> Result<Option<f32>> {
        if self.micro_batches == 0 {
            return Err(Error::Data(
                "an optimizer step needs at least one accumulated micro-batch".into(),
            ));
        }
        let step = self.steps_done + 1;
        let norm = self
            .adamw
            .update_flat(&self.sig.layout, &mut self.state, lr, step);
        self.steps_done = step;
        self.micro_batches = 0;
        Ok((self.adamw.max_grad_norm > 0.0).then_some(norm))
    }

    /// Steps completed (the next step uses `step = steps_done + 1` for bias correction).
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// Sets the step count, when resuming from a checkpoint.
    pub fn set_steps_done(&mut self, n: u64) {
        self.steps_done = n;
    }

    /// The gradient graph's interface.
    pub fn signature(&self) -> &GradSignature {
        &self.sig
    }

    /// The flat buffers.
    pub fn flat_state(&self) -> &FlatState {
        &self.state
    }

    fn buffer(&self, kind: StateKind) -> &[f32] {
        match kind {
            StateKind::Param => &self.state.params,
            StateKind::ExpAvg => &self.state.exp_avg,
            StateKind::ExpAvgSq => &self.state.exp_avg_sq,
        }
    }

    /// Copies one state tensor (a parameter, or `<param>.exp_avg` / `.exp_avg_sq`) to the host.
    pub fn state(&self, name: &str) -> Result<HostTensor> {
        let (e, kind) = self.sig.layout.locate(name)?;
        HostTensor::f32(&e.shape, self.buffer(kind)[e.range()].to_vec())
    }

    /// A view of one state tensor's values, without copying.
    pub fn state_view(&self, name: &str) -> Result<(&[i64], &[f32])> {
        let (e, kind) = self.sig.layout.locate(name)?;
        Ok((&e.shape, &self.buffer(kind)[e.range()]))
    }

    /// A parameter's current values.
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        match self.sig.layout.locate(name)? {
            (e, StateKind::Param) => Ok(self.state.params[e.range()].to_vec()),
            _ => Err(Error::Data(format!(
                "`{name}` is optimizer state, not a parameter"
            ))),
        }
    }

    /// The frozen inputs, by name.
    pub fn frozen(&self) -> &[(String, HostTensor)] {
        &self.frozen
    }

    /// Hands the frozen inputs over, leaving none (no step can run after).
    pub fn take_frozen(&mut self) -> Vec<(String, HostTensor)> {
        std::mem::take(&mut self.frozen)
    }

    /// Overwrites one state tensor (a parameter or a moment).
    pub fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        let (e, kind) = self.sig.layout.locate(name)?;
        let e = e.clone();
        let buf = match kind {
            StateKind::Param => &mut self.state.params,
            StateKind::ExpAvg => &mut self.state.exp_avg,
            StateKind::ExpAvgSq => &mut self.state.exp_avg_sq,
        };
        write(buf, &e, value, name)
    }

    /// The session, e.g. to run its other outputs.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The session, to read its device and memory statistics.
    pub fn session_ref(&self) -> &Session {
        &self.session
    }
}

/// Checks that `session` runs the gradient graph of `sig`, with inputs for `frozen` too.
pub(super) fn check_session<'a>(
    session: &Session,
    sig: &'a GradSignature,
    frozen: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let (inputs, outputs) = (session.input_names(), session.output_names());
    let missing: Vec<&str> = sig
        .layout
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .chain(frozen.map(String::as_str))
        .filter(|n| !inputs.iter().any(|i| i == n))
        .chain(
            sig.layout
                .entries
                .iter()
                .map(|e| e.grad.as_str())
                .chain([sig.loss.as_str()])
                .filter(|n| !outputs.iter().any(|o| o == n)),
        )
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Data(format!(
            "the session is not this gradient graph: it lacks {}",
            missing.join(", ")
        )))
    }
}

/// The outputs of the gradient graph in `session` that are not gradients (the loss…), read
/// on the host every step.
pub(super) fn other_outputs(session: &Session, sig: &GradSignature) -> Vec<String> {
    let grads: Vec<&str> = sig.layout.entries.iter().map(|e| e.grad.as_str()).collect();
    session
        .output_names()
        .into_iter()
        .filter(|n| !grads.contains(&n.as_str()))
        .collect()
}

/// Binds `value` as input `name` without a copy. `IoBinding::bind_input` copies every tensor
/// over borrowed memory (it cannot know that the memory outlives the run); here the buffers
/// are the trainer's own and stay untouched until the run returns, and ONNX Runtime's copy of
/// the `OrtValue` keeps the tensor description alive after `value` is dropped.
/// Binds the frozen input `t` (f32 weights, quantized ones, tables in their stored 16-bit
/// type) without a copy.
fn bind_frozen(binding: &mut IoBinding, name: &str, t: &HostTensor) -> Result<()> {
    let value = t.value_ref()?;
    bind_borrowed(binding, name, &*value)
}

pub(super) fn bind_borrowed<T: ValueTypeMarker + ?Sized>(
    binding: &mut IoBinding,
    name: &str,
    value: &Value<T>,
) -> Result<()> {
    let fail = |m: String| Error::Data(format!("failed to bind `{name}`: {m}"));
    let cname = CString::new(name).map_err(|e| fail(e.to_string()))?;
    let api = ort::api();
    // SAFETY: both pointers come from live safe wrappers; `BindInput` copies the `OrtValue`
    // (a shared reference to the tensor, whose data is the trainer's buffer, valid and unchanged
    // until the run that uses this binding has returned). A non-null status is an error that is
    // read and released.
    unsafe {
        let status = (api.BindInput)(binding.ptr_mut(), cname.as_ptr(), value.ptr());
        if let Some(msg) = status_message(status) {
            return Err(fail(msg));
        }
    }
    Ok(())
}

/// Copies `value` into `e`'s range of `buf`, checking its shape and type.
fn write(buf: &mut [f32], e: &FlatEntry, value: &HostTensor, name: &str) -> Result<()> {
    buf[e.range()].copy_from_slice(entry_values(e, value, name)?);
    Ok(())
}

/// The values of `value`, checked to be `f32` of `e`'s shape (state `name`).
pub(super) fn entry_values<'v>(
    e: &FlatEntry,
    value: &'v HostTensor,
    name: &str,
) -> Result<&'v [f32]> {
    match value.as_f32() {
        Some(v) if value.shape() == e.shape.as_slice() => Ok(v),
        _ => Err(Error::Data(format!(
            "`{name}`: expected {} {:?}, got {} {:?}",
            DType::F32,
            e.shape,
            value.dtype(),
            value.shape()
        ))),
    }
}
