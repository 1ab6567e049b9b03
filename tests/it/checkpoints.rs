//! A checkpoint that cannot be used (a truncated shard, an index naming a missing shard, a
//! tensor of the wrong shape) is bad input: `pipe run` fails finetune before it trains, names
//! the file and the tensor, and exits 2, not 1. (The messages themselves are tested in
//! pipe-stages, `checkpoints.rs`.)

use std::path::Path;

use serde_json::Value;

use crate::util::{Project, status_of, two_label_csv};

/// The sharded GPT-Neo checkpoint of pipe-stages' fixtures (float32, two shards).
fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/stages/tests/fixtures/checkpoints/sharded"
    ))
}

const MANIFEST: &str = r#"pipeline: ckpt
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.25
    seed: 1
  tokenize:
    from: split
    tokenizer: { train: { vocab_size: 300 } }
    max_length: 16
  finetune:
    from: tokenize
    model: { path: base, seed: 0 }
    max_steps: 1
    batch_size: 4
"#;

/// A project training from a copy of the fixture, broken by `damage` (given its folder).
fn project(damage: impl FnOnce(&Path)) -> Project {
    let p = Project::new();
    p.file("data/q.csv", &two_label_csv(24));
    p.file("ckpt.yaml", MANIFEST);
    let base = p.path("base");
    std::fs::create_dir_all(&base).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), base.join(entry.file_name())).unwrap();
    }
    damage(&base);
    p
}

/// Runs the manifest, asserting exit 2; returns finetune's error from the JSON report.
fn refused(p: &Project) -> String {
    let report: Value = p.run_json("ckpt.yaml", 2);
    assert_eq!(report["bad_input"], true, "{report}");
    assert_eq!(status_of(&report, "tokenize"), "ran");
    assert_eq!(status_of(&report, "finetune"), "failed");
    let finetune = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "finetune")
        .unwrap();
    assert_eq!(finetune["bad_input"], true, "{finetune}");
    finetune["error"].as_str().unwrap().to_string()
}

#[test]
fn a_truncated_shard_exits_2_naming_the_shard() {
    let p = project(|base| {
        let shard = base.join("model-00002-of-00002.safetensors");
        let len = std::fs::metadata(&shard).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&shard)
            .unwrap();
        file.set_len(len - 100).unwrap();
    });
    let error = refused(&p);
    assert!(
        error.contains("model-00002-of-00002.safetensors (it holds tensor ")
            && error.contains("is not a complete safetensors file"),
        "{error}"
    );
}

#[test]
fn an_index_naming_a_missing_shard_exits_2() {
    let p = project(|base| {
        std::fs::remove_file(base.join("model-00001-of-00002.safetensors")).unwrap();
    });
    let error = refused(&p);
    assert!(
        error.contains("names the shard model-00001-of-00002.safetensors")
            && error.contains("does not exist"),
        "{error}"
    );
}

#[test]
fn a_tensor_of_the_wrong_shape_exits_2_naming_it_and_its_file() {
    let name = "transformer.h.0.mlp.c_fc.weight";
    let mut shard_name = String::new();
    let p = project(|base| {
        // The shard the index names gets the tensor's shape transposed in its header
        // ([64, 32] → [32, 64]: the same bytes and the same header length, so the file stays
        // a valid safetensors file).
        let index: Value = serde_json::from_str(
            &std::fs::read_to_string(base.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        shard_name = index["weight_map"][name].as_str().unwrap().to_string();
        let shard = base.join(&shard_name);
        let bytes = std::fs::read(&shard).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        let mut parsed: Value = serde_json::from_str(header).unwrap();
        assert_eq!(parsed[name]["shape"], serde_json::json!([64, 32]));
        parsed[name]["shape"] = serde_json::json!([32, 64]);
        let mut text = parsed.to_string();
        assert!(text.len() <= header_len, "{text}");
        while text.len() < header_len {
            text.push(' ');
        }
        let mut out = bytes[..8].to_vec();
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&bytes[8 + header_len..]);
        std::fs::write(&shard, out).unwrap();
    });
    let error = refused(&p);
    assert!(
        error.contains(&format!(
            "shape mismatch for {name}: checkpoint has [32, 64], the config needs [64, 32]"
        )) && error.contains(&shard_name),
        "{error}"
    );
}

#[test]
fn a_sound_checkpoint_trains_and_the_report_says_nothing_of_bad_input() {
    let p = project(|_| {});
    let report: Value = p.run_json("ckpt.yaml", 0);
    assert_eq!(status_of(&report, "finetune"), "ran");
    assert!(report.get("bad_input").is_none(), "{report}");
}

#[test]
fn a_bad_checkpoint_beside_another_failure_exits_1() {
    let p = project(|base| {
        std::fs::remove_file(base.join("model-00001-of-00002.safetensors")).unwrap();
    });
    p.file(
        "ckpt.yaml",
        &format!("{MANIFEST}  broken:\n    run: exit 3\n"),
    );
    let report: Value = p.run_json("ckpt.yaml", 1);
    assert_eq!(status_of(&report, "finetune"), "failed");
    assert_eq!(status_of(&report, "broken"), "failed");
    assert!(report.get("bad_input").is_none(), "{report}");
}
