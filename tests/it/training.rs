//! Training through the binary: a small variant of the reference pipeline end to end
//! (metrics beat chance, the report has its charts, reruns are cached or rerun exactly what
//! changed), and a finetune killed with SIGKILL resumes from its last checkpoint and ends
//! with the weights of an uninterrupted run, with the training state in host memory and in
//! the device variant's (forced on the CPU).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::{Project, small_finetune_manifest, status_of};

const SAMPLE: &str = include_str!("../../pipelines/data/student_questions.csv");

/// How many questions of the sample dataset these tests train on: its first 480 rows, 120 per
/// label (the whole file would make training here several times slower).
const SAMPLE_ROWS: usize = 480;

/// The header and the first [`SAMPLE_ROWS`] rows of [`SAMPLE`] (no question spans lines).
fn sample() -> String {
    SAMPLE
        .lines()
        .take(1 + SAMPLE_ROWS)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Ingest → split → tokenize → finetune with a model small enough for a test, followed by
/// `rest` (more finetune parameters, more stages).
fn manifest(rest: &str) -> String {
    small_finetune_manifest(
        "train",
        &format!("    warmup_ratio: 0.1\n    threads: 1\n{rest}"),
    )
}

/// Enough steps, with frequent checkpoints, that a kill lands in the middle.
const RESUMABLE: &str = "    max_steps: 300\n    learning_rate: 1.0e-3\n    checkpoint_every: 10\n";

/// The whole reference job, in small.
const END_TO_END: &str = r#"    epochs: 4
    learning_rate: 3.0e-3
  export-onnx:
    from: finetune
  evaluate:
    from: { model: export-onnx, data: split }
"#;

fn project(rest: &str) -> Project {
    let p = Project::new();
    p.file("data/q.csv", &sample());
    p.file("train.yaml", &manifest(rest));
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
    killed_and_resumed_ends_like_uninterrupted(RESUMABLE, &[]);
}

/// The training state of CUDA runs (flat buffers in device memory, the optimizer as graphs),
/// forced on the CPU by `PIPE_DEVICE_STATE=1`: with gradient accumulation it resumes exactly,
/// and its losses are those of host state to float tolerance.
#[test]
fn device_training_state_resumes_exactly_and_trains_like_host_state() {
    let rest = format!("{RESUMABLE}    gradient_accumulation_steps: 2\n");
    let device = killed_and_resumed_ends_like_uninterrupted(&rest, &[("PIPE_DEVICE_STATE", "1")]);
    let host = project(&rest);
    let out = host.pipe(&["run", "train.yaml", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = |p: &Project| {
        let m: serde_json::Value =
            serde_json::from_str(&p.read(".pipe/out/train/finetune/metrics.json")).unwrap();
        m["training_state"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(state(&device), "device");
    assert_eq!(state(&host), "host");
    let losses = |p: &Project| -> Vec<f64> {
        p.read(".pipe/out/train/finetune/train_log.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
            .collect()
    };
    let (d, h) = (losses(&device), losses(&host));
    assert_eq!(d.len(), 300);
    assert_eq!(d.len(), h.len());
    for (step, (a, b)) in d.iter().zip(&h).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {}: loss {a} (device state) vs {b} (host state)",
            step + 1
        );
    }
}

/// With gradient accumulation and dropout, checkpoints fall between optimizer steps and the
/// masks of every micro-batch come back the same after a resume.
#[test]
fn a_killed_finetune_with_gradient_accumulation_resumes_exactly() {
    killed_and_resumed_ends_like_uninterrupted(
        &format!(
            "{RESUMABLE}    gradient_accumulation_steps: 3\n    \
             dropout: {{ embed: 0.1, attention: 0.1, resid: 0.1 }}\n"
        ),
        &[],
    );
}

/// LoRA over int8 frozen weights: quantized again from the checkpoint at the resume, the
/// same integers, so the same weights bit for bit.
#[test]
fn a_killed_finetune_over_int8_frozen_weights_resumes_exactly() {
    killed_and_resumed_ends_like_uninterrupted(
        &format!(
            "{RESUMABLE}    lora: {{ r: 4, targets: [q_proj, v_proj] }}\n    frozen_dtype: int8\n"
        ),
        &[],
    );
}

/// `frozen_dtype` where nothing is frozen, or on CUDA, is refused at its line before anything
/// runs (exit 2).
#[test]
fn frozen_dtype_without_frozen_weights_is_refused_at_its_line() {
    for (rest, says) in [
        ("    frozen_dtype: int8\n", "trains every weight"),
        (
            "    lora: { r: 4, targets: [q_proj] }\n    frozen_dtype: int4\n    device: cuda\n",
            "runs on the CPU",
        ),
    ] {
        let p = project(rest);
        let text = manifest(rest);
        let out = p.pipe(&["run", "train.yaml"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        let at = format!("train.yaml:{}:", line_of(&text, "frozen_dtype:"));
        assert!(
            err.contains(&at) && err.contains(says),
            "no {at} / {says} in:\n{err}"
        );
        assert!(!p.path(".pipe/out").exists(), "a stage ran");
    }
}

/// The small reference job with LoRA over 4-bit and bfloat16 frozen weights: trained,
/// exported as an f32 model, evaluated; `metrics.json` says what the frozen weights were kept
/// in and took.
#[test]
fn lora_over_int4_and_bf16_frozen_weights_runs_end_to_end() {
    let run = |dtype: &str| {
        let rest = format!(
            "    lora: {{ r: 4, targets: [q_proj, v_proj, c_fc] }}\n    frozen_dtype: {dtype}\n{END_TO_END}"
        );
        let p = project(&rest);
        let out = p.pipe(&["run", "train.yaml", "-q"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m: serde_json::Value =
            serde_json::from_str(&p.read(".pipe/out/train/finetune/metrics.json")).unwrap();
        let e: serde_json::Value =
            serde_json::from_str(&p.read(".pipe/out/train/evaluate/metrics.json")).unwrap();
        let model = p.path(".pipe/out/train/finetune/model/model.safetensors");
        (m, e, pipe_models::weights::load_all(&model).unwrap())
    };
    let (int4, evaluated, int4_model) = run("int4");
    let (bf16, evaluated_bf16, bf16_model) = run("bf16");
    let (f32, evaluated_f32, f32_model) = run("f32");
    // model/ holds the starting weights wherever training changed nothing: the quantized and
    // rounded copies (bf16's embedding tables included) are for training only.
    let untouched: Vec<&String> = (f32_model.keys())
        .filter(|k| {
            !["q_proj", "v_proj", "c_fc", "score"]
                .iter()
                .any(|t| k.contains(t))
        })
        .collect();
    assert!(untouched.iter().any(|k| k.contains("wte")), "{untouched:?}");
    for name in untouched {
        for (dtype, model) in [("int4", &int4_model), ("bf16", &bf16_model)] {
            assert!(model[name] == f32_model[name], "{dtype}: {name} changed");
        }
    }
    assert_eq!(int4["frozen_dtype"], "int4");
    assert_eq!(bf16["frozen_dtype"], "bf16");
    assert_eq!(f32["frozen_dtype"], "f32");
    let bytes = |m: &serde_json::Value| m["frozen_weight_bytes"].as_u64().unwrap();
    // q, v, c_fc adapted; every linear weight of both blocks is frozen (4-bit: 0.5 byte per
    // weight + a 1-byte multiplier per block of 32 + a 4-byte scale per output row), the
    // embeddings and norms stay f32.
    assert!(bytes(&int4) < bytes(&f32), "{int4} vs {f32}");
    let linear = 2 * (4 * 32 * 32 + 2 * 32 * 64);
    let rows = 2 * (4 * 32 + 64 + 32);
    assert_eq!(
        bytes(&f32) - bytes(&int4),
        linear * 4 - (linear * (16 + 1) / 32 + rows * 4),
        "{int4} vs {f32}"
    );
    // bf16: the linear weights and the embedding tables at 2 bytes, the norms and biases
    // (2 × (two LayerNorms, out_proj, c_fc and c_proj biases) and ln_f) at 4.
    let frozen = bytes(&f32) / 4;
    let norms_and_biases = 2 * (2 * 2 * 32 + 32 + 64 + 32) + 2 * 32;
    assert_eq!(
        bytes(&bf16),
        2 * (frozen - norms_and_biases) + 4 * norms_and_biases,
        "{bf16} vs {f32}"
    );
    // Both learn as the f32 run does (within 10 of the 96 test rows): a product that
    // computes the wrong thing (16-bit sums that saturate on CPUs without VNNI) left the
    // int4 run at chance.
    let accuracy = |e: &serde_json::Value| e["test"]["accuracy"].as_f64().unwrap();
    let reference = accuracy(&evaluated_f32);
    assert!(
        reference > 0.3,
        "the f32 run learns: test accuracy {reference}"
    );
    for (dtype, evaluated) in [("int4", evaluated), ("bf16", evaluated_bf16)] {
        let accuracy = accuracy(&evaluated);
        assert!(
            (accuracy - reference).abs() <= 0.1,
            "{dtype}: the exported model's test accuracy {accuracy}, the f32 run's {reference}"
        );
    }
}

/// Runs the project of `rest` with the environment `env`, kills it with SIGKILL after its
/// first checkpoint, runs it again, and checks that the second run resumed and ends with the
/// weights of a run never killed; returns the project of that uninterrupted run.
fn killed_and_resumed_ends_like_uninterrupted(rest: &str, env: &[(&str, &str)]) -> Project {
    let p = project(rest);
    let mut child = p
        .command(&["run", "train.yaml"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pipe starts");
    let start = Instant::now();
    let saved = loop {
        if let Some(c) = checkpoint(&p) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let step = meta["step"].as_u64().unwrap();
    assert!(step < 300, "killed at step {step}, before the end");

    let out = p
        .command(&["run", "train.yaml", "--json"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "tokenize"), "cached");
    assert_eq!(status_of(&report, "finetune"), "ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resumed from the checkpoint at step"),
        "{stderr}"
    );
    assert!(
        !p.path(".pipe/scratch").exists() || checkpoint(&p).is_none(),
        "scratch is cleared"
    );

    let clean = project(rest);
    let out = clean
        .command(&["run", "train.yaml", "-q"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weights = |p: &Project| {
        std::fs::read(p.path(".pipe/out/train/finetune/model/model.safetensors")).unwrap()
    };
    assert!(
        weights(&p) == weights(&clean),
        "resumed weights differ from an uninterrupted run"
    );
    clean
}

/// The 1-based line of the first line of `text` that starts (after indentation) with `key`.
fn line_of(text: &str, key: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` in the manifest"))
}

/// Settings that need something of the inputs or the data fail at their line: `select_best`
/// without a validation split at validation (exit 2, nothing runs), a class weight for a
/// label the data lacks when finetune starts (exit 2 too: the manifest is wrong).
#[test]
fn finetune_settings_that_need_the_data_are_refused_at_their_line() {
    let refused = |rest: &str, key: &str, command: &str, code: i32| {
        let p = project(rest);
        let text = manifest(rest);
        let out = p.pipe(&[command, "train.yaml"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{err}");
        let at = format!("train.yaml:{}:", line_of(&text, key));
        assert!(err.contains(&at), "no {at} in:\n{err}");
        (p, err)
    };
    let (p, err) = refused(
        "    select_best: eval_loss\n",
        "select_best:",
        "validate",
        2,
    );
    assert!(
        err.contains("no validation split") && err.contains("`validation:`"),
        "{err}"
    );
    let (_, err) = refused("    select_best: eval_loss\n", "select_best:", "run", 2);
    assert!(err.contains("no validation split"), "{err}");
    assert!(!p.path(".pipe/out").exists(), "a stage ran");
    let (_, err) = refused(
        "    gradient_accumulation_steps: 0\n",
        "gradient_accumulation_steps:",
        "validate",
        2,
    );
    assert!(err.contains("at least 1"), "{err}");

    // With a validation share in the split, the same finetune is valid.
    let p = project("    select_best: eval_loss\n");
    let text = manifest("    select_best: eval_loss\n")
        .replace("    seed: 1\n", "    seed: 1\n    validation: 0.1\n");
    p.file("train.yaml", &text);
    let out = p.pipe(&["validate", "train.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Labels come from the data: the run fails at the weight's own line.
    let (_, err) = refused(
        "    max_steps: 1\n    class_weights:\n      math: 2.0\n      astronomy: 3.0\n",
        "astronomy:",
        "run",
        2,
    );
    assert!(
        err.contains("`astronomy`") && err.contains("biology"),
        "{err}"
    );
}

#[test]
fn the_reference_job_in_small_runs_end_to_end_and_reruns_only_what_changed() {
    let p = project(END_TO_END);
    let report = p.run_json("train.yaml", 0);
    for stage in [
        "ingest",
        "split",
        "tokenize",
        "finetune",
        "export-onnx",
        "evaluate",
    ] {
        assert_eq!(status_of(&report, stage), "ran", "{stage}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&p.read(".pipe/out/train/evaluate/metrics.json")).unwrap();
    let number = |split: &str, key: &str| metrics[split][key].as_f64().unwrap();
    // Four balanced classes: chance is accuracy 0.25 and AUC 0.5.
    assert!(number("train", "accuracy") > 0.6, "{metrics}");
    assert!(number("test", "accuracy") > 0.4, "{metrics}");
    assert!(number("test", "macro_auc") > 0.7, "{metrics}");
    let report_html = p.read(".pipe/out/train/evaluate/report.html");
    // Per split a ROC chart, plus the training-loss curve.
    assert!(
        report_html.matches("<svg").count() >= 3,
        "report.html lacks its charts"
    );
    assert!(report_html.contains("test") && report_html.contains("train"));

    let again = p.run_json("train.yaml", 0);
    for (stage, status) in crate::util::statuses(&again) {
        assert_eq!(status, "cached", "{stage} reran with nothing changed");
    }

    // Forced, finetune trains the same weights again; only its timings differ (run records,
    // not in downstream keys), so export-onnx and evaluate are not rerun.
    let weights =
        std::fs::read(p.path(".pipe/out/train/finetune/model/model.safetensors")).unwrap();
    let timings = p.read(".pipe/out/train/finetune/metrics.json");
    let forced = p.pipe(&["run", "train.yaml", "--force=finetune", "--json"]);
    assert_eq!(
        forced.status.code(),
        Some(0),
        "{}",
        crate::util::stderr(&forced)
    );
    let forced: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(status_of(&forced, "finetune"), "ran");
    assert_eq!(
        std::fs::read(p.path(".pipe/out/train/finetune/model/model.safetensors")).unwrap(),
        weights,
        "training is deterministic"
    );
    assert_ne!(p.read(".pipe/out/train/finetune/metrics.json"), timings);
    assert_eq!(status_of(&forced, "export-onnx"), "cached", "{forced}");
    assert_eq!(status_of(&forced, "evaluate"), "cached", "{forced}");

    p.file(
        "train.yaml",
        &manifest(&END_TO_END.replace("epochs: 4", "epochs: 3")),
    );
    let edited = p.run_json("train.yaml", 0);
    let ran: Vec<String> = crate::util::statuses(&edited)
        .into_iter()
        .filter(|(_, status)| status == "ran")
        .map(|(stage, _)| stage)
        .collect();
    assert_eq!(ran, ["finetune", "export-onnx", "evaluate"]);
}
