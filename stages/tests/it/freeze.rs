//! `freeze:` against `transformers`' `Trainer` with `requires_grad = False`: the fixture
//! `tests/fixtures/gpt_neo/freeze.safetensors` (see `make_freeze_fixture.py` there) holds
//! torch's losses, clipping norms and every parameter after two steps of the fixture model
//! with the embeddings and layer 0 frozen. pipe's own step graph and flat trainer run here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_models::gpt_neo::ProblemType;
use pipe_models::{hf_folder, weights};
use pipe_onnx::StepTrainer;
use pipe_stages::finetune::{FreezeEntry, StepGraph, Trained};
use serde_json::Value;

use crate::gpt_neo::fixture_adamw;
use crate::peft::{assert_close, feeds, one_thread_trainer, train_and_check};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gpt_neo")
        .join(name)
}

#[test]
fn frozen_training_matches_transformers_trainer() {
    let text = |name| std::fs::read_to_string(fixture(name)).unwrap();
    let batch: Value = serde_json::from_str(&text("batch.json")).unwrap();
    let config = hf_folder::read_config(&fixture("")).unwrap();
    let freeze = [FreezeEntry::Embeddings, FreezeEntry::Layers(0, 0)];
    let step = StepGraph::compile(
        &config,
        ProblemType::SingleLabelClassification,
        Trained::Unfrozen(&freeze),
    )
    .unwrap();
    let initial = weights::load_all(&fixture("weights.safetensors")).unwrap();
    let (params, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) = initial
        .clone()
        .into_iter()
        .partition(|(name, _)| step.signature.layout.entry(name).is_some());
    let frozen_names: Vec<&str> = frozen.keys().map(String::as_str).collect();
    assert_eq!(frozen_names.len(), 2 + 13, "{frozen_names:?}");
    assert!(frozen_names.iter().all(|n| n.starts_with("transformer.wte")
        || n.starts_with("transformer.wpe")
        || n.starts_with("transformer.h.0.")));

    let hp = &batch["adamw"];
    let lr = hp["lr"].as_f64().unwrap() as f32;
    let mut trainer = one_thread_trainer(&step, fixture_adamw(hp), params, frozen);
    let expected = weights::load_all(&fixture("freeze.safetensors")).unwrap();
    train_and_check(&mut trainer, &feeds(&batch), lr, 2, &expected);

    // Trained parameters as torch left them; frozen ones bit for bit as they started.
    let now = trainer.params().unwrap();
    for (name, t) in &now {
        let theirs = &expected[&format!("after.{name}")];
        assert_close(name, t.as_f32().unwrap(), theirs.as_f32().unwrap());
        assert_ne!(t, &initial[name], "{name} did not train");
    }
    for (name, t) in trainer.frozen() {
        assert_eq!(t, &initial[name], "{name} moved");
        assert_eq!(&expected[&format!("after.{name}")], t, "{name}");
    }
    assert_eq!(now.len() + trainer.frozen().len(), initial.len());
}
