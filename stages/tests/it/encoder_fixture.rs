//! What the encoder families' fixture tests share (`distilbert.rs`, `modernbert.rs`): a
//! family's fixture folder (`config.json`, `weights.safetensors`, `batch.json`,
//! `expected.safetensors`, made by its `make_fixtures.py` from transformers), the classifier
//! built through [`Architecture::classifier`], and the checks: logits, loss, every gradient
//! (single- and multi-label, pipe's CPU kernels and standard ONNX), two clipped AdamW steps,
//! and the exported bundle's logits.
//!
//! Tolerance: `|ours - hf| <= ATOL + RTOL * |hf|`, except after the AdamW steps, where an
//! element whose gradient is within rounding of 0 moves by up to `lr`: those are checked to
//! ±2·lr (as `bert.rs` does).

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_engine::Input;
use pipe_models::classifier::{
    ClassifierInput, ProblemType, SequenceClassifier, declare_labels, loss,
};
use pipe_models::layers::Tokens;
use pipe_models::{Architecture, ModelConfig, ParamSpec, hf_folder, weights};
use pipe_onnx::{
    AdamW, DType, Dim, FlatTrainer, Graph, HostTensor, Kernels, Session, SessionOptions, Tensor,
    build_gradient_step, gradients,
};
use serde_json::{Value, json};

use crate::util::Workspace;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// One family's fixture folder.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    pub(crate) config: ModelConfig,
    pub(crate) batch: Value,
    pub(crate) expected: BTreeMap<String, HostTensor>,
}

/// The fixture in `tests/fixtures/<family>/`.
pub(crate) fn fixture(family: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family);
    let config = hf_folder::read_config(&dir).unwrap();
    let batch =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let expected = weights::load_all(&dir.join("expected.safetensors")).unwrap();
    Fixture {
        dir,
        config,
        batch,
        expected,
    }
}

impl Fixture {
    pub(crate) fn matrix_i64(&self, key: &str) -> HostTensor {
        let rows: Vec<Vec<i64>> = serde_json::from_value(self.batch[key].clone()).unwrap();
        let shape = [rows.len() as i64, rows[0].len() as i64];
        HostTensor::i64(&shape, rows.concat()).unwrap()
    }

    pub(crate) fn weights(&self, specs: &[ParamSpec]) -> BTreeMap<String, HostTensor> {
        weights::load(&self.dir.join("weights.safetensors"), specs, &[], 0).unwrap()
    }

    /// The weights, `input_ids`, `lengths` and the `labels` of `problem`.
    pub(crate) fn feeds(
        &self,
        specs: &[ParamSpec],
        problem: ProblemType,
    ) -> BTreeMap<String, HostTensor> {
        let mut feeds = self.weights(specs);
        let lengths: Vec<i64> = serde_json::from_value(self.batch["lengths"].clone()).unwrap();
        let b = lengths.len() as i64;
        feeds.insert("input_ids".into(), self.matrix_i64("input_ids"));
        feeds.insert("lengths".into(), HostTensor::i64(&[b], lengths).unwrap());
        let labels = match problem {
            ProblemType::SingleLabelClassification => {
                let l: Vec<i64> = serde_json::from_value(self.batch["labels"].clone()).unwrap();
                HostTensor::i64(&[b], l).unwrap()
            }
            ProblemType::MultiLabelClassification => {
                let l: Vec<Vec<f32>> =
                    serde_json::from_value(self.batch["multilabel_labels"].clone()).unwrap();
                HostTensor::f32(&[b, l[0].len() as i64], l.concat()).unwrap()
            }
        };
        feeds.insert("labels".into(), labels);
        feeds
    }

    pub(crate) fn expected(&self, name: &str) -> &HostTensor {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("no expected {name}"))
    }
}

/// A classifier of `config` in a fresh graph, with its loss for `problem`.
pub(crate) struct Built {
    pub(crate) g: Graph,
    pub(crate) model: Box<dyn SequenceClassifier>,
    pub(crate) logits: Tensor,
    pub(crate) loss: Tensor,
}

pub(crate) fn build(config: &ModelConfig, problem: ProblemType, kernels: Kernels) -> Built {
    let mut g = Graph::new(config.model_type());
    g.set_kernels(kernels);
    let input = declare_input(&mut g);
    let model = config.classifier(&mut g, None).unwrap();
    let (logits, loss) = logits_and_loss(&mut g, model.as_ref(), &input, problem);
    Built {
        g,
        model,
        logits,
        loss,
    }
}

