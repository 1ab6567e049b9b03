//! Training state that lives on the session's device: [`DeviceTrainer`].
//!
//! The layout is [`FlatTrainer`](super::FlatTrainer)'s (one flat buffer each for parameters,
//! gradients, `exp_avg` and `exp_avg_sq`; tensors are views at offsets), but the buffers are
//! allocated once with [`Session::state_allocator`], so on CUDA they are device memory, and the
//! optimizer runs there too, as ONNX graphs ([`crate::flat::graphs`]):
//!
//! - a step binds every parameter input and gradient output to a view of the device buffers
//!   (a tensor over the buffer's memory at the entry's offset, no copy); the batch is copied in
//!   by ONNX Runtime when the step runs, and only the loss comes back;
//! - gradient accumulation scales and adds on the device (`scale`, `add_scaled` graphs);
//! - clipping sums the squared gradients per piece on the device and adds the pieces' sums on
//!   the host (a few numbers), which computes the clipping factor as
//!   [`AdamW::update_flat`] does;
//! - AdamW runs as one elementwise graph whose outputs are bound onto its own input buffers.
//!
//! In place: ONNX Runtime does not promise that an output may share memory with an input. The
//! optimizer graphs are safe anyway, because every output element is computed from the input
//! elements at the same index only, and no node reads an input after the node writing its
//! aliased output: each input is read only by ancestors of that output's producer. Ping-pong
//! buffers would cost three more copies of the state (12 bytes per parameter). What in-place
//! still costs is ONNX Runtime's temporaries for the intermediate values of one run; the
//! graphs therefore run over pieces of [`DeviceTrainer::with_piece_len`] elements (16M by
//! default: about 64 MB per temporary), not over the whole buffers.
//!
//! Copies between the host and the device go a piece at a time too, through the trainer's own
//! copy graph (an identity whose input and output are bound to the two memories): the state is
//! filled and the parameters uploaded without a host copy of the whole state, and the copy
//! session's arena keeps at most a piece as its temporary.
//!
//! Device memory: 16 bytes per trained parameter (parameters, gradients, two moments), 1 for
//! the weight-decay mask, 4 more once gradient accumulation is used (the later micro-batches'
//! gradients), plus the frozen inputs and the pieces' temporaries.
//!
//! On the CPU the same code runs on host memory (tests force it with [`DEVICE_STATE_ENV`]);
//! [`FlatTrainer`](super::FlatTrainer) is faster there, and is what the CPU uses.
//!
//! [`DEVICE_STATE_ENV`]: super::DEVICE_STATE_ENV

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Range;
use std::sync::Mutex;

use ort::memory::MemoryInfo;
use ort::value::{
    DynTensor, PrimitiveTensorElementType, Shape, TensorElementType, TensorRef, TensorRefMut,
    Value, ValueTypeMarker,
};

use super::binding::run_bound;
use super::flat_trainer::{bind_borrowed, check_session, entry_values, other_outputs};
use super::{Device, HostTensor, MemoryStats, Session, SessionOptions, StepResult, host_memory};
use crate::error::OrtContext;
use crate::flat::GradSignature;
use crate::flat::graphs::{self as flat_graphs, update};
use crate::optim::StateKind;
use crate::{AdamW, DType, Error, Result};

/// Elements per run of the optimizer graphs, by default.
const PIECE: usize = 1 << 24;

/// The flat buffers, in the memory of the session's device.
struct Buffers {
    params: DynTensor,
    grads: DynTensor,
    exp_avg: DynTensor,
    exp_avg_sq: DynTensor,
}

impl Buffers {
    /// The buffer holding state of `kind`.
    fn of(&self, kind: StateKind) -> &DynTensor {
        match kind {
            StateKind::Param => &self.params,
            StateKind::ExpAvg => &self.exp_avg,
            StateKind::ExpAvgSq => &self.exp_avg_sq,
        }
    }
}

/// The sessions of the optimizer graphs, on the trainer's device.
struct Ops {
    update: Session,
    /// Copies f32 pieces between the device and the host (behind a lock: reads happen
    /// through `&self`).
    copy: Mutex<Session>,
    /// Copies pieces of the weight-decay mask to the device.
    copy_mask: Session,
    sum_sq: Session,
    scale: Session,
    add_scaled: Session,
}

