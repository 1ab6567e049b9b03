//! The embedded pretrained model, all-MiniLM-L6-v2 (fetched by `scripts/fetch-model.sh`, which
//! `scripts/test.sh` runs), fine-tuned end to end through `pipe run`: a few steps on a slice of
//! the sample data, exported with `token_type_ids`, evaluated, and its `model/` a folder
//! transformers loads as `BertForSequenceClassification` with the source config's keys kept.

use serde_json::Value;

use crate::util::{Project, status_of};

const SAMPLE: &str = include_str!("../../pipelines/data/student_questions.csv");

const MANIFEST: &str = r#"pipeline: pretrained
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.25
    seed: 1
  tokenize:
    from: split
    tokenizer: { embedded: all-MiniLM-L6-v2 }
    max_length: 32
  finetune:
    from: tokenize
    model: { embedded: all-MiniLM-L6-v2, seed: 0 }
    max_steps: 6
    batch_size: 8
    learning_rate: 1.0e-4
    threads: 1
  export-onnx:
    from: finetune
  evaluate:
    from: { model: export-onnx, data: split }
"#;

#[test]
fn minilm_fine_tunes_end_to_end_through_pipe_run() {
    let p = Project::new();
    let rows: String = SAMPLE.lines().take(81).map(|l| format!("{l}\n")).collect();
    p.file("data/q.csv", &rows);
    p.file("pretrained.yaml", MANIFEST);
    let report = p.run_json("pretrained.yaml", 0);
    for stage in ["tokenize", "finetune", "export-onnx", "evaluate"] {
        assert_eq!(status_of(&report, stage), "ran", "{stage}");
    }
    let json = |rel: &str| -> Value { serde_json::from_str(&p.read(rel)).unwrap() };
    let config = json(".pipe/out/pretrained/finetune/model/config.json");
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["num_labels"], 4);
    // Keys of the source config that pipe does not read are kept.
    assert_eq!(config["gradient_checkpointing"], false);
    assert_eq!(config["pad_token_id"], 0);
    let bundle = json(".pipe/out/pretrained/export-onnx/bundle.json");
    assert_eq!(
        bundle["inputs"],
        serde_json::json!(["input_ids", "attention_mask", "token_type_ids"])
    );
    let metrics = json(".pipe/out/pretrained/evaluate/metrics.json");
    let accuracy = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{metrics}");
}