/// Declares `input_ids` and `lengths`.
pub(crate) fn declare_input(g: &mut Graph) -> ClassifierInput {
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    }
}

/// `model`'s logits on `input` and their loss for `problem` (declaring `labels`).
pub(crate) fn logits_and_loss(
    g: &mut Graph,
    model: &dyn SequenceClassifier,
    input: &ClassifierInput,
    problem: ProblemType,
) -> (Tensor, Tensor) {
    let logits = model.logits(g, input).unwrap();
    let num_labels = match g.shape(logits)[1] {
        Dim::Fixed(n) => n as usize,
        _ => panic!("logits of no fixed width"),
    };
    let labels = declare_labels(g, problem, num_labels).unwrap();
    let loss = loss(g, logits, labels, problem).unwrap();
    (logits, loss)
}

pub(crate) fn session(g: &Graph) -> Session {
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    Session::from_model(&g.build().unwrap(), &opts).unwrap()
}

pub(crate) fn run(
    s: &mut Session,
    feeds: &BTreeMap<String, HostTensor>,
) -> BTreeMap<String, HostTensor> {
    let f: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    s.run(&f).unwrap()
}

pub(crate) fn close_where(
    what: &str,
    ours: &[f32],
    hf: &[f32],
    atol: f64,
    keep: impl Fn(usize) -> bool,
) {
    assert_eq!(ours.len(), hf.len(), "{what}: lengths differ");
    let mut max = 0.0f64;
    for (i, (&a, &e)) in ours.iter().zip(hf).enumerate().filter(|(i, _)| keep(*i)) {
        let (a, e) = (f64::from(a), f64::from(e));
        let d = (a - e).abs();
        assert!(
            d <= atol + RTOL * e.abs(),
            "{what}[{i}]: ours {a}, transformers {e} (|diff| {d:.3e})"
        );
        max = max.max(d);
    }
    eprintln!("{what}: max |diff| {max:.2e}");
}

pub(crate) fn close(what: &str, ours: &HostTensor, hf: &HostTensor) {
    assert_eq!(ours.shape(), hf.shape(), "{what}: shapes differ");
    close_where(
        what,
        ours.as_f32().unwrap(),
        hf.as_f32().unwrap(),
        ATOL,
        |_| true,
    );
}

/// The hidden state `hidden` `[b, s, h]` against `expected` at the real positions only.
pub(crate) fn close_hidden(fx: &Fixture, hidden: &HostTensor, expected: &str) {
    let lengths: Vec<usize> = serde_json::from_value(fx.batch["lengths"].clone()).unwrap();
    let want = fx.expected(expected);
    assert_eq!(hidden.shape(), want.shape());
    let (s, h) = (want.shape()[1] as usize, want.shape()[2] as usize);
    close_where(
        "hidden (real positions)",
        hidden.as_f32().unwrap(),
        want.as_f32().unwrap(),
        ATOL,
        |i| i / h % s < lengths[i / (s * h)],
    );
}

/// Logits, loss and every gradient of `config` for `problem` against the expected tensors
/// `<prefix>logits`, `<prefix>loss` and `<prefix>grad.<name>`, with both kinds of kernels.
pub(crate) fn check_gradients(
    fx: &Fixture,
    config: &ModelConfig,
    problem: ProblemType,
    prefix: &str,
) {
    for kernels in [Kernels::Host, Kernels::Standard] {
        let Built {
            mut g,
            model,
            logits,
            loss,
            ..
        } = build(config, problem, kernels);
        let grads = gradients(&mut g, loss, model.vars().tensors()).unwrap();
        g.output(logits, "logits").unwrap();
        g.output(loss, "loss").unwrap();
        for (spec, &gr) in model.specs().iter().zip(&grads) {
            g.output(gr, &format!("grad.{}", spec.name)).unwrap();
        }
        let out = run(&mut session(&g), &fx.feeds(model.specs(), problem));
        let what = format!("{prefix}{kernels:?}");
        close(
            &format!("{what} logits"),
            &out["logits"],
            fx.expected(&format!("{prefix}logits")),
        );
        close(
            &format!("{what} loss"),
            &out["loss"],
            fx.expected(&format!("{prefix}loss")),
        );
        for spec in model.specs() {
            let name = format!("grad.{}", spec.name);
            close(
                &format!("{what} {name}"),
                &out[&name],
                fx.expected(&format!("{prefix}{name}")),
            );
        }
    }
}

