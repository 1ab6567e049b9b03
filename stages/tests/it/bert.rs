//! BERT and RoBERTa for sequence classification against Hugging Face `transformers`: the golden
//! fixtures in `tests/fixtures/{bert,roberta}/` (made by `bert/make_fixtures.py`) hold a tiny
//! random model, one right-padded batch and transformers' logits, loss, hidden states, every
//! gradient, the parameters after two clipped AdamW steps, a multi-label variant and (BERT)
//! the logits with token types. Everything here runs our ONNX graphs in ONNX Runtime.
//!
//! Tolerance: `|ours - hf| <= ATOL + RTOL * |hf|` (as the GPT-Neo tests), except after the
//! AdamW steps, where an element whose gradient is within rounding of 0 moves by up to `lr`
//! (`lr * g / (|g| + eps)`): those are checked to ±2·lr.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_engine::Input;
use pipe_models::bert::{BertConfig, BertForSequenceClassification};
use pipe_models::classifier::{
    ClassifierInput, ProblemType, SequenceClassifier, declare_labels, loss,
};
use pipe_models::dropout::Dropout;
use pipe_models::layers::Tokens;
use pipe_models::{ModelConfig, hf_folder, weights};
use pipe_onnx::{
    AdamW, DType, Dim, FlatTrainer, Graph, HostTensor, Kernels, Session, SessionOptions, Tensor,
    build_gradient_step, gradients,
};
use serde_json::{Value, json};

use crate::util::Workspace;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;
const FAMILIES: [&str; 2] = ["bert", "roberta"];

fn fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

/// One family's fixture: config, batch and expected tensors (name → shape, values).
struct Fixture {
    family: &'static str,
    config: BertConfig,
    batch: Value,
    expected: BTreeMap<String, (Vec<i64>, Vec<f32>)>,
}

fn fixture(family: &'static str) -> Fixture {
    let dir = fixture_dir(family);
    let config = match hf_folder::read_config(&dir).unwrap() {
        ModelConfig::Bert(c) => c,
        other => panic!("{family}: not a BERT config: {other:?}"),
    };
    let batch =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let expected = weights::load_all(&dir.join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, (t.shape().to_vec(), t.as_f32().unwrap().to_vec())))
        .collect();
    Fixture {
        family,
        config,
        batch,
        expected,
    }
}

impl Fixture {
    fn matrix_i64(&self, key: &str) -> HostTensor {
        let rows: Vec<Vec<i64>> = serde_json::from_value(self.batch[key].clone()).unwrap();
        let shape = [rows.len() as i64, rows[0].len() as i64];
        HostTensor::i64(&shape, rows.concat()).unwrap()
    }

    /// The weights, the batch (`input_ids`, `lengths`, `token_type_ids`) and `labels` for
    /// `problem`.
    fn feeds(&self, problem: ProblemType) -> BTreeMap<String, HostTensor> {
        let mut g = Graph::new("specs");
        let model = BertForSequenceClassification::new(&self.config, &mut g, None).unwrap();
        let dir = fixture_dir(self.family);
        let mut feeds =
            weights::load(&dir.join("weights.safetensors"), model.specs(), &[], 0).unwrap();
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

    fn expected(&self, name: &str) -> &(Vec<i64>, Vec<f32>) {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("{}: no expected {name}", self.family))
    }
}

/// The fixture's classifier in a fresh graph, with its loss for `problem`.
struct Built {
    g: Graph,
    model: BertForSequenceClassification,
    input: ClassifierInput,
    logits: Tensor,
    loss: Tensor,
}

fn build(fx: &Fixture, problem: ProblemType, kernels: Kernels, token_types: bool) -> Built {
    let mut g = Graph::new(fx.family);
    g.set_kernels(kernels);
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let token_type_ids = token_types.then(|| g.input("token_type_ids", DType::I64, &dims).unwrap());
    let model = BertForSequenceClassification::new(&fx.config, &mut g, None).unwrap();
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids,
    };
    let logits = model.logits(&mut g, &input).unwrap();
    let labels = declare_labels(&mut g, problem, fx.config.num_labels()).unwrap();
    let loss = loss(&mut g, logits, labels, problem).unwrap();
    Built {
        g,
        model,
        input,
        logits,
        loss,
    }
}

fn session(g: &Graph) -> Session {
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    Session::from_model(&g.build().unwrap(), &opts).unwrap()
}

fn run(s: &mut Session, feeds: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    let f: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    s.run(&f).unwrap()
}

/// Checks `ours` against `hf` where `keep` holds; returns the largest difference.
fn close_where(
    what: &str,
    ours: &[f32],
    hf: &[f32],
    atol: f64,
    keep: impl Fn(usize) -> bool,
) -> f64 {
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
    max
}

fn close(what: &str, ours: &HostTensor, hf: &(Vec<i64>, Vec<f32>)) -> f64 {
    assert_eq!(ours.shape(), hf.0.as_slice(), "{what}: shapes differ");
    close_where(what, ours.as_f32().unwrap(), &hf.1, ATOL, |_| true)
}