/// Trains with a gradient step graph and the optimizer as graphs, every piece of state in the
/// memory of the session's device; see the module docs.
pub struct DeviceTrainer {
    session: Session,
    sig: GradSignature,
    adamw: AdamW,
    memory: MemoryInfo<'static>,
    bufs: Buffers,
    /// Where micro-batches after a step's first write their gradients (allocated on first use).
    micro_grads: Option<DynTensor>,
    /// `true` where weight decay applies (only when it is on).
    decay_mask: Option<DynTensor>,
    frozen: Vec<(String, HostTensor)>,
    frozen_device: Vec<(String, DynTensor)>,
    ops: Ops,
    piece: usize,
    steps_done: u64,
    micro_batches: usize,
    other_outputs: Vec<String>,
    output_memory: MemoryInfo<'static>,
}

impl Debug for DeviceTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTrainer")
            .field("device", &self.session.device())
            .field("params", &self.sig.layout.entries.len())
            .field("elements", &self.sig.layout.len)
            .field("steps_done", &self.steps_done)
            .finish_non_exhaustive()
    }
}

impl DeviceTrainer {
    /// Allocates the flat state on `session`'s device and copies the trainable parameters from
    /// `params` (by input name; a missing one is an error) into it, with zero moments; `frozen`
    /// holds the graph inputs that stay fixed (copied to the device once). The step count
    /// starts at 0. Copies and optimizer passes go over pieces of 16M elements.
    pub fn new(
        session: Session,
        sig: GradSignature,
        adamw: AdamW,
        params: BTreeMap<String, HostTensor>,
        frozen: BTreeMap<String, HostTensor>,
    ) -> Result<Self> {
        Self::with_piece_len(session, sig, adamw, params, frozen, PIECE)
    }

