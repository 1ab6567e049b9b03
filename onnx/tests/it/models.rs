//! Whole models: a miniature GPT-Neo-shaped classifier with symbolic `batch`/`seq`, checked by
//! the official `onnx` checker, run at several sizes, differentiated end to end; deterministic
//! bytes; external data.

use std::collections::BTreeMap;
use std::process::Command;

use pipe_onnx::{
    AdamW, DType, Dim, ExternalDataWriter, Graph, HostTensor, Model, Result, Session,
    SessionOptions, Tensor, TensorData, TrainParam,
};

use crate::util::{In, Rng, check_grad, fixed, run, session};

const VOCAB: i64 = 11;
const HIDDEN: i64 = 8;
const HEADS: i64 = 2;
const CLASSES: i64 = 3;
const MAX_POS: i64 = 16;
const WINDOW: i64 = 2;

fn param_shapes() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("wte", vec![VOCAB, HIDDEN]),
        ("wpe", vec![MAX_POS, HIDDEN]),
        ("ln.weight", vec![HIDDEN]),
        ("ln.bias", vec![HIDDEN]),
        ("q", vec![HIDDEN, HIDDEN]),
        ("k", vec![HIDDEN, HIDDEN]),
        ("v", vec![HIDDEN, HIDDEN]),
        ("mlp", vec![HIDDEN, HIDDEN]),
        ("score", vec![HIDDEN, CLASSES]),
    ]
}

/// ids [b, s] (i64), lengths [b] (i64), params → logits [b, C] at each row's last real token.
/// One block: LayerNorm → attention with a causal + local-window mask (no 1/√d scaling, like
/// GPT-Neo) → residual → gelu_new MLP → residual.
fn classifier(g: &mut Graph, ids: Tensor, lengths: Tensor, p: &[Tensor]) -> Result<Tensor> {
    let (b, s) = (g.shape(ids)[0].clone(), g.shape(ids)[1].clone());
    let hd = HIDDEN / HEADS;
    let tok = g.gather(p[0], ids, 0)?; // [b, s, H]
    let pos = g.range(&s, DType::I64)?; // [s]
    let pe = g.gather(p[1], pos, 0)?; // [s, H]
    let x = g.add(tok, pe)?;
    let h = g.with_scope("h.0.ln_1", |g| {
        g.layer_normalization(x, p[2], Some(p[3]), -1, 1e-5)
    })?;
    let attn = g.with_scope("h.0.attn", |g| {
        let heads = |g: &mut Graph, w: Tensor| -> Result<Tensor> {
            let t = g.matmul(h, w)?; // [b, s, H]
            let t = g.reshape(
                t,
                &[b.clone(), s.clone(), Dim::Fixed(HEADS), Dim::Fixed(hd)],
            )?;
            g.transpose(t, &[0, 2, 1, 3]) // [b, heads, s, hd]
        };
        let (q, k, v) = (heads(g, p[4])?, heads(g, p[5])?, heads(g, p[6])?);
        let kt = g.transpose(k, &[0, 1, 3, 2])?;
        let scores = g.matmul(q, kt)?; // [b, heads, s, s]
        let qi = g.unsqueeze(pos, &[1])?;
        let kj = g.unsqueeze(pos, &[0])?;
        let future = g.less(qi, kj)?;
        let causal = g.not(future)?;
        let dist = g.sub(qi, kj)?;
        let w = g.scalar(DType::I64, WINDOW as f64);
        let near = g.less(dist, w)?;
        let mask = g.and(causal, near)?; // [s, s]
        let min = g.scalar(DType::F32, f64::from(f32::MIN));
        let masked = g.where_(mask, scores, min)?;
        let probs = g.softmax(masked, -1)?;
        let ctx = g.matmul(probs, v)?; // [b, heads, s, hd]
        let ctx = g.transpose(ctx, &[0, 2, 1, 3])?;
        g.reshape(ctx, &[b.clone(), s.clone(), Dim::Fixed(HIDDEN)])
    })?;
    let x = g.add(x, attn)?;
    let m = g.with_scope("h.0.mlp", |g| {
        let t = g.matmul(x, p[7])?;
        g.gelu(t, true)
    })?;
    let x = g.add(x, m)?;
    let logits = g.with_scope("score", |g| g.matmul(x, p[8]))?; // [b, s, C]
    // Pool at each row's last real token: GatherElements along seq at length - 1.
    g.with_scope("pool", |g| {
        let one = g.scalar(DType::I64, 1.0);
        let last = g.sub(lengths, one)?;
        let last = g.reshape(last, &[b.clone(), Dim::Fixed(1), Dim::Fixed(1)])?;
        let idx = g.expand(last, &[b.clone(), Dim::Fixed(1), Dim::Fixed(CLASSES)])?;
        let picked = g.gather_elements(logits, idx, 1)?;
        g.reshape(picked, &[b.clone(), Dim::Fixed(CLASSES)])
    })
}

