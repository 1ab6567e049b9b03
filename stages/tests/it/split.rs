//! `split`: determinism, stratification, and the errors for impossible splits.

use std::collections::BTreeMap;

use serde_json::json;

use crate::util::{Ran, Workspace, labelled_csv, message, read_parquet, strings};

/// Ingests `csv` and returns the workspace and the ingest run.
fn ingested(csv: String) -> (Workspace, Ran) {
    let ws = Workspace::new();
    ws.file("d.csv", csv);
    let ran = ws
        .run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    (ws, ran)
}

/// A CSV whose labels have the given row counts, interleaved deterministically.
fn csv_with_counts(counts: &[usize], seed: u64) -> String {
    let mut rows: Vec<String> = Vec::new();
    for (l, &n) in counts.iter().enumerate() {
        for i in 0..n {
            rows.push(format!("text {i} of label {l},L{l}"));
        }
    }
    // A small LCG interleaves the rows so labels are not in blocks.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..rows.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rows.swap(i, (state >> 33) as usize % (i + 1));
    }
    format!("text,label\n{}\n", rows.join("\n"))
}

fn label_counts(ran: &Ran, split: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for label in strings(
        &read_parquet(&ran.path(&format!("{split}.parquet"))),
        "label",
    ) {
        *counts.entry(label).or_default() += 1;
    }
    counts
}

#[test]
fn same_input_and_params_give_byte_identical_outputs() {
    let (ws, ingest) = ingested(labelled_csv(500, &["a", "b", "c"]));
    let params = json!({ "test": 0.2, "validation": 0.1, "shuffle": true, "seed": 7 });
    let first = ws
        .run("split", params.clone(), &[ingest.input("ingest")])
        .unwrap();
    let second = ws.run("split", params, &[ingest.input("ingest")]).unwrap();
    assert_eq!(
        first.files(),
        [
            "labels.json",
            "split.json",
            "test.parquet",
            "train.parquet",
            "validation.parquet"
        ]
    );
    for file in first.files() {
        assert_eq!(
            std::fs::read(first.path(&file)).unwrap(),
            std::fs::read(second.path(&file)).unwrap(),
            "{file}"
        );
    }
    let other_seed = ws
        .run(
            "split",
            json!({ "shuffle": true, "seed": 8, "validation": 0.1 }),
            &[ingest.input("ingest")],
        )
        .unwrap();
    assert_ne!(
        std::fs::read(first.path("train.parquet")).unwrap(),
        std::fs::read(other_seed.path("train.parquet")).unwrap()
    );
}

#[test]
fn every_split_keeps_each_labels_share_within_one_row() {
    // A property over many label distributions, fractions and seeds.
    let cases = [
        (vec![50, 50], 0.2, 0.0),
        (vec![97, 3, 11], 0.25, 0.1),
        (vec![1, 1, 40], 0.3, 0.0),
        (vec![7, 13, 29, 2], 0.15, 0.15),
        (vec![333, 21, 5], 0.1, 0.05),
    ];
    for (case, (counts, test, validation)) in cases.iter().enumerate() {
        for shuffle in [false, true] {
            let (ws, ingest) = ingested(csv_with_counts(counts, case as u64));
            let params =
                json!({ "test": test, "validation": validation, "shuffle": shuffle, "seed": case });
            let ran = ws.run("split", params, &[ingest.input("ingest")]).unwrap();
            let fractions = [
                ("train", 1.0 - test - validation),
                ("validation", *validation),
                ("test", *test),
            ];
            for (split, fraction) in fractions {
                if fraction == 0.0 {
                    assert!(!ran.path("validation.parquet").exists());
                    continue;
                }
                let got = label_counts(&ran, split);
                for (l, &n) in counts.iter().enumerate() {
                    let have = *got.get(&format!("L{l}")).unwrap_or(&0) as f64;
                    let share = n as f64 * fraction;
                    // A label of one row keeps it in train.
                    let ok = (have - share).abs() < 1.0
                        || (n == 1 && (split == "train") == (have == 1.0));
                    assert!(
                        ok,
                        "case {case} {split} L{l}: {have} rows for a share of {share}"
                    );
                }
            }
            let total: usize = counts.iter().sum();
            let rows = &ran.json("split.json")["rows"];
            let sum: u64 = ["train", "validation", "test"]
                .iter()
                .filter_map(|s| rows[s].as_u64())
                .sum();
            assert_eq!(sum as usize, total);
        }
    }
}