    /// [`DeviceTrainer::new`] with pieces of `piece` elements (rounded up to 16) for every
    /// copy between the host and the device and every run of the optimizer graphs: fewer take
    /// less temporary device memory and more runs.
    pub fn with_piece_len(
        session: Session,
        sig: GradSignature,
        adamw: AdamW,
        mut params: BTreeMap<String, HostTensor>,
        frozen: BTreeMap<String, HostTensor>,
        piece: usize,
    ) -> Result<Self> {
        check_session(&session, &sig, frozen.keys())?;
        let piece = piece.max(1).div_ceil(16) * 16;
        let len = sig.layout.len;
        if len == 0 {
            return Err(Error::Data("there is no parameter to train".into()));
        }
        let opts = SessionOptions {
            device: session.device(),
            ..SessionOptions::default()
        };
        let load = |m: crate::Model| Session::from_model(&m, &opts);
        let mut ops = Ops {
            update: load(adamw.flat_update_graph()?)?,
            copy: Mutex::new(load(flat_graphs::copy_graph(DType::F32)?)?),
            copy_mask: load(flat_graphs::copy_graph(DType::Bool)?)?,
            sum_sq: load(flat_graphs::sum_sq_graph()?)?,
            scale: load(flat_graphs::scale_graph()?)?,
            add_scaled: load(flat_graphs::add_scaled_graph()?)?,
        };
        // Everything goes to the device a piece at a time: no host copy of the whole state,
        // and no temporary larger than a piece in any arena.
        let memory = session.device_memory()?;
        let allocator = session.state_allocator()?;
        let alloc = |ty: TensorElementType, what: &str| {
            DynTensor::new(&allocator, ty, vec![len as i64])
                .ort_context(|| format!("failed to allocate the {what} on {}", session.device()))
        };
        let bufs = Buffers {
            params: alloc(TensorElementType::Float32, "parameters")?,
            grads: alloc(TensorElementType::Float32, "gradients")?,
            exp_avg: alloc(TensorElementType::Float32, "first moments")?,
            exp_avg_sq: alloc(TensorElementType::Float32, "second moments")?,
        };
        let copy = ops.copy.get_mut().unwrap_or_else(|e| e.into_inner());
        // Padding between parameters must be zero in every buffer (it enters the norm).
        for buf in [&bufs.params, &bufs.grads, &bufs.exp_avg, &bufs.exp_avg_sq] {
            fill(copy, &memory, buf, 0..len, 0.0f32, piece, "state")?;
        }
        for e in &sig.layout.entries {
            let p = params.remove(&e.name).ok_or_else(|| {
                Error::Data(format!("no initial value for parameter `{}`", e.name))
            })?;
            let values = entry_values(e, &p, &e.name)?;
            upload(
                copy,
                &memory,
                &bufs.params,
                e.offset,
                values,
                piece,
                &e.name,
            )?;
        }
        let decay_mask = if adamw.weight_decay != 0.0 {
            let mask = alloc(TensorElementType::Bool, "weight-decay mask")?;
            let what = "weight-decay mask";
            fill(
                &mut ops.copy_mask,
                &memory,
                &mask,
                0..len,
                false,
                piece,
                what,
            )?;
            for e in sig.layout.entries.iter().filter(|e| e.weight_decay) {
                fill(
                    &mut ops.copy_mask,
                    &memory,
                    &mask,
                    e.range(),
                    true,
                    piece,
                    what,
                )?;
            }
            Some(mask)
        } else {
            None
        };
        let copy = ops.copy.get_mut().unwrap_or_else(|e| e.into_inner());
        let frozen_device = frozen
            .iter()
            .map(|(name, t)| {
                let values = t.as_f32().ok_or_else(|| {
                    Error::Data(format!("frozen input `{name}` is not f32 (internal error)"))
                })?;
                let d = DynTensor::new(&allocator, TensorElementType::Float32, t.shape().to_vec())
                    .ort_context(|| format!("failed to allocate `{name}`"))?;
                upload(copy, &memory, &d, 0, values, piece, name)?;
                Ok((name.clone(), d))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceTrainer {
            memory,
            other_outputs: other_outputs(&session, &sig),
            output_memory: host_memory()?,
            session,
            sig,
            adamw,
            bufs,
            micro_grads: None,
            decay_mask,
            frozen: frozen.into_iter().collect(),
            frozen_device,
            ops,
            piece,
            steps_done: 0,
            micro_batches: 0,
        })
    }

    /// Runs the gradient graph on one micro-batch and adds its gradients, times `share`, to
    /// those of the optimizer step under way, on the device (see
    /// [`FlatTrainer::accumulate`](super::FlatTrainer::accumulate) for the arithmetic).
    pub fn accumulate(&mut self, batch: &[(&str, &HostTensor)], share: f32) -> Result<StepResult> {
        let step = self.steps_done + 1;
        let first = self.micro_batches == 0;
        if !first && self.micro_grads.is_none() {
            let allocator = self.session.state_allocator()?;
            let len = self.sig.layout.len;
            let buf = DynTensor::new(&allocator, TensorElementType::Float32, vec![len as i64])
                .ort_context(|| "failed to allocate the micro-batch gradients".into())?;
            let copy = self.ops.copy.get_mut().unwrap_or_else(|e| e.into_inner());
            let what = "micro-batch gradients";
            fill(copy, &self.memory, &buf, 0..len, 0.0f32, self.piece, what)?;
            self.micro_grads = Some(buf);
        }
        let mut binding = self
            .session
            .inner
            .create_binding()
            .ort_context(|| "failed to create an IoBinding".into())?;
        for (name, t) in batch {
            binding
                .bind_input(*name, &t.to_value()?)
                .map_err(bind_error)?;
        }
        for (name, t) in &self.frozen_device {
            binding.bind_input(name.as_str(), t).map_err(bind_error)?;
        }
        let target = match (&self.micro_grads, first) {
            (Some(micro), false) => micro,
            _ => &self.bufs.grads,
        };
        for e in &self.sig.layout.entries {
            let p = view::<f32>(&self.memory, &self.bufs.params, e.offset, &e.shape)?;
            bind_borrowed(&mut binding, &e.name, &p)?;
            let g = view::<f32>(&self.memory, target, e.offset, &e.shape)?;
            binding
                .bind_output(e.grad.as_str(), g)
                .map_err(bind_error)?;
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
        if !first {
            self.run_ops(Op::AddScaled, &[(flat_graphs::S, share)])?;
        } else if share != 1.0 {
            self.run_ops(Op::Scale, &[(flat_graphs::S, share)])?;
        }
        self.micro_batches += 1;
        Ok(result)
    }

    /// One optimizer step with the gradients accumulated since the last one, on the device:
    /// global-norm clipping and AdamW at learning rate `lr`, as
    /// [`FlatTrainer::apply`](super::FlatTrainer::apply). Returns the gradient norm before
    /// clipping when clipping is on.
    pub fn apply(&mut self, lr: f32) -> Result<Option<f32>> {
        if self.micro_batches == 0 {
            return Err(Error::Data(
                "an optimizer step needs at least one accumulated micro-batch".into(),
            ));
        }
        let step = self.steps_done + 1;
        let (norm, coef) = if self.adamw.max_grad_norm > 0.0 {
            let sums = self.run_pieces(Op::SumSq, &[])?;
            let norm = sums.iter().sum::<f64>().sqrt();
            let coef = (self.adamw.max_grad_norm / (norm + 1e-6)).min(1.0) as f32;
            (Some(norm as f32), coef)
        } else {
            (None, 1.0)
        };
        self.run_ops(
            Op::Update,
            &[
                (update::LR, lr),
                (update::STEP, step as f32),
                (update::CLIP, coef),
            ],
        )?;
        self.steps_done = step;
        self.micro_batches = 0;
        Ok(norm)
    }

    fn run_ops(&mut self, op: Op, scalars: &[(&str, f32)]) -> Result<()> {
        self.run_pieces(op, scalars).map(drop)
    }

    /// Runs `op`'s graph over the flat buffers piece by piece, with `scalars` as f32 scalar
    /// inputs; returns the host output of each piece (the sums of squares of [`Op::SumSq`]).
    fn run_pieces(&mut self, op: Op, scalars: &[(&str, f32)]) -> Result<Vec<f64>> {
        let b = &self.bufs;
        let micro = self.micro_grads.as_ref();
        let missing = || Error::Data("no micro-batch gradients to add (internal error)".into());
        let (session, inputs, outputs, host_output): (&mut Session, Bound, Bound, Option<&str>) =
            match op {
                Op::SumSq => (
                    &mut self.ops.sum_sq,
                    vec![(flat_graphs::X, &b.grads)],
                    vec![],
                    Some(flat_graphs::SUM_SQ),
                ),
                Op::Scale => (
                    &mut self.ops.scale,
                    vec![(flat_graphs::X, &b.grads)],
                    vec![(flat_graphs::OUT, &b.grads)],
                    None,
                ),
                Op::AddScaled => (
                    &mut self.ops.add_scaled,
                    vec![
                        (flat_graphs::ACC, &b.grads),
                        (flat_graphs::X, micro.ok_or_else(missing)?),
                    ],
                    vec![(flat_graphs::OUT, &b.grads)],
                    None,
                ),
                Op::Update => {
                    let mut inputs = vec![
                        (update::PARAMS, &b.params),
                        (update::GRADS, &b.grads),
                        (update::EXP_AVG, &b.exp_avg),
                        (update::EXP_AVG_SQ, &b.exp_avg_sq),
                    ];
                    if let Some(mask) = &self.decay_mask {
                        inputs.push((update::DECAY_MASK, mask));
                    }
                    let outputs = vec![
                        (update::PARAMS_OUT, &b.params),
                        (update::EXP_AVG_OUT, &b.exp_avg),
                        (update::EXP_AVG_SQ_OUT, &b.exp_avg_sq),
                    ];
                    (&mut self.ops.update, inputs, outputs, None)
                }
            };
        let scalars = scalars
            .iter()
            .map(|&(name, x)| Ok((name, HostTensor::scalar_f32(x).to_value()?)))
            .collect::<Result<Vec<_>>>()?;
        let len = self.sig.layout.len;
        let mut results = Vec::new();
        for start in (0..len).step_by(self.piece) {
            let shape = [(self.piece.min(len - start)) as i64];
            let mut binding = session
                .inner
                .create_binding()
                .ort_context(|| "failed to create an IoBinding".into())?;
            for (name, buf) in &inputs {
                match buf.data_type() {
                    TensorElementType::Bool => {
                        let v = view::<bool>(&self.memory, buf, start, &shape)?;
                        bind_borrowed(&mut binding, name, &v)?;
                    }
                    _ => {
                        let v = view::<f32>(&self.memory, buf, start, &shape)?;
                        bind_borrowed(&mut binding, name, &v)?;
                    }
                }
            }
            for (name, value) in &scalars {
                binding.bind_input(*name, value).map_err(bind_error)?;
            }
            for (name, buf) in &outputs {
                let v = view::<f32>(&self.memory, buf, start, &shape)?;
                binding.bind_output(*name, v).map_err(bind_error)?;
            }
            if let Some(name) = host_output {
                binding
                    .bind_output_to_device(name, &self.output_memory)
                    .map_err(bind_error)?;
            }
            let values = session
                .inner
                .run_binding(&binding)
                .ort_context(|| format!("the optimizer's {op:?} pass failed"))?;
            if let Some(name) = host_output {
                let v = values
                    .get(name)
                    .ok_or_else(|| Error::Data(format!("the {op:?} graph returned no `{name}`")))?;
                results.extend(HostTensor::from_value(v)?.to_f64_vec());
            }
        }
        Ok(results)
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

    /// Copies one state tensor (a parameter, or `<param>.exp_avg` / `.exp_avg_sq`) to the host.
    pub fn state(&self, name: &str) -> Result<HostTensor> {
        let (shape, values) = self.read_state(name)?;
        HostTensor::f32(shape, values)
    }

    /// The shape and values of one state tensor, copied to the host piece by piece.
    pub fn read_state(&self, name: &str) -> Result<(&[i64], Vec<f32>)> {
        let (e, kind) = self.sig.layout.locate(name)?;
        let mut host = vec![0.0f32; e.len];
        let mut copy = self.ops.copy.lock().unwrap_or_else(|e| e.into_inner());
        for (i, chunk) in host.chunks_mut(self.piece).enumerate() {
            let n = [chunk.len() as i64];
            let at = e.offset + i * self.piece;
            let src = view::<f32>(&self.memory, self.bufs.of(kind), at, &n)?;
            let dst = TensorRefMut::from_array_view_mut((n.to_vec(), chunk))
                .ort_context(|| format!("failed to read `{name}`"))?;
            run_copy(&mut copy, &*src, dst, name)?;
        }
        Ok((&e.shape, host))
    }

    /// The frozen inputs, by name (their host copies).
    pub fn frozen(&self) -> &[(String, HostTensor)] {
        &self.frozen
    }

    /// Hands the host copies of the frozen inputs over, leaving none (the device copies stay).
    pub fn take_frozen(&mut self) -> Vec<(String, HostTensor)> {
        std::mem::take(&mut self.frozen)
    }

    /// Overwrites one state tensor (a parameter or a moment) from the host.
    pub fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<()> {
        let (e, kind) = self.sig.layout.locate(name)?;
        let values = entry_values(e, value, name)?;
        let buf = self.bufs.of(kind);
        let copy = self.ops.copy.get_mut().unwrap_or_else(|e| e.into_inner());
        upload(copy, &self.memory, buf, e.offset, values, self.piece, name)
    }

    /// The statistics of every arena the trainer allocates from on its device, added up:
    /// on CUDA each session (the step's and each optimizer graph's) has its own arena; on the
    /// CPU they all share the process's one arena, counted once.
    pub fn memory_stats(&self) -> Result<Option<MemoryStats>> {
        if self.session.device() == Device::Cpu {
            return self.session.memory_stats();
        }
        let copy = self.ops.copy.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = [
            &self.session,
            &self.ops.update,
            &*copy,
            &self.ops.copy_mask,
            &self.ops.sum_sq,
            &self.ops.scale,
            &self.ops.add_scaled,
        ];
        let stats = sessions
            .into_iter()
            .map(Session::memory_stats)
            .collect::<Result<Vec<_>>>()?;
        Ok(MemoryStats::total(stats.into_iter().flatten()))
    }

    /// The session, e.g. to run its other outputs.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// Graph inputs or outputs of one [`Op`] and the buffers bound to them.
type Bound<'a> = Vec<(&'static str, &'a DynTensor)>;

/// The optimizer graphs.
#[derive(Clone, Copy, Debug)]
enum Op {
    SumSq,
    Scale,
    AddScaled,
    Update,
}

fn bind_error(e: ort::Error) -> Error {
    Error::Ort {
        context: "failed to bind step inputs and outputs".into(),
        source: e,
    }
}

/// A tensor of `shape` over `buf`'s memory from element `offset` on, without a copy; an error
/// when it would reach past the end of `buf`.
fn view<'b, T: PrimitiveTensorElementType + Debug>(
    memory: &MemoryInfo<'static>,
    buf: &'b DynTensor,
    offset: usize,
    shape: &[i64],
) -> Result<TensorRefMut<'b, T>> {
    let n: usize = shape.iter().map(|&d| d as usize).product();
    let len: usize = buf.shape().iter().map(|&d| d as usize).product();
    if offset + n > len || buf.data_type() != &T::into_tensor_element_type() {
        return Err(Error::Data(format!(
            "a view of {n} elements at {offset} does not fit a state buffer of {len} (internal error)"
        )));
    }
    let base = buf.data_ptr().cast::<u8>().cast_mut();
    let at = base.wrapping_add(offset * size_of::<T>()).cast();
    // SAFETY: `at` points `offset` elements of type `T` into `buf`'s allocation (on `memory`'s
    // device) and `n` more elements fit before its end (checked above); the view borrows `buf`,
    // so the allocation outlives it. ONNX Runtime writes through the view only while running a
    // binding of the trainer, which holds no other reference into those elements then.
    unsafe { TensorRefMut::from_raw(memory.clone(), at, Shape::from(shape)) }
        .ort_context(|| "failed to view the training state".into())
}

/// Copies `values` into `buf` from element `offset` on, with one run of `copy` (the copy graph
/// of `T`) per `piece` elements.
fn upload<T: PrimitiveTensorElementType + Debug + Clone + 'static>(
    copy: &mut Session,
    memory: &MemoryInfo<'static>,
    buf: &DynTensor,
    offset: usize,
    values: &[T],
    piece: usize,
    name: &str,
) -> Result<()> {
    for (i, chunk) in values.chunks(piece).enumerate() {
        let n = [chunk.len() as i64];
        let src = TensorRef::from_array_view((n.to_vec(), chunk))
            .ort_context(|| format!("failed to read `{name}`"))?;
        let dst = view::<T>(memory, buf, offset + i * piece, &n)?;
        run_copy(copy, &*src, dst, name)?;
    }
    Ok(())
}

/// Sets the elements `range` of `buf` to `value`, a piece at a time (see [`upload`]).
fn fill<T: PrimitiveTensorElementType + Debug + Clone + 'static>(
    copy: &mut Session,
    memory: &MemoryInfo<'static>,
    buf: &DynTensor,
    range: Range<usize>,
    value: T,
    piece: usize,
    name: &str,
) -> Result<()> {
    let values = vec![value; range.len().min(piece)];
    for start in range.clone().step_by(piece) {
        let n = (range.end - start).min(piece);
        upload(copy, memory, buf, start, &values[..n], piece, name)?;
    }
    Ok(())
}

/// Runs the copy graph `copy` from `src` into `dst` (same length, each on the host or the
/// device). (`ort`'s `copy_into` deadlocks on tensors over borrowed memory, and keeps a
/// temporary of the tensor's size in its own session's arena.)
fn run_copy<V: ValueTypeMarker + ?Sized, T: PrimitiveTensorElementType + Debug>(
    copy: &mut Session,
    src: &Value<V>,
    dst: TensorRefMut<'_, T>,
    name: &str,
) -> Result<()> {
    let mut binding = copy
        .inner
        .create_binding()
        .ort_context(|| "failed to create an IoBinding".into())?;
    bind_borrowed(&mut binding, flat_graphs::X, src)?;
    binding
        .bind_output(flat_graphs::OUT, dst)
        .map_err(bind_error)?;
    copy.inner
        .run_binding(&binding)
        .ort_context(|| format!("failed to copy `{name}`"))?;
    Ok(())
}
