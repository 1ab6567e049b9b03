//! The test oracle's runtime: the AdamW step graph ([`AdamW::build_step`](crate::AdamW::build_step))
//! run with its state kept inside ONNX Runtime. Production trains with the flat trainers
//! ([`crate::step_trainer`]); this one checks them.
//!
//! Every state tensor (parameter, `exp_avg`, `exp_avg_sq`) has two buffers allocated by ONNX
//! Runtime. Each step binds the inputs to one buffer and the outputs to the other, runs, and
//! swaps, so no state is copied between steps and, on CUDA, none would leave the device.
//!
//! Why two buffers and a fresh binding every step: binding an output that ORT
//! allocated and feeding the same value back as the next input makes ORT write into its own
//! input on the next run and silently compute wrong results. `bind_output` also refuses tensors
//! made from host arrays, so the buffers are made with `Tensor::new(&allocator, shape)`.

use std::collections::BTreeMap;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::value::DynTensor;

use super::binding::{element_type, run_bound};
use super::{HostData, HostTensor, Session, StepResult};
use crate::error::OrtContext;
use crate::optim::StateKind;
use crate::oracle::StepSignature;
use crate::{DType, Error, Result};

struct Slot {
    input: String,
    output: String,
    kind: StateKind,
    dtype: DType,
    bufs: [DynTensor; 2],
}

/// Runs an AdamW step graph ([`crate::optim::AdamW::build_step`]) step after step, keeping
/// parameters and moments in ONNX Runtime tensors (two per state, swapped every step).
pub struct Trainer {
    session: Session,
    sig: StepSignature,
    slots: Vec<Slot>,
    /// Which of the two buffers holds the current state.
    current: usize,
    steps_done: u64,
    other_outputs: Vec<String>,
    output_memory: MemoryInfo<'static>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("state", &self.slots.len())
            .field("steps_done", &self.steps_done)
            .finish_non_exhaustive()
    }
}

fn write(buf: &mut DynTensor, data: &HostData, name: &str) -> Result<()> {
    let ctx = || format!("failed to write state `{name}`");
    macro_rules! copy {
        ($t:ty, $v:expr) => {{
            let (_, dst) = buf.try_extract_tensor_mut::<$t>().ort_context(ctx)?;
            if dst.len() != $v.len() {
                return Err(Error::Data(format!(
                    "`{name}` has {} elements, {} given",
                    dst.len(),
                    $v.len()
                )));
            }
            dst.copy_from_slice($v);
        }};
    }
    match data {
        HostData::F32(v) => copy!(f32, v),
        HostData::F32Shared(v) => copy!(f32, v.as_slice()),
        HostData::F64(v) => copy!(f64, v),
        HostData::I64(v) => copy!(i64, v),
        HostData::I32(v) => copy!(i32, v),
        HostData::Bool(v) => copy!(bool, v),
        HostData::I8(v) => copy!(i8, v),
        HostData::U8(v) => copy!(u8, v),
        HostData::Bf16(v) => copy!(half::bf16, v.as_slice()),
        HostData::F16(v) => copy!(half::f16, v.as_slice()),
    }
    Ok(())
}

impl Trainer {
    /// Allocates the state for the step graph loaded in `session`, with parameters from `params`
    /// (by input name, any missing one is an error) and zero moments. The step count starts at 0.
    pub fn new(
        session: Session,
        sig: StepSignature,
        params: &BTreeMap<String, HostTensor>,
    ) -> Result<Self> {
        let (inputs, outputs) = (session.input_names(), session.output_names());
        let missing: Vec<&str> = sig
            .state
            .iter()
            .map(|s| s.input.as_str())
            .chain([sig.lr.as_str(), sig.step.as_str()])
            .filter(|n| !inputs.iter().any(|i| i == n))
            .chain(
                sig.state
                    .iter()
                    .map(|s| s.output.as_str())
                    .chain([sig.loss.as_str()])
                    .filter(|n| !outputs.iter().any(|o| o == n)),
            )
            .collect();
        if !missing.is_empty() {
            return Err(Error::Data(format!(
                "the session is not this step graph: it lacks {}",
                missing.join(", ")
            )));
        }
        let allocator = session.inner.allocator();
        let mut slots = Vec::with_capacity(sig.state.len());
        for s in &sig.state {
            let new_buf = || {
                DynTensor::new(allocator, element_type(s.dtype), s.shape.clone())
                    .ort_context(|| format!("failed to allocate state `{}`", s.input))
            };
            let mut bufs = [new_buf()?, new_buf()?];
            let init = match s.kind {
                StateKind::Param => {
                    let p = params.get(&s.input).ok_or_else(|| {
                        Error::Data(format!("no initial value for parameter `{}`", s.input))
                    })?;
                    if p.shape() != s.shape.as_slice() || p.dtype() != s.dtype {
                        return Err(Error::Data(format!(
                            "parameter `{}`: expected {} {:?}, got {} {:?}",
                            s.input,
                            s.dtype,
                            s.shape,
                            p.dtype(),
                            p.shape()
                        )));
                    }
                    p.clone()
                }
                StateKind::ExpAvg | StateKind::ExpAvgSq => HostTensor::zeros(s.dtype, &s.shape)?,
            };
            write(&mut bufs[0], init.data(), &s.input)?;
            slots.push(Slot {
                input: s.input.clone(),
                output: s.output.clone(),
                kind: s.kind,
                dtype: s.dtype,
                bufs,
            });
        }
        let state_outputs: Vec<&str> = slots.iter().map(|s| s.output.as_str()).collect();
        let other_outputs = session
            .output_names()
            .into_iter()
            .filter(|n| !state_outputs.contains(&n.as_str()))
            .collect();
        let output_memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .ort_context(|| "failed to describe CPU memory".into())?;
        Ok(Trainer {
            session,
            sig,
            slots,
            current: 0,
            steps_done: 0,
            other_outputs,
            output_memory,
        })
    }

