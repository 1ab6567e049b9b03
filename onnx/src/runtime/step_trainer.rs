//! One interface over the two flat trainers, [`StepTrainer`], and the choice between them by
//! device ([`step_trainer`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{DeviceTrainer, FlatTrainer, HostTensor, MemoryStats, Session, StepResult};
use crate::flat::GradSignature;
use crate::{AdamW, Device, Result};

/// Set to `1` to keep the training state with [`DeviceTrainer`] on the CPU too (it is chosen
/// on CUDA anyway): the device code path, testable without a GPU. An internal switch for
/// tests and checks, not a user setting.
pub const DEVICE_STATE_ENV: &str = "PIPE_DEVICE_STATE";

/// What the training loop needs of a trainer over flat state, wherever the state lives.
pub trait StepTrainer: std::fmt::Debug {
    /// Runs the gradient graph on one micro-batch and adds its gradients, times `share`, to
    /// those of the optimizer step under way ([`FlatTrainer::accumulate`]).
    fn accumulate(&mut self, batch: &[(&str, &HostTensor)], share: f32) -> Result<StepResult>;

    /// One optimizer step with the accumulated gradients; the gradient norm before clipping
    /// when clipping is on ([`FlatTrainer::apply`]).
    fn apply(&mut self, lr: f32) -> Result<Option<f32>>;

    /// [`Self::accumulate`] with share 1, then [`Self::apply`].
    fn step(&mut self, batch: &[(&str, &HostTensor)], lr: f32) -> Result<StepResult> {
        let mut result = self.accumulate(batch, 1.0)?;
        result.grad_norm = self.apply(lr)?;
        Ok(result)
    }

    /// Steps completed.
    fn steps_done(&self) -> u64;

    /// Sets the step count, when resuming from a checkpoint.
    fn set_steps_done(&mut self, n: u64);

    /// The gradient graph's interface.
    fn signature(&self) -> &GradSignature;

    /// Names of every state tensor: each parameter, then its two moments.
    fn state_names(&self) -> Vec<String> {
        self.signature().layout.state_names()
    }

    /// The shape and values of one state tensor: borrowed from host state, copied from device
    /// state.
    fn read_state(&self, name: &str) -> Result<(&[i64], Cow<'_, [f32]>)>;

    /// Overwrites one state tensor (a parameter or a moment).
    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()>;

    /// Every trainable parameter, by name, on the host.
    fn params(&self) -> Result<BTreeMap<String, HostTensor>> {
        let layout = &self.signature().layout;
        layout
            .entries
            .iter()
            .map(|e| {
                let (shape, values) = self.read_state(&e.name)?;
                Ok((e.name.clone(), HostTensor::f32(shape, values.into_owned())?))
            })
            .collect()
    }

    /// The frozen inputs, by name.
    fn frozen(&self) -> &[(String, HostTensor)];

    /// Hands the frozen inputs over, leaving the trainer without them (it can run no step
    /// after): the end of a run takes them instead of copying the frozen model.
    fn take_frozen(&mut self) -> Vec<(String, HostTensor)>;

    /// Whether the state lives in memory of the session's device, with the optimizer there.
    fn state_on_device(&self) -> bool;

    /// The statistics of the trainer's arenas on the session's device, added up (`None` where
    /// they keep none).
    fn memory_stats(&self) -> Result<Option<MemoryStats>>;
}

impl StepTrainer for FlatTrainer {
    fn accumulate(&mut self, batch: &[(&str, &HostTensor)], share: f32) -> Result<StepResult> {
        FlatTrainer::accumulate(self, batch, share)
    }
    fn apply(&mut self, lr: f32) -> Result<Option<f32>> {
        FlatTrainer::apply(self, lr)
    }
    fn steps_done(&self) -> u64 {
        FlatTrainer::steps_done(self)
    }
    fn set_steps_done(&mut self, n: u64) {
        FlatTrainer::set_steps_done(self, n)
    }
    fn signature(&self) -> &GradSignature {
        FlatTrainer::signature(self)
    }
    fn read_state(&self, name: &str) -> Result<(&[i64], Cow<'_, [f32]>)> {
        let (shape, values) = self.state_view(name)?;
        Ok((shape, Cow::Borrowed(values)))
    }
    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        FlatTrainer::set_state(self, name, value)
    }
    fn frozen(&self) -> &[(String, HostTensor)] {
        FlatTrainer::frozen(self)
    }
    fn take_frozen(&mut self) -> Vec<(String, HostTensor)> {
        FlatTrainer::take_frozen(self)
    }
    fn state_on_device(&self) -> bool {
        false
    }
    fn memory_stats(&self) -> Result<Option<MemoryStats>> {
        self.session_ref().memory_stats()
    }
}

impl StepTrainer for DeviceTrainer {
    fn accumulate(&mut self, batch: &[(&str, &HostTensor)], share: f32) -> Result<StepResult> {
        DeviceTrainer::accumulate(self, batch, share)
    }
    fn apply(&mut self, lr: f32) -> Result<Option<f32>> {
        DeviceTrainer::apply(self, lr)
    }
    fn steps_done(&self) -> u64 {
        DeviceTrainer::steps_done(self)
    }
    fn set_steps_done(&mut self, n: u64) {
        DeviceTrainer::set_steps_done(self, n)
    }
    fn signature(&self) -> &GradSignature {
        DeviceTrainer::signature(self)
    }
    fn read_state(&self, name: &str) -> Result<(&[i64], Cow<'_, [f32]>)> {
        let (shape, values) = DeviceTrainer::read_state(self, name)?;
        Ok((shape, Cow::Owned(values)))
    }
    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        DeviceTrainer::set_state(self, name, value)
    }
    fn frozen(&self) -> &[(String, HostTensor)] {
        DeviceTrainer::frozen(self)
    }
    fn take_frozen(&mut self) -> Vec<(String, HostTensor)> {
        DeviceTrainer::take_frozen(self)
    }
    fn state_on_device(&self) -> bool {
        true
    }
    fn memory_stats(&self) -> Result<Option<MemoryStats>> {
        DeviceTrainer::memory_stats(self)
    }
}

/// Whether [`step_trainer`] keeps the training state of a session on `device` in device
/// memory ([`DeviceTrainer`]): on CUDA, or anywhere with [`DEVICE_STATE_ENV`]`=1`. Its frozen
/// inputs are then f32 (quantized or 16-bit ones are the host trainer's).
pub fn state_on_device(device: Device) -> bool {
    device != Device::Cpu || std::env::var(DEVICE_STATE_ENV).is_ok_and(|v| v == "1")
}

/// The trainer for `session`'s device: [`DeviceTrainer`] where [`state_on_device`],
/// [`FlatTrainer`] on the CPU, where host state and the host AdamW are faster. The arguments
/// are those of [`FlatTrainer::new`].
pub fn step_trainer(
    session: Session,
    sig: GradSignature,
    adamw: AdamW,
    params: BTreeMap<String, HostTensor>,
    frozen: BTreeMap<String, HostTensor>,
) -> Result<Box<dyn StepTrainer>> {
    Ok(if state_on_device(session.device()) {
        Box::new(DeviceTrainer::new(session, sig, adamw, params, frozen)?)
    } else {
        Box::new(FlatTrainer::new(session, sig, adamw, params, frozen)?)
    })
}
