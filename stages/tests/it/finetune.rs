//! `finetune`: learning on the sample data, the Hugging Face outputs, resuming from a
//! checkpoint, continuing from a fine-tuned folder, and the errors of bad models.

use std::collections::BTreeMap;
use std::path::Path;

use pipe_engine::ParamError;
use pipe_models::weights;
use serde_json::{Value, json};

use crate::util::{Ran, Workspace, message};

/// How many questions of the sample dataset these tests train on: its first 480 rows, 120 per
/// label (the whole file would make training here several times slower).
const SAMPLE_ROWS: usize = 480;

/// The first [`SAMPLE_ROWS`] questions of the reference pipeline's sample dataset, ingested,
/// split (validation 10%, test 20%) and tokenized with a trained BPE of `vocab` tokens.
pub(crate) fn tokenized(ws: &Workspace, vocab: usize) -> Ran {
    tokenized_with(ws, vocab, 0.1)
}

/// [`tokenized`] with a `validation` share of the split (0: none).
pub(crate) fn tokenized_with(ws: &Workspace, vocab: usize, validation: f64) -> Ran {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pipelines/data/student_questions.csv"
    ))
    .unwrap();
    // One line per row: no question spans lines.
    let csv: String = sample
        .lines()
        .take(1 + SAMPLE_ROWS)
        .map(|line| format!("{line}\n"))
        .collect();
    ws.file("q.csv", csv);
    let ingest = ws
        .run(
            "ingest",
            json!({ "source": "q.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    let split = ws
        .run(
            "split",
            json!({ "test": 0.2, "validation": validation, "shuffle": true, "seed": 42 }),
            &[ingest.input("ingest")],
        )
        .unwrap();
    ws.run(
        "tokenize",
        json!({ "tokenizer": { "train": { "vocab_size": vocab } }, "max_length": 48 }),
        &[split.input("split")],
    )
    .unwrap()
}

/// A GPT-Neo small enough to train in a second: hidden 32, a global and a local layer.
pub(crate) fn small_model(seed: u64) -> Value {
    json!({ "config": {
        "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 64, "window_size": 8,
        "attention_types": [[["global", "local"], 1]]
    }, "seed": seed })
}

pub(crate) fn weights_of(ran: &Ran) -> BTreeMap<String, Vec<f32>> {
    weights::load_all(&ran.path("model/model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.as_f32().unwrap().to_vec()))
        .collect()
}

#[test]
fn the_tiny_preset_learns_the_student_questions() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 2048);
    let ran = ws
        .run(
            "finetune",
            json!({
                "model": { "config": "tiny", "seed": 0 }, "epochs": 6, "batch_size": 16,
                "learning_rate": 5e-4, "warmup_ratio": 0.1, "threads": 2
            }),
            &[tokens.input("tokenize")],
        )
        .unwrap();
    let metrics = ran.json("metrics.json");
    let (loss, accuracy) = (
        metrics["final_epoch_loss"].as_f64().unwrap(),
        metrics["validation_accuracy"].as_f64().unwrap(),
    );
    eprintln!("tiny preset, 6 epochs: {metrics}");
    // Chance: loss ln 4 = 1.386, accuracy 0.25. A model trained from scratch on 336 rows
    // fits them (last-epoch loss ≈ 0.01) and generalises only part of the way (≈ 0.48).
    assert!(loss < 0.25 * 4f64.ln(), "last-epoch training loss {loss}");
    assert!(accuracy > 0.4, "validation accuracy {accuracy}");
    assert_eq!(metrics["steps"], json!(6 * 336usize.div_ceil(16)));

    // The outputs `transformers` loads.
    assert_eq!(ran.files(), ["metrics.json", "model", "train_log.jsonl"]);
    let config = ran.json("model/config.json");
    assert_eq!(config["model_type"], "gpt_neo");
    assert_eq!(
        config["architectures"],
        json!(["GPTNeoForSequenceClassification"])
    );
    assert_eq!(config["num_labels"], 4);
    // A fresh model's embedding has exactly the trained tokenizer's vocabulary.
    let tokenizer = tokenizers::Tokenizer::from_file(tokens.path("tokenizer.json")).unwrap();
    assert_eq!(config["vocab_size"], tokenizer.get_vocab_size(true));
    assert_eq!(config["id2label"]["2"], "math");
    assert_eq!(config["label2id"]["physics"], 3);
    assert_eq!(config["problem_type"], "single_label_classification");
    assert_eq!(
        ran.json("model/labels.json"),
        json!(["biology", "chemistry", "math", "physics"])
    );
    assert!(ran.path("model/tokenizer.json").is_file());
    let names: Vec<String> = weights_of(&ran).into_keys().collect();
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.attn.attention.q_proj.weight",
        "transformer.h.3.mlp.c_proj.bias",
        "transformer.ln_f.weight",
        "score.weight",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }

    // One log line per step, then per evaluation (one per epoch).
    let log = std::fs::read_to_string(ran.path("train_log.jsonl")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 126);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.get("eval_loss").is_some())
            .count(),
        6
    );
    assert_eq!(
        steps[0]["lr"], 0.0,
        "warm-up starts at 0 as transformers' schedule does"
    );
    assert!(steps[0]["tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_resumed_run_ends_with_the_same_weights() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let params = json!({
        "model": small_model(3), "max_steps": 30, "batch_size": 8, "learning_rate": 1e-3,
        "warmup_ratio": 0.2, "weight_decay": 0.01, "checkpoint_every": 7, "threads": 1
    });
    let input = [tokens.input("tokenize")];
    let scratch = tempfile::tempdir().unwrap();
    let whole = ws
        .run_with_scratch("finetune", params.clone(), &input, scratch.path())
        .unwrap();
    assert!(!whole.notes_contain("resumed"));
    // The uninterrupted run left its last checkpoint (step 28) behind, as a run killed
    // after it would have; the rerun starts there.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(scratch.path().join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(meta["step"], 28);
    let resumed = ws
        .run_with_scratch("finetune", params, &input, scratch.path())
        .unwrap();
    assert!(
        resumed.notes_contain("resumed from the checkpoint at step 28"),
        "{:?}",
        resumed.notes
    );
    assert_eq!(resumed.json("metrics.json")["resumed_from_step"], 28);
    assert_eq!(
        weights_of(&whole),
        weights_of(&resumed),
        "weights differ after resuming"
    );
    let lines = |r: &Ran| {
        std::fs::read_to_string(r.path("train_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(&whole),
        lines(&resumed),
        "the log continues where the checkpoint was"
    );
}

/// A damaged checkpoint is never resumed from: truncated, training goes back to the one
/// before; both damaged, it starts over. Either way the weights are those of a clean run.
#[test]
fn a_damaged_checkpoint_is_set_aside_and_training_ends_as_a_clean_run() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let params = json!({
        "model": small_model(3), "max_steps": 30, "batch_size": 8, "learning_rate": 1e-3,
        "warmup_ratio": 0.2, "weight_decay": 0.01, "checkpoint_every": 7, "threads": 1
    });
    let input = [tokens.input("tokenize")];
    let clean = |scratch: &Path| {
        let ran = ws
            .run_with_scratch("finetune", params.clone(), &input, scratch)
            .unwrap();
        assert!(!ran.notes_contain("resumed"));
        ran
    };
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    };

    // The last checkpoint (step 28) truncated: back to the one before (step 21).
    let scratch = tempfile::tempdir().unwrap();
    let whole = clean(scratch.path());
    let last = scratch.path().join("state-28.safetensors");
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let resumed = ws
        .run_with_scratch("finetune", params.clone(), &input, scratch.path())
        .unwrap();
    assert!(
        resumed.notes_contain("state-28.safetensors` is damaged")
            && resumed.notes_contain("set aside")
            && resumed.notes_contain("resumed from the checkpoint at step 21"),
        "{:?}",
        resumed.notes
    );
    assert!(
        scratch
            .path()
            .join("state-28.safetensors.damaged")
            .is_file()
    );
    assert_eq!(weights_of(&whole), weights_of(&resumed));

    // Both checkpoints with a flipped bit (sizes unchanged): training starts over.
    let scratch = tempfile::tempdir().unwrap();
    clean(scratch.path());
    flip(&scratch.path().join("state-28.safetensors"));
    flip(&scratch.path().join("state-21.safetensors"));
    let again = ws
        .run_with_scratch("finetune", params.clone(), &input, scratch.path())
        .unwrap();
    assert!(
        !again.notes_contain("resumed from the checkpoint"),
        "{:?}",
        again.notes
    );
    assert!(
        again.notes_contain("state-21.safetensors` is damaged")
            && again.notes_contain("does not match its checksum")
            && again.notes_contain("starts over"),
        "{:?}",
        again.notes
    );
    assert_eq!(weights_of(&whole), weights_of(&again));
}