#[test]
fn bert_configs_parse_and_keep_their_keys() {
    for family in FAMILIES {
        let fx = fixture(family);
        let c = &fx.config;
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim()),
            (32, 2, 8)
        );
        assert_eq!(c.num_labels(), 4);
        // Keys pipe does not read come back out, so model/config.json keeps them.
        assert!(c.other.contains_key("chunk_size_feed_forward"), "{family}");
        let labels = ["a", "b", "c"].map(String::from);
        let written =
            pipe_models::Architecture::hf_config(c, &labels, ProblemType::MultiLabelClassification)
                .unwrap();
        assert_eq!(written["chunk_size_feed_forward"], json!(0));
        assert_eq!(written["pad_token_id"], fx.batch["pad_token_id"]);
        assert_eq!(written["num_labels"], json!(3));
        assert_eq!(written["label2id"]["c"], json!(2));
        assert_eq!(written["problem_type"], json!("multi_label_classification"));
        assert_eq!(written["model_type"], json!(family));
    }
    // RoBERTa's positions start after padding_idx: 24 rows hold rows of 22 tokens.
    assert_eq!(fixture("roberta").config.max_length(), 22);
    // What transformers refuses, pipe refuses, naming the key.
    let mut v: Value = serde_json::to_value(&fixture("bert").config).unwrap();
    v["position_embedding_type"] = json!("relative_key");
    let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
    assert!(e.contains("relative_key"), "{e}");
    v["position_embedding_type"] = json!("absolute");
    v["model_type"] = json!("t5");
    let e = ModelConfig::from_json(v).unwrap_err().to_string();
    assert!(e.contains("gpt_neo, bert, roberta"), "{e}");
}

#[test]
fn bert_forward_matches_transformers() {
    for family in FAMILIES {
        let fx = fixture(family);
        let Built {
            mut g,
            model,
            input,
            logits,
            loss,
        } = build(
            &fx,
            ProblemType::SingleLabelClassification,
            Kernels::Host,
            false,
        );
        let hidden = model
            .model
            .forward(&mut g, &input, false, &Dropout::none())
            .unwrap();
        g.output(logits, "logits").unwrap();
        g.output(loss, "loss").unwrap();
        g.output(hidden, "hidden").unwrap();
        if let Some(pooled) = model.pooled(&mut g, &input).unwrap() {
            g.output(pooled, "pooled").unwrap();
        }
        let out = run(
            &mut session(&g),
            &fx.feeds(ProblemType::SingleLabelClassification),
        );
        close(
            &format!("{family} logits"),
            &out["logits"],
            fx.expected("logits"),
        );
        close(&format!("{family} loss"), &out["loss"], fx.expected("loss"));
        if family == "bert" {
            close("bert pooled", &out["pooled"], fx.expected("pooled"));
        }
        // The last hidden state at real positions only.
        let lengths: Vec<usize> = serde_json::from_value(fx.batch["lengths"].clone()).unwrap();
        let (shape, want) = fx.expected("hidden_states");
        assert_eq!(out["hidden"].shape(), shape.as_slice());
        let (s, h) = (shape[1] as usize, shape[2] as usize);
        close_where(
            &format!("{family} hidden (real positions)"),
            out["hidden"].as_f32().unwrap(),
            want,
            ATOL,
            |i| i / h % s < lengths[i / (s * h)],
        );
    }
}

#[test]
fn bert_token_types_match_transformers() {
    let fx = fixture("bert");
    let Built { mut g, logits, .. } = build(
        &fx,
        ProblemType::SingleLabelClassification,
        Kernels::Host,
        true,
    );
    g.output(logits, "logits").unwrap();
    let mut feeds = fx.feeds(ProblemType::SingleLabelClassification);
    feeds.remove("labels");
    feeds.insert("token_type_ids".into(), fx.matrix_i64("token_type_ids"));
    let out = run(&mut session(&g), &feeds);
    close("bert tt_logits", &out["logits"], fx.expected("tt_logits"));
}

/// Every gradient, single- and multi-label, with pipe's CPU kernels and with standard ONNX.
#[test]
fn bert_gradients_match_transformers() {
    for family in FAMILIES {
        let fx = fixture(family);
        for (problem, prefix) in [
            (ProblemType::SingleLabelClassification, ""),
            (ProblemType::MultiLabelClassification, "ml_"),
        ] {
            for kernels in [Kernels::Host, Kernels::Standard] {
                let Built {
                    mut g,
                    model,
                    logits,
                    loss,
                    ..
                } = build(&fx, problem, kernels, false);
                let grads = gradients(&mut g, loss, model.vars().tensors()).unwrap();
                g.output(logits, "logits").unwrap();
                g.output(loss, "loss").unwrap();
                for (spec, &gr) in model.specs().iter().zip(&grads) {
                    g.output(gr, &format!("grad.{}", spec.name)).unwrap();
                }
                let out = run(&mut session(&g), &fx.feeds(problem));
                let what = format!("{family} {prefix}{kernels:?}");
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
                    let want = fx.expected(&format!("{prefix}{name}"));
                    assert_eq!(out[&name].shape(), want.0.as_slice(), "{name}");
                    close_where(&name, out[&name].as_f32().unwrap(), &want.1, 1e-5, |_| true);
                }
            }
        }
    }
}

