//! [`DeviceTrainer`] (flat state and the optimizer graphs in the session device's memory) run
//! on the CPU provider against [`FlatTrainer`] (host state, host AdamW, itself checked against
//! torch's formulas in `optim`): the same losses, gradient norms, parameters and moments after
//! several steps with gradient accumulation, clipping and weight decay, over one or several
//! pieces (the state's uploads and reads too), also over a parameter of 100,000 elements;
//! frozen inputs; and a resume from the state read back equal to an uninterrupted run.

use std::collections::BTreeMap;

use pipe_onnx::{
    AdamW, DType, DeviceTrainer, FlatTrainer, HostTensor, Session, SessionOptions, StepTrainer,
    build_gradient_step, step_trainer,
};

use crate::optim::{LinearData, linear_data, loss_graph};
use crate::util::{Rng, float_tensor};

/// Relative tolerance between the two trainers: the device variant sums the squared gradients
/// per piece in f64 in ONNX Runtime's order, the host per 32K elements in its own; everything
/// else is the same f32 arithmetic operation by operation. (On these tests the two agree to
/// the bit; the tolerance is what is promised.)
const RTOL: f64 = 1e-6;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= RTOL * a.abs().max(b.abs()) + 1e-7
}

/// The session of the gradient graph and the trainer's arguments; with `freeze_b`, `b` is a
/// frozen input and only `w` trains.
fn parts(
    data: &LinearData,
    freeze_b: bool,
) -> (
    Session,
    pipe_onnx::GradSignature,
    BTreeMap<String, HostTensor>,
    BTreeMap<String, HostTensor>,
) {
    let (mut g, loss, params) = loss_graph(DType::F32);
    let trained = if freeze_b { &params[..1] } else { &params[..] };
    let sig = build_gradient_step(&mut g, loss, trained).unwrap();
    let s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let (params, frozen) = data
        .init
        .clone()
        .into_iter()
        .partition(|(n, _)| sig.layout.entry(n).is_some());
    (s, sig, params, frozen)
}

fn host(data: &LinearData, opt: AdamW, freeze_b: bool) -> FlatTrainer {
    let (s, sig, params, frozen) = parts(data, freeze_b);
    FlatTrainer::new(s, sig, opt, params, frozen).unwrap()
}

fn device(data: &LinearData, opt: AdamW, freeze_b: bool, piece: Option<usize>) -> DeviceTrainer {
    let (s, sig, params, frozen) = parts(data, freeze_b);
    match piece {
        Some(n) => DeviceTrainer::with_piece_len(s, sig, opt, params, frozen, n).unwrap(),
        None => DeviceTrainer::new(s, sig, opt, params, frozen).unwrap(),
    }
}

/// One optimizer step of two micro-batches (shares 3/4 and 1/4); the loss and the norm.
fn step(t: &mut dyn StepTrainer, data: &LinearData, lr: f32) -> (f64, Option<f32>) {
    let a = t
        .accumulate(&[("x", &data.head.0), ("t", &data.head.1)], 0.75)
        .unwrap();
    let b = t
        .accumulate(&[("x", &data.tail.0), ("t", &data.tail.1)], 0.25)
        .unwrap();
    let norm = t.apply(lr).unwrap();
    (0.75 * f64::from(a.loss) + 0.25 * f64::from(b.loss), norm)
}

fn assert_same_state(want: &dyn StepTrainer, got: &dyn StepTrainer, what: &str) {
    assert_eq!(want.state_names(), got.state_names());
    for name in want.state_names() {
        let (ws, wv) = want.read_state(&name).unwrap();
        let (gs, gv) = got.read_state(&name).unwrap();
        assert_eq!(ws, gs, "{what}: shape of {name}");
        for (a, b) in wv.iter().zip(gv.iter()) {
            assert!(
                close(f64::from(*a), f64::from(*b)),
                "{what}: {name}: {b} (device) vs {a} (host)"
            );
        }
    }
}

fn check_against_host(opt: AdamW, freeze_b: bool, piece: Option<usize>, seed: u64) {
    let data = linear_data(seed);
    let mut h = host(&data, opt, freeze_b);
    let mut d = device(&data, opt, freeze_b, piece);
    assert!(d.apply(0.01).is_err(), "an update with no gradient");
    for n in 1..=5u32 {
        let lr = 0.02 / n as f32;
        let (hl, hn) = step(&mut h, &data, lr);
        let (dl, dn) = step(&mut d, &data, lr);
        let what = format!("step {n}, piece {piece:?}");
        assert!(close(hl, dl), "{what}: loss {dl} vs {hl}");
        match (hn, dn) {
            (Some(a), Some(b)) => {
                assert!(close(f64::from(a), f64::from(b)), "{what}: norm {b} vs {a}")
            }
            (None, None) => assert_eq!(opt.max_grad_norm, 0.0),
            other => panic!("{what}: norms {other:?}"),
        }
        assert_same_state(&h, &d, &what);
    }
    assert_eq!(d.steps_done(), 5);
    let moved = h.param("w").unwrap();
    assert!(
        moved
            .iter()
            .zip(data.init["w"].as_f32().unwrap())
            .any(|(a, b)| a != b),
        "training changed the weights"
    );
}