#[test]
fn a_fine_tuned_folder_is_where_the_next_run_starts() {
    let (ws, tokens, first) = fine_tuned("tuned");
    let input = [tokens.input("tokenize")];
    let again = ws
        .run(
            "finetune",
            json!({ "model": { "path": "tuned" }, "max_steps": 1, "learning_rate": 0.0 }),
            &input,
        )
        .unwrap();
    assert_eq!(
        again.deps,
        ["tuned"],
        "the folder's content is part of the key"
    );
    // With a zero learning rate AdamW leaves every weight, the head included, as loaded.
    assert_eq!(weights_of(&first), weights_of(&again));
}

#[test]
fn models_that_do_not_fit_are_refused_with_both_sizes() {
    let (ws, tokens, first) = fine_tuned("small");
    let input = [tokens.input("tokenize")];
    let mut config = first.json("model/config.json");
    config["vocab_size"] = json!(300);
    ws.file("small/config.json", config.to_string());
    let e = message(
        ws.run("finetune", json!({ "model": { "path": "small" } }), &input)
            .unwrap_err(),
    );
    assert!(
        e.contains("400 tokens") && e.contains("only 300 rows"),
        "{e}"
    );

    ws.file(
        "small/config.json",
        first.json("model/config.json").to_string(),
    );
    std::fs::remove_file(ws.path().join("small/model.safetensors")).unwrap();
    ws.file("small/pytorch_model.bin", "pickle");
    let e = message(
        ws.run("finetune", json!({ "model": { "path": "small" } }), &input)
            .unwrap_err(),
    );
    assert!(
        e.contains("only pytorch_model.bin") && e.contains("safe_serialization"),
        "{e}"
    );

    let e = message(
        ws.run(
            "finetune",
            json!({ "model": { "config": "tiny", "path": "small" } }),
            &input,
        )
        .unwrap_err(),
    );
    assert!(
        e.contains("exactly one of `config`, `path` or `hub`"),
        "{e}"
    );
    let e = message(
        ws.run(
            "finetune",
            json!({ "model": { "hub": "nobody/nothing" } }),
            &input,
        )
        .unwrap_err(),
    );
    assert!(
        e.contains("not in the Hugging Face cache") && e.contains("hf download"),
        "{e}"
    );
}