#[test]
fn without_shuffle_rows_keep_file_order_and_labels_are_copied() {
    let (ws, ingest) = ingested(labelled_csv(10, &["a", "b"]));
    let ran = ws
        .run("split", json!({ "test": 0.2 }), &[ingest.input("ingest")])
        .unwrap();
    let train = strings(&read_parquet(&ran.path("train.parquet")), "text");
    let test = strings(&read_parquet(&ran.path("test.parquet")), "text");
    assert_eq!(train.len(), 8);
    assert!(train[0].starts_with("question number 0 "));
    assert!(test[0].starts_with("question number 8 ") && test[1].starts_with("question number 9 "));
    assert_eq!(ran.json("labels.json"), json!(["a", "b"]));
    assert_eq!(
        ran.json("split.json")["labels"]["test"],
        json!({ "a": 1, "b": 1 })
    );
    assert_eq!(ran.outcome.headline.as_deref(), Some("train 8 · test 2"));
    assert!(
        ran.key_params.get("seed").is_none(),
        "the seed is not in the key without shuffle"
    );
}

#[test]
fn an_empty_split_is_an_error() {
    let (ws, ingest) = ingested(labelled_csv(4, &["a", "b"]));
    let err = message(
        ws.run(
            "split",
            json!({ "test": 0.5, "validation": 0.1 }),
            &[ingest.input("ingest")],
        )
        .err()
        .unwrap(),
    );
    assert!(err.contains("the validation split would be empty"), "{err}");
}

#[test]
fn a_label_without_training_rows_is_named() {
    let (ws, ingest) = ingested("text,label\none,a\ntwo,a\nthree,a\nfour,a\nfive,b\n".to_string());
    let params = json!({ "test": 0.2, "stratify": false });
    let err = message(
        ws.run("split", params, &[ingest.input("ingest")])
            .err()
            .unwrap(),
    );
    assert!(
        err.contains("label `b` would have no training rows"),
        "{err}"
    );
    assert!(err.contains("stratify: true"), "{err}");
}

#[test]
fn bad_fractions_are_parameter_errors() {
    let registry = pipe_stages::registry();
    let split = registry.get("split").unwrap();
    assert_eq!(
        split.check(&json!({ "test": 0.0 })).unwrap_err().path,
        ["test"]
    );
    assert_eq!(
        split
            .check(&json!({ "test": 0.6, "validation": 0.4 }))
            .unwrap_err()
            .path,
        ["validation"]
    );
    assert_eq!(
        split.check(&json!({})).unwrap().key_params,
        json!({ "test": 0.2, "validation": 0.0, "shuffle": false })
    );
}

#[test]
fn multi_label_data_splits_unstratified_by_default() {
    let ws = Workspace::new();
    let mut csv = String::from("text,labels\n");
    for i in 0..20 {
        csv.push_str(&format!(
            "text {i},{}\n",
            if i % 2 == 0 { "x;y" } else { "y" }
        ));
    }
    ws.file("d.csv", csv);
    let params =
        json!({ "source": "d.csv", "text": "text", "label": "labels", "multi_label": true });
    let ingest = ws.run("ingest", params, &[]).unwrap();
    let ran = ws
        .run("split", json!({ "test": 0.25 }), &[ingest.input("ingest")])
        .unwrap();
    assert_eq!(ran.json("split.json")["stratified"], false);
    assert_eq!(
        ran.json("split.json")["rows"],
        json!({ "train": 15, "test": 5 })
    );
}