    /// Runs one optimizer step on `batch` (graph inputs by name) with learning rate `lr`.
    pub fn step(&mut self, batch: &[(&str, &HostTensor)], lr: f32) -> Result<StepResult> {
        let step = (self.steps_done + 1) as f32;
        let mut binding = self
            .session
            .inner
            .create_binding()
            .ort_context(|| "failed to create an IoBinding".into())?;
        let bind = |e| Error::Ort {
            context: "failed to bind step inputs and outputs".into(),
            source: e,
        };
        for (name, t) in batch {
            binding.bind_input(*name, &t.to_value()?).map_err(bind)?;
        }
        binding
            .bind_input(
                self.sig.lr.as_str(),
                &HostTensor::scalar_f32(lr).to_value()?,
            )
            .map_err(bind)?;
        binding
            .bind_input(
                self.sig.step.as_str(),
                &HostTensor::scalar_f32(step).to_value()?,
            )
            .map_err(bind)?;
        let (cur, next) = (self.current, 1 - self.current);
        for s in &mut self.slots {
            let [a, b] = &mut s.bufs;
            let (src, dst) = if cur == 0 { (a, b) } else { (b, a) };
            binding.bind_input(s.input.as_str(), &*src).map_err(bind)?;
            binding.bind_output(s.output.as_str(), dst).map_err(bind)?;
        }
        let result = run_bound(
            &mut self.session,
            &mut binding,
            &self.other_outputs,
            &self.output_memory,
            (&self.sig.loss, self.sig.grad_norm.as_deref()),
            step,
        )?;
        self.current = next;
        self.steps_done += 1;
        Ok(result)
    }

    /// Steps completed (the next step uses `step = steps_done + 1` for bias correction).
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// Sets the step count, when resuming from a checkpoint.
    pub fn set_steps_done(&mut self, n: u64) {
        self.steps_done = n;
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.slots
            .iter()
            .find(|s| s.input == name)
            .ok_or_else(|| Error::Data(format!("no training state named `{name}`")))
    }

    /// Copies one state tensor (a parameter, or `<param>.exp_avg` / `.exp_avg_sq`) to the host.
    pub fn state(&self, name: &str) -> Result<HostTensor> {
        let s = self.slot(name)?;
        HostTensor::from_value(&s.bufs[self.current])
    }

    /// A parameter's current values as `f32` (parameters of type f64 are converted).
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        let s = self.slot(name)?;
        if s.kind != StateKind::Param {
            return Err(Error::Data(format!(
                "`{name}` is optimizer state, not a parameter"
            )));
        }
        let h = self.state(name)?;
        Ok(match h.as_f32() {
            Some(v) => v.to_vec(),
            None => h.to_f64_vec().into_iter().map(|x| x as f32).collect(),
        })
    }

    /// Every parameter, by name (for saving the model).
    pub fn params(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.slots
            .iter()
            .filter(|s| s.kind == StateKind::Param)
            .map(|s| Ok((s.input.clone(), self.state(&s.input)?)))
            .collect()
    }

    /// Every state tensor (parameters and moments), by name (for checkpoints).
    pub fn all_state(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.slots
            .iter()
            .map(|s| Ok((s.input.clone(), self.state(&s.input)?)))
            .collect()
    }

    /// Overwrites one state tensor (a parameter or a moment).
    pub fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        let cur = self.current;
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.input == name)
            .ok_or_else(|| Error::Data(format!("no training state named `{name}`")))?;
        if value.dtype() != slot.dtype {
            return Err(Error::Data(format!(
                "`{name}` holds {}, got {}",
                slot.dtype,
                value.dtype()
            )));
        }
        write(&mut slot.bufs[cur], value.data(), name)
    }

    /// Overwrites a parameter from `f32` values.
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let s = self.slot(name)?;
        let shape = HostTensor::from_value(&s.bufs[self.current])?
            .shape()
            .to_vec();
        let t = match s.dtype {
            DType::F32 => HostTensor::f32(&shape, values.to_vec())?,
            DType::F64 => HostTensor::f64(&shape, values.iter().map(|&v| f64::from(v)).collect())?,
            other => return Err(Error::Data(format!("`{name}` holds {other}, not floats"))),
        };
        self.set_state(name, &t)
    }

    /// The step graph's interface.
    pub fn signature(&self) -> &StepSignature {
        &self.sig
    }

    /// The session, e.g. to run its other outputs.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}
