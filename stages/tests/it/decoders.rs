//! The decoder families for sequence classification against Hugging Face `transformers` and
//! PEFT: the Llama family (Llama, Mistral, Qwen2, Qwen3) and GPT-2. The golden fixtures in
//! `tests/fixtures/{llama,qwen2,qwen3,mistral}/` (made by `llama/make_fixtures.py`) and
//! `tests/fixtures/gpt2/` (`gpt2/make_fixtures.py`) hold a tiny random model per config, one
//! right-padded batch and transformers' logits, loss, every gradient and the parameters after
//! two clipped AdamW steps. The configs cover grouped-query attention, `llama3` rope scaling,
//! untied (with a causal LM's `lm_head.weight` in the checkpoint) and tied embeddings, Qwen2's
//! biases, Qwen3's q/k norms and `head_dim`, Mistral's sliding window and GPT-2's Conv1D
//! layout. LoRA against PEFT: `tests/fixtures/peft_llama/` (a Qwen2) and `peft_gpt2/`.
//!
//! Tolerance: `|ours - hf| <= ATOL + RTOL * |hf|` (as the GPT-Neo and BERT tests), except
//! after the AdamW steps, where an element whose first gradient is within ATOL of 0 (so its
//! sign is not pinned down by the gradient check) moves by up to `lr` either way: those are
//! checked to ±2·lr.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_engine::Input;
use pipe_models::classifier::{
    ClassifierInput, ProblemType, SequenceClassifier, declare_labels, loss,
};
use pipe_models::dropout::DropoutSites;
use pipe_models::layers::Tokens;
use pipe_models::llama::{LlamaConfig, Rope, RopeScaling};
use pipe_models::lora::{self, LoraParams};
use pipe_models::{Architecture, ModelConfig, hf_folder, weights};
use pipe_onnx::{
    AdamW, DType, Dim, FlatTrainer, Graph, HostTensor, Kernels, Session, SessionOptions,
    StepTrainer, Tensor, build_gradient_step, gradients,
};
use pipe_stages::finetune::{StepGraph, Trained};
use serde_json::{Value, json};

use crate::bert::word_level_tokenizer;
use crate::peft::{assert_close, feeds as peft_feeds, one_thread_trainer, train_and_check};
use crate::util::Workspace;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;
const CONFIGS: [&str; 5] = ["llama", "qwen2", "qwen3", "mistral", "gpt2"];
/// The Llama family's fixtures.
const LLAMAS: [&str; 4] = ["llama", "qwen2", "qwen3", "mistral"];

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One config's fixture: config, batch and expected tensors (name → shape, values).
struct Fixture {
    name: &'static str,
    config: ModelConfig,
    batch: Value,
    expected: BTreeMap<String, (Vec<i64>, Vec<f32>)>,
}

fn fixture(name: &'static str) -> Fixture {
    let dir = fixture_dir(name);
    let config = hf_folder::read_config(&dir).unwrap();
    assert_eq!(config.model_type(), name);
    let batch =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let expected = weights::load_all(&dir.join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, (t.shape().to_vec(), t.as_f32().unwrap().to_vec())))
        .collect();
    Fixture {
        name,
        config,
        batch,
        expected,
    }
}

impl Fixture {
    fn llama(&self) -> &LlamaConfig {
        match &self.config {
            ModelConfig::Llama(c) => c,
            other => panic!("{}: not a Llama config: {other:?}", self.name),
        }
    }

    fn matrix_i64(&self, key: &str) -> HostTensor {
        let rows: Vec<Vec<i64>> = serde_json::from_value(self.batch[key].clone()).unwrap();
        let shape = [rows.len() as i64, rows[0].len() as i64];
        HostTensor::i64(&shape, rows.concat()).unwrap()
    }

    fn params(&self) -> BTreeMap<String, HostTensor> {
        let mut g = Graph::new("specs");
        let model = self.config.classifier(&mut g, None).unwrap();
        let path = fixture_dir(self.name).join("weights.safetensors");
        weights::load(&path, model.specs(), &[], 0).unwrap()
    }