/// Two clipped AdamW steps on the fixture batch through the flat trainer finetune uses:
/// `grad_norm.<step>` and `after_step.<name>`.
pub(crate) fn check_two_adamw_steps(fx: &Fixture) {
    let hp = &fx.batch["adamw"];
    let f = |k: &str| hp[k].as_f64().unwrap();
    let adamw = AdamW {
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        max_grad_norm: f("max_grad_norm"),
    };
    let problem = ProblemType::SingleLabelClassification;
    let Built {
        mut g, model, loss, ..
    } = build(&fx.config, problem, Kernels::Host);
    let sig = build_gradient_step(&mut g, loss, &model.train_params(&|_| true)).unwrap();
    let (params, batch): (BTreeMap<_, _>, BTreeMap<_, _>) = fx
        .feeds(model.specs(), problem)
        .into_iter()
        .partition(|(name, _)| sig.layout.entry(name).is_some());
    let mut trainer = FlatTrainer::new(session(&g), sig, adamw, params, BTreeMap::new()).unwrap();
    let batch: Vec<(&str, &HostTensor)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for step in 0..hp["steps"].as_u64().unwrap() {
        let r = trainer.step(&batch, f("lr") as f32).unwrap();
        close(
            &format!("grad_norm.{step}"),
            &HostTensor::scalar_f32(r.grad_norm.unwrap()),
            fx.expected(&format!("grad_norm.{step}")),
        );
    }
    let lr = f("lr");
    for spec in model.specs() {
        let got = trainer.state(&spec.name).unwrap();
        let want = fx.expected(&format!("after_step.{}", spec.name));
        let grad = fx
            .expected(&format!("grad.{}", spec.name))
            .as_f32()
            .unwrap();
        let tiny = |i: usize| grad[i].abs() <= 1e-6;
        let (got, want) = (got.as_f32().unwrap(), want.as_f32().unwrap());
        close_where(&spec.name, got, want, ATOL, |i| !tiny(i));
        close_where(&spec.name, got, want, 2.0 * lr, tiny);
    }
}

/// The exported bundle's `model.onnx` (`input_ids`, `attention_mask`) gives the fixture's
/// `logits`.
pub(crate) fn check_export(fx: &Fixture) {
    let ws = Workspace::new();
    let model_dir = ws.path().join("model");
    let labels: Vec<String> = (0..fx.config.num_labels())
        .map(|i| format!("label{i}"))
        .collect();
    let mut g = Graph::new("specs");
    let model = fx.config.classifier(&mut g, None).unwrap();
    let params = fx.weights(model.specs());
    let problem = ProblemType::SingleLabelClassification;
    hf_folder::write(
        &model_dir,
        &fx.config,
        &labels,
        problem,
        model.specs(),
        &params,
    )
    .unwrap();
    let words: serde_json::Map<String, Value> = (0..fx.config.vocab_size())
        .map(|i| (format!("w{i}"), json!(i)))
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "w2" }
    });
    std::fs::write(model_dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(model_dir.join("labels.json"), json!(labels).to_string()).unwrap();
    let input = Input {
        name: "finetune".into(),
        stage: "finetune".into(),
        outputs: [("model".to_string(), model_dir)].into_iter().collect(),
    };
    let bundle = ws.run("export-onnx", json!({}), &[input]).unwrap();
    let info = bundle.json("bundle.json");
    assert_eq!(info["inputs"], json!(["input_ids", "attention_mask"]));
    assert_eq!(info["model"]["model_type"], json!(fx.config.model_type()));
    let mut s = Session::from_file(&bundle.path("model.onnx"), &SessionOptions::default()).unwrap();
    let (ids, mask) = (fx.matrix_i64("input_ids"), fx.matrix_i64("attention_mask"));
    let out = s
        .run(&[("input_ids", &ids), ("attention_mask", &mask)])
        .unwrap();
    close("exported logits", &out["logits"], fx.expected("logits"));
}
