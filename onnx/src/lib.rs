//! Training compiled into plain ONNX graphs that stock ONNX Runtime runs.
//!
//! ONNX Runtime no longer ships a training API, so `pipe` compiles training
//! itself: the forward pass, its gradients and the optimizer update become one ordinary ONNX
//! graph, run once per optimizer step.
//!
//! The main types, in the order a training run uses them:
//! - [`Graph`]: a typed ONNX graph builder; methods named after ONNX operators return
//!   [`Tensor`] handles with inferred element types and (symbolic) shapes. [`Graph::build`]
//!   gives a [`Model`] (opset 20, `ai.onnx` only) with deterministic bytes.
//! - [`build_gradient_step`]: adds the gradients of a loss ([`gradients`], reverse-mode
//!   autodiff emitting every backward rule as standard ONNX nodes) as graph outputs.
//! - [`step_trainer`]: runs that graph in a [`Session`] step after step with the training state
//!   in flat buffers, AdamW ([`AdamW`], `torch.optim.AdamW`'s arithmetic) fused over them: on
//!   the host ([`FlatTrainer`]) or on the session's device ([`DeviceTrainer`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use pipe_onnx::{
//!     AdamW, DType, Dim, Graph, HostTensor, Session, SessionOptions, TrainParam,
//!     build_gradient_step, step_trainer,
//! };
//!
//! # fn main() -> pipe_onnx::Result<()> {
//! // loss = mean((x w - y)²) for a batch of any size
//! let mut g = Graph::new("linear");
//! let x = g.input("x", DType::F32, &[Dim::from("batch"), Dim::from(2)])?;
//! let y = g.input("y", DType::F32, &[Dim::from("batch"), Dim::from(1)])?;
//! let w = g.input("w", DType::F32, &[Dim::from(2), Dim::from(1)])?;
//! let pred = g.with_scope("linear", |g| g.matmul(x, w))?;
//! let err = g.sub(pred, y)?;
//! let sq = g.mul(err, err)?;
//! let loss = g.reduce_mean_all(sq)?;
//!
//! // The step graph computes the loss and `w.grad`; AdamW runs over flat buffers.
//! let sig = build_gradient_step(&mut g, loss, &[TrainParam { tensor: w, weight_decay: true }])?;
//! let session = Session::from_model(&g.build()?, &SessionOptions::default())?;
//!
//! let mut params = BTreeMap::new();
//! params.insert("w".to_string(), HostTensor::f32(&[2, 1], vec![0.0, 0.0])?);
//! let mut trainer = step_trainer(session, sig, AdamW::default(), params, BTreeMap::new())?;
//! let xs = HostTensor::f32(&[2, 2], vec![1.0, 0.0, 0.0, 1.0])?;
//! let ys = HostTensor::f32(&[2, 1], vec![1.0, -1.0])?;
//! let first = trainer.step(&[("x", &xs), ("y", &ys)], 0.1)?.loss;
//! let second = trainer.step(&[("x", &xs), ("y", &ys)], 0.1)?.loss;
//! assert!(second < first);
//! let w_now = trainer.params()?.remove("w").expect("w is trained").to_f64_vec();
//! assert!(w_now[0] > 0.0 && w_now[1] < 0.0);
//! # Ok(())
//! # }
//! ```
//!
//! The `oracle` feature adds the whole-graph variant the tests check the flat trainers
//! against: `AdamW::build_step` (gradients, clipping and the update in one graph) and
//! `Trainer` (its state kept in ONNX Runtime tensors).
//!
//! ONNX Runtime itself is loaded at run time ([`runtime::locate_library`]); nothing is
//! downloaded at build time.
#![deny(missing_docs)]

pub mod autodiff;
pub mod builder;
mod error;
pub mod flat;
pub mod optim;
#[cfg(feature = "oracle")]
pub mod oracle;
pub mod proto;
pub mod quantize;
pub mod runtime;

pub use autodiff::gradients;
pub use builder::{
    DType, Dim, ExternalDataWriter, ExternalTensor, Graph, HOST_KERNELS_DOMAIN, Kernels,
    MICROSOFT_DOMAIN, Model, Reduction, Tensor, TensorData,
};
pub use error::{Error, Result};
pub use flat::{FlatEntry, FlatLayout, FlatState, GradSignature, build_gradient_step};
pub use optim::{AdamW, StateKind, TrainParam};
#[cfg(feature = "oracle")]
pub use oracle::{StateSlot, StepSignature};
pub use quantize::{FrozenDType, Int8Storage, QuantizedWeight};
#[cfg(feature = "oracle")]
pub use runtime::Trainer;
pub use runtime::{
    DEVICE_STATE_ENV, Device, DeviceTrainer, Elements, FlatTrainer, HostData, HostTensor,
    MemoryStats, RuntimeInfo, Session, SessionOptions, Shared, SharedBytes, SharedF32, StepResult,
    StepTrainer, state_on_device, step_trainer,
};