    /// The weights, the batch (`input_ids`, `lengths`) and `labels`.
    fn feeds(&self) -> BTreeMap<String, HostTensor> {
        let mut feeds = self.params();
        let lengths: Vec<i64> = serde_json::from_value(self.batch["lengths"].clone()).unwrap();
        let b = lengths.len() as i64;
        feeds.insert("input_ids".into(), self.matrix_i64("input_ids"));
        feeds.insert("lengths".into(), HostTensor::i64(&[b], lengths).unwrap());
        let labels: Vec<i64> = serde_json::from_value(self.batch["labels"].clone()).unwrap();
        feeds.insert("labels".into(), HostTensor::i64(&[b], labels).unwrap());
        feeds
    }

    fn expected(&self, name: &str) -> &(Vec<i64>, Vec<f32>) {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("{}: no expected {name}", self.name))
    }
}

/// The fixture's classifier in a fresh graph, with its single-label loss.
struct Built {
    g: Graph,
    model: Box<dyn SequenceClassifier>,
    logits: Tensor,
    loss: Tensor,
}

fn build(fx: &Fixture, kernels: Kernels) -> Built {
    let mut g = Graph::new(fx.name);
    g.set_kernels(kernels);
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let model = fx.config.classifier(&mut g, None).unwrap();
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    };
    let logits = model.logits(&mut g, &input).unwrap();
    let problem = ProblemType::SingleLabelClassification;
    let labels = declare_labels(&mut g, problem, fx.config.num_labels()).unwrap();
    let loss = loss(&mut g, logits, labels, problem).unwrap();
    Built {
        g,
        model,
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
fn llama_configs_parse_cover_their_features_and_keep_their_keys() {
    let llama = fixture("llama");
    let c = llama.llama();
    assert_eq!((c.num_key_value_heads(), c.head_dim()), (2, 8));
    assert_eq!(
        c.rope().unwrap(),
        Rope {
            theta: 10000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            },
        }
    );
    let qwen3 = fixture("qwen3");
    assert_eq!(qwen3.llama().head_dim(), 16);
    let mistral = fixture("mistral");
    assert_eq!(
        (mistral.llama().window(0), mistral.llama().window(1)),
        (Some(4), Some(4))
    );
    assert_eq!(fixture("qwen2").llama().window(0), None);
    for name in LLAMAS {
        let fx = fixture(name);
        let labels = ["a", "b", "c"].map(String::from);
        let written = fx
            .config
            .hf_config(&labels, ProblemType::MultiLabelClassification)
            .unwrap();
        assert_eq!(written["model_type"], json!(name));
        assert_eq!(written["pad_token_id"], fx.batch["pad_token_id"]);
        assert_eq!(written["num_labels"], json!(3));
        assert_eq!(
            written["rope_parameters"],
            fx.llama().other["rope_parameters"]
        );
        assert!(written["tie_word_embeddings"].is_boolean(), "{name}");
        // The written config reads back as the same family and shape.
        let back = ModelConfig::from_json(written).unwrap();
        assert_eq!(back.model_type(), name);
        assert_eq!(back.hidden_size(), fx.config.hidden_size());
    }
}