fn declare(g: &mut Graph) -> (Tensor, Tensor, Vec<Tensor>) {
    let ids = g
        .input(
            "input_ids",
            DType::I64,
            &[Dim::from("batch"), Dim::from("seq")],
        )
        .unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let params = param_shapes()
        .iter()
        .map(|(n, s)| g.input(n, DType::F32, &fixed(s)).unwrap())
        .collect();
    (ids, lengths, params)
}

fn forward_graph() -> Graph {
    let mut g = Graph::new("tiny_classifier");
    let (ids, lengths, p) = declare(&mut g);
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    let probs = g.softmax(logits, -1).unwrap();
    g.output(logits, "logits").unwrap();
    g.output(probs, "probs").unwrap();
    g
}

fn step_graph() -> Graph {
    let mut g = Graph::new("tiny_classifier_step");
    let (ids, lengths, p) = declare(&mut g);
    let labels = g
        .input("labels", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    let loss = g.softmax_cross_entropy_loss(logits, labels).unwrap();
    let params: Vec<TrainParam> = p
        .iter()
        .map(|&t| TrainParam {
            tensor: t,
            weight_decay: true,
        })
        .collect();
    AdamW {
        max_grad_norm: 1.0,
        ..AdamW::default()
    }
    .build_step(&mut g, loss, &params)
    .unwrap();
    g
}

fn random_params(seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(seed);
    param_shapes()
        .into_iter()
        .map(|(n, s)| {
            let c = s.iter().product::<i64>() as usize;
            let v = rng
                .vec(c, -0.5, 0.5)
                .into_iter()
                .map(|x| x as f32)
                .collect();
            (n.to_string(), HostTensor::f32(&s, v).unwrap())
        })
        .collect()
}

fn batch(b: i64, s: i64, seed: u64) -> (HostTensor, HostTensor) {
    let mut rng = Rng::new(seed);
    let ids = (0..b * s).map(|_| rng.below(VOCAB as u64) as i64).collect();
    let lengths = (0..b).map(|_| 1 + rng.below(s as u64) as i64).collect();
    (
        HostTensor::i64(&[b, s], ids).unwrap(),
        HostTensor::i64(&[b], lengths).unwrap(),
    )
}

#[test]
fn symbolic_forward_runs_at_several_sizes() {
    let mut s = session(&forward_graph());
    for (b, len, seed) in [(2, 5, 1), (3, 7, 2), (1, 1, 3)] {
        let mut feeds = random_params(9);
        let (ids, lengths) = batch(b, len, seed);
        feeds.insert("input_ids".into(), ids);
        feeds.insert("lengths".into(), lengths);
        let out = run(&mut s, &feeds);
        assert_eq!(out["logits"].shape(), &[b, CLASSES]);
        for row in out["probs"].as_f32().unwrap().chunks(CLASSES as usize) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn step_graph_runs_at_several_sizes() {
    let mut s = session(&step_graph());
    for (b, len, seed) in [(2, 5, 4), (4, 3, 5)] {
        let mut feeds = random_params(8);
        for (n, shape) in param_shapes() {
            for suffix in [".exp_avg", ".exp_avg_sq"] {
                feeds.insert(
                    format!("{n}{suffix}"),
                    HostTensor::zeros(DType::F32, &shape).unwrap(),
                );
            }
        }
        let (ids, lengths) = batch(b, len, seed);
        feeds.insert("input_ids".into(), ids);
        feeds.insert("lengths".into(), lengths);
        feeds.insert(
            "labels".into(),
            HostTensor::i64(&[b], (0..b).map(|i| i % CLASSES).collect()).unwrap(),
        );
        feeds.insert("lr".into(), HostTensor::scalar_f32(1e-3));
        feeds.insert("step".into(), HostTensor::scalar_f32(1.0));
        let out = run(&mut s, &feeds);
        assert!(out["loss"].to_f64_vec()[0].is_finite());
        assert!(out["grad_norm"].to_f64_vec()[0] > 0.0);
        assert_eq!(out["wte.updated"].shape(), &[VOCAB, HIDDEN]);
    }
}

#[test]
fn whole_classifier_gradients_match_finite_differences() {
    // Every parameter of the miniature model at once, in f32 (Gelu has no double kernel).
    let (ids, lengths) = batch(2, 4, 21);
    let mut inputs = vec![In::Fixed(ids), In::Fixed(lengths)];
    inputs.extend(
        param_shapes()
            .into_iter()
            .map(|(_, s)| In::Float(s, -0.5, 0.5)),
    );
    check_grad("classifier", DType::F32, 22, inputs, |g, x| {
        classifier(g, x[0], x[1], &x[2..])
    });
}

#[test]
fn same_graph_gives_same_bytes() {
    assert_eq!(
        step_graph().build().unwrap().to_bytes(),
        step_graph().build().unwrap().to_bytes()
    );
    assert_eq!(
        forward_graph().build().unwrap().to_bytes(),
        forward_graph().build().unwrap().to_bytes()
    );
}

/// The inference export: weights as initializers, here in an external data file.
fn export_graph() -> (Model, BTreeMap<String, HostTensor>) {
    let params = random_params(3);
    let mut g = Graph::new("tiny_export");
    let ids = g
        .input(
            "input_ids",
            DType::I64,
            &[Dim::from("batch"), Dim::from("seq")],
        )
        .unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let p: Vec<Tensor> = param_shapes()
        .iter()
        .map(|(n, s)| {
            let v = params[*n].as_f32().unwrap();
            g.initializer(n, TensorData::f32(s, v).unwrap()).unwrap()
        })
        .collect();
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    g.output(logits, "logits").unwrap();
    (g.build().unwrap(), params)
}

#[test]
fn external_data_export_matches_inputs_version() {
    let dir = tempfile::tempdir().unwrap();
    let (model, params) = export_graph();
    let path = dir.path().join("model.onnx");
    assert!(model.initializer_bytes() > 64);
    model.save(&path, Some(64)).unwrap();
    assert!(dir.path().join("model.onnx.data").is_file());
    let mut exported = Session::from_file(&path, &SessionOptions::default()).unwrap();
    let (ids, lengths) = batch(2, 6, 30);
    let a = exported
        .run(&[("input_ids", &ids), ("lengths", &lengths)])
        .unwrap();

    let mut fwd = session(&forward_graph());
    let mut feeds = params;
    feeds.insert("input_ids".into(), ids);
    feeds.insert("lengths".into(), lengths);
    let b = run(&mut fwd, &feeds);
    assert_eq!(a["logits"], b["logits"]);
}

#[test]
fn frozen_inputs_export_like_initializers() {
    // The training forward graph, with its parameter inputs frozen into initializers.
    let params = random_params(3);
    let mut g = Graph::new("frozen");
    let (ids, lengths, p) = declare(&mut g);
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    g.output(logits, "logits").unwrap();
    for (t, (name, shape)) in p.iter().zip(param_shapes()) {
        let data = TensorData::f32(&shape, params[name].as_f32().unwrap()).unwrap();
        g.freeze_input(*t, data).unwrap();
    }
    assert_eq!(g.inputs().len(), 2);
    let (export, _) = export_graph();
    let (ids, lengths) = batch(3, 4, 40);
    let mut a = session(&g);
    let mut b = Session::from_model(&export, &SessionOptions::default()).unwrap();
    let feeds = [("input_ids", &ids), ("lengths", &lengths)];
    assert_eq!(
        a.run(&feeds).unwrap()["logits"],
        b.run(&feeds).unwrap()["logits"]
    );
    let wrong = TensorData::f32(&[1], &[0.0]).unwrap();
    assert!(g.freeze_input(ids_tensor(&g), wrong).is_err());
}

#[test]
fn inputs_frozen_into_streamed_external_data_write_the_bytes_save_writes() {
    // Streamed: each parameter appended to the data file as it comes, the graph holding none.
    let dir = tempfile::tempdir().unwrap();
    let params = random_params(3);
    let streamed = dir.path().join("streamed.onnx");
    let mut g = Graph::new("frozen");
    let (ids, lengths, p) = declare(&mut g);
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    g.output(logits, "logits").unwrap();
    let mut data = ExternalDataWriter::create(&streamed, "weights.data").unwrap();
    for (t, (name, shape)) in p.iter().zip(param_shapes()) {
        let values = params[name].as_f32().unwrap();
        if values.len() * 4 > 64 {
            g.freeze_input_external(*t, data.append_f32(&shape, values).unwrap())
                .unwrap();
        } else {
            let inline = TensorData::f32(&shape, values).unwrap();
            g.freeze_input(*t, inline).unwrap();
        }
    }
    data.finish().unwrap();
    g.build()
        .unwrap()
        .write(&streamed, "unused.data", None)
        .unwrap();
    assert!(!dir.path().join("unused.data").exists());

    // Saved whole: the same graph with its weights inline, split out by `save`.
    let mut g = Graph::new("frozen");
    let (ids, lengths, p) = declare(&mut g);
    let logits = classifier(&mut g, ids, lengths, &p).unwrap();
    g.output(logits, "logits").unwrap();
    for (t, (name, shape)) in p.iter().zip(param_shapes()) {
        let data = TensorData::f32(&shape, params[name].as_f32().unwrap()).unwrap();
        g.freeze_input(*t, data).unwrap();
    }
    let saved = dir.path().join("saved").join("streamed.onnx");
    std::fs::create_dir(saved.parent().unwrap()).unwrap();
    let whole = g.build().unwrap();
    whole
        .save_with_data_file(&saved, "weights.data", Some(64))
        .unwrap();

    for name in ["streamed.onnx", "weights.data"] {
        let a = std::fs::read(dir.path().join(name)).unwrap();
        let b = std::fs::read(saved.with_file_name(name)).unwrap();
        assert!(
            a == b,
            "{name}: {} bytes streamed, {} saved",
            a.len(),
            b.len()
        );
    }
    let data_len = std::fs::metadata(dir.path().join("weights.data"))
        .unwrap()
        .len();
    assert!(data_len > 4096, "{data_len}: more than one aligned tensor");
    let (ids, lengths) = batch(2, 5, 11);
    let feeds = [("input_ids", &ids), ("lengths", &lengths)];
    let mut from_file = Session::from_file(&streamed, &SessionOptions::default()).unwrap();
    let mut in_memory = Session::from_model(&whole, &SessionOptions::default()).unwrap();
    assert_eq!(
        from_file.run(&feeds).unwrap()["logits"],
        in_memory.run(&feeds).unwrap()["logits"]
    );
    // A tensor whose bytes do not fit its dims is refused before anything is written.
    let mut data = ExternalDataWriter::create(&streamed, "other.data").unwrap();
    assert!(data.append_f32(&[2, 3], &[0.0; 5]).is_err());
}

fn ids_tensor(g: &Graph) -> Tensor {
    g.inputs()[0]
}

#[test]
fn graph_cache_writes_model_once_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SessionOptions {
        graph_cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let bytes = forward_graph().build().unwrap().to_bytes();
    Session::from_bytes(&bytes, &opts).unwrap();
    Session::from_bytes(&bytes, &opts).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
    let name = files[0].as_ref().unwrap().file_name();
    assert_eq!(
        name.to_string_lossy(),
        format!("{}.onnx", blake3::hash(&bytes).to_hex())
    );
}

/// Runs the official checker (`pip install onnx`) with `full_check=True` (shape inference too).
#[test]
fn onnx_checker_accepts_generated_models() {
    let probe = Command::new("python3").args(["-c", "import onnx"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the onnx checker test needs the Python package `onnx`: run `pip install onnx`\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            panic!("the onnx checker test needs python3 with `onnx` (`pip install onnx`): {e}")
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = export_graph();
    let mut models = vec![
        ("forward.onnx", forward_graph().build().unwrap()),
        ("step.onnx", step_graph().build().unwrap()),
        (
            "mlp_step.onnx",
            crate::mlp::step_graph(&AdamW::default()).0.build().unwrap(),
        ),
    ];
    let mut paths = Vec::new();
    for (name, m) in models.drain(..) {
        let p = dir.path().join(name);
        m.save(&p, None).unwrap();
        paths.push(p);
    }
    let p = dir.path().join("export.onnx");
    export.save(&p, Some(64)).unwrap();
    paths.push(p);
    for p in paths {
        let script = "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "onnx checker rejected {}:\n{}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn later_opsets_declare_their_ir_version_and_run_the_same() {
    let (model, _) = export_graph();
    assert_eq!(model.opset(), 20);
    assert!(model.clone().with_opset(19).is_err());
    assert!(model.clone().with_opset(27).is_err());
    let (ids, lengths) = batch(2, 5, 7);
    let feeds = [("input_ids", &ids), ("lengths", &lengths)];
    let mut base = Session::from_model(&model, &SessionOptions::default()).unwrap();
    let expected = base.run(&feeds).unwrap();
    // IR versions from onnx.helper.VERSION_TABLE.
    for (opset, ir) in [(21, 10), (23, 11), (24, 12), (26, 13)] {
        let later = model.clone().with_opset(opset).unwrap();
        assert_eq!(later.opset(), opset);
        assert_eq!(later.proto().ir_version, Some(ir));
        let mut s = Session::from_model(&later, &SessionOptions::default()).unwrap();
        assert_eq!(s.run(&feeds).unwrap()["logits"], expected["logits"]);
    }
}

#[test]
fn external_data_goes_to_the_named_file() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = export_graph();
    let path = dir.path().join("model.onnx");
    model
        .save_with_data_file(&path, "weights.data", Some(64))
        .unwrap();
    assert!(dir.path().join("weights.data").is_file());
    assert!(!dir.path().join("model.onnx.data").exists());
    let (ids, lengths) = batch(2, 4, 9);
    let feeds = [("input_ids", &ids), ("lengths", &lengths)];
    let mut from_file = Session::from_file(&path, &SessionOptions::default()).unwrap();
    let mut in_memory = Session::from_model(&model, &SessionOptions::default()).unwrap();
    assert_eq!(
        from_file.run(&feeds).unwrap()["logits"],
        in_memory.run(&feeds).unwrap()["logits"]
    );
}
