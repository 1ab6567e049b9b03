//! `pipe init` through the built binary: under `--yes`, through a pseudo-terminal for the
//! whole dialogue, and the manifest it writes trained end to end.

use std::io::Write;

use crate::util::{Project, statuses, stderr};

/// Four subjects, `n` questions each.
fn questions(n: usize) -> String {
    let mut csv = String::from("question,subject\n");
    let topics = [
        ("biology", "cell membrane protein"),
        ("math", "integral of x squared"),
        ("chemistry", "ionic bond of salt"),
        ("physics", "speed of a photon"),
    ];
    for i in 0..n {
        for (subject, words) in topics {
            csv.push_str(&format!("What is the {words} number {i}?,{subject}\n"));
        }
    }
    csv
}

#[test]
fn init_writes_a_runnable_manifest_without_questions_under_yes() {
    let p = Project::new();
    p.file("q.csv", &questions(2));
    let out = p.pipe(&["init", "--from", "q.csv", "--yes", "-o", "q.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("next: `pipe run q.yaml`"),
        "{}",
        stderr(&out)
    );
    let manifest = p.read("q.yaml");
    assert!(
        manifest.contains("text: question") && manifest.contains("label: subject"),
        "{manifest}"
    );
    // The default model: the embedded pretrained one when `scripts/fetch-model.sh` fetched
    // it (`scripts/test.sh` does), else `tiny`.
    let model = match pipe_stages::init::ModelChoice::default_choice() {
        pipe_stages::init::ModelChoice::Embedded(name) => {
            format!("{{ embedded: {name}, seed: 0 }}")
        }
        _ => "{ config: tiny, seed: 0 }".to_string(),
    };
    assert!(
        manifest.contains(&format!("model: {model}")) && manifest.contains("epochs: 3"),
        "{manifest}"
    );
    let validate = p.pipe(&["validate", "q.yaml"]);
    assert_eq!(validate.status.code(), Some(0), "{}", stderr(&validate));
    let again = p.pipe(&["init", "--from", "q.csv", "--yes", "-o", "q.yaml"]);
    assert_eq!(again.status.code(), Some(2), "refuses to overwrite");
    // `--quiet`: the manifest, and nothing said on the way.
    let quiet = p.pipe(&["-q", "init", "--from", "q.csv", "--yes", "-o", "quiet.yaml"]);
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "", "--quiet says nothing");
    assert_eq!(p.read("quiet.yaml"), manifest);
    let bad = p.pipe(&["init", "--from", "q.csv", "--yes", "--model", "tinny"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("answer tiny, small, or a Hugging Face id"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn init_asks_through_a_pseudo_terminal_when_flags_are_missing() {
    let p = Project::new();
    p.file("q.csv", &questions(1));
    // `script` (util-linux) runs pipe on a pseudo-terminal and forwards our answers to it.
    let command = format!(
        "{} init --from q.csv -o asked.yaml",
        env!("CARGO_BIN_EXE_pipe")
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(p.root())
        .env("NO_COLOR", "1")
        .env("HF_HUB_CACHE", p.path("hf-cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("`script` from util-linux runs");
    // Text column: 1 (question); label column: 2 (subject); multi-label, split, validation,
    // shuffle, test fraction: the defaults; model: a typo, then a hub id (not cached); LoRA:
    // yes; epochs: not a number, then 2; device: the default.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"1\n2\n\n\n\n\n\ntinny\nEleutherAI/gpt-neo-125m\ny\nmany\n2\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    for shown in [
        "? Which column holds the text?",
        "? Fraction of rows for testing",
        "? Which model?",
        "`tinny` is not a model",
        "EleutherAI/gpt-neo-125m is not in the Hugging Face cache",
        "`pipe pull-model EleutherAI/gpt-neo-125m`",
        "? Train LoRA adapters",
        "`many` is not a whole number",
        "? Train on which device?",
        "next: `pipe run asked.yaml`",
    ] {
        assert!(screen.contains(shown), "no {shown:?} in:\n{screen}");
    }
    let manifest = p.read("asked.yaml");
    for written in [
        "text: question",
        "label: subject",
        "tokenizer: { hub: EleutherAI/gpt-neo-125m }",
        "model: { hub: EleutherAI/gpt-neo-125m }",
        "epochs: 2",
        "lora: { r: 8, alpha: 16, dropout: 0.0, targets: [q_proj, v_proj] }",
        "export-onnx:",
        "from: { model: export-onnx, data: split }",
    ] {
        assert!(manifest.contains(written), "no {written:?} in:\n{manifest}");
    }
}

#[test]
fn the_manifest_init_writes_trains_exports_and_evaluates_as_written() {
    let p = Project::new();
    p.file("data/q.csv", &questions(10));
    let out = p.pipe(&[
        "init",
        "--from",
        "data/q.csv",
        "--yes",
        "--epochs",
        "1",
        "--shuffle",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = p.run_json("pipeline.yaml", 0);
    let ran: Vec<(String, String)> = statuses(&report);
    let names: Vec<&str> = ran.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ingest",
            "split",
            "tokenize",
            "finetune",
            "export-onnx",
            "evaluate"
        ]
    );
    assert!(ran.iter().all(|(_, s)| s == "ran"), "{ran:?}");
    let predicted = p.pipe(&["predict", "export-onnx", "What is the speed of a photon?"]);
    assert_eq!(predicted.status.code(), Some(0), "{}", stderr(&predicted));
}

#[test]
fn init_refuses_a_manifest_below_its_data_file_instead_of_writing_one_that_cannot_run() {
    let p = Project::new();
    p.file("q.csv", &questions(2));
    std::fs::create_dir_all(p.path("sub")).unwrap();
    let out = p.pipe(&["init", "--from", "q.csv", "--yes", "-o", "sub/p.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("q.csv is outside sub, the folder of the manifest sub/p.yaml")
            && err.contains("-o pipeline.yaml"),
        "{err}"
    );
    assert!(
        !p.path("sub/p.yaml").exists(),
        "no manifest that cannot run"
    );

    // Data below the manifest's folder is fine.
    let out = p.pipe(&["init", "--from", "q.csv", "--yes", "-o", "p.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(p.read("p.yaml").contains("source: q.csv"));
}