#[test]
fn a_malformed_hub_id_is_an_error_at_its_manifest_key() {
    let registry = pipe_stages::registry();
    for (kind, params, path) in [
        (
            "finetune",
            json!({ "model": { "hub": "EleutherAI/../gpt-neo" } }),
            ["model", "hub"],
        ),
        (
            "tokenize",
            json!({ "tokenizer": { "hub": "EleutherAI gpt-neo" } }),
            ["tokenizer", "hub"],
        ),
    ] {
        let e = registry.get(kind).unwrap().check(&params).unwrap_err();
        assert_eq!(e.path, path, "{kind}");
        assert!(
            e.message.contains("not a Hugging Face repository id"),
            "{kind}: {}",
            e.message
        );
    }
}

#[test]
fn device_and_threads_stay_out_of_the_key() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let a = kind
        .check(&json!({ "model": { "config": "tiny" }, "device": "cpu", "threads": 2 }))
        .unwrap();
    let b = kind
        .check(&json!({ "model": { "config": "tiny" } }))
        .unwrap();
    assert_eq!(a.key_params, b.key_params);
    let e = kind
        .check(&json!({ "model": { "config": "tiny" }, "device": "tpu" }))
        .unwrap_err();
    assert_eq!(e.path, ["device"]);
    let e = kind
        .check(&json!({ "model": { "config": "tiny" }, "lr_schedule": "constant", "warmup_ratio": 0.1 }))
        .unwrap_err();
    assert_eq!(e.path, ["warmup_ratio"]);
}

