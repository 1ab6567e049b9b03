//! The tokenize stage with the decoder families' tokenizers gives the ids transformers'
//! `AutoTokenizer` gives: a Llama-style tokenizer (SentencePiece-style BPE with byte fallback
//! and a BOS post-processor) and a GPT-2-style byte-level BPE, both trained on the sample data
//! by `tests/fixtures/tokenizers/make_fixtures.py`, on its rows and a few with characters
//! outside the vocabulary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::util::{Workspace, int_lists, read_parquet, strings};

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
    ws.file(
        "tok/tokenizer.json",
        std::fs::read(fixture(family, "tokenizer.json")).unwrap(),
    );
    let ingest = ws
        .run(
            "ingest",
            json!({ "source": "d.jsonl", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
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