/// Configs in the form of the hub's checkpoints (`rope_theta`, `rope_scaling`), and what
/// pipe refuses, each naming the key.
#[test]
fn llama_configs_in_hub_form_and_refusals() {
    let mut v: Value = serde_json::to_value(fixture("llama").llama()).unwrap();
    let map = v.as_object_mut().unwrap();
    map.remove("rope_parameters");
    map.insert("rope_theta".into(), json!(500000.0));
    map.insert(
        "rope_scaling".into(),
        json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    );
    let ModelConfig::Llama(c) = ModelConfig::from_json(v.clone()).unwrap() else {
        panic!("not a Llama config")
    };
    let rope = c.rope().unwrap();
    assert_eq!(rope.theta, 500000.0);
    assert!(matches!(rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));

    v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
    let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
    assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
    v["rope_scaling"] = Value::Null;

    // No pad id and no end-of-text id: the error says how to set one.
    v["pad_token_id"] = Value::Null;
    v["eos_token_id"] = Value::Null;
    let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
    assert!(e.contains("pad_token_id"), "{e}");
    // An end-of-text id (a list, as Llama 3's) stands in for it.
    v["eos_token_id"] = json!([5, 6]);
    let ModelConfig::Llama(c) = ModelConfig::from_json(v.clone()).unwrap() else {
        panic!("not a Llama config")
    };
    assert_eq!(c.pad_token_id().unwrap(), 5);
    // A pad id outside the vocabulary (the config's own, or the end-of-text id standing in
    // for it) is refused: transformers cannot load a model that pads with it.
    for (pad, eos) in [
        (json!(100_000), json!(2)),
        (json!(-1), json!(2)),
        (Value::Null, json!(5000)),
    ] {
        v["pad_token_id"] = pad;
        v["eos_token_id"] = eos;
        let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
        assert!(e.contains("not a token of its vocabulary (0 to 98)"), "{e}");
    }
    v["pad_token_id"] = json!(0);
    v["eos_token_id"] = json!(2);

    // Qwen's sliding window needs `use_sliding_window`, as transformers reads the config:
    // without it no layer slides, and `layer_types` marking one is refused.
    let mut q: Value = serde_json::to_value(fixture("qwen3").llama()).unwrap();
    q["sliding_window"] = json!(3);
    q["layer_types"] = json!(["sliding_attention", "full_attention"]);
    q["use_sliding_window"] = json!(false);
    let e = ModelConfig::from_json(q.clone()).unwrap_err().to_string();
    assert!(e.contains("use_sliding_window: true"), "{e}");
    q["use_sliding_window"] = json!(true);
    let ModelConfig::Llama(c) = ModelConfig::from_json(q.clone()).unwrap() else {
        panic!("not a Llama config")
    };
    assert_eq!((c.window(0), c.window(1)), (Some(3), None));
    // Without `layer_types`, layers from `max_window_layers` on slide (transformers' 28 when
    // the config leaves it out).
    q["layer_types"] = Value::Null;
    q["max_window_layers"] = json!(1);
    let ModelConfig::Llama(c) = ModelConfig::from_json(q).unwrap() else {
        panic!("not a Llama config")
    };
    assert_eq!((c.window(0), c.window(1)), (None, Some(3)));

    v["num_key_value_heads"] = json!(3);
    let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
    v["num_key_value_heads"] = json!(2);
    v["hidden_act"] = json!("gelu");
    let e = ModelConfig::from_json(v.clone()).unwrap_err().to_string();
    assert!(e.contains("hidden_act"), "{e}");

    v["model_type"] = json!("t5");
    let e = ModelConfig::from_json(v).unwrap_err().to_string();
    assert!(e.contains("llama, mistral, qwen2, qwen3"), "{e}");
}

/// GPT-2's config: Conv1D shapes `[in, out]`, the pad id from `eos_token_id` when the config
/// has none (as GPT-2's hub config), and the written config reads back.
#[test]
fn gpt2_config_parses_and_pads_with_eos() {
    let fx = fixture("gpt2");
    let mut g = Graph::new("specs");
    let model = fx.config.classifier(&mut g, None).unwrap();
    let shape = |name: &str| {
        let spec = model.specs().iter().find(|s| s.name == name).unwrap();
        spec.shape.clone()
    };
    assert_eq!(shape("transformer.h.0.attn.c_attn.weight"), [32, 96]);
    assert_eq!(shape("transformer.h.0.mlp.c_fc.weight"), [32, 40]);
    assert_eq!(shape("transformer.h.0.mlp.c_proj.weight"), [40, 32]);
    let mut v: Value = read_json(fixture_dir("gpt2").join("config.json"));
    v["pad_token_id"] = Value::Null;
    v["eos_token_id"] = json!(50);
    let config = ModelConfig::from_json(v.clone()).unwrap();
    let labels = ["a", "b"].map(String::from);
    let written = config
        .hf_config(&labels, ProblemType::SingleLabelClassification)
        .unwrap();
    assert_eq!(written["pad_token_id"], json!(50));
    assert_eq!(
        written["architectures"],
        json!(["GPT2ForSequenceClassification"])
    );
    assert_eq!(
        ModelConfig::from_json(written).unwrap().model_type(),
        "gpt2"
    );
    v["eos_token_id"] = Value::Null;
    let e = ModelConfig::from_json(v).unwrap_err().to_string();
    assert!(e.contains("pad_token_id"), "{e}");
}