#[test]
fn device_state_trains_like_host_state_with_clipping_and_decay() {
    let opt = AdamW {
        weight_decay: 0.05,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    // One piece over everything, then pieces of 8 elements: the layout is `w` (6 elements,
    // padded to 16) then `b`, so pieces end inside padding and inside parameters.
    for piece in [None, Some(8)] {
        check_against_host(opt, false, piece, 11);
    }
}

#[test]
fn device_state_trains_like_host_state_without_clipping_or_decay() {
    let opt = AdamW {
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        ..AdamW::default()
    };
    check_against_host(opt, false, Some(16), 12);
}

#[test]
fn device_state_binds_frozen_inputs() {
    let opt = AdamW {
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    check_against_host(opt, true, None, 13);
    let data = linear_data(13);
    let d = device(&data, opt, true, None);
    assert_eq!(d.frozen().len(), 1);
    assert_eq!(d.frozen()[0].1, data.init["b"]);
    assert!(d.state("b").is_err(), "a frozen input is not state");
}

#[test]
fn device_state_resumes_from_the_state_read_back() {
    let opt = AdamW {
        weight_decay: 0.05,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    let data = linear_data(14);
    let lr = |n: u32| 0.01 * n as f32;
    let mut whole = device(&data, opt, false, None);
    let mut first = device(&data, opt, false, None);
    for n in 1..=2 {
        step(&mut whole, &data, lr(n));
        step(&mut first, &data, lr(n));
    }
    let saved: Vec<(String, HostTensor)> = first
        .state_names()
        .into_iter()
        .map(|n| {
            let t = first.state(&n).unwrap();
            (n, t)
        })
        .collect();
    let mut resumed = device(&data, opt, false, None);
    for (name, value) in &saved {
        resumed.set_state(name, value).unwrap();
    }
    resumed.set_steps_done(first.steps_done());
    for n in 3..=4 {
        let a = step(&mut whole, &data, lr(n));
        let b = step(&mut resumed, &data, lr(n));
        assert_eq!(a, b, "step {n}: loss and norm");
    }
    for name in whole.state_names() {
        assert_eq!(
            whole.state(&name).unwrap(),
            resumed.state(&name).unwrap(),
            "{name}"
        );
    }
    let wrong = HostTensor::f32(&[1], vec![0.0]).unwrap();
    let e = resumed.set_state("w", &wrong).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("[3, 2]"), "{e}");
    assert!(resumed.set_state("nope", &wrong).is_err());
}

#[test]
fn the_cpu_keeps_host_state_by_default() {
    let data = linear_data(15);
    let (s, sig, params, frozen) = parts(&data, false);
    let t = step_trainer(s, sig, AdamW::default(), params, frozen).unwrap();
    // Tests never set the switch in this process, so the CPU gets the host trainer.
    assert!(std::env::var(pipe_onnx::DEVICE_STATE_ENV).is_err());
    assert!(!t.state_on_device());
}

/// A parameter of 100,000 elements (several pieces of the device passes, several of the
/// host's norm) with clipping active: the norm summed piece by piece on both sides and the
/// updates agree after three steps.
#[test]
fn device_state_agrees_over_many_pieces() {
    const K: usize = 100_000;
    let opt = AdamW {
        weight_decay: 0.01,
        max_grad_norm: 1e-5,
        ..AdamW::default()
    };
    let mut rng = Rng::new(16);
    let x = float_tensor(DType::F32, &[2, K as i64], rng.vec(2 * K, -1.0, 1.0));
    let w0 = float_tensor(DType::F32, &[K as i64], rng.vec(K, -0.1, 0.1));
    let build = || {
        let mut g = pipe_onnx::Graph::new("wide");
        let xi = g
            .input(
                "x",
                DType::F32,
                &[pipe_onnx::Dim::from(2), pipe_onnx::Dim::from(K)],
            )
            .unwrap();
        let w = g
            .input("w", DType::F32, &[pipe_onnx::Dim::from(K)])
            .unwrap();
        let xw = g.mul(xi, w).unwrap();
        let sq = g.mul(xw, xw).unwrap();
        let loss = g.reduce_mean_all(sq).unwrap();
        let params = [pipe_onnx::TrainParam {
            tensor: w,
            weight_decay: true,
        }];
        let sig = build_gradient_step(&mut g, loss, &params).unwrap();
        let s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
        let init = BTreeMap::from([("w".to_string(), w0.clone())]);
        (s, sig, init)
    };
    let (s, sig, init) = build();
    let mut h = FlatTrainer::new(s, sig, opt, init, BTreeMap::new()).unwrap();
    let (s, sig, init) = build();
    let mut d = DeviceTrainer::with_piece_len(s, sig, opt, init, BTreeMap::new(), 30_000).unwrap();
    for n in 1..=3 {
        let a = StepTrainer::step(&mut h, &[("x", &x)], 0.01).unwrap();
        let b = StepTrainer::step(&mut d, &[("x", &x)], 0.01).unwrap();
        assert!(
            close(f64::from(a.loss), f64::from(b.loss)),
            "step {n}: loss"
        );
        let (na, nb) = (a.grad_norm.unwrap(), b.grad_norm.unwrap());
        assert!(
            close(f64::from(na), f64::from(nb)),
            "step {n}: {nb} vs {na}"
        );
        assert!(na > 1e-5, "step {n}: clipping is active ({na})");
        assert_same_state(&h, &d, &format!("step {n}"));
    }
}