/// `pooling: mean` goes into the key and into `model/config.json`, where the next run from
/// that folder finds it; `pooling: last` switches it back. Left out, it is not in the key.
#[test]
fn mean_pooling_is_kept_in_the_model_folder() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let first = ws
        .run(
            "finetune",
            json!({ "model": small_model(1), "pooling": "mean", "max_steps": 3, "learning_rate": 1e-3 }),
            &input,
        )
        .unwrap();
    assert_eq!(first.key_params["pooling"], "mean");
    assert_eq!(first.json("model/config.json")["pooling"], "mean");
    copy_dir(&first.path("model"), &ws.path().join("tuned"));
    let frozen = |pooling: Option<&str>| {
        let mut params =
            json!({ "model": { "path": "tuned" }, "max_steps": 1, "learning_rate": 0.0 });
        if let Some(p) = pooling {
            params["pooling"] = json!(p);
        }
        ws.run("finetune", params, &input).unwrap()
    };
    assert_eq!(frozen(None).json("model/config.json")["pooling"], "mean");
    let last = frozen(Some("last"));
    assert_eq!(last.json("model/config.json").get("pooling"), None);
    assert_eq!(weights_of(&last), weights_of(&first));

    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let plain = kind
        .check(&json!({ "model": { "config": "tiny" } }))
        .unwrap();
    assert_eq!(plain.key_params.get("pooling"), None);
    let e = kind
        .check(&json!({ "model": { "config": "tiny" }, "pooling": "max" }))
        .unwrap_err();
    assert_eq!(e.path, ["pooling"]);
    assert!(e.message.contains("max"), "{}", e.message);
}

/// A workspace, the tokenized sample data (the finetune input), and a small model
/// fine-tuned on it for 5 steps whose `model/` folder is copied to `folder`.
fn fine_tuned(folder: &str) -> (Workspace, Ran, Ran) {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let first = ws
        .run(
            "finetune",
            json!({ "model": small_model(1), "max_steps": 5, "learning_rate": 1e-3 }),
            &input,
        )
        .unwrap();
    copy_dir(&first.path("model"), &ws.path().join(folder));
    (ws, tokens, first)
}

pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn two_threads_train_to_the_same_bits_twice() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let params = json!({
        "model": small_model(5), "max_steps": 20, "batch_size": 16, "learning_rate": 1e-3,
        "threads": 2
    });
    let input = [tokens.input("tokenize")];
    let a = ws.run("finetune", params.clone(), &input).unwrap();
    let b = ws.run("finetune", params, &input).unwrap();
    // Repeated token ids in every batch: a scatter-add gradient would differ in the last bits.
    assert_eq!(weights_of(&a), weights_of(&b));
}