/// Two clipped AdamW steps on the fixture batch through the flat trainer finetune uses.
#[test]
fn bert_two_adamw_steps_match_transformers() {
    for family in FAMILIES {
        let fx = fixture(family);
        let hp = &fx.batch["adamw"];
        let f = |k: &str| hp[k].as_f64().unwrap();
        let adamw = AdamW {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
            max_grad_norm: f("max_grad_norm"),
        };
        let Built {
            mut g, model, loss, ..
        } = build(
            &fx,
            ProblemType::SingleLabelClassification,
            Kernels::Host,
            false,
        );
        let sig = build_gradient_step(&mut g, loss, &model.train_params(&|_| true)).unwrap();
        let (params, batch): (BTreeMap<_, _>, BTreeMap<_, _>) = fx
            .feeds(ProblemType::SingleLabelClassification)
            .into_iter()
            .partition(|(name, _)| sig.layout.entry(name).is_some());
        let mut trainer =
            FlatTrainer::new(session(&g), sig, adamw, params, BTreeMap::new()).unwrap();
        let batch: Vec<(&str, &HostTensor)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for step in 0..hp["steps"].as_u64().unwrap() {
            let r = trainer.step(&batch, f("lr") as f32).unwrap();
            let norm = HostTensor::scalar_f32(r.grad_norm.unwrap());
            close(
                &format!("{family} grad_norm.{step}"),
                &norm,
                fx.expected(&format!("grad_norm.{step}")),
            );
        }
        let lr = f("lr");
        for spec in model.specs() {
            let got = trainer.state(&spec.name).unwrap();
            let want = fx.expected(&format!("after_step.{}", spec.name));
            let grad = &fx.expected(&format!("grad.{}", spec.name)).1;
            // Where the first gradient is within rounding of 0, Adam's normalised step can
            // take any sign: allow it two steps of lr.
            let tiny = |i: usize| grad[i].abs() <= 1e-6;
            close_where(&spec.name, got.as_f32().unwrap(), &want.1, ATOL, |i| {
                !tiny(i)
            });
            close_where(&spec.name, got.as_f32().unwrap(), &want.1, 2.0 * lr, tiny);
        }
    }
}

/// A WordLevel tokenizer over the fixtures' 99 ids, so the export stage takes the model.
pub(crate) fn word_level_tokenizer(vocab: usize) -> Value {
    let words: serde_json::Map<String, Value> =
        (0..vocab).map(|i| (format!("w{i}"), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "w2" }
    })
}

/// The exported bundle's `model.onnx` (with `token_type_ids`) gives transformers' logits.
#[test]
fn bert_exported_model_matches_transformers() {
    let fx = fixture("bert");
    let ws = Workspace::new();
    let dir = ws.path().join("model");
    let labels: Vec<String> = (0..4).map(|i| format!("label{i}")).collect();
    let mut g = Graph::new("specs");
    let model = BertForSequenceClassification::new(&fx.config, &mut g, None).unwrap();
    let params = weights::load(
        &fixture_dir("bert").join("weights.safetensors"),
        model.specs(),
        &[],
        0,
    )
    .unwrap();
    let problem = ProblemType::SingleLabelClassification;
    hf_folder::write(&dir, &fx.config, &labels, problem, model.specs(), &params).unwrap();
    let tokenizer = word_level_tokenizer(fx.config.vocab_size);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("labels.json"), json!(labels).to_string()).unwrap();
    let input = Input {
        name: "finetune".into(),
        stage: "finetune".into(),
        outputs: [("model".to_string(), dir)].into_iter().collect(),
    };
    let bundle = ws.run("export-onnx", json!({}), &[input]).unwrap();
    let info = bundle.json("bundle.json");
    assert_eq!(
        info["inputs"],
        json!(["input_ids", "attention_mask", "token_type_ids"])
    );
    assert_eq!(info["model"]["model_type"], json!("bert"));
    let mut s = Session::from_file(&bundle.path("model.onnx"), &SessionOptions::default()).unwrap();
    let (ids, mask) = (fx.matrix_i64("input_ids"), fx.matrix_i64("attention_mask"));
    for (types, want) in [
        (
            HostTensor::i64(
                ids.shape(),
                vec![0; ids.shape().iter().product::<i64>() as usize],
            )
            .unwrap(),
            "logits",
        ),
        (fx.matrix_i64("token_type_ids"), "tt_logits"),
    ] {
        let out = s
            .run(&[
                ("input_ids", &ids),
                ("attention_mask", &mask),
                ("token_type_ids", &types),
            ])
            .unwrap();
        close(
            &format!("exported {want}"),
            &out["logits"],
            fx.expected(want),
        );
    }
}
