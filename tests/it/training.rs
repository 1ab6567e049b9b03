//! Fine-tuning through the binary: a run killed with SIGKILL resumes from its last
//! checkpoint and ends with the weights of an uninterrupted run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::{Project, status_of};

const SAMPLE: &str = include_str!("../../pipelines/data/student_questions.csv");

/// Ingest → split → tokenize → finetune with a model small enough for a test, and enough
/// steps (with frequent checkpoints) that a kill lands in the middle.
const MANIFEST: &str = r#"pipeline: train
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.2
    seed: 1
  tokenize:
    from: split
    tokenizer: { train: { vocab_size: 400 } }
    max_length: 32
  finetune:
    from: tokenize
    model:
      seed: 7
      config:
        hidden_size: 32
        num_layers: 2
        num_heads: 4
        intermediate_size: 64
        max_position_embeddings: 32
        window_size: 8
        attention_types: [[[global, local], 1]]
    max_steps: 300
    batch_size: 8
    learning_rate: 1.0e-3
    warmup_ratio: 0.1
    checkpoint_every: 10
    threads: 1
"#;

fn project() -> Project {
    let p = Project::new();
    p.file("data/q.csv", SAMPLE);
    p.file("train.yaml", MANIFEST);
    p
}

/// The `checkpoint.json` of the first scratch folder that has one.
fn checkpoint(p: &Project) -> Option<PathBuf> {
    std::fs::read_dir(p.path(".pipe/scratch"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("checkpoint.json"))
        .find(|c| c.exists())
}

#[test]
fn a_killed_finetune_resumes_and_ends_with_the_same_weights() {
    let p = project();
    let mut child = p.spawn(&["run", "train.yaml"]);
    let start = Instant::now();
    let saved = loop {
        if let Some(c) = checkpoint(&p) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before a checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let step = meta["step"].as_u64().unwrap();
    assert!(step < 300, "killed at step {step}, before the end");

    let out = p.pipe(&["run", "train.yaml", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "tokenize"), "cached");
    assert_eq!(status_of(&report, "finetune"), "ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resumed from the checkpoint at step"), "{stderr}");
    assert!(!p.path(".pipe/scratch").exists() || checkpoint(&p).is_none(), "scratch is cleared");

    let clean = project();
    let out = clean.pipe(&["run", "train.yaml", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let weights = |p: &Project| std::fs::read(p.path(".pipe/out/train/finetune/model/model.safetensors")).unwrap();
    assert!(weights(&p) == weights(&clean), "resumed weights differ from an uninterrupted run");
}
