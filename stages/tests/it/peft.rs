//! LoRA fine-tuning against Hugging Face PEFT: the fixtures in `tests/fixtures/peft/` (see
//! `make_fixtures.py` there) hold a tiny random GPT-Neo base model, PEFT's initial LoRA
//! matrices, and PEFT + torch's losses, gradient norms and adapter after two clipped AdamW
//! steps, and the merged model's logits. Everything here runs pipe's own step graph, flat
//! trainer, adapter writer and merge.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_models::dropout::{DropoutPlan, DropoutRates};
use pipe_models::gpt_neo::{GptNeoForSequenceClassification, ProblemType};
use pipe_models::lora::{self, LoraParams};
use pipe_models::loss::CrossEntropy;
use pipe_models::{hf_folder, weights};
use pipe_onnx::{AdamW, FlatTrainer, Graph, HostTensor, Session, SessionOptions, StepTrainer};
use pipe_stages::finetune::{StepGraph, StepOptions, Trained, distinct_tokens};
use serde_json::Value;

const TOL: f32 = 1e-5;

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(name)
}

pub(crate) fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// PEFT's adapter tensor names without the `base_model.model.` prefix.
pub(crate) fn unprefixed(t: BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    t.into_iter()
        .map(|(k, v)| {
            let name = k.strip_prefix("base_model.model.").unwrap().to_string();
            (name, v)
        })
        .collect()
}

/// `ours` within [`TOL`] (relative above 1) of `theirs`, element by element.
pub(crate) fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= TOL * (1.0 + b.abs()),
            "{what}[{i}]: pipe {a} vs PEFT {b}"
        );
    }
}

/// The step graph's batch inputs for a fixture's `batch.json` (`input_ids`, `lengths`,
/// `labels`).
pub(crate) fn feeds(b: &Value) -> Vec<(&'static str, HostTensor)> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(b["input_ids"].clone()).unwrap();
    let lengths: Vec<i64> = serde_json::from_value(b["lengths"].clone()).unwrap();
    let labels: Vec<i64> = serde_json::from_value(b["labels"].clone()).unwrap();
    let (n, s) = (rows.len() as i64, rows[0].len() as i64);
    let (distinct, index) = distinct_tokens(&rows.concat());
    vec![
        (
            "token_ids",
            HostTensor::i64(&[distinct.len() as i64], distinct).unwrap(),
        ),
        ("token_index", HostTensor::i64(&[n, s], index).unwrap()),
        ("lengths", HostTensor::i64(&[n], lengths).unwrap()),
        ("labels", HostTensor::i64(&[n], labels).unwrap()),
    ]
}

/// Sessions on one thread: the fixtures' sums in one order.
pub(crate) fn one_thread() -> SessionOptions {
    SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    }
}

/// A flat trainer of `step` on one thread (the fixtures' sums in one order).
pub(crate) fn one_thread_trainer(
    step: &StepGraph,
    adamw: AdamW,
    params: BTreeMap<String, HostTensor>,
    frozen: BTreeMap<String, HostTensor>,
) -> FlatTrainer {
    let session = Session::from_model(&step.model, &one_thread()).unwrap();
    FlatTrainer::new(session, step.signature.clone(), adamw, params, frozen).unwrap()
}

