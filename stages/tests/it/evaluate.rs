//! `evaluate`: metrics per split, per-row predictions that agree with the bundle, the report,
//! the choice of splits, and labels the model does not know.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use pipe_models::bundle::Bundle;
use pipe_onnx::SessionOptions;
use serde_json::json;

use crate::trained::{Trained, multi_label_csv};
use crate::util::{failure, labelled_csv, read_parquet, string_lists, strings};

const LABELS: [&str; 3] = ["art", "math", "physics"];

/// A list<float32> column as vectors.
fn float_lists(batch: &arrow::array::RecordBatch, column: &str) -> Vec<Vec<f32>> {
    let list = batch.column_by_name(column).unwrap().as_list::<i32>();
    (0..list.len())
        .map(|i| {
            list.value(i)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[test]
fn evaluate_scores_every_split_and_agrees_with_the_bundle() {
    let t = Trained::new(&labelled_csv(40, &LABELS), false);
    let bundle = t.export(json!({})).unwrap();
    let ran = t
        .evaluate(&bundle, &t.split, json!({ "batch_size": 4 }))
        .unwrap();
    assert_eq!(
        ran.files(),
        ["metrics.json", "predictions.parquet", "report.html"]
    );
    let metrics = ran.json("metrics.json");
    let keys: Vec<&String> = metrics.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["labels", "train", "validation", "test"]);
    assert_eq!(metrics["labels"], json!(LABELS));
    assert!(ran.outcome.headline.clone().unwrap().starts_with("test "));
    assert!(ran.outcome.metrics.contains_key("test"));
    let report = std::fs::read_to_string(ran.path("report.html")).unwrap();
    assert!(
        report.len() > 100 && report.contains("validation"),
        "{report}"
    );

    let rows = read_parquet(&ran.path("predictions.parquet"));
    let mut texts = Vec::new();
    let mut expected_splits = Vec::new();
    let mut expected_labels = Vec::new();
    for split in ["train", "validation", "test"] {
        let table = read_parquet(&t.split.path(&format!("{split}.parquet")));
        texts.extend(strings(&table, "text"));
        expected_labels.extend(strings(&table, "label"));
        expected_splits.extend(std::iter::repeat_n(split.to_string(), table.num_rows()));
    }
    assert_eq!(rows.num_rows(), 40);
    assert_eq!(strings(&rows, "split"), expected_splits);
    assert_eq!(strings(&rows, "text"), texts);
    assert_eq!(strings(&rows, "label"), expected_labels);

    // The same texts through the bundle one at a time (no padding at all).
    let probabilities = float_lists(&rows, "probabilities");
    let predicted = strings(&rows, "predicted");
    let mut opened = Bundle::open(bundle.out.path(), &SessionOptions::default()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let alone = opened.predict(&refs, 1).unwrap();
    for (i, p) in probabilities.iter().enumerate() {
        for (a, b) in p.iter().zip(alone.row(i)) {
            assert!((a - b).abs() < 1e-5, "row {i}: {p:?} vs {:?}", alone.row(i));
        }
        assert_eq!(predicted[i], LABELS[alone.top(i)]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // The metrics agree with the rows: accuracy is the share of rows predicted right.
    let right = predicted
        .iter()
        .zip(&expected_labels)
        .skip(20 + 10)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - right as f64 / 10.0).abs() < 1e-9,
        "{accuracy} vs {right}/10"
    );
}

#[test]
fn a_token_budget_cuts_the_batches_and_not_the_answers() {
    let t = Trained::new(&labelled_csv(40, &LABELS), false);
    let bundle = t.export(json!({})).unwrap();
    let table = read_parquet(&t.split.path("train.parquet"));
    let texts = strings(&table, "text");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let score = |tokens: Option<usize>| {
        let mut opened = Bundle::open(bundle.out.path(), &SessionOptions::default()).unwrap();
        if let Some(tokens) = tokens {
            opened = opened.with_batch_tokens(tokens);
        }
        let mut batches = Vec::new();
        let scored = opened
            .predict_with_progress(&refs, 8, |rows| batches.push(rows))
            .unwrap();
        (scored, batches)
    };
    let n = texts.len();
    let (whole, batches) = score(None);
    let chunks: Vec<usize> = (0..n).step_by(8).map(|start| (n - start).min(8)).collect();
    assert_eq!(batches, chunks, "the default budget does not bind here");
    // A budget of one token runs every row alone.
    let (alone, batches) = score(Some(1));
    assert_eq!(batches, vec![1; n]);
    for i in 0..n {
        assert_eq!(alone.top(i), whole.top(i));
        for (a, b) in alone.row(i).iter().zip(whole.row(i)) {
            assert!((a - b).abs() < 1e-5, "row {i}: {a} vs {b}");
        }
    }
}

#[test]
fn evaluate_scores_the_splits_asked_for_and_names_missing_ones() {
    let t = Trained::new(&labelled_csv(40, &LABELS), false);
    let bundle = t.export(json!({})).unwrap();
    let ran = t
        .evaluate(&bundle, &t.split, json!({ "splits": ["test", "train"] }))
        .unwrap();
    let metrics = ran.json("metrics.json");
    let keys: Vec<&String> = metrics.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["labels", "test", "train"]);
    assert!(ran.outcome.headline.unwrap().starts_with("train "));
    assert_eq!(
        ran.key_params,
        json!({ "splits": ["test", "train"], "batch_size": 32, "batch_tokens": 4096 })
    );

    let mut no_validation = t.split.input("split");
    no_validation.outputs.remove("validation");
    let mut model = bundle.input("export-onnx");
    model.name = "model".into();
    no_validation.name = "data".into();
    let err = failure(t.ws.run(
        "evaluate",
        json!({ "splits": ["validation"] }),
        &[model, no_validation],
    ));
    assert!(
        err.contains("no split `validation`") && err.contains("train, test"),
        "{err}"
    );

    let registry = pipe_stages::registry();
    let stage = registry.get("evaluate").unwrap();
    let err = stage.check(&json!({ "splits": ["dev"] })).unwrap_err();
    assert_eq!(err.path, ["splits", "0"]);
    let err = stage.check(&json!({ "batch_size": 0 })).unwrap_err();
    assert_eq!(err.path, ["batch_size"]);
    let err = stage.check(&json!({ "batch_tokens": 0 })).unwrap_err();
    assert_eq!(err.path, ["batch_tokens"]);
}

#[test]
fn labels_the_model_does_not_know_are_named() {
    let t = Trained::new(&labelled_csv(40, &LABELS), false);
    let bundle = t.export(json!({})).unwrap();
    let other = Trained::new(&labelled_csv(40, &["art", "zoology", "botany"]), false);
    let err = failure(t.evaluate(&bundle, &other.split, json!({})));
    assert!(
        err.contains("`botany`, `zoology`") && err.contains("art, math, physics"),
        "{err}"
    );
}

#[test]
fn multi_label_evaluation_writes_label_lists() {
    let t = Trained::new(&multi_label_csv(40, &LABELS), true);
    let bundle = t.export(json!({})).unwrap();
    let ran = t.evaluate(&bundle, &t.split, json!({})).unwrap();
    let rows = read_parquet(&ran.path("predictions.parquet"));
    assert_eq!(rows.num_rows(), 40);
    let truth = string_lists(&rows, "labels");
    assert!(truth.iter().any(|l| l.len() == 2));
    let predicted = string_lists(&rows, "predicted_labels");
    for (p, probabilities) in predicted.iter().zip(float_lists(&rows, "probabilities")) {
        let expected: Vec<&str> = LABELS
            .iter()
            .zip(&probabilities)
            .filter(|(_, p)| **p >= 0.5)
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(p, &expected);
    }
    assert!(ran.json("metrics.json")["test"].is_object());

    // A single-label model cannot score multi-label data.
    let single = Trained::new(&labelled_csv(40, &LABELS), false);
    let single_bundle = single.export(json!({})).unwrap();
    let err = failure(single.evaluate(&single_bundle, &t.split, json!({})));
    assert!(err.contains("multi-label"), "{err}");
}
