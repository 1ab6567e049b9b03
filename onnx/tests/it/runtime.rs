//! Loading ONNX Runtime, what `pipe doctor` reports, devices, and build-time errors.

use ort::memory::AllocationDevice;
use ort::value::{DynTensor, TensorElementType};
use pipe_onnx::runtime::{self, Device, DeviceChoice};
use pipe_onnx::{
    DType, Dim, Error, Graph, HOST_KERNELS_DOMAIN, HostTensor, Kernels, Session, SessionOptions,
};

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
    // No GPU on the machines these tests run on: whichever build is loaded, the session is
    // refused with a reason and a fix.
    let err = Session::from_model(&g.build().unwrap(), &opts).unwrap_err();
    let Error::DeviceUnavailable {
        device,
        reason,
        fix,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(device, "cuda:0");
    assert!(!reason.is_empty() && !fix.is_empty(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cuda:0 is unavailable: ") && msg.contains("\nhelp: "),
        "{msg}"
    );
    // The answer is remembered: asking again gives the same reason without a new attempt.
    let again = runtime::probe(Device::Cuda(0)).unwrap_err().to_string();
    assert_eq!(again, msg);
    // `auto` comes to the CPU, with that reason.
    let resolved = runtime::resolve(DeviceChoice::Auto).unwrap();
    assert_eq!(resolved.device, Device::Cpu);
    assert_eq!(resolved.fallback.as_deref(), Some(reason.as_str()));
}

#[test]
fn state_tensors_live_on_the_session_device_and_round_trip_through_the_host() {
    let mut g = Graph::new("double");
    let x = g.input("x", DType::F32, &[Dim::Fixed(3)]).unwrap();
    let y = g.add(x, x).unwrap();
    g.output(y, "y").unwrap();
    let mut s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let allocator = s.state_allocator().unwrap();
    assert_eq!(
        allocator.memory_info().allocation_device(),
        AllocationDevice::CPU
    );
    let mut input = DynTensor::new(&allocator, TensorElementType::Float32, vec![3_i64]).unwrap();
    let mut output = DynTensor::new(&allocator, TensorElementType::Float32, vec![3_i64]).unwrap();
    let host = HostTensor::f32(&[3], vec![1.0, -2.0, 0.5]).unwrap();
    runtime::write_host(&mut input, &host, "x").unwrap();
    let mut binding = s.ort().create_binding().unwrap();
    binding.bind_input("x", &input).unwrap();
    binding.bind_output("y", &mut output).unwrap();
    s.ort().run_binding(&binding).unwrap();
    drop(binding);
    assert_eq!(
        HostTensor::from_value(&output).unwrap().as_f32().unwrap(),
        &[2.0, -4.0, 1.0]
    );
    // A size mismatch is an error naming the tensor, not a partial write.
    let wrong = HostTensor::f32(&[2], vec![0.0, 0.0]).unwrap();
    let err = runtime::write_host(&mut input, &wrong, "x").unwrap_err();
    assert!(
        err.to_string().contains("`x` has 3 elements, 2 given"),
        "{err}"
    );
}

#[test]
fn arena_statistics_report_the_peak() {
    let mut g = Graph::new("big");
    let x = g.input("x", DType::F32, &[Dim::from("n")]).unwrap();
    let y = g.exp(x).unwrap();
    let z = g.add(y, x).unwrap();
    g.output(z, "z").unwrap();
    let mut s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let n = 1 << 20;
    let x = HostTensor::f32(&[n], vec![0.0; n as usize]).unwrap();
    s.run(&[("x", &x)]).unwrap();
    let stats = s
        .memory_stats()
        .unwrap()
        .expect("the CPU provider's arena keeps statistics");
    // The intermediate `exp(x)` (4 MiB) came from the arena.
    assert!(stats.max_in_use >= 4 << 20, "{stats:?}");
    assert!(stats.reserved >= stats.max_in_use, "{stats:?}");
    assert!(stats.in_use <= stats.max_in_use, "{stats:?}");
}

#[test]
fn devices_parse() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
    assert!("gpu".parse::<Device>().is_err());
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
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

/// Sessions whose graphs use pipe's CPU kernels, created by many threads at the same moment
/// (as matrix members starting together do), all load and agree: registering the kernels'
/// domain is not a race.
#[test]
fn sessions_with_pipe_kernels_load_from_many_threads_at_once() {
    let mut g = Graph::new("gelu_grad");
    g.set_kernels(Kernels::Host);
    let x = g.input("x", DType::F32, &[Dim::Fixed(4)]).unwrap();
    let y = g.gelu(x, true).unwrap();
    let loss = g.reduce_sum_all(y).unwrap();
    let grad = pipe_onnx::gradients(&mut g, loss, &[x]).unwrap()[0];
    g.output(grad, "dx").unwrap();
    let model = g.build().unwrap();
    let fused = model.proto().graph.as_ref().unwrap().node.iter();
    assert!(
        fused
            .filter(|n| n.domain.as_deref() == Some(HOST_KERNELS_DOMAIN))
            .count()
            == 1
    );
    let threads = 8;
    let start = std::sync::Barrier::new(threads);
    let answers: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let mut s = Session::from_model(&model, &SessionOptions::default())
                        .expect("the session loads");
                    let x = HostTensor::f32(&[4], vec![-2.0, -0.5, 0.5, 2.0]).unwrap();
                    let out = s.run(&[("x", &x)]).unwrap();
                    out["dx"].as_f32().unwrap().to_vec()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // gelu_tanh'(0.5) ≈ 0.8673 (from the tanh form's derivative).
    assert!((answers[0][2] - 0.8673).abs() < 1e-3, "{answers:?}");
}
