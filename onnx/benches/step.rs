//! Training-step benchmark: graph build, session creation, and one AdamW step of an MLP with
//! IoBinding (`Trainer`) against plain `run` calls.
//!
//! `cargo bench -p pipe-onnx --bench step` (set `STEPS`, `HIDDEN`, `THREADS` to change the run).
//! Prints one line per measurement; asserts nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipe_onnx::{
    AdamW, DType, Dim, Graph, HostTensor, Session, SessionOptions, StepSignature, TrainParam,
    Trainer,
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const FEATURES: i64 = 256;
const CLASSES: i64 = 8;
const BATCH: i64 = 64;

fn shapes(hidden: i64) -> Vec<(String, Vec<i64>)> {
    vec![
        ("fc1.weight".into(), vec![FEATURES, hidden]),
        ("fc1.bias".into(), vec![hidden]),
        ("fc2.weight".into(), vec![hidden, hidden]),
        ("fc2.bias".into(), vec![hidden]),
        ("norm.weight".into(), vec![hidden]),
        ("norm.bias".into(), vec![hidden]),
        ("head.weight".into(), vec![hidden, CLASSES]),
    ]
}

fn step_graph(hidden: i64) -> (Graph, StepSignature) {
    let mut g = Graph::new("bench_mlp");
    let x = g
        .input("x", DType::F32, &[Dim::from("batch"), Dim::Fixed(FEATURES)])
        .unwrap();
    let labels = g
        .input("labels", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let p: Vec<_> = shapes(hidden)
        .iter()
        .map(|(n, s)| {
            g.input(
                n,
                DType::F32,
                &s.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>(),
            )
            .unwrap()
        })
        .collect();
    let h = g.matmul(x, p[0]).unwrap();
    let h = g.add(h, p[1]).unwrap();
    let h = g.gelu(h, true).unwrap();
    let h2 = g.matmul(h, p[2]).unwrap();
    let h2 = g.add(h2, p[3]).unwrap();
    let h = g.add(h, h2).unwrap();
    let h = g
        .layer_normalization(h, p[4], Some(p[5]), -1, 1e-5)
        .unwrap();
    let logits = g.matmul(h, p[6]).unwrap();
    let loss = g.softmax_cross_entropy_loss(logits, labels).unwrap();
    let params: Vec<_> = p
        .iter()
        .map(|&t| TrainParam {
            tensor: t,
            weight_decay: true,
        })
        .collect();
    let opt = AdamW {
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    let sig = opt.build_step(&mut g, loss, &params).unwrap();
    (g, sig)
}

fn report(what: &str, d: Duration, per: usize) {
    println!("{what:<40} {:>10.3} ms", d.as_secs_f64() * 1e3 / per as f64);
}

fn main() {
    let steps = env("STEPS", 30);
    let hidden = env("HIDDEN", 1024) as i64;
    let threads = env("THREADS", 2);
    let opts = SessionOptions {
        intra_threads: Some(threads),
        ..Default::default()
    };

    let t = Instant::now();
    let (g, sig) = step_graph(hidden);
    let model = g.build().unwrap();
    let bytes = model.to_bytes();
    report("graph build + serialise", t.elapsed(), 1);
    let n_params: i64 = shapes(hidden)
        .iter()
        .map(|(_, s)| s.iter().product::<i64>())
        .sum();
    println!(
        "model: {} nodes, {} bytes, {n_params} parameters ({} state floats), batch {BATCH}, {threads} threads",
        model.proto().graph.as_ref().map_or(0, |g| g.node.len()),
        bytes.len(),
        3 * n_params
    );

    let t = Instant::now();
    let session = Session::from_bytes(&bytes, &opts).unwrap();
    report("session creation", t.elapsed(), 1);

    let init: BTreeMap<String, HostTensor> = shapes(hidden)
        .into_iter()
        .map(|(n, s)| {
            let c = s.iter().product::<i64>() as usize;
            let v = (0..c)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.05)
                .collect();
            (n, HostTensor::f32(&s, v).unwrap())
        })
        .collect();
    let x = HostTensor::f32(
        &[BATCH, FEATURES],
        (0..BATCH * FEATURES)
            .map(|i| ((i * 31 % 97) as f32) / 97.0 - 0.5)
            .collect(),
    )
    .unwrap();
    let y = HostTensor::i64(&[BATCH], (0..BATCH).map(|i| i % CLASSES).collect()).unwrap();

    // IoBinding, two buffers per state tensor.
    let mut trainer = Trainer::new(session, sig.clone(), &init).unwrap();
    trainer.step(&[("x", &x), ("labels", &y)], 1e-3).unwrap(); // warm-up
    let t = Instant::now();
    for _ in 0..steps {
        trainer.step(&[("x", &x), ("labels", &y)], 1e-3).unwrap();
    }
    report("step, IoBinding (Trainer)", t.elapsed(), steps);

    // Plain run, state as ORT values fed back (no host copies of the state).
    let mut plain = Session::from_bytes(&bytes, &opts).unwrap();
    let mut state: BTreeMap<String, ort::value::DynValue> = sig
        .state
        .iter()
        .map(|s| {
            let h = init
                .get(&s.input)
                .cloned()
                .unwrap_or_else(|| HostTensor::zeros(s.dtype, &s.shape).unwrap());
            (s.input.clone(), h.to_value().unwrap())
        })
        .collect();
    let mut run_plain = |n: usize| {
        for i in 0..n {
            let mut inputs: Vec<(String, ort::session::SessionInputValue)> = Vec::new();
            for (k, v) in std::mem::take(&mut state) {
                inputs.push((k, v.into()));
            }
            inputs.push(("x".into(), x.to_value().unwrap().into()));
            inputs.push(("labels".into(), y.to_value().unwrap().into()));
            inputs.push((
                "lr".into(),
                HostTensor::scalar_f32(1e-3).to_value().unwrap().into(),
            ));
            inputs.push((
                "step".into(),
                HostTensor::scalar_f32((i + 2) as f32)
                    .to_value()
                    .unwrap()
                    .into(),
            ));
            let mut out = plain.ort().run(inputs).unwrap();
            for s in &sig.state {
                state.insert(s.input.clone(), out.remove(s.output.as_str()).unwrap());
            }
        }
    };
    run_plain(1);
    let t = Instant::now();
    run_plain(steps);
    report("step, plain run (ORT values fed back)", t.elapsed(), steps);

    // Plain run through host memory (what a naive loop does).
    let mut host = Session::from_bytes(&bytes, &opts).unwrap();
    let mut feeds: BTreeMap<String, HostTensor> = sig
        .state
        .iter()
        .map(|s| {
            let h = init
                .get(&s.input)
                .cloned()
                .unwrap_or_else(|| HostTensor::zeros(s.dtype, &s.shape).unwrap());
            (s.input.clone(), h)
        })
        .collect();
    feeds.insert("x".into(), x.clone());
    feeds.insert("labels".into(), y.clone());
    feeds.insert("lr".into(), HostTensor::scalar_f32(1e-3));
    let t = Instant::now();
    for i in 0..steps {
        feeds.insert("step".into(), HostTensor::scalar_f32((i + 1) as f32));
        let f: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let out = host.run(&f).unwrap();
        for s in &sig.state {
            feeds.insert(s.input.clone(), out[&s.output].clone());
        }
    }
    report("step, plain run (host round trip)", t.elapsed(), steps);
}