#[test]
fn decoder_forward_matches_transformers() {
    for name in CONFIGS {
        let fx = fixture(name);
        let Built {
            mut g,
            logits,
            loss,
            ..
        } = build(&fx, Kernels::Host);
        g.output(logits, "logits").unwrap();
        g.output(loss, "loss").unwrap();
        let out = run(&mut session(&g), &fx.feeds());
        close(
            &format!("{name} logits"),
            &out["logits"],
            fx.expected("logits"),
        );
        close(&format!("{name} loss"), &out["loss"], fx.expected("loss"));
    }
}

/// Every gradient, with pipe's CPU kernels and with standard ONNX.
#[test]
fn decoder_gradients_match_transformers() {
    for name in CONFIGS {
        let fx = fixture(name);
        let feeds = fx.feeds();
        for kernels in [Kernels::Host, Kernels::Standard] {
            let Built {
                mut g, model, loss, ..
            } = build(&fx, kernels);
            let grads = gradients(&mut g, loss, model.vars().tensors()).unwrap();
            g.output(loss, "loss").unwrap();
            for (spec, &gr) in model.specs().iter().zip(&grads) {
                g.output(gr, &format!("grad.{}", spec.name)).unwrap();
            }
            let out = run(&mut session(&g), &feeds);
            close(
                &format!("{name} {kernels:?} loss"),
                &out["loss"],
                fx.expected("loss"),
            );
            for spec in model.specs() {
                let key = format!("grad.{}", spec.name);
                let want = fx.expected(&key);
                assert_eq!(out[&key].shape(), want.0.as_slice(), "{name} {key}");
                close_where(
                    &format!("{name} {key}"),
                    out[&key].as_f32().unwrap(),
                    &want.1,
                    ATOL,
                    |_| true,
                );
            }
        }
    }
}

/// Two clipped AdamW steps on the fixture batch through the flat trainer finetune uses.
#[test]
fn decoder_two_adamw_steps_match_transformers() {
    for name in CONFIGS {
        let fx = fixture(name);
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
        } = build(&fx, Kernels::Host);
        let sig = build_gradient_step(&mut g, loss, &model.train_params(&|_| true)).unwrap();
        let (params, batch): (BTreeMap<_, _>, BTreeMap<_, _>) = fx
            .feeds()
            .into_iter()
            .partition(|(n, _)| sig.layout.entry(n).is_some());
        let mut trainer =
            FlatTrainer::new(session(&g), sig, adamw, params, BTreeMap::new()).unwrap();
        let batch: Vec<(&str, &HostTensor)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for step in 0..hp["steps"].as_u64().unwrap() {
            let r = trainer.step(&batch, f("lr") as f32).unwrap();
            let norm = HostTensor::scalar_f32(r.grad_norm.unwrap());
            close(
                &format!("{name} grad_norm.{step}"),
                &norm,
                fx.expected(&format!("grad_norm.{step}")),
            );
        }
        let lr = f("lr");
        for spec in model.specs() {
            let got = trainer.state(&spec.name).unwrap();
            let want = fx.expected(&format!("after_step.{}", spec.name));
            let grad = &fx.expected(&format!("grad.{}", spec.name)).1;
            // The gradient check pins each gradient down to ATOL + RTOL·|g|, a relative error
            // of up to (ATOL + RTOL·|g|)/|g|, which Adam's normalised steps (about lr each)
            // carry over; within ATOL of 0 the sign itself is open (up to 2·lr over the two
            // steps).
            let got = got.as_f32().unwrap();
            let mut max = 0.0f64;
            for (i, (&a, &e)) in got.iter().zip(&want.1).enumerate() {
                let g = f64::from(grad[i].abs());
                let slack = 2.0 * lr * ((ATOL + RTOL * g) / g.max(ATOL)).min(1.0);
                let d = (f64::from(a) - f64::from(e)).abs();
                assert!(
                    d <= ATOL + RTOL * f64::from(e).abs() + slack,
                    "{name} {}[{i}]: ours {a}, transformers {e} (|diff| {d:.3e}, grad {g:.3e})",
                    spec.name
                );
                max = max.max(d);
            }
            eprintln!("{name} {}: max |diff| {max:.2e}", spec.name);
        }
    }
}

