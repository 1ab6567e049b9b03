//! `export-onnx`: the bundle's files and description, the exported model against the
//! training forward (here, in the test, and from Python's onnxruntime), multi-label
//! sigmoid, external data, parameters and bad model folders.

use std::collections::BTreeMap;
use std::process::Command;

use pipe_models::gpt_neo::{GptNeoConfig, GptNeoForSequenceClassification, Pooling};
use pipe_onnx::{Graph, HostTensor, Session, SessionOptions};
use pipe_stages::export_onnx::ExportOnnx;
use serde_json::json;

use crate::trained::{TRAIN_LOG, Trained, multi_label_csv};
use crate::util::{Ran, failure, labelled_csv};

const LABELS: [&str; 3] = ["art", "math", "physics"];

fn single() -> Trained {
    Trained::new(&labelled_csv(40, &LABELS), false)
}

/// A padded batch: rows of 7, 3 and 1 real tokens (ids below `vocab`), `pad` under the mask.
fn batch(vocab: usize, pad: i64) -> (HostTensor, HostTensor, Vec<i64>) {
    let lengths = vec![7i64, 3, 1];
    let seq = 7;
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (r, &len) in lengths.iter().enumerate() {
        for c in 0..seq {
            let real = c < len;
            ids.push(if real {
                ((r * 31 + c as usize * 17) % vocab) as i64
            } else {
                pad
            });
            mask.push(i64::from(real));
        }
    }
    let shape = [lengths.len() as i64, seq];
    (
        HostTensor::i64(&shape, ids).unwrap(),
        HostTensor::i64(&shape, mask).unwrap(),
        lengths,
    )
}

/// Logits of the training forward (parameters as graph inputs), built here from the model
/// code, fed `params`.
fn training_logits(
    cfg: &GptNeoConfig,
    params: &BTreeMap<String, HostTensor>,
    ids: &HostTensor,
    lengths: &[i64],
) -> Vec<f32> {
    let mut g = Graph::new("reference");
    let model = GptNeoForSequenceClassification::new(cfg, &mut g).unwrap();
    let (ids_in, lengths_in) = GptNeoForSequenceClassification::declare_inputs(&mut g).unwrap();
    let logits = model.forward(&mut g, ids_in, lengths_in).unwrap();
    g.output(logits, "logits").unwrap();
    let mut session = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let lengths = HostTensor::i64(&[lengths.len() as i64], lengths.to_vec()).unwrap();
    let mut feeds: Vec<(&str, &HostTensor)> = params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    feeds.push(("input_ids", ids));
    feeds.push(("lengths", &lengths));
    session.run(&feeds).unwrap()["logits"]
        .as_f32()
        .unwrap()
        .to_vec()
}

