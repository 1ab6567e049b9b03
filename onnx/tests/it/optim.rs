//! The AdamW step graph against a plain-Rust `torch.optim.AdamW` (+ `clip_grad_norm_`) over
//! several steps, fed back through plain `Session::run`; and the flat-buffer AdamW of
//! [`FlatTrainer`] against the same reference and against the graph variant, and its gradient
//! accumulation against one step on the whole batch.

use std::collections::BTreeMap;

use pipe_onnx::{
    AdamW, DType, Dim, FlatTrainer, Graph, HostTensor, Session, SessionOptions, StepSignature,
    Tensor, TrainParam, build_gradient_step,
};

use crate::util::{Rng, float_tensor, run, session};

pub(crate) const N: usize = 4; // rows
pub(crate) const I: usize = 3; // inputs
pub(crate) const O: usize = 2; // outputs

/// Random data for [`loss_graph`] from `seed`: initial `w` and `b`, and the N rows of `x` and
/// `t` whole and cut into the first 3 rows and the rest.
pub(crate) struct LinearData {
    pub init: BTreeMap<String, HostTensor>,
    pub whole: (HostTensor, HostTensor),
    pub head: (HostTensor, HostTensor),
    pub tail: (HostTensor, HostTensor),
}

pub(crate) fn linear_data(seed: u64) -> LinearData {
    let mut rng = Rng::new(seed);
    let x = rng.vec(N * I, -1.0, 1.0);
    let t = rng.vec(N * O, -1.0, 1.0);
    let mut init = BTreeMap::new();
    init.insert(
        "w".to_string(),
        float_tensor(DType::F32, &[I as i64, O as i64], rng.vec(I * O, -1.0, 1.0)),
    );
    init.insert(
        "b".to_string(),
        float_tensor(DType::F32, &[O as i64], rng.vec(O, -1.0, 1.0)),
    );
    let rows = |from: usize, to: usize| {
        let n = (to - from) as i64;
        (
            float_tensor(DType::F32, &[n, I as i64], x[from * I..to * I].to_vec()),
            float_tensor(DType::F32, &[n, O as i64], t[from * O..to * O].to_vec()),
        )
    };
    LinearData {
        init,
        whole: rows(0, N),
        head: rows(0, 3),
        tail: rows(3, N),
    }
}

/// loss = mean((x w + b - t)²) over N×O, with w [I, O] (weight decay) and b [O] (none).
fn build(dtype: DType, opt: &AdamW) -> (Graph, StepSignature) {
    let (mut g, loss, params) = loss_graph(dtype);
    let sig = opt.build_step(&mut g, loss, &params).unwrap();
    (g, sig)
}

/// The loss above and its parameters.
pub(crate) fn loss_graph(dtype: DType) -> (Graph, Tensor, [TrainParam; 2]) {
    let mut g = Graph::new("adamw_test");
    let batch = Dim::from("batch");
    let x = g.input("x", dtype, &[batch.clone(), Dim::from(I)]).unwrap();
    let t = g.input("t", dtype, &[batch, Dim::from(O)]).unwrap();
    let w = g.input("w", dtype, &[Dim::from(I), Dim::from(O)]).unwrap();
    let b = g.input("b", dtype, &[Dim::from(O)]).unwrap();
    let xw = g.matmul(x, w).unwrap();
    let pred = g.add(xw, b).unwrap();
    let d = g.sub(pred, t).unwrap();
    let d2 = g.mul(d, d).unwrap();
    let loss = g.reduce_mean_all(d2).unwrap();
    let params = [
        TrainParam {
            tensor: w,
            weight_decay: true,
        },
        TrainParam {
            tensor: b,
            weight_decay: false,
        },
    ];
    (g, loss, params)
}

/// Gradients of the loss above, in f64.
fn reference_grads(x: &[f64], t: &[f64], w: &[f64], b: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let mut loss = 0.0;
    let mut gw = vec![0.0; I * O];
    let mut gb = vec![0.0; O];
    let scale = 2.0 / (N * O) as f64;
    for n in 0..N {
        for o in 0..O {
            let mut p = b[o];
            for i in 0..I {
                p += x[n * I + i] * w[i * O + o];
            }
            let d = p - t[n * O + o];
            loss += d * d / (N * O) as f64;
            gb[o] += scale * d;
            for i in 0..I {
                gw[i * O + o] += scale * d * x[n * I + i];
            }
        }
    }
    (loss, gw, gb)
}

