//! Loading ONNX Runtime, what `pipe doctor` reports, devices, and build-time errors.

use pipe_onnx::runtime::{self, Device};
use pipe_onnx::{DType, Dim, Error, Graph, Session, SessionOptions};

#[test]
fn library_is_found_and_reports_version_and_providers() {
    let path = runtime::locate_library().unwrap();
    assert!(path.ends_with(runtime::LIBRARY_NAME));
    let info = runtime::runtime_info().unwrap();
    assert_eq!(info.version, "1.31.1");
    assert!(
        info.providers.iter().any(|p| p == "CPUExecutionProvider"),
        "{:?}",
        info.providers
    );
}

#[test]
fn cuda_is_an_error_not_a_silent_cpu_fallback() {
    let mut g = Graph::new("tiny");
    let x = g.input("x", DType::F32, &[Dim::Fixed(2)]).unwrap();
    let y = g.neg(x).unwrap();
    g.output(y, "y").unwrap();
    let opts = SessionOptions {
        device: Device::Cuda(0),
        ..Default::default()
    };
    let err = Session::from_model(&g.build().unwrap(), &opts).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("cuda:0")
            && msg.contains("unavailable")
            && msg.contains("CPUExecutionProvider"),
        "{msg}"
    );
}

#[test]
fn devices_parse() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
    assert!("gpu".parse::<Device>().is_err());
}

#[test]
fn intra_op_threads_are_accepted() {
    let mut g = Graph::new("tiny");
    let x = g.input("x", DType::F32, &[Dim::Fixed(2)]).unwrap();
    let y = g.exp(x).unwrap();
    g.output(y, "y").unwrap();
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut s = Session::from_model(&g.build().unwrap(), &opts).unwrap();
    let x = pipe_onnx::HostTensor::f32(&[2], vec![0.0, 1.0]).unwrap();
    let out = s.run(&[("x", &x)]).unwrap();
    assert_eq!(out["y"].as_f32().unwrap(), &[1.0, 1.0f32.exp()]);
}

#[test]
fn missing_rule_names_the_operator_and_node() {
    let mut g = Graph::new("no_rule");
    let x = g.input("x", DType::F32, &[Dim::Fixed(3)]).unwrap();
    let y = g.with_scope("transformer.h.3.attn", |g| {
        let z = g.scalar(DType::F32, 0.0);
        g.max(x, z)
    });
    let loss = g.reduce_sum_all(y.unwrap()).unwrap();
    let err = pipe_onnx::gradients(&mut g, loss, &[x]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoGradient { .. }), "{msg}");
    assert!(
        msg.contains("`Max`") && msg.contains("transformer.h.3.attn/Max"),
        "{msg}"
    );
}

#[test]
fn integer_inputs_are_skipped_and_unused_parameters_get_zeros() {
    let mut g = Graph::new("skip");
    let table = g
        .input("table", DType::F32, &[Dim::Fixed(4), Dim::Fixed(2)])
        .unwrap();
    let unused = g.input("unused", DType::F32, &[Dim::Fixed(3)]).unwrap();
    let ids = g.input("ids", DType::I64, &[Dim::from("n")]).unwrap();
    let e = g.gather(table, ids, 0).unwrap();
    let loss = g.reduce_sum_all(e).unwrap();
    let grads = pipe_onnx::gradients(&mut g, loss, &[table, unused]).unwrap();
    g.output(grads[0], "d_table").unwrap();
    g.output(grads[1], "d_unused").unwrap();
    let mut s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let feeds = [
        (
            "table",
            pipe_onnx::HostTensor::zeros(DType::F32, &[4, 2]).unwrap(),
        ),
        (
            "unused",
            pipe_onnx::HostTensor::zeros(DType::F32, &[3]).unwrap(),
        ),
        (
            "ids",
            pipe_onnx::HostTensor::i64(&[3], vec![1, 3, 1]).unwrap(),
        ),
    ];
    let f: Vec<_> = feeds.iter().map(|(n, t)| (*n, t)).collect();
    let out = s.run(&f).unwrap();
    // row 1 is looked up twice, row 3 once
    assert_eq!(
        out["d_table"].as_f32().unwrap(),
        &[0., 0., 2., 2., 0., 0., 1., 1.]
    );
    assert_eq!(out["d_unused"].as_f32().unwrap(), &[0., 0., 0.]);
    // asking for the gradient of an integer tensor is an error
    assert!(pipe_onnx::gradients(&mut g, loss, &[ids]).is_err());
}

#[test]
fn shape_errors_name_the_node() {
    let mut g = Graph::new("bad");
    let a = g
        .input("a", DType::F32, &[Dim::from("batch"), Dim::Fixed(3)])
        .unwrap();
    let b = g
        .input("b", DType::F32, &[Dim::Fixed(4), Dim::Fixed(5)])
        .unwrap();
    let err = g.with_scope("layer", |g| g.matmul(a, b)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer/MatMul: inner dims differ: [batch, 3] @ [4, 5]"
    );
    let err = g.add(a, b).unwrap_err().to_string();
    assert!(err.contains("do not broadcast"), "{err}");
}
