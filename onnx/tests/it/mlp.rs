//! A small MLP classifier built with the builder and trained with the AdamW step graph and the
//! IoBinding [`Trainer`]; the same training fed back through plain `run` gives the same state.

use std::collections::BTreeMap;

use pipe_onnx::{
    AdamW, DType, Dim, Graph, HostTensor, Session, SessionOptions, StepSignature, Tensor,
    TrainParam, Trainer,
};

use crate::util::{Rng, run, session};

pub const FEATURES: usize = 4;
pub const HIDDEN: usize = 16;
pub const CLASSES: usize = 3;

/// Parameter names and shapes, Hugging Face style.
pub fn param_shapes() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("fc1.weight", vec![FEATURES as i64, HIDDEN as i64]),
        ("fc1.bias", vec![HIDDEN as i64]),
        ("norm.weight", vec![HIDDEN as i64]),
        ("norm.bias", vec![HIDDEN as i64]),
        ("fc2.weight", vec![HIDDEN as i64, CLASSES as i64]),
    ]
}

/// x [batch, F] → Linear → LayerNorm → Gelu(tanh) → Linear (no bias) → logits [batch, C].
pub fn forward(g: &mut Graph) -> (Tensor, Vec<Tensor>) {
    let batch = Dim::from("batch");
    let x = g
        .input("x", DType::F32, &[batch, Dim::from(FEATURES)])
        .unwrap();
    let params: Vec<Tensor> = param_shapes()
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
    let logits = g
        .with_scope("mlp", |g| {
            let h = g.with_scope("fc1", |g| {
                let h = g.matmul(x, params[0])?;
                g.add(h, params[1])
            })?;
            let h = g.with_scope("norm", |g| {
                g.layer_normalization(h, params[2], Some(params[3]), -1, 1e-5)
            })?;
            let h = g.gelu(h, true)?;
            g.with_scope("fc2", |g| g.matmul(h, params[4]))
        })
        .unwrap();
    (logits, params)
}

