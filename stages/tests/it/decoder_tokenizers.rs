//! The tokenize stage with the decoder families' tokenizers gives the ids transformers'
//! `AutoTokenizer` gives: a Llama-style tokenizer (SentencePiece-style BPE with byte fallback
//! and a BOS post-processor) and a GPT-2-style byte-level BPE, both trained on the sample data
//! by `tests/fixtures/tokenizers/make_fixtures.py`, on its rows and a few with characters
//! outside the vocabulary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::util::{Ran, Workspace, int_lists, read_parquet, strings};

fn fixture(family: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(family)
        .join(file)
}

/// Tokenizes the fixture's rows through ingest, split and tokenize with `family`'s
/// tokenizer.json and checks every row's ids against AutoTokenizer's.
fn ids_match_auto_tokenizer(family: &str) {
    let rows: Vec<(String, String, Vec<i32>)> =
        serde_json::from_str(&std::fs::read_to_string(fixture(family, "expected.json")).unwrap())
            .unwrap();
    let ws = Workspace::new();
    let lines: Vec<String> = rows
        .iter()
        .map(|(text, label, _)| json!({ "text": text, "label": label }).to_string())
        .collect();
    ws.file("d.jsonl", lines.join("\n") + "\n");
    let ingest = ingested_with_tokenizer(&ws, family);
    let split = ws
        .run("split", json!({ "test": 0.2 }), &[ingest.input("ingest")])
        .unwrap();
    let tokens = ws
        .run(
            "tokenize",
            json!({ "tokenizer": { "path": "tok/tokenizer.json" }, "max_length": 512 }),
            &[split.input("split")],
        )
        .unwrap();
    let want: BTreeMap<&str, &Vec<i32>> =
        rows.iter().map(|(t, _, ids)| (t.as_str(), ids)).collect();
    let mut seen = 0;
    for table in ["train.parquet", "test.parquet"] {
        let texts = strings(&read_parquet(&split.path(table)), "text");
        let ids = int_lists(&read_parquet(&tokens.path(table)), "input_ids");
        assert_eq!(texts.len(), ids.len(), "{family} {table}");
        for (text, ids) in texts.iter().zip(&ids) {
            let expected = want
                .get(text.as_str())
                .unwrap_or_else(|| panic!("{family}: the split changed the text {text:?}"));
            assert_eq!(ids, *expected, "{family}: ids of {text:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, rows.len(), "{family}: every row tokenized once");
}

#[test]
fn a_llama_style_tokenizer_gives_auto_tokenizers_ids_with_bos_and_byte_fallback() {
    ids_match_auto_tokenizer("llama");
    // The fixture exercises what it claims: BOS first, byte tokens for unseen characters.
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama", "expected.json")).unwrap())
            .unwrap();
    assert!(rows.iter().all(|r| r[2][0] == json!(1)));
}

#[test]
fn a_gpt2_style_tokenizer_gives_auto_tokenizers_ids() {
    ids_match_auto_tokenizer("gpt2");
}

/// A `max_length` that leaves no room for text after the tokens the tokenizer adds (the
/// Llama-style fixture adds BOS) is refused at the key, saying the smallest that works; that
/// one keeps BOS and one token of text.
#[test]
fn a_max_length_within_the_special_tokens_is_refused() {
    let ws = Workspace::new();
    let rows: String = (0..10)
        .map(|i| {
            format!(
                "{{\"text\": \"what is cell {i}\", \"label\": \"l{}\"}}\n",
                i % 2
            )
        })
        .collect();
    ws.file("d.jsonl", rows);
    let ingest = ingested_with_tokenizer(&ws, "llama");
    let tokenize = |max_length: usize| {
        ws.run(
            "tokenize",
            json!({ "tokenizer": { "path": "tok/tokenizer.json" }, "max_length": max_length }),
            &[ingest.input("ingest")],
        )
    };
    let err = tokenize(1).expect_err("BOS alone fills the row");
    let err = err.downcast::<pipe_engine::ParamError>().unwrap();
    assert_eq!(err.path, ["max_length"]);
    assert!(
        err.message.contains("adds 1 special token"),
        "{}",
        err.message
    );
    assert!(err.help.unwrap().contains("max_length: 2"));
    let tokens = tokenize(2).unwrap();
    let ids = int_lists(&read_parquet(&tokens.path("dataset.parquet")), "input_ids");
    assert!(
        ids.iter().all(|row| row.len() == 2 && row[0] == 1),
        "{ids:?}"
    );
}

/// The workspace's `d.jsonl` ingested, with `family`'s fixture tokenizer at
/// `tok/tokenizer.json`.
fn ingested_with_tokenizer(ws: &Workspace, family: &str) -> Ran {
    ws.file(
        "tok/tokenizer.json",
        std::fs::read(fixture(family, "tokenizer.json")).unwrap(),
    );
    ws.run(
        "ingest",
        json!({ "source": "d.jsonl", "text": "text", "label": "label" }),
        &[],
    )
    .unwrap()
}