struct RefState {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
}

/// torch.optim.AdamW, one parameter, gradient already clipped.
fn reference_step(s: &mut RefState, g: &[f64], lr: f64, t: f64, opt: &AdamW, decay: bool) {
    if decay {
        s.p.iter_mut()
            .for_each(|p| *p *= 1.0 - lr * opt.weight_decay);
    }
    let bc1 = 1.0 - opt.beta1.powf(t);
    let bc2 = 1.0 - opt.beta2.powf(t);
    for (((p, m), v), &g) in s.p.iter_mut().zip(&mut s.m).zip(&mut s.v).zip(g) {
        *m = opt.beta1 * *m + (1.0 - opt.beta1) * g;
        *v = opt.beta2 * *v + (1.0 - opt.beta2) * g * g;
        let denom = v.sqrt() / bc2.sqrt() + opt.eps;
        *p -= lr / bc1 * *m / denom;
    }
}

fn close(a: f64, b: f64, rtol: f64) -> bool {
    (a - b).abs() <= rtol * a.abs().max(b.abs()).max(1e-3)
}

fn check(opt: AdamW, dtype: DType, rtol: f64, seed: u64) {
    let (g, sig) = build(dtype, &opt);
    let mut s = session(&g);
    let mut rng = Rng::new(seed);
    let x = rng.vec(N * I, -1.0, 1.0);
    let t = rng.vec(N * O, -1.0, 1.0);
    let mut w = RefState {
        p: rng.vec(I * O, -1.0, 1.0),
        m: vec![0.0; I * O],
        v: vec![0.0; I * O],
    };
    let mut b = RefState {
        p: rng.vec(O, -1.0, 1.0),
        m: vec![0.0; O],
        v: vec![0.0; O],
    };
    // Graph state, fed back output → input each step.
    let mut feeds: BTreeMap<String, HostTensor> = BTreeMap::new();
    feeds.insert(
        "x".into(),
        float_tensor(dtype, &[N as i64, I as i64], x.clone()),
    );
    feeds.insert(
        "t".into(),
        float_tensor(dtype, &[N as i64, O as i64], t.clone()),
    );
    for slot in &sig.state {
        let init = match slot.input.as_str() {
            "w" => w.p.clone(),
            "b" => b.p.clone(),
            _ => vec![0.0; slot.shape.iter().product::<i64>() as usize],
        };
        feeds.insert(slot.input.clone(), float_tensor(dtype, &slot.shape, init));
    }
    for step in 1..=5 {
        let lr32 = 0.05f32 / step as f32;
        feeds.insert(sig.lr.clone(), HostTensor::scalar_f32(lr32));
        feeds.insert(sig.step.clone(), HostTensor::scalar_f32(step as f32));
        let out = run(&mut s, &feeds);

        let lr = f64::from(lr32);
        // reference
        let (loss, mut gw, mut gb) = reference_grads(&x, &t, &w.p, &b.p);
        let norm = gw.iter().chain(&gb).map(|g| g * g).sum::<f64>().sqrt();
        if opt.max_grad_norm > 0.0 {
            let coef = (opt.max_grad_norm / (norm + 1e-6)).min(1.0);
            gw.iter_mut().chain(gb.iter_mut()).for_each(|g| *g *= coef);
            let got =
                out[sig.grad_norm.as_ref().expect("clipping outputs grad_norm")].to_f64_vec()[0];
            assert!(
                close(got, norm, rtol.max(1e-6)),
                "step {step}: grad norm {got} vs {norm}"
            );
        }
        reference_step(&mut w, &gw, lr, step as f64, &opt, true);
        reference_step(&mut b, &gb, lr, step as f64, &opt, false);

        let got_loss = out[&sig.loss].to_f64_vec()[0];
        assert!(
            close(got_loss, loss, rtol),
            "step {step}: loss {got_loss} vs {loss}"
        );
        for (name, r) in [("w", &w), ("b", &b)] {
            for (suffix, want) in [("", &r.p), (".exp_avg", &r.m), (".exp_avg_sq", &r.v)] {
                let key = format!("{name}{suffix}.updated");
                let got = out[&key].to_f64_vec();
                for (k, (a, e)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        close(*a, *e, rtol),
                        "step {step}: {key}[{k}] = {a}, reference {e} ({opt:?})"
                    );
                }
            }
        }
        for slot in &sig.state {
            feeds.insert(slot.input.clone(), out[&slot.output].clone());
        }
    }
}

