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
use std::ffi::{CStr, CString};

use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::{TensorRef, TensorRefMut, Value, ValueTypeMarker};

use super::trainer::run_bound;
use super::{HostData, HostTensor, Session, StepResult};
use crate::error::OrtContext;
use crate::flat::{self, FlatEntry, FlatState, GradSignature};
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

/// The moment suffixes of the state names (`<param>.exp_avg`, `<param>.exp_avg_sq`).
const EXP_AVG: &str = ".exp_avg";
const EXP_AVG_SQ: &str = ".exp_avg_sq";

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
        let (inputs, outputs) = (session.input_names(), session.output_names());
        let missing: Vec<&str> = sig
            .layout
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .chain(frozen.keys().map(String::as_str))
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
        if !missing.is_empty() {
            return Err(Error::Data(format!(
                "the session is not this gradient graph: it lacks {}",
                missing.join(", ")
            )));
        }
        let mut state = FlatState::zeros(&sig.layout);
        for e in &sig.layout.entries {
            let p = params.remove(&e.name).ok_or_else(|| {
                Error::Data(format!("no initial value for parameter `{}`", e.name))
            })?;
            write(&mut state.params, e, &p, &e.name)?;
        }
        let grads: Vec<&str> = sig.layout.entries.iter().map(|e| e.grad.as_str()).collect();
        let other_outputs = outputs
            .into_iter()
            .filter(|n| !grads.contains(&n.as_str()))
            .collect();
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
            let v = t.as_f32().ok_or_else(|| {
                Error::Data(format!(
                    "frozen input `{name}` must be f32, not {}",
                    t.dtype()
                ))
            })?;
            let r = TensorRef::from_array_view((t.shape().to_vec(), v)).map_err(view)?;
            bind_borrowed(&mut binding, name, &r)?;
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

    /// The entry and flat buffer of state `name`: a parameter, `<param>.exp_avg` or
    /// `<param>.exp_avg_sq`.
    fn locate(&self, name: &str) -> Result<(&FlatEntry, Kind)> {
        let found = |n: &str| self.sig.layout.entry(n);
        let hit = if let Some(e) = found(name) {
            Some((e, Kind::Param))
        } else if let Some(e) = name.strip_suffix(EXP_AVG_SQ).and_then(found) {
            Some((e, Kind::ExpAvgSq))
        } else {
            name.strip_suffix(EXP_AVG)
                .and_then(found)
                .map(|e| (e, Kind::ExpAvg))
        };
        hit.ok_or_else(|| Error::Data(format!("no training state named `{name}`")))
    }

    fn buffer(&self, kind: Kind) -> &[f32] {
        match kind {
            Kind::Param => &self.state.params,
            Kind::ExpAvg => &self.state.exp_avg,
            Kind::ExpAvgSq => &self.state.exp_avg_sq,
        }
    }

    /// Copies one state tensor (a parameter, or `<param>.exp_avg` / `.exp_avg_sq`) to the host.
    pub fn state(&self, name: &str) -> Result<HostTensor> {
        let (e, kind) = self.locate(name)?;
        HostTensor::f32(&e.shape, self.buffer(kind)[e.range()].to_vec())
    }

    /// A view of one state tensor's values, without copying.
    pub fn state_view(&self, name: &str) -> Result<(&[i64], &[f32])> {
        let (e, kind) = self.locate(name)?;
        Ok((&e.shape, &self.buffer(kind)[e.range()]))
    }

    /// Names of every state tensor: each parameter, then its two moments.
    pub fn state_names(&self) -> Vec<String> {
        self.sig
            .layout
            .entries
            .iter()
            .flat_map(|e| {
                [
                    e.name.clone(),
                    format!("{}{EXP_AVG}", e.name),
                    format!("{}{EXP_AVG_SQ}", e.name),
                ]
            })
            .collect()
    }

    /// A parameter's current values.
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        match self.locate(name)? {
            (e, Kind::Param) => Ok(self.state.params[e.range()].to_vec()),
            _ => Err(Error::Data(format!(
                "`{name}` is optimizer state, not a parameter"
            ))),
        }
    }

    /// Every trainable parameter, by name.
    pub fn params(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.sig
            .layout
            .entries
            .iter()
            .map(|e| Ok((e.name.clone(), self.state(&e.name)?)))
            .collect()
    }

    /// The frozen inputs, by name.
    pub fn frozen(&self) -> &[(String, HostTensor)] {
        &self.frozen
    }

    /// Overwrites one state tensor (a parameter or a moment).
    pub fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        let (e, kind) = self.locate(name)?;
        let e = e.clone();
        let buf = match kind {
            Kind::Param => &mut self.state.params,
            Kind::ExpAvg => &mut self.state.exp_avg,
            Kind::ExpAvgSq => &mut self.state.exp_avg_sq,
        };
        write(buf, &e, value, name)
    }

    /// The session, e.g. to run its other outputs.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// Binds `value` as input `name` without a copy. `IoBinding::bind_input` copies every tensor
/// over borrowed memory (it cannot know that the memory outlives the run); here the buffers
/// are the trainer's own and stay untouched until the run returns, and ONNX Runtime's copy of
/// the `OrtValue` keeps the tensor description alive after `value` is dropped.
fn bind_borrowed<T: ValueTypeMarker + ?Sized>(
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
        if !status.0.is_null() {
            let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            return Err(fail(msg));
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Param,
    ExpAvg,
    ExpAvgSq,
}

/// Copies `value` into `e`'s range of `buf`, checking its shape and type.
fn write(buf: &mut [f32], e: &FlatEntry, value: &HostTensor, name: &str) -> Result<()> {
    match value.data() {
        HostData::F32(v) if value.shape() == e.shape.as_slice() => {
            buf[e.range()].copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::Data(format!(
            "`{name}`: expected {} {:?}, got {} {:?}",
            DType::F32,
            e.shape,
            value.dtype(),
            value.shape()
        ))),
    }
}