#[test]
fn a_lora_run_trains_the_adapter_and_head_only_and_resumes_exactly() {
    let (ws, tokens, first) = fine_tuned("base");
    let input = [tokens.input("tokenize")];
    let params = json!({
        "model": { "path": "base", "seed": 4 }, "max_steps": 12, "batch_size": 8,
        "learning_rate": 5e-3, "weight_decay": 0.01, "checkpoint_every": 5, "threads": 1,
        "lora": { "r": 2, "alpha": 4, "dropout": 0.1, "targets": ["q_proj", "c_fc"] }
    });
    let scratch = tempfile::tempdir().unwrap();
    let whole = ws
        .run_with_scratch("finetune", params.clone(), &input, scratch.path())
        .unwrap();
    let base = weights_of(&first);
    let merged = weights_of(&whole);
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    for (name, w) in &merged {
        let adapted = name.ends_with("q_proj.weight") || name.ends_with("c_fc.weight");
        let trained = adapted || name == "score.weight";
        assert_eq!(w == &base[name], !trained, "{name}: trained {trained}");
    }
    let adapter = weights::load_all(&whole.path("adapter/adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = adapter.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 2 * 2 * 2 + 1, "{names:?}");
    assert!(names.contains(&"base_model.model.score.weight"));
    assert!(names.contains(&"base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"));
    let r = &adapter["base_model.model.transformer.h.0.attn.attention.q_proj.lora_A.weight"];
    assert_eq!(r.shape(), &[2, 32]);
    let config = whole.json("adapter/adapter_config.json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["r"], 2);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(config["target_modules"], json!(["c_fc", "q_proj"]));
    assert_eq!(config["base_model_name_or_path"], "base");
    let metrics = whole.json("metrics.json");
    assert_eq!(
        metrics["trained_parameters"],
        2 * (2 * 32 + 32 * 2 + 2 * 32 + 64 * 2) + 4 * 32
    );

    // The last checkpoint (step 10) holds the adapter and head state only; resuming there
    // ends with the same files.
    let state = weights::load_all(&scratch.path().join("state-10.safetensors")).unwrap();
    assert_eq!(state.len(), 3 * (2 * 2 * 2 + 1));
    let resumed = ws
        .run_with_scratch("finetune", params, &input, scratch.path())
        .unwrap();
    assert!(resumed.notes_contain("resumed from the checkpoint at step 10"));
    assert_eq!(weights_of(&whole), weights_of(&resumed));
    assert_eq!(
        std::fs::read(whole.path("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed.path("adapter/adapter_model.safetensors")).unwrap()
    );
}

#[test]
fn lora_settings_are_checked() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    for (lora, field) in [
        (json!({ "r": 0, "targets": ["q_proj"] }), "r"),
        (json!({ "r": 4, "targets": [] }), "targets"),
        (
            json!({ "r": 4, "alpha": 0, "targets": ["q_proj"] }),
            "alpha",
        ),
        (
            json!({ "r": 4, "dropout": 1.0, "targets": ["q_proj"] }),
            "dropout",
        ),
        (
            json!({ "r": 4, "dropout": -0.1, "targets": ["q_proj"] }),
            "dropout",
        ),
    ] {
        let e = kind
            .check(&json!({ "model": { "config": "tiny" }, "lora": lora }))
            .unwrap_err();
        assert_eq!(e.path, ["lora", field], "{e:?}");
    }
    // PEFT's `lora_dropout` is accepted.
    let ok = json!({ "model": { "config": "tiny" },
                     "lora": { "r": 4, "dropout": 0.1, "targets": ["q_proj"] } });
    kind.check(&ok).unwrap();
    // An unknown module name is refused when the manifest is read.
    let e = kind
        .check(&json!({ "model": { "config": "tiny" }, "lora": { "r": 4, "targets": ["wte"] } }))
        .unwrap_err();
    assert!(format!("{e:?}").contains("wte"), "{e:?}");
}

#[test]
fn a_frozen_run_keeps_the_named_parts_and_trains_the_rest() {
    let (ws, tokens, first) = fine_tuned("base");
    let input = [tokens.input("tokenize")];
    let params = |freeze: Value| {
        json!({ "model": { "path": "base" }, "max_steps": 4, "batch_size": 8,
                "learning_rate": 5e-3, "threads": 1, "freeze": freeze })
    };
    let ran = ws
        .run(
            "finetune",
            params(json!(["embeddings", "transformer.h.0.attn"])),
            &input,
        )
        .unwrap();
    let base = weights_of(&first);
    let after = weights_of(&ran);
    let mut frozen = 0;
    for (name, w) in &after {
        let kept = name.starts_with("transformer.wte")
            || name.starts_with("transformer.wpe")
            || name.starts_with("transformer.h.0.attn.");
        assert_eq!(w == &base[name], kept, "{name}: frozen {kept}");
        frozen += if kept { w.len() } else { 0 };
    }
    let metrics = ran.json("metrics.json");
    let total = metrics["parameters"].as_u64().unwrap() as usize;
    assert_eq!(metrics["trained_parameters"], total - frozen);

    // An entry naming nothing in this two-layer model points at itself.
    let err = ws
        .run("finetune", params(json!(["layers.0", "layers.2"])), &input)
        .expect_err("no layer 2");
    let err = err.downcast::<ParamError>().unwrap();
    assert_eq!(err.path, ["freeze", "1"]);
    assert!(
        err.message
            .contains("`layers.2` goes past this model's last layer"),
        "{err:?}"
    );
    assert!(err.help.unwrap().contains("`layers.0` to `layers.1`"));
}

#[test]
fn freeze_settings_are_checked() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let check = |freeze: Value, lora: Option<Value>| {
        let mut params = json!({ "model": { "config": "tiny" }, "freeze": freeze });
        if let Some(lora) = lora {
            params["lora"] = lora;
        }
        kind.check(&params)
    };
    for (entry, hint) in [
        ("score", "always trained"),
        ("layers.3-1", "layers.1-3"),
        ("mlp", "transformer.h.0.mlp"),
    ] {
        let e = check(json!(["embeddings", entry]), None).unwrap_err();
        assert_eq!(e.path, ["freeze", "1"], "{e:?}");
        assert!(e.message.contains(hint), "{entry}: {}", e.message);
    }
    let lora = json!({ "r": 4, "targets": ["q_proj"] });
    let e = check(json!(["embeddings"]), Some(lora)).unwrap_err();
    assert_eq!(e.path, ["freeze"]);
    assert!(e.message.contains("LoRA already freezes"), "{}", e.message);
    check(
        json!(["embeddings", "layers.0-2", "transformer.ln_f"]),
        None,
    )
    .unwrap();
}

/// LoRA over int8 or 4-bit frozen weights: the same bits at one and two threads (integer
/// sums, fixed f32 blocks), and `model/` holds the original f32 weights wherever LoRA did not
/// adapt (the quantized copies are for training only).
#[test]
fn lora_over_quantized_frozen_weights_is_thread_count_free_and_saves_the_original_weights() {
    let (ws, tokens, first) = fine_tuned("base");
    let input = [tokens.input("tokenize")];
    let base = weights_of(&first);
    for dtype in ["int8", "int4"] {
        let run = |threads: usize| {
            let params = json!({
                "model": { "path": "base", "seed": 4 }, "max_steps": 6, "batch_size": 16,
                "learning_rate": 5e-3, "threads": threads, "frozen_dtype": dtype,
                "lora": { "r": 2, "targets": ["q_proj", "c_fc"] }
            });
            ws.run("finetune", params, &input).unwrap()
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.key_params["frozen_dtype"], dtype);
        assert_eq!(
            weights_of(&one),
            weights_of(&two),
            "{dtype}: 1 vs 2 threads"
        );
        for (name, w) in &weights_of(&one) {
            let adapted = name.ends_with("q_proj.weight") || name.ends_with("c_fc.weight");
            let trained = adapted || name == "score.weight";
            assert_eq!(
                w == &base[name],
                !trained,
                "{dtype} {name}: trained {trained}"
            );
        }
        assert_eq!(one.json("metrics.json")["frozen_dtype"], dtype);
    }
}

/// A Llama-family model from scratch, small enough to build in a moment.
fn small_llama(vocab_size: u64) -> Value {
    json!({ "config": {
        "model_type": "llama", "vocab_size": vocab_size, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64, "pad_token_id": 0
    }, "seed": 0 })
}

/// A dropout rate for a kind of site the family lacks would change nothing: refused at its
/// key, naming the kinds the family has. A model whose weights outgrow the machine (a size
/// with a digit too many) is refused at `model.config` before anything is allocated.
#[test]
fn settings_the_model_cannot_honour_are_refused_at_their_key() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let err = ws
        .run(
            "finetune",
            json!({ "model": small_llama(400), "max_steps": 1, "dropout": { "embed": 0.1 } }),
            &input,
        )
        .expect_err("Llama has no embedding dropout");
    let err = err.downcast::<ParamError>().unwrap();
    assert_eq!(err.path, ["dropout", "embed"]);
    assert!(
        err.message.contains("a llama model has no embed dropout"),
        "{}",
        err.message
    );
    assert_eq!(err.help.as_deref(), Some("it drops at: attention"));
    ws.run(
        "finetune",
        json!({ "model": small_llama(400), "max_steps": 1, "dropout": { "attention": 0.1 } }),
        &input,
    )
    .unwrap();

    let err = ws
        .run(
            "finetune",
            json!({ "model": small_llama(400_000_000_000), "max_steps": 1 }),
            &input,
        )
        .expect_err("6.4 TB of embeddings");
    let err = err.downcast::<ParamError>().unwrap();
    assert_eq!(err.path, ["model", "config"]);
    assert!(
        err.message.contains("weights alone would take")
            && err.message.contains("model.embed_tokens.weight"),
        "{}",
        err.message
    );
}
