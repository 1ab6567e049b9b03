//! Training compiled into plain ONNX graphs.
#![deny(missing_docs)]

pub mod autodiff;
pub mod builder;
mod error;
pub mod optim;
pub mod proto;
pub mod runtime;

pub use autodiff::gradients;
pub use builder::{DType, Dim, Graph, Model, Reduction, Tensor, TensorData};
pub use error::{Error, Result};
pub use optim::{AdamW, StepSignature, TrainParam};
pub use runtime::{Device, HostTensor, RuntimeInfo, Session, SessionOptions, Trainer};