/// The step graph: forward, cross-entropy loss, AdamW; `logits` is an extra output.
pub fn step_graph(opt: &AdamW) -> (Graph, StepSignature) {
    let mut g = Graph::new("mlp_step");
    let (logits, params) = forward(&mut g);
    let labels = g
        .input("labels", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let loss = g.softmax_cross_entropy_loss(logits, labels).unwrap();
    g.output(loss, "loss").unwrap();
    g.output(logits, "logits").unwrap();
    let train: Vec<TrainParam> = params
        .iter()
        .enumerate()
        // weight decay on the matrices only, as Hugging Face exempts biases and norms
        .map(|(i, &t)| TrainParam {
            tensor: t,
            weight_decay: i == 0 || i == 4,
        })
        .collect();
    let sig = opt.build_step(&mut g, loss, &train).unwrap();
    (g, sig)
}

/// A linearly separable problem: label = argmax(A x) for a random A.
pub fn dataset(n: usize, seed: u64) -> (HostTensor, HostTensor) {
    let mut rng = Rng::new(seed);
    let a = rng.vec(CLASSES * FEATURES, -1.0, 1.0);
    let mut xs = Vec::with_capacity(n * FEATURES);
    let mut ys = Vec::with_capacity(n);
    while ys.len() < n {
        let x = rng.vec(FEATURES, -2.0, 2.0);
        let scores: Vec<f64> = (0..CLASSES)
            .map(|c| (0..FEATURES).map(|f| a[c * FEATURES + f] * x[f]).sum())
            .collect();
        let mut sorted = scores.clone();
        sorted.sort_by(f64::total_cmp);
        // keep a margin so the classes are cleanly separable
        if sorted[CLASSES - 1] - sorted[CLASSES - 2] < 0.2 {
            continue;
        }
        let label = (0..CLASSES)
            .max_by(|&i, &j| scores[i].total_cmp(&scores[j]))
            .unwrap();
        xs.extend(x.iter().map(|&v| v as f32));
        ys.push(label as i64);
    }
    (
        HostTensor::f32(&[n as i64, FEATURES as i64], xs).unwrap(),
        HostTensor::i64(&[n as i64], ys).unwrap(),
    )
}

pub fn init_params(seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    param_shapes()
        .into_iter()
        .map(|(n, s)| {
            let count = s.iter().product::<i64>() as usize;
            let v: Vec<f32> = match n {
                "norm.weight" => vec![1.0; count],
                "norm.bias" | "fc1.bias" => vec![0.0; count],
                _ => rng
                    .vec(count, -0.5, 0.5)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect(),
            };
            (n.to_string(), HostTensor::f32(&s, v).unwrap())
        })
        .collect()
}

fn accuracy(logits: &HostTensor, labels: &HostTensor) -> f64 {
    let l = logits.as_f32().unwrap();
    let y = labels.as_i64().unwrap();
    let correct = y
        .iter()
        .enumerate()
        .filter(|&(i, &label)| {
            let row = &l[i * CLASSES..(i + 1) * CLASSES];
            let pred = (0..CLASSES)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            pred as i64 == label
        })
        .count();
    correct as f64 / y.len() as f64
}

#[test]
fn mlp_learns_a_separable_problem() {
    let opt = AdamW {
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    let (g, sig) = step_graph(&opt);
    let s = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let mut trainer = Trainer::new(s, sig, &init_params(7)).unwrap();
    let (x, y) = dataset(200, 11);
    let mut losses = Vec::new();
    for step in 0..150 {
        let lr = 0.03 * (1.0 - step as f32 / 150.0); // linear decay, host-side schedule
        let r = trainer.step(&[("x", &x), ("labels", &y)], lr).unwrap();
        assert!(r.grad_norm.is_some_and(|n| n.is_finite()));
        assert_eq!(r.outputs["logits"].shape(), &[200, CLASSES as i64]);
        losses.push(r.loss);
    }
    assert!(losses[0] > 0.5, "initial loss {}", losses[0]);
    assert!(
        losses[149] < 0.25 * losses[0],
        "loss went from {} to {}",
        losses[0],
        losses[149]
    );

    // Evaluate the trained parameters with a separate forward graph.
    let mut fg = Graph::new("mlp_forward");
    let (logits, _) = forward(&mut fg);
    fg.output(logits, "logits").unwrap();
    let mut fs = session(&fg);
    let mut feeds = trainer.params().unwrap();
    feeds.insert("x".into(), x.clone());
    let out = run(&mut fs, &feeds);
    let acc = accuracy(&out["logits"], &y);
    assert!(acc >= 0.99, "training accuracy {acc}");
    assert_eq!(trainer.steps_done(), 150);
}

#[test]
fn io_binding_matches_plain_run() {
    let opt = AdamW {
        weight_decay: 0.1,
        max_grad_norm: 0.5,
        ..AdamW::default()
    };
    let (g, sig) = step_graph(&opt);
    let model = g.build().unwrap();
    let (x, y) = dataset(32, 5);
    let init = init_params(3);
    let steps = 8;

    let s = Session::from_model(&model, &SessionOptions::default()).unwrap();
    let mut trainer = Trainer::new(s, sig.clone(), &init).unwrap();
    let mut bound_losses = Vec::new();
    for i in 0..steps {
        bound_losses.push(
            trainer
                .step(&[("x", &x), ("labels", &y)], 0.01 + 0.001 * i as f32)
                .unwrap()
                .loss,
        );
    }

    let mut plain = Session::from_model(&model, &SessionOptions::default()).unwrap();
    let mut feeds: BTreeMap<String, HostTensor> = BTreeMap::new();
    for slot in &sig.state {
        let v = init
            .get(&slot.input)
            .cloned()
            .unwrap_or_else(|| HostTensor::zeros(slot.dtype, &slot.shape).unwrap());
        feeds.insert(slot.input.clone(), v);
    }
    feeds.insert("x".into(), x.clone());
    feeds.insert("labels".into(), y.clone());
    for (i, &bound) in bound_losses.iter().enumerate() {
        feeds.insert(
            sig.lr.clone(),
            HostTensor::scalar_f32(0.01 + 0.001 * i as f32),
        );
        feeds.insert(sig.step.clone(), HostTensor::scalar_f32((i + 1) as f32));
        let out = run(&mut plain, &feeds);
        let loss = out["loss"].to_f64_vec()[0] as f32;
        assert!(
            (loss - bound).abs() <= 1e-6 * loss.abs().max(1.0),
            "step {i}: {loss} vs {bound}"
        );
        for slot in &sig.state {
            feeds.insert(slot.input.clone(), out[&slot.output].clone());
        }
    }
    for slot in &sig.state {
        let bound = trainer.state(&slot.input).unwrap().to_f64_vec();
        let plain = feeds[&slot.input].to_f64_vec();
        for (k, (a, b)) in bound.iter().zip(&plain).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{}[{k}]: bound {a} vs plain {b}",
                slot.input
            );
        }
    }
    // A session of another graph is refused with the names it lacks.
    let mut fg = Graph::new("mlp_forward");
    let (logits, _) = forward(&mut fg);
    fg.output(logits, "logits").unwrap();
    let other = Session::from_model(&fg.build().unwrap(), &SessionOptions::default()).unwrap();
    let err = Trainer::new(other, sig.clone(), &init)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fc1.weight.exp_avg") && err.contains("lr"),
        "{err}"
    );
    // Parameters read back and written again round-trip.
    let w = trainer.param("fc1.weight").unwrap();
    trainer.set_param("fc1.weight", &w).unwrap();
    assert_eq!(trainer.param("fc1.weight").unwrap(), w);
    assert!(trainer.param("fc1.weight.exp_avg").is_err());
}