/// `logits` and `probabilities` of the exported model on a batch.
fn run_exported(ran: &Ran, ids: &HostTensor, mask: &HostTensor) -> (Vec<f32>, Vec<f32>) {
    let mut s = Session::from_file(&ran.path("model.onnx"), &SessionOptions::default()).unwrap();
    assert_eq!(s.input_names(), ["input_ids", "attention_mask"]);
    assert_eq!(s.output_names(), ["logits", "probabilities"]);
    let out = s
        .run(&[("input_ids", ids), ("attention_mask", mask)])
        .unwrap();
    let get = |name: &str| out[name].as_f32().unwrap().to_vec();
    (get("logits"), get("probabilities"))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn export_writes_the_bundle_and_describes_it() {
    let t = single();
    let ran = t.export(json!({})).unwrap();
    assert_eq!(
        ran.files(),
        [
            "bundle.json",
            "labels.json",
            "model.onnx",
            "tokenizer.json",
            "train_log.jsonl"
        ]
    );
    let info = ran.json("bundle.json");
    assert_eq!(
        info["model"],
        json!({
            "model_type": "gpt_neo",
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 4,
            "vocab_size": t.cfg.vocab_size,
            "max_position_embeddings": 32,
        })
    );
    assert_eq!(info["num_labels"], json!(3));
    assert_eq!(info["labels"], json!(LABELS));
    assert_eq!(info["problem_type"], json!("single_label_classification"));
    assert_eq!(info["opset"], json!(20));
    assert_eq!(info["inputs"], json!(["input_ids", "attention_mask"]));
    assert_eq!(info["outputs"], json!(["logits", "probabilities"]));
    // The key names the bundle's content (each file's name, length and bytes, in bundle
    // order), not the stage that wrote it, so an identical re-export keeps evaluate cached.
    let mut content = blake3::Hasher::new();
    for name in ["model.onnx", "tokenizer.json", "labels.json"] {
        let bytes = std::fs::read(ran.path(name)).unwrap();
        content.update(name.as_bytes());
        content.update(&(bytes.len() as u64).to_le_bytes());
        content.update(&bytes);
    }
    assert_eq!(
        info["source"],
        json!({ "stage": "export-onnx", "key": content.finalize().to_hex().to_string(), "model_stage": "finetune" })
    );
    assert_eq!(info["pipe_version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(ran.json("labels.json"), json!(LABELS));
    let model_dir = t.finetune.path().join("model");
    assert_eq!(
        std::fs::read(ran.path("tokenizer.json")).unwrap(),
        std::fs::read(model_dir.join("tokenizer.json")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(ran.path("train_log.jsonl")).unwrap(),
        TRAIN_LOG
    );
    let headline = ran.outcome.headline.clone().unwrap();
    assert!(
        headline.starts_with("opset 20 · 3 labels · ") && headline.ends_with("kB"),
        "{headline}"
    );
    assert!(ran.notes_contain("self-check"), "{:?}", ran.notes);
    assert_eq!(ran.key_params, json!({ "opset": 20 }));
}

#[test]
fn exported_model_matches_the_training_forward_and_its_probabilities_sum_to_one() {
    let t = single();
    let ran = t.export(json!({})).unwrap();
    let (ids, mask, lengths) = batch(t.cfg.vocab_size, 0);
    let (logits, probabilities) = run_exported(&ran, &ids, &mask);
    let expected = training_logits(&t.cfg, &t.params, &ids, &lengths);
    let diff = max_diff(&logits, &expected);
    assert!(diff <= 1e-5, "logits differ by {diff}");
    for (row, p) in logits.chunks(3).zip(probabilities.chunks(3)) {
        let total: f32 = row.iter().map(|x| x.exp()).sum();
        let softmax: Vec<f32> = row.iter().map(|x| x.exp() / total).collect();
        assert!(max_diff(p, &softmax) < 1e-6, "{p:?} vs {softmax:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // Rows differ (the weights are not degenerate), and what lies under the mask does not matter.
    assert!(max_diff(&logits[0..3], &logits[3..6]) > 1e-3);
    let (other_pad, _, _) = batch(t.cfg.vocab_size, (t.cfg.vocab_size - 1) as i64);
    assert_eq!(run_exported(&ran, &other_pad, &mask).0, logits);
}

/// A model trained with `pooling: mean` exports with mean pooling in its graph: the bundle's
/// logits are the mean-pooling training forward's, not the last-token ones of the same weights.
#[test]
fn a_mean_pooling_model_exports_its_pooling() {
    let t = Trained::with_pooling(&labelled_csv(40, &LABELS), false, Pooling::Mean);
    let config = std::fs::read_to_string(t.finetune.path().join("model/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["pooling"], json!("mean"));
    let ran = t.export(json!({})).unwrap();
    assert!(ran.notes_contain("self-check"), "{:?}", ran.notes);
    // bundle.json (and so serve's /metadata) says how the graph pools.
    assert_eq!(ran.json("bundle.json")["model"]["pooling"], json!("mean"));
    let (ids, mask, lengths) = batch(t.cfg.vocab_size, 0);
    let (logits, probabilities) = run_exported(&ran, &ids, &mask);
    let mean = training_logits(&t.cfg, &t.params, &ids, &lengths);
    assert!(max_diff(&logits, &mean) <= 1e-5, "{logits:?} vs {mean:?}");
    let last_cfg = GptNeoConfig {
        pooling: Pooling::Last,
        ..t.cfg.clone()
    };
    let last = training_logits(&last_cfg, &t.params, &ids, &lengths);
    // Rows of 7 and 3 tokens pool differently; the row of 1 token is its own mean.
    assert!(max_diff(&logits[0..6], &last[0..6]) > 1e-3);
    assert!(max_diff(&logits[6..9], &last[6..9]) <= 1e-5);
    let sums: Vec<f32> = probabilities.chunks(3).map(|r| r.iter().sum()).collect();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    let (other_pad, _, _) = batch(t.cfg.vocab_size, (t.cfg.vocab_size - 1) as i64);
    assert_eq!(run_exported(&ran, &other_pad, &mask).0, logits);
}

#[test]
fn multi_label_export_gives_a_sigmoid_per_label() {
    let t = Trained::new(&multi_label_csv(40, &LABELS), true);
    let ran = t.export(json!({})).unwrap();
    assert_eq!(
        ran.json("bundle.json")["problem_type"],
        json!("multi_label_classification")
    );
    let (ids, mask, lengths) = batch(t.cfg.vocab_size, 0);
    let (logits, probabilities) = run_exported(&ran, &ids, &mask);
    assert!(max_diff(&logits, &training_logits(&t.cfg, &t.params, &ids, &lengths)) <= 1e-5);
    let sigmoid: Vec<f32> = logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
    assert!(max_diff(&probabilities, &sigmoid) < 1e-6);
    let sums: Vec<f32> = probabilities.chunks(3).map(|r| r.iter().sum()).collect();
    assert!(sums.iter().any(|s| (s - 1.0).abs() > 1e-3), "{sums:?}");
}

#[test]
fn weights_past_the_threshold_go_to_external_data() {
    let t = single();
    let stage = ExportOnnx::with_external_data_above(1000);
    let ran = t.ws.run_stage(&stage, json!({}), &[t.input()]).unwrap();
    assert!(
        ran.files().contains(&"model.onnx.data".to_string()),
        "{:?}",
        ran.files()
    );
    let inline = t.export(json!({})).unwrap();
    let external_size = std::fs::metadata(ran.path("model.onnx")).unwrap().len();
    let inline_size = std::fs::metadata(inline.path("model.onnx")).unwrap().len();
    assert!(
        external_size * 4 < inline_size,
        "{external_size} vs {inline_size}"
    );
    let (ids, mask, _) = batch(t.cfg.vocab_size, 0);
    assert_eq!(
        run_exported(&ran, &ids, &mask),
        run_exported(&inline, &ids, &mask)
    );
}

#[test]
fn opset_is_a_key_parameter_and_device_and_threads_are_not() {
    let t = single();
    let ran = t
        .export(json!({ "opset": 23, "device": "cpu", "threads": 1 }))
        .unwrap();
    assert_eq!(ran.key_params, json!({ "opset": 23 }));
    assert_eq!(ran.json("bundle.json")["opset"], json!(23));
    assert!(ran.outcome.headline.unwrap().starts_with("opset 23 · "));

    let registry = pipe_stages::registry();
    let stage = registry.get("export-onnx").unwrap();
    let err = stage.check(&json!({ "opset": 19 })).unwrap_err();
    assert_eq!(err.path, ["opset"]);
    assert!(err.help.unwrap().contains("from 20"));
    let err = stage.check(&json!({ "device": "tpu" })).unwrap_err();
    assert_eq!(err.path, ["device"]);
    assert!(err.message.contains("tpu"), "{}", err.message);
    let err = stage.check(&json!({ "opsett": 21 })).unwrap_err();
    assert!(err.message.contains("opsett"), "{}", err.message);
}

#[test]
fn a_model_folder_without_labels_or_tokenizer_is_refused_by_name() {
    let t = single();
    let dir = t.finetune.path().join("model");
    std::fs::remove_file(dir.join("labels.json")).unwrap();
    let err = failure(t.export(json!({})));
    assert!(err.contains("labels.json"), "{err}");

    std::fs::write(dir.join("labels.json"), r#"["art", "math"]"#).unwrap();
    let err = failure(t.export(json!({})));
    assert!(err.contains("lists 2 labels") && err.contains("3"), "{err}");

    std::fs::write(dir.join("labels.json"), r#"["art", "math", "physics"]"#).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = failure(t.export(json!({})));
    assert!(err.contains("tokenizer.json is missing"), "{err}");
}

/// The bundle runs in the Python onnxruntime too (`pip install onnxruntime`), with the same
/// logits. Skipped, with a note, when Python has no onnxruntime.
#[test]
fn python_onnxruntime_runs_the_bundle_with_the_same_logits() {
    let probe = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "note: skipped: python3 with onnxruntime and numpy is not available (pip install onnxruntime)"
        );
        return;
    }
    let t = single();
    let ran = t.export(json!({})).unwrap();
    let (ids, mask, lengths) = batch(t.cfg.vocab_size, 0);
    let script = r#"
import json, sys
import numpy as np
import onnxruntime as ort
ids, mask = json.loads(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
logits, probabilities = s.run(["logits", "probabilities"], {
    "input_ids": np.array(ids, dtype=np.int64), "attention_mask": np.array(mask, dtype=np.int64)})
print(json.dumps(logits.astype(float).ravel().tolist()))
"#;
    let rows = |t: &HostTensor| -> Vec<Vec<i64>> {
        t.as_i64().unwrap().chunks(7).map(<[i64]>::to_vec).collect()
    };
    let arg = serde_json::to_string(&(rows(&ids), rows(&mask))).unwrap();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(ran.path("model.onnx"))
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Vec<f32> = serde_json::from_slice(&out.stdout).unwrap();
    let expected = training_logits(&t.cfg, &t.params, &ids, &lengths);
    let diff = max_diff(&python, &expected);
    assert!(diff <= 1e-5, "python logits differ by {diff}");
}
