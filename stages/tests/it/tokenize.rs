//! `tokenize`: trained, file and hub tokenizers; truncation; label ids.

use serde_json::json;
use tokenizers::Tokenizer;

use crate::util::{Ran, Workspace, int_lists, ints, labelled_csv, message, read_parquet, strings};

/// Ingests and splits `csv` (single-label, 20% test, no shuffle).
fn split(ws: &Workspace, csv: String) -> Ran {
    ws.file("d.csv", csv);
    let ingest = ws
        .run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    ws.run("split", json!({ "test": 0.2 }), &[ingest.input("ingest")])
        .unwrap()
}

fn train_params(max_length: usize) -> serde_json::Value {
    json!({ "tokenizer": { "train": { "vocab_size": 400, "min_frequency": 2 } }, "max_length": max_length })
}

#[test]
fn a_trained_tokenizer_round_trips_text_and_is_deterministic() {
    let ws = Workspace::new();
    let split = split(&ws, labelled_csv(200, &["math", "physics", "art"]));
    let ran = ws
        .run("tokenize", train_params(64), &[split.input("split")])
        .unwrap();
    assert_eq!(
        ran.files(),
        [
            "labels.json",
            "test.parquet",
            "tokenizer.json",
            "train.parquet"
        ]
    );
    assert_eq!(ran.json("labels.json"), json!(["art", "math", "physics"]));

    let tokenizer = Tokenizer::from_file(ran.path("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_truncation().map(|t| t.max_length), Some(64));
    let tokens = read_parquet(&ran.path("test.parquet"));
    let texts = strings(&read_parquet(&split.path("test.parquet")), "text");
    let ids = int_lists(&tokens, "input_ids");
    let lengths = ints(&tokens, "length");
    for ((text, ids), length) in texts.iter().zip(&ids).zip(&lengths) {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), *text);
        assert_eq!(*length as usize, ids.len());
    }
    // Label ids are positions in labels.json.
    let labels = strings(&read_parquet(&split.path("test.parquet")), "label");
    let names = ["art", "math", "physics"];
    let want: Vec<i32> = labels
        .iter()
        .map(|l| names.iter().position(|n| n == l).unwrap() as i32)
        .collect();
    assert_eq!(ints(&tokens, "label_id"), want);

    let again = ws
        .run("tokenize", train_params(64), &[split.input("split")])
        .unwrap();
    for file in ran.files() {
        assert_eq!(
            std::fs::read(ran.path(&file)).unwrap(),
            std::fs::read(again.path(&file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn the_trained_tokenizer_never_sees_test_text() {
    let ws = Workspace::new();
    let mut csv = String::from("text,label\n");
    for i in 0..50 {
        let label = ["a", "b"][i % 2];
        // Without shuffle each label's last rows form the test split.
        let text = if i >= 40 {
            "quokka quokka quokka quokka"
        } else {
            "ordinary words in a sentence"
        };
        csv.push_str(&format!("{text} {i},{label}\n"));
    }
    let split = split(&ws, csv);
    let ran = ws
        .run("tokenize", train_params(64), &[split.input("split")])
        .unwrap();
    let tokenizer = Tokenizer::from_file(ran.path("tokenizer.json")).unwrap();
    assert!(tokenizer.token_to_id("Ġquokka").is_none());
    assert!(tokenizer.token_to_id("quokka").is_none());
    assert!(tokenizer.token_to_id("Ġwords").is_some());
}

#[test]
fn truncates_at_max_length_and_says_how_often() {
    let ws = Workspace::new();
    let split = split(&ws, labelled_csv(100, &["a", "b"]));
    let ran = ws
        .run("tokenize", train_params(4), &[split.input("split")])
        .unwrap();
    let train = read_parquet(&ran.path("train.parquet"));
    assert!(ints(&train, "length").iter().all(|&l| l == 4));
    assert!(
        int_lists(&train, "input_ids")
            .iter()
            .all(|ids| ids.len() == 4)
    );
    assert_eq!(
        ran.outcome.metrics["truncated"], 100,
        "{:?}",
        ran.outcome.metrics
    );
    assert!(
        ran.notes_contain("100 of 100 rows were longer than 4 tokens"),
        "{:?}",
        ran.notes
    );
}

#[test]
fn vocab_and_merges_give_the_same_ids_as_tokenizer_json() {
    let ws = Workspace::new();
    let split = split(&ws, labelled_csv(100, &["a", "b"]));
    let trained = ws
        .run("tokenize", train_params(32), &[split.input("split")])
        .unwrap();
    // Save the trained tokenizer both ways.
    let tokenizer = Tokenizer::from_file(trained.path("tokenizer.json")).unwrap();
    std::fs::create_dir_all(ws.path().join("tok/gpt2")).unwrap();
    tokenizers::Model::save(tokenizer.get_model(), &ws.path().join("tok/gpt2"), None).unwrap();
    std::fs::copy(
        trained.path("tokenizer.json"),
        ws.path().join("tok/tokenizer.json"),
    )
    .unwrap();

    let from_json = ws
        .run(
            "tokenize",
            json!({ "tokenizer": { "path": "tok/tokenizer.json" }, "max_length": 32 }),
            &[split.input("split")],
        )
        .unwrap();
    let from_pair = ws
        .run(
            "tokenize",
            json!({ "tokenizer": { "path": "tok/gpt2/vocab.json" }, "max_length": 32 }),
            &[split.input("split")],
        )
        .unwrap();
    let from_dir = ws
        .run(
            "tokenize",
            json!({ "tokenizer": { "path": "tok/gpt2" }, "max_length": 32 }),
            &[split.input("split")],
        )
        .unwrap();
    assert_eq!(from_pair.deps, ["tok/gpt2/vocab.json"]);
    let ids = |ran: &Ran| int_lists(&read_parquet(&ran.path("train.parquet")), "input_ids");
    assert_eq!(ids(&from_json), ids(&trained));
    assert_eq!(ids(&from_pair), ids(&from_json));
    assert_eq!(ids(&from_dir), ids(&from_json));
}

#[test]
fn a_hub_tokenizer_comes_from_the_local_cache_only() {
    let ws = Workspace::new();
    let split = split(&ws, labelled_csv(60, &["a", "b"]));
    let trained = ws
        .run("tokenize", train_params(32), &[split.input("split")])
        .unwrap();
    // A fake Hugging Face cache holding one repository.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    std::fs::copy(
        trained.path("tokenizer.json"),
        repo.join("snapshots/abc123/tokenizer.json"),
    )
    .unwrap();

    let stage = pipe_stages::tokenize::Tokenize::with_hub_cache(cache.path().to_path_buf());
    let ran = ws
        .run_stage(
            &stage,
            json!({ "tokenizer": { "hub": "org/tiny" }, "max_length": 32 }),
            &[split.input("split")],
        )
        .unwrap();
    assert_eq!(ran.key_params["hub_commit"], "abc123");
    let ids = |ran: &Ran| int_lists(&read_parquet(&ran.path("test.parquet")), "input_ids");
    assert_eq!(ids(&ran), ids(&trained));

    let err = ws
        .run_stage(
            &stage,
            json!({ "tokenizer": { "hub": "org/missing" } }),
            &[split.input("split")],
        )
        .err()
        .unwrap();
    let err = message(err);
    assert!(
        err.contains("`org/missing` is not in the Hugging Face cache"),
        "{err}"
    );
    assert!(err.contains("hf download org/missing"), "{err}");
}

#[test]
fn multi_label_rows_get_a_multi_hot_vector() {
    let ws = Workspace::new();
    let mut csv = String::from("text,labels\n");
    for i in 0..30 {
        csv.push_str(&format!("text number {i},{}\n", ["x;y", "y", "z"][i % 3]));
    }
    ws.file("d.csv", csv);
    let params =
        json!({ "source": "d.csv", "text": "text", "label": "labels", "multi_label": true });
    let ingest = ws.run("ingest", params, &[]).unwrap();
    let ran = ws
        .run("tokenize", train_params(16), &[ingest.input("ingest")])
        .unwrap();
    assert_eq!(
        ran.files(),
        ["dataset.parquet", "labels.json", "tokenizer.json"]
    );
    let batch = read_parquet(&ran.path("dataset.parquet"));
    let hot = batch.column_by_name("label_multi_hot").unwrap();
    let hot = arrow::array::AsArray::as_list::<i32>(hot);
    let first = hot.value(0);
    let first = arrow::array::AsArray::as_primitive::<arrow::datatypes::Float32Type>(&first);
    assert_eq!(first.values().to_vec(), [1.0, 1.0, 0.0]);
}

#[test]
fn a_missing_tokenizer_path_is_named() {
    let ws = Workspace::new();
    let split = split(&ws, labelled_csv(20, &["a", "b"]));
    let err = message(
        ws.run(
            "tokenize",
            json!({ "tokenizer": { "path": "models/none" } }),
            &[split.input("split")],
        )
        .err()
        .unwrap(),
    );
    assert!(
        err.contains("tokenizer models/none does not exist"),
        "{err}"
    );
    let registry = pipe_stages::registry();
    let bad = registry
        .get("tokenize")
        .unwrap()
        .check(&json!({ "tokenizer": { "train": { "vocab_size": 100 } } }));
    assert_eq!(bad.unwrap_err().path, ["tokenizer", "train", "vocab_size"]);
}
