//! Training compiled into plain ONNX graphs that stock ONNX Runtime runs.
//!
//! ONNX Runtime no longer ships a training API, so `pipe` compiles training
//! itself: the forward pass, its gradients and the optimizer update become one ordinary ONNX
//! graph, run once per optimizer step.
//!
//! The main types:
//! - [`Graph`]: a typed ONNX graph builder; methods named after ONNX operators return
//!   [`Tensor`] handles with inferred element types and (symbolic) shapes. [`Graph::build`]
//!   gives a [`Model`] (opset 20, `ai.onnx` only) with deterministic bytes.
//! - [`gradients`]: reverse-mode autodiff emitting every backward rule as standard ONNX nodes.
//! - [`AdamW`]: adds gradients, clipping and the `torch.optim.AdamW` update to a loss graph.
//! - [`Session`] and [`Trainer`]: ONNX Runtime sessions; the trainer keeps parameters and
//!   moments inside the runtime between steps (IoBinding, two buffers per tensor).
//!
//! ```
//! use std::collections::BTreeMap;
//! use pipe_onnx::{AdamW, DType, Dim, Graph, HostTensor, Session, SessionOptions, Trainer, TrainParam};
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
//! // One step graph: gradients + AdamW; `lr` and `step` are inputs.
//! let sig = AdamW::default().build_step(&mut g, loss, &[TrainParam { tensor: w, weight_decay: true }])?;
//! let session = Session::from_model(&g.build()?, &SessionOptions::default())?;
//!
//! let mut init = BTreeMap::new();
//! init.insert("w".to_string(), HostTensor::f32(&[2, 1], vec![0.0, 0.0])?);
//! let mut trainer = Trainer::new(session, sig, &init)?;
//! let xs = HostTensor::f32(&[2, 2], vec![1.0, 0.0, 0.0, 1.0])?;
//! let ys = HostTensor::f32(&[2, 1], vec![1.0, -1.0])?;
//! let first = trainer.step(&[("x", &xs), ("y", &ys)], 0.1)?.loss;
//! let second = trainer.step(&[("x", &xs), ("y", &ys)], 0.1)?.loss;
//! assert!(second < first);
//! let w_now = trainer.param("w")?;
//! assert!(w_now[0] > 0.0 && w_now[1] < 0.0);
//! # Ok(())
//! # }
//! ```
//!
//! ONNX Runtime itself is loaded at run time ([`runtime::locate_library`]); nothing is
//! downloaded at build time.
#![deny(missing_docs)]

pub mod autodiff;
pub mod builder;
mod error;
pub mod flat;
pub mod optim;
pub mod proto;
pub mod runtime;

pub use autodiff::gradients;
pub use builder::{
    DType, Dim, Graph, HOST_KERNELS_DOMAIN, Kernels, Model, Reduction, Tensor, TensorData,
};
pub use error::{Error, Result};
pub use flat::{FlatEntry, FlatLayout, FlatState, GradSignature, build_gradient_step};
pub use optim::{AdamW, StateKind, StateSlot, StepSignature, TrainParam};
pub use runtime::{
    DEVICE_STATE_ENV, Device, DeviceTrainer, FlatTrainer, HostData, HostTensor, MemoryStats,
    RuntimeInfo, Session, SessionOptions, StepResult, StepTrainer, Trainer, step_trainer,
};