#[test]
fn adamw_matches_torch_formula_in_f64() {
    check(AdamW::default(), DType::F64, 1e-6, 1);
}

#[test]
fn adamw_with_weight_decay_and_clipping() {
    // max norm 0.05 is well below the gradient norm, so clipping is active every step.
    let opt = AdamW {
        weight_decay: 0.1,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    check(opt, DType::F64, 1e-6, 2);
}

#[test]
fn adamw_without_weight_decay_and_inactive_clipping() {
    let opt = AdamW {
        weight_decay: 0.0,
        max_grad_norm: 1e3,
        ..AdamW::default()
    };
    check(opt, DType::F64, 1e-6, 3);
}

#[test]
fn adamw_in_f32() {
    // f32 arithmetic against the f64 reference: agreement to f32 rounding accumulated over 5
    // steps (the f64 tests above hold the formula to 1e-6).
    let opt = AdamW {
        weight_decay: 0.05,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    check(opt, DType::F32, 1e-5, 4);
}

/// The flat trainer (gradient graph + host AdamW) against the f64 reference, and against the
/// step graph run on the same f32 data.
fn check_flat(opt: AdamW, seed: u64) {
    let (mut g, loss, params) = loss_graph(DType::F32);
    let sig = build_gradient_step(&mut g, loss, &params).unwrap();
    assert_eq!(
        sig.layout
            .entries
            .iter()
            .map(|e| e.offset)
            .collect::<Vec<_>>(),
        [0, 16],
        "parameters sit at 64-byte aligned offsets"
    );
    let s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let x = rng.vec(N * I, -1.0, 1.0);
    let t = rng.vec(N * O, -1.0, 1.0);
    let mut w = RefState {
        p: rng.vec(I * O, -1.0, 1.0),
        m: vec![0.0; I * O],
        v: vec![0.0; I * O],
    };
    let mut b = RefState {
        p: rng.vec(O, -1.0, 1.0),
        m: vec![0.0; O],
        v: vec![0.0; O],
    };
    let mut init = BTreeMap::new();
    init.insert(
        "w".to_string(),
        float_tensor(DType::F32, &[I as i64, O as i64], w.p.clone()),
    );
    init.insert(
        "b".to_string(),
        float_tensor(DType::F32, &[O as i64], b.p.clone()),
    );
    let mut trainer = FlatTrainer::new(s, sig, opt, init.clone(), BTreeMap::new()).unwrap();

    // The step graph on the same f32 data, fed back through plain runs.
    let (sg, ssig) = build(DType::F32, &opt);
    let mut graph = session(&sg);
    let xs = float_tensor(DType::F32, &[N as i64, I as i64], x.clone());
    let ts = float_tensor(DType::F32, &[N as i64, O as i64], t.clone());
    let mut feeds: BTreeMap<String, HostTensor> = init.clone();
    feeds.insert("x".into(), xs.clone());
    feeds.insert("t".into(), ts.clone());
    for slot in &ssig.state {
        feeds
            .entry(slot.input.clone())
            .or_insert_with(|| HostTensor::zeros(DType::F32, &slot.shape).unwrap());
    }
    for step in 1..=5u64 {
        let lr32 = 0.05f32 / step as f32;
        let r = trainer.step(&[("x", &xs), ("t", &ts)], lr32).unwrap();
        feeds.insert(ssig.lr.clone(), HostTensor::scalar_f32(lr32));
        feeds.insert(ssig.step.clone(), HostTensor::scalar_f32(step as f32));
        let out = run(&mut graph, &feeds);

        let lr = f64::from(lr32);
        let (loss, mut gw, mut gb) = reference_grads(&x, &t, &w.p, &b.p);
        let norm = gw.iter().chain(&gb).map(|g| g * g).sum::<f64>().sqrt();
        if opt.max_grad_norm > 0.0 {
            let coef = (opt.max_grad_norm / (norm + 1e-6)).min(1.0);
            gw.iter_mut().chain(gb.iter_mut()).for_each(|g| *g *= coef);
            let got = f64::from(r.grad_norm.expect("clipping reports the norm"));
            assert!(
                close(got, norm, 1e-5),
                "step {step}: grad norm {got} vs {norm}"
            );
        } else {
            assert_eq!(r.grad_norm, None);
        }
        reference_step(&mut w, &gw, lr, step as f64, &opt, true);
        reference_step(&mut b, &gb, lr, step as f64, &opt, false);
        assert!(
            close(f64::from(r.loss), loss, 1e-5),
            "step {step}: loss {} vs {loss}",
            r.loss
        );
        for (name, want) in [("w", &w), ("b", &b)] {
            for (suffix, want) in [
                ("", &want.p),
                (".exp_avg", &want.m),
                (".exp_avg_sq", &want.v),
            ] {
                let key = format!("{name}{suffix}");
                let got = trainer.state(&key).unwrap().to_f64_vec();
                let graph_got = out[&format!("{key}.updated")].to_f64_vec();
                for (k, ((a, e), gr)) in got.iter().zip(want.iter()).zip(&graph_got).enumerate() {
                    assert!(
                        close(*a, *e, 1e-5),
                        "step {step}: {key}[{k}] = {a}, reference {e}"
                    );
                    assert!(
                        close(*a, *gr, 1e-6),
                        "step {step}: {key}[{k}] = {a}, graph {gr}"
                    );
                }
            }
        }
        for slot in &ssig.state {
            feeds.insert(slot.input.clone(), out[&slot.output].clone());
        }
    }
    assert_eq!(trainer.steps_done(), 5);
    // State round-trips, and a moment is not a parameter.
    let m = trainer.state("w.exp_avg").unwrap();
    trainer.set_state("w.exp_avg", &m).unwrap();
    assert_eq!(trainer.state("w.exp_avg").unwrap(), m);
    assert!(trainer.param("w.exp_avg_sq").is_err());
    assert!(trainer.state("nope").is_err());
    let wrong = HostTensor::zeros(DType::F32, &[O as i64]).unwrap();
    assert!(
        trainer
            .set_state("w", &wrong)
            .unwrap_err()
            .to_string()
            .contains("`w`")
    );
}

#[test]
fn flat_adamw_with_weight_decay_and_clipping() {
    let opt = AdamW {
        weight_decay: 0.05,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    check_flat(opt, 5);
}

#[test]
fn flat_adamw_without_clipping() {
    check_flat(AdamW::default(), 6);
}

/// Micro-batches accumulated with their shares of the mean (3 rows and 1 row of the 4: 3/4
/// and 1/4) step exactly like the whole batch: the same gradient, the same clipped AdamW
/// update. An update with nothing accumulated is refused.
#[test]
fn accumulated_micro_batches_step_like_the_whole_batch() {
    let opt = AdamW {
        weight_decay: 0.05,
        max_grad_norm: 0.05,
        ..AdamW::default()
    };
    let LinearData {
        init,
        whole,
        head,
        tail,
    } = linear_data(7);
    let trainer = || {
        let (mut g, loss, params) = loss_graph(DType::F32);
        let sig = build_gradient_step(&mut g, loss, &params).unwrap();
        let s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
        FlatTrainer::new(s, sig, opt, init.clone(), BTreeMap::new()).unwrap()
    };
    let (mut one, mut two) = (trainer(), trainer());
    assert!(two.apply(0.01).is_err(), "an update with no gradient");
    for step in 1..=3 {
        let r = one.step(&[("x", &whole.0), ("t", &whole.1)], 0.01).unwrap();
        let a = two
            .accumulate(&[("x", &head.0), ("t", &head.1)], 0.75)
            .unwrap();
        let b = two
            .accumulate(&[("x", &tail.0), ("t", &tail.1)], 0.25)
            .unwrap();
        let norm = two.apply(0.01).unwrap().unwrap();
        let loss = 0.75 * f64::from(a.loss) + 0.25 * f64::from(b.loss);
        assert!(close(loss, f64::from(r.loss), 1e-6), "step {step}: loss");
        let whole_norm = f64::from(r.grad_norm.unwrap());
        assert!(
            close(f64::from(norm), whole_norm, 1e-6),
            "step {step}: norm"
        );
        for (g1, g2) in one.flat_state().grads.iter().zip(&two.flat_state().grads) {
            assert!(
                close(f64::from(*g2), f64::from(*g1), 1e-5),
                "step {step}: {g2} vs {g1}"
            );
        }
        for name in ["w", "b"] {
            let (p1, p2) = (one.param(name).unwrap(), two.param(name).unwrap());
            for (a, b) in p1.iter().zip(&p2) {
                assert!(
                    close(f64::from(*b), f64::from(*a), 1e-5),
                    "step {step}: {name}"
                );
            }
        }
    }
    assert_eq!(two.steps_done(), 3);
}