/// `steps` steps on `batch`, each step's loss and gradient norm against the reference's
/// `loss_<n>` and `grad_norm_<n>`.
pub(crate) fn train_and_check(
    trainer: &mut FlatTrainer,
    batch: &[(&'static str, HostTensor)],
    lr: f32,
    steps: u64,
    expected: &BTreeMap<String, HostTensor>,
) {
    let batch: Vec<(&str, &HostTensor)> = batch.iter().map(|(k, v)| (*k, v)).collect();
    let scalar = |k: &str| expected[k].as_f32().unwrap()[0];
    for n in 1..=steps {
        let r = trainer.step(&batch, lr).unwrap();
        let (loss, norm) = (format!("loss_{n}"), format!("grad_norm_{n}"));
        assert_close(&loss, &[r.loss], &[scalar(&loss)]);
        assert_close(&norm, &[r.grad_norm.unwrap()], &[scalar(&norm)]);
    }
}

#[test]
fn lora_training_matches_peft() {
    let b = json(fixture("batch.json"));
    let lora: LoraParams = serde_json::from_value(b["lora"].clone()).unwrap();
    let base_dir = fixture("base");
    let config = hf_folder::read_config(&base_dir).unwrap();
    let step = StepGraph::compile(
        &config,
        ProblemType::SingleLabelClassification,
        Trained::Lora(&lora),
    )
    .unwrap();
    let head = GptNeoForSequenceClassification::HEAD_PARAMS;

    // Trained: exactly the LoRA matrices of the targets, and the head.
    let trained: Vec<&str> = step
        .signature
        .layout
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let initial = unprefixed(weights::load_all(&fixture("initial_adapter.safetensors")).unwrap());
    let mut want: Vec<&str> = initial
        .keys()
        .map(String::as_str)
        .chain(head.iter().copied())
        .collect();
    want.sort_unstable();
    let mut got = trained.clone();
    got.sort_unstable();
    assert_eq!(got, want);

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
    let expected = weights::load_all(&fixture("expected.safetensors")).unwrap();
    let batch = feeds(&b);
    let steps = hp["steps"].as_u64().unwrap();
    train_and_check(&mut trainer, &batch, f("lr") as f32, steps, &expected);

    // The adapter after two steps, and the frozen base bit for bit as it was.
    let peft_adapter = unprefixed(
        weights::load_all(&fixture("expected_adapter/adapter_model.safetensors")).unwrap(),
    );
    let now = trainer.params().unwrap();
    assert_eq!(
        peft_adapter.keys().collect::<Vec<_>>(),
        now.keys().collect::<Vec<_>>()
    );
    for (name, t) in &peft_adapter {
        assert_close(name, now[name].as_f32().unwrap(), t.as_f32().unwrap());
    }
    for (name, t) in trainer.frozen() {
        assert_eq!(t, &base[name], "{name} moved");
    }

    // pipe's adapter folder: PEFT's names, PEFT's config values.
    let out = tempfile::tempdir().unwrap();
    let mut all = now.clone();
    all.extend(trainer.frozen().iter().cloned());
    lora::write_adapter(out.path(), &lora, head, "", &all, false).unwrap();
    let written = weights::load_all(&out.path().join(lora::ADAPTER_WEIGHTS_FILE)).unwrap();
    let peft_names: Vec<String> =
        weights::load_all(&fixture("expected_adapter/adapter_model.safetensors"))
            .unwrap()
            .into_keys()
            .collect();
    assert_eq!(written.keys().cloned().collect::<Vec<_>>(), peft_names);
    for (name, t) in unprefixed(written) {
        assert_eq!(t, now[&name], "{name} written as trained");
    }
    let ours = json(out.path().join(lora::ADAPTER_CONFIG_FILE));
    let theirs = json(fixture("expected_adapter/adapter_config.json"));
    for key in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "fan_in_fan_out",
    ] {
        assert_eq!(
            ours[key].as_f64().map_or(ours[key].clone(), Value::from),
            theirs[key]
                .as_f64()
                .map_or(theirs[key].clone(), Value::from),
            "adapter_config.json `{key}`"
        );
    }
    let sorted = |v: &Value| {
        let mut s: Vec<String> = serde_json::from_value(v.clone()).unwrap_or_default();
        s.sort();
        s
    };
    assert_eq!(
        sorted(&ours["target_modules"]),
        sorted(&theirs["target_modules"])
    );
    for m in sorted(&ours["modules_to_save"]) {
        assert!(sorted(&theirs["modules_to_save"]).contains(&m), "{m}");
    }

    // The merged model gives PEFT's merged logits.
    let specs: Vec<_> = step
        .specs
        .iter()
        .filter(|s| !lora::is_lora(&s.name))
        .cloned()
        .collect();
    let merged = lora::merge(&lora, &specs, all.clone(), false).unwrap();
    let mut g = Graph::new("merged");
    let model = GptNeoForSequenceClassification::new(&config, &mut g).unwrap();
    let (ids, lengths) = GptNeoForSequenceClassification::declare_inputs(&mut g).unwrap();
    let logits = model.forward(&mut g, ids, lengths).unwrap();
    g.output(logits, "logits").unwrap();
    let mut s = Session::from_model(&g.build().unwrap(), &one_thread()).unwrap();
    let rows: Vec<Vec<i64>> = serde_json::from_value(b["input_ids"].clone()).unwrap();
    let (n, len) = (rows.len() as i64, rows[0].len() as i64);
    let ids = HostTensor::i64(&[n, len], rows.concat()).unwrap();
    let lengths = &batch.iter().find(|(k, _)| *k == "lengths").unwrap().1;
    let mut run_feeds: Vec<(&str, &HostTensor)> = vec![("input_ids", &ids), ("lengths", lengths)];
    run_feeds.extend(merged.iter().map(|(k, v)| (k.as_str(), v)));
    let out = s.run(&run_feeds).unwrap();
    assert_close(
        "merged_logits",
        out["logits"].as_f32().unwrap(),
        expected["merged_logits"].as_f32().unwrap(),
    );
}

/// `lora.dropout` as PEFT's `lora_dropout`: on the adapter's input only. `dropout.safetensors`
/// (`make_dropout_fixture.py`) holds PEFT's loss, logits and gradients in training mode with
/// the trained adapter of `expected_adapter/` and lora_dropout 0.1, each adapter dropping
/// with a recorded mask; the step graph fed the same masks gives the same loss and
/// gradients.
#[test]
fn lora_dropout_with_fixed_masks_matches_peft() {
    let b = json(fixture("batch.json"));
    let mut lora: LoraParams = serde_json::from_value(b["lora"].clone()).unwrap();
    lora.dropout = 0.1;
    let base_dir = fixture("base");
    let config = hf_folder::read_config(&base_dir).unwrap();
    let options = StepOptions {
        loss: CrossEntropy::default(),
        dropout: DropoutPlan::new(&config, DropoutRates::default()).with_lora(&config, Some(&lora)),
        ..StepOptions::plain(&config)
    };
    let problem = ProblemType::SingleLabelClassification;
    let step = StepGraph::compile_with(&config, problem, &options, Trained::Lora(&lora)).unwrap();

    let mut feeds = weights::load_all(&hf_folder::weights_path(&base_dir).unwrap()).unwrap();
    let adapter = unprefixed(
        weights::load_all(&fixture("expected_adapter/adapter_model.safetensors")).unwrap(),
    );
    feeds.extend(adapter);
    let expected = weights::load_all(&fixture("dropout.safetensors")).unwrap();
    let mut masks = 0;
    for (name, t) in &expected {
        if let Some(site) = name.strip_prefix("mask:") {
            let keep = t.to_f64_vec().iter().map(|&k| k != 0.0).collect();
            let mask = HostTensor::bool(t.shape(), keep).unwrap();
            feeds.insert(format!("dropout:{site}"), mask);
            masks += 1;
        }
    }
    // One site per adapted layer: 4 targets in 2 layers.
    assert_eq!(masks, 4 * 2);
    let mut all: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let batch = self::feeds(&b);
    all.extend(batch.iter().map(|(k, v)| (*k, v)));
    let mut session = Session::from_model(&step.model, &one_thread()).unwrap();
    let out = session.run(&all).unwrap();
    let f32s = |t: &HostTensor| t.as_f32().unwrap().to_vec();
    assert_close("loss", &f32s(&out["loss"]), &f32s(&expected["loss"]));
    let mut grads = 0;
    for e in &step.signature.layout.entries {
        let want = &expected[&format!("grad:{}", e.name)];
        assert_close(&e.grad, &f32s(&out[&e.grad]), &f32s(want));
        grads += 1;
    }
    assert_eq!(
        grads,
        expected.keys().filter(|k| k.starts_with("grad:")).count()
    );

    // Without the masks' drops (all kept, p = 0) the loss is another: the masks mattered.
    let plain = StepGraph::compile(&config, problem, Trained::Lora(&lora)).unwrap();
    let mut session = Session::from_model(&plain.model, &one_thread()).unwrap();
    let kept: Vec<(&str, &HostTensor)> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("dropout:"))
        .copied()
        .collect();
    let loss = session.run(&kept).unwrap()["loss"].as_f32().unwrap()[0];
    let masked = out["loss"].as_f32().unwrap()[0];
    assert!(
        (loss - masked).abs() > 1e-4,
        "the masks changed nothing: {loss} vs {masked}"
    );
}
