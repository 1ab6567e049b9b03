//! The process's one CPU arena, in a test binary of its own: every CPU session of a process
//! allocates from it, so other tests running beside this one would move its figures.

use pipe_onnx::{DType, Dim, Graph, HostTensor, Session, SessionOptions};

const MIB: u64 = 1 << 20;

#[test]
fn cpu_sessions_share_one_arena_that_grows_by_what_is_asked_and_is_reused() {
    let mut small = Graph::new("small");
    let x = small.input("x", DType::F32, &[Dim::Fixed(2)]).unwrap();
    let y = small.neg(x).unwrap();
    small.output(y, "y").unwrap();
    let mut small = Session::from_model(&small.build().unwrap(), &SessionOptions::default())
        .expect("run scripts/fetch-onnxruntime.sh first");
    let two = HostTensor::f32(&[2], vec![1.0, 2.0]).unwrap();
    small.run(&[("x", &two)]).unwrap();

    let mut big = Graph::new("big");
    let x = big.input("x", DType::F32, &[Dim::from("n")]).unwrap();
    let e = big.exp(x).unwrap();
    let z = big.add(e, x).unwrap();
    big.output(z, "z").unwrap();
    let mut big = Session::from_model(&big.build().unwrap(), &SessionOptions::default()).unwrap();
    // 68 MiB: just above a power of two, where an arena growing by powers of two reserves
    // about twice what it uses.
    let n = (68 * MIB / 4) as usize;
    let x = HostTensor::f32(&[n as i64], vec![0.0; n]).unwrap();
    big.run(&[("x", &x)]).unwrap();

    // The small session sees the big one's tensors (`exp(x)` and the output, 136 MiB): one
    // arena for both.
    let stats = small
        .memory_stats()
        .unwrap()
        .expect("the CPU arena keeps statistics");
    assert!(stats.max_in_use >= 136 * MIB, "{stats:?}");
    // Grown by what was asked: a power-of-two arena would hold 256 MiB or more here.
    assert!(
        stats.reserved <= stats.max_in_use + stats.max_in_use / 10 + 2 * MIB,
        "{stats:?}"
    );
    // The next run of the same shapes reuses those chunks: no memory pattern allocating one
    // block for the whole run beside them.
    big.run(&[("x", &x)]).unwrap();
    let again = small.memory_stats().unwrap().unwrap();
    assert_eq!(again.reserved, stats.reserved, "{stats:?} then {again:?}");
}
