//! Training compiled into plain ONNX graphs.
#![deny(missing_docs)]

pub mod autodiff;
pub mod builder;
mod error;
pub mod proto;

pub use autodiff::gradients;
pub use builder::{DType, Dim, Graph, Model, Reduction, Tensor, TensorData};
pub use error::{Error, Result};