/// The exported bundle's `model.onnx` gives transformers' logits, and the `model/` folder pipe
/// writes names the pad id.
#[test]
fn decoder_exported_models_match_transformers() {
    for name in CONFIGS {
        let fx = fixture(name);
        let ws = Workspace::new();
        let dir = ws.path().join("model");
        let labels: Vec<String> = (0..4).map(|i| format!("label{i}")).collect();
        let params = fx.params();
        let specs = {
            let mut g = Graph::new("specs");
            fx.config.classifier(&mut g, None).unwrap().specs().to_vec()
        };
        let problem = ProblemType::SingleLabelClassification;
        hf_folder::write(&dir, &fx.config, &labels, problem, &specs, &params).unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let source: Value = read_json(fixture_dir(name).join("config.json"));
        assert_eq!(written["architectures"], source["architectures"]);
        assert_eq!(written["pad_token_id"], fx.batch["pad_token_id"]);
        let tokenizer = word_level_tokenizer(fx.config.vocab_size());
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(dir.join("labels.json"), json!(labels).to_string()).unwrap();
        let input = Input {
            name: "finetune".into(),
            stage: "finetune".into(),
            outputs: [("model".to_string(), dir)].into_iter().collect(),
        };
        let bundle = ws.run("export-onnx", json!({}), &[input]).unwrap();
        let info = bundle.json("bundle.json");
        assert_eq!(info["inputs"], json!(["input_ids", "attention_mask"]));
        assert_eq!(info["model"]["model_type"], json!(name));
        let mut s =
            Session::from_file(&bundle.path("model.onnx"), &SessionOptions::default()).unwrap();
        let (ids, mask) = (fx.matrix_i64("input_ids"), fx.matrix_i64("attention_mask"));
        let out = s
            .run(&[("input_ids", &ids), ("attention_mask", &mask)])
            .unwrap();
        close(
            &format!("{name} exported logits"),
            &out["logits"],
            fx.expected("logits"),
        );
    }
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// PEFT's adapter tensor names without the `base_model.model.` prefix.
fn unprefixed(t: BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    t.into_iter()
        .map(|(k, v)| (k.strip_prefix("base_model.model.").unwrap().to_string(), v))
        .collect()
}

/// LoRA on a Qwen2 (GQA, q/k/v biases) against PEFT (`peft_llama/make_fixtures.py`).
#[test]
fn llama_lora_training_matches_peft() {
    lora_training_matches_peft("peft_llama", "qwen2");
}

/// LoRA on GPT-2's Conv1D layers (PEFT's `fan_in_fan_out`) against PEFT
/// (`peft_gpt2/make_fixtures.py`).
#[test]
fn gpt2_lora_training_matches_peft() {
    lora_training_matches_peft("peft_gpt2", "gpt2");
}

/// The fixture `folder`'s trained tensors, two clipped AdamW steps (losses, gradient norms,
/// the adapter after), pipe's adapter folder (PEFT's names and config) and the merged
/// model's logits, against PEFT's.
fn lora_training_matches_peft(folder: &str, model_type: &str) {
    let peft_fixture = |name: &str| fixture_dir(folder).join(name);
    let b = read_json(peft_fixture("batch.json"));
    let lora: LoraParams = serde_json::from_value(b["lora"].clone()).unwrap();
    let base_dir = peft_fixture("base");
    let config = hf_folder::read_config(&base_dir).unwrap();
    assert_eq!(config.model_type(), model_type);
    let fan_in_fan_out = config.lora_fan_in_fan_out();
    let problem = ProblemType::SingleLabelClassification;
    let step = StepGraph::compile(&config, problem, Trained::Lora(&lora)).unwrap();
    let initial =
        unprefixed(weights::load_all(&peft_fixture("initial_adapter.safetensors")).unwrap());
    let head = config.head_params();
    let mut want: Vec<&str> = initial
        .keys()
        .map(String::as_str)
        .chain(head.iter().map(String::as_str))
        .collect();
    want.sort_unstable();
    let mut trained: Vec<&str> = step
        .signature
        .layout
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    trained.sort_unstable();
    assert_eq!(trained, want);

    let base = weights::load_all(&hf_folder::weights_path(&base_dir).unwrap()).unwrap();
    let (mut params, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) = base
        .clone()
        .into_iter()
        .partition(|(n, _)| trained.contains(&n.as_str()));
    params.extend(initial);
    let hp = &b["adamw"];
    let f = |k: &str| hp[k].as_f64().unwrap();
    let adamw = AdamW {
        beta1: hp["betas"][0].as_f64().unwrap(),
        beta2: hp["betas"][1].as_f64().unwrap(),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        max_grad_norm: f("max_grad_norm"),
    };
    let mut trainer = one_thread_trainer(&step, adamw, params, frozen);
    let expected = weights::load_all(&peft_fixture("expected.safetensors")).unwrap();
    let batch = peft_feeds(&b);
    let steps = hp["steps"].as_u64().unwrap();
    train_and_check(&mut trainer, &batch, f("lr") as f32, steps, &expected);

    let peft_adapter = unprefixed(
        weights::load_all(&peft_fixture("expected_adapter/adapter_model.safetensors")).unwrap(),
    );
    let now = trainer.params().unwrap();
    assert_eq!(
        peft_adapter.keys().collect::<Vec<_>>(),
        now.keys().collect::<Vec<_>>()
    );
    // The first step's gradients, by pipe's names: where one is within the gradient check's
    // tolerance of 0 (ATOL), Adam's normalised step may take either sign, so that element is
    // checked to ±2·lr; every other element to `assert_close`'s tolerance.
    let first_grads: BTreeMap<String, Vec<f32>> = expected
        .iter()
        .filter_map(|(k, t)| {
            let name = k.strip_prefix("grad_1.base_model.model.")?;
            let name = name
                .replace(".modules_to_save.default", "")
                .replace(".default", "");
            Some((name, t.as_f32().unwrap().to_vec()))
        })
        .collect();
    let lr = f("lr");
    for (name, t) in &peft_adapter {
        let grad = &first_grads[name];
        let (ours, theirs) = (now[name].as_f32().unwrap(), t.as_f32().unwrap());
        let tiny = |i: usize| f64::from(grad[i].abs()) <= ATOL;
        let keep = |i: &usize| !tiny(*i);
        let (o, t): (Vec<f32>, Vec<f32>) = (0..ours.len())
            .filter(keep)
            .map(|i| (ours[i], theirs[i]))
            .unzip();
        assert_close(name, &o, &t);
        close_where(name, ours, theirs, 2.0 * lr, tiny);
    }

    // pipe's adapter folder: PEFT's tensor names and config values.
    let out = tempfile::tempdir().unwrap();
    let mut all = now.clone();
    all.extend(trainer.frozen().iter().cloned());
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    lora::write_adapter(out.path(), &lora, &head, "", &all, fan_in_fan_out).unwrap();
    let written = weights::load_all(&out.path().join(lora::ADAPTER_WEIGHTS_FILE)).unwrap();
    let theirs_names: Vec<String> =
        weights::load_all(&peft_fixture("expected_adapter/adapter_model.safetensors"))
            .unwrap()
            .into_keys()
            .collect();
    assert_eq!(written.into_keys().collect::<Vec<_>>(), theirs_names);
    let ours = read_json(out.path().join(lora::ADAPTER_CONFIG_FILE));
    let theirs = read_json(peft_fixture("expected_adapter/adapter_config.json"));
    for key in ["peft_type", "task_type", "r", "bias", "fan_in_fan_out"] {
        assert_eq!(ours[key], theirs[key], "adapter_config.json `{key}`");
    }
    assert_eq!(ours["target_modules"], theirs["target_modules"]);

    // The merged model gives PEFT's merged logits.
    let specs: Vec<_> = step
        .specs
        .iter()
        .filter(|s| !lora::is_lora(&s.name))
        .cloned()
        .collect();
    let merged = lora::merge(&lora, &specs, all.clone(), fan_in_fan_out).unwrap();
    let mut g = Graph::new("merged");
    let dims = [Dim::from("batch"), Dim::from("seq")];
    let ids = g.input("input_ids", DType::I64, &dims).unwrap();
    let lengths = g
        .input("lengths", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let model = config.classifier(&mut g, None).unwrap();
    let input = ClassifierInput {
        tokens: Tokens::Ids(ids),
        lengths,
        token_type_ids: None,
    };
    let logits = model.logits(&mut g, &input).unwrap();
    g.output(logits, "logits").unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(b["input_ids"].clone()).unwrap();
    let ids = HostTensor::i64(&[rows.len() as i64, rows[0].len() as i64], rows.concat()).unwrap();
    let mut feeds: BTreeMap<String, HostTensor> = merged;
    feeds.insert("input_ids".into(), ids);
    let lengths = batch.iter().find(|(k, _)| *k == "lengths").unwrap();
    feeds.insert("lengths".into(), lengths.1.clone());
    let out = run(&mut session(&g), &feeds);
    assert_close(
        "merged_logits",
        out["logits"].as_f32().unwrap(),
        expected["merged_logits"].as_f32().unwrap(),
    );
}

/// An unknown `model_type` is refused when the manifest is read, at `model.config`, with the
/// families pipe knows; so are LoRA targets the family lacks.
#[test]
fn unknown_families_and_foreign_lora_targets_are_refused_at_check() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let e = kind
        .check(&json!({ "model": { "config": { "model_type": "t5", "hidden_size": 8 } } }))
        .unwrap_err();
    assert_eq!(e.path, ["model", "config"]);
    assert!(
        format!("{e:?}").contains(
            "gpt_neo, bert, roberta, distilbert, modernbert, llama, mistral, qwen2, qwen3, gpt2"
        ),
        "{e:?}"
    );
    let llama = fixture("llama").llama().clone();
    let mut config = serde_json::to_value(&llama).unwrap();
    config.as_object_mut().unwrap().remove("vocab_size");
    let params = |targets: Value| json!({ "model": { "config": config.clone() }, "lora": { "r": 2, "targets": targets } });
    kind.check(&params(json!(["q_proj", "o_proj", "gate_proj"])))
        .unwrap();
    let e = kind.check(&params(json!(["out_proj"]))).unwrap_err();
    assert_eq!(e.path, ["lora", "targets"]);
    assert!(format!("{e:?}").contains("o_proj"), "{e:?}");
    let e = kind.check(&params(json!(["q proj"]))).unwrap_err();
    assert!(format!("{e:?}").contains("not a module name"), "{e:?}");
}
