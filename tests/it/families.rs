//! A checkpoint folder of the Llama family, GPT-2, DistilBERT and ModernBERT fine-tuned with
//! LoRA end to end through `pipe run`: ingest → split → tokenize → finetune (a few steps) →
//! export-onnx → evaluate, with `model: { path: ... }` pointing at the family fixture's
//! `checkpoint/` (a tiny random causal or masked LM as `save_pretrained` writes it; the
//! family's `make_fixtures.py --checkpoint` makes it). The decoders read tokenizers of their
//! style (`fixtures/tokenizers/`), the encoders a trained one. Each run's `model/` names the
//! family's classifier and has the adapter merged into the targeted layers only, and its
//! bundle answers `pipe predict`. (transformers and PEFT load these `model/` and `adapter/`
//! folders: `scripts/check-hf-folder.py` and `peft_{llama,gpt2}/make_fixtures.py --check`,
//! which need PyTorch.)

use std::path::Path;

use serde_json::Value;

use crate::util::{Project, status_of, stderr};

const SAMPLE: &str = include_str!("../../pipelines/data/student_questions.csv");
const LABELS: [&str; 4] = ["biology", "chemistry", "math", "physics"];

/// One family's checkpoint and what its run must show.
struct Family {
    /// The fixture folder under `stages/tests/fixtures/` holding `checkpoint/`.
    fixture: &'static str,
    /// `tokenizer:` of the manifest: a fixture tokenizer copied to `tokenizer.json`, or a
    /// trained one.
    tokenizer: Option<&'static str>,
    /// `lora.targets`, PEFT's default for the family.
    targets: &'static str,
    /// The classifier transformers builds from the written config.
    architecture: &'static str,
    /// A weight LoRA adapts (changed by the merge) and one it does not (kept bit for bit).
    adapted: &'static str,
    kept: &'static str,
}

fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/stages/tests/fixtures"
    ))
}

fn manifest(f: &Family) -> String {
    let tokenizer = match f.tokenizer {
        Some(_) => "{ path: tokenizer.json }",
        None => "{ train: { vocab_size: 400 } }",
    };
    format!(
        r#"pipeline: family
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.25
    seed: 1
  tokenize:
    from: split
    tokenizer: {tokenizer}
    max_length: 32
  finetune:
    from: tokenize
    model: {{ path: checkpoint, seed: 0 }}
    max_steps: 4
    batch_size: 8
    learning_rate: 1.0e-2
    lora: {{ r: 4, alpha: 8, targets: [{targets}] }}
    threads: 1
  export-onnx:
    from: finetune
  evaluate:
    from: {{ model: export-onnx, data: split }}
"#,
        targets = f.targets
    )
}

/// A project holding 80 sample rows, `f`'s checkpoint and tokenizer, and `manifest` as
/// `family.yaml`.
fn project(f: &Family, manifest: &str) -> Project {
    let p = Project::new();
    let rows: String = SAMPLE.lines().take(81).map(|l| format!("{l}\n")).collect();
    p.file("data/q.csv", &rows);
    p.file("family.yaml", manifest);
    let checkpoint = fixtures().join(f.fixture).join("checkpoint");
    std::fs::create_dir_all(p.path("checkpoint")).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(checkpoint.join(name), p.path("checkpoint").join(name)).unwrap();
    }
    if let Some(tokenizer) = f.tokenizer {
        std::fs::copy(fixtures().join(tokenizer), p.path("tokenizer.json")).unwrap();
    }
    p
}

