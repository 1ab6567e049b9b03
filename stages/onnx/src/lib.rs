//! Training compiled into plain ONNX graphs (work in progress).