/// Runs the pipeline on `f`'s checkpoint and checks what it wrote.
fn fine_tunes_end_to_end(f: &Family) {
    let p = project(f, &manifest(f));
    let checkpoint = fixtures().join(f.fixture).join("checkpoint");

    let report = p.run_json("family.yaml", 0);
    for stage in ["tokenize", "finetune", "export-onnx", "evaluate"] {
        assert_eq!(status_of(&report, stage), "ran", "{}: {stage}", f.fixture);
    }
    let json = |rel: &str| -> Value { serde_json::from_str(&p.read(rel)).unwrap() };
    let out = ".pipe/out/family";
    let config = json(&format!("{out}/finetune/model/config.json"));
    assert_eq!(config["architectures"][0], f.architecture, "{config}");
    assert_eq!(config["num_labels"], 4, "{config}");
    let adapter = json(&format!("{out}/finetune/adapter/adapter_config.json"));
    let targets: Vec<&str> = f.targets.split(", ").collect();
    assert_eq!(adapter["target_modules"], serde_json::json!(targets));
    assert_eq!(adapter["base_model_name_or_path"], "checkpoint");

    let read = |path: &Path| pipe_models::weights::load_all(path).unwrap();
    let base = read(&checkpoint.join("model.safetensors"));
    let merged = read(&p.path(&format!("{out}/finetune/model/model.safetensors")));
    let values = |t: &pipe_onnx::HostTensor| t.to_f64_vec();
    assert_ne!(
        values(&merged[f.adapted]),
        values(&base[f.adapted]),
        "{}: the adapter is merged into {}",
        f.fixture,
        f.adapted
    );
    assert_eq!(
        values(&merged[f.kept]),
        values(&base[f.kept]),
        "{}: {} is not adapted",
        f.fixture,
        f.kept
    );

    let metrics = json(&format!("{out}/evaluate/metrics.json"));
    let accuracy = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{metrics}");
    assert!(
        p.path(&format!("{out}/evaluate/predictions.parquet"))
            .is_file()
    );

    let texts = [
        "What is the derivative of x squared?",
        "Balance H2 + O2 -> H2O",
    ];
    let answered = p.pipe(&["predict", "export-onnx", "--json", texts[0], texts[1]]);
    assert_eq!(answered.status.code(), Some(0), "{}", stderr(&answered));
    let answers: Value = serde_json::from_slice(&answered.stdout).unwrap();
    let answers = answers.as_array().expect("one answer per text");
    assert_eq!(answers.len(), 2);
    for (answer, text) in answers.iter().zip(texts) {
        assert_eq!(answer["text"], text);
        assert!(
            LABELS.contains(&answer["label"].as_str().unwrap()),
            "{answer}"
        );
        let total: f64 = LABELS
            .iter()
            .map(|l| answer["probabilities"][l].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{answer}");
    }
}

#[test]
fn a_llama_checkpoint_fine_tunes_with_lora_end_to_end() {
    fine_tunes_end_to_end(&Family {
        fixture: "llama",
        tokenizer: Some("tokenizers/llama/tokenizer.json"),
        targets: "q_proj, v_proj",
        architecture: "LlamaForSequenceClassification",
        adapted: "model.layers.0.self_attn.q_proj.weight",
        kept: "model.layers.0.mlp.up_proj.weight",
    });
}

#[test]
fn a_gpt2_checkpoint_fine_tunes_with_lora_end_to_end() {
    fine_tunes_end_to_end(&Family {
        fixture: "gpt2",
        tokenizer: Some("tokenizers/gpt2/tokenizer.json"),
        targets: "c_attn",
        architecture: "GPT2ForSequenceClassification",
        adapted: "transformer.h.0.attn.c_attn.weight",
        kept: "transformer.h.0.mlp.c_fc.weight",
    });
}

#[test]
fn a_distilbert_checkpoint_fine_tunes_with_lora_end_to_end() {
    fine_tunes_end_to_end(&Family {
        fixture: "distilbert",
        tokenizer: None,
        targets: "q_lin, v_lin",
        architecture: "DistilBertForSequenceClassification",
        adapted: "distilbert.transformer.layer.0.attention.q_lin.weight",
        kept: "distilbert.transformer.layer.0.ffn.lin1.weight",
    });
}

#[test]
fn a_modernbert_checkpoint_fine_tunes_with_lora_end_to_end() {
    fine_tunes_end_to_end(&Family {
        fixture: "modernbert",
        tokenizer: None,
        targets: "Wqkv",
        architecture: "ModernBertForSequenceClassification",
        adapted: "model.layers.0.attn.Wqkv.weight",
        kept: "model.layers.0.mlp.Wi.weight",
    });
}

/// A setting the model cannot honour, found only once finetune knows the model (a `freeze`
/// range past the Llama checkpoint's two layers), fails the run as a bad manifest would:
/// exit 2, at the setting's line.
#[test]
fn a_setting_refused_as_the_stage_runs_exits_as_a_bad_manifest() {
    let llama = Family {
        fixture: "llama",
        tokenizer: Some("tokenizers/llama/tokenizer.json"),
        targets: "q_proj, v_proj",
        architecture: "LlamaForSequenceClassification",
        adapted: "",
        kept: "",
    };
    let manifest = manifest(&llama).replace(
        "    lora: { r: 4, alpha: 8, targets: [q_proj, v_proj] }\n",
        "    freeze: [layers.0-9]\n",
    );
    assert!(manifest.contains("freeze: [layers.0-9]"), "{manifest}");
    let p = project(&llama, &manifest);
    let out = p.pipe(&["run", "family.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("family.yaml:")
            && err.contains("`layers.0-9` goes past this model's last layer"),
        "{err}"
    );
}
