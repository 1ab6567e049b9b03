//! `compare`: members read from real evaluate and export-onnx outputs, side by side.

use pipe_engine::Input;
use serde_json::{Value, json};

use crate::trained::Trained;
use crate::util::{Ran, labelled_csv};

const LABELS: [&str; 3] = ["astronomy", "botany", "chemistry"];

/// A training log with per-step tokens and seconds, as finetune writes them.
const TIMED_LOG: &str = "{\"step\": 1, \"loss\": 1.4, \"tokens\": 300, \"seconds\": 0.5}\n\
{\"step\": 2, \"loss\": 0.8, \"tokens\": 500, \"seconds\": 1.5}\n\
{\"epoch\": 1.0, \"eval_loss\": 1.0}\n";

/// One member: a model evaluated on its own data, and its bundle (with the training log).
struct Member {
    trained: Trained,
    bundle: Ran,
    evaluation: Ran,
}

fn member(rows: usize) -> Member {
    let trained = Trained::new(&labelled_csv(rows, &LABELS), false);
    std::fs::write(trained.finetune.path().join("train_log.jsonl"), TIMED_LOG).unwrap();
    let bundle = trained.export(json!({})).unwrap();
    let evaluation = trained
        .evaluate(
            &bundle,
            &trained.split,
            json!({ "splits": ["train", "test"] }),
        )
        .unwrap();
    Member {
        trained,
        bundle,
        evaluation,
    }
}

/// The inputs the engine hands `compare` for `from: [evaluate, export-onnx]` over members `slugs`.
fn inputs(members: &[(&str, &Member)]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for (slug, m) in members {
        let mut evaluation = m.evaluation.input("evaluate");
        evaluation.name = format!("evaluate@{slug}");
        let mut bundle = m.bundle.input("export-onnx");
        bundle.name = format!("export-onnx@{slug}");
        inputs.extend([evaluation, bundle]);
    }
    inputs
}

#[test]
fn compare_tables_each_members_metrics_and_names_the_best() {
    let a = member(40);
    let b = member(48);
    let ws = &a.trained.ws;
    let ran = ws
        .run(
            "compare",
            json!({}),
            &inputs(&[("model-a", &a), ("model-b", &b)]),
        )
        .unwrap();
    assert_eq!(ran.files(), ["compare.json", "report.html"]);
    let compared = ran.json("compare.json");
    assert_eq!(compared["by"], "test.macro_auc");
    let rows = compared["members"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, (name, m)) in rows.iter().zip([("model-a", &a), ("model-b", &b)]) {
        assert_eq!(row["member"], name);
        assert_eq!(
            row["inputs"],
            json!([format!("evaluate@{name}"), format!("export-onnx@{name}")])
        );
        let metrics = m.evaluation.json("metrics.json");
        for split in ["train", "test"] {
            for metric in ["accuracy", "macro_f1", "macro_auc", "log_loss"] {
                assert_eq!(
                    row["metrics"][format!("{split}.{metric}")],
                    metrics[split][metric],
                    "{name} {split}.{metric}"
                );
            }
        }
        // 800 tokens in 2 s of steps.
        assert_eq!(row["metrics"]["train_seconds"], json!(2.0));
        assert_eq!(row["metrics"]["tokens_per_s"], json!(400.0));
    }
    let auc = |m: &Member| {
        m.evaluation.json("metrics.json")["test"]["macro_auc"]
            .as_f64()
            .unwrap()
    };
    let (best, value) = if auc(&a) >= auc(&b) {
        ("model-a", auc(&a))
    } else {
        ("model-b", auc(&b))
    };
    assert_eq!(compared["best"], json!({ "member": best, "value": value }));
    assert_eq!(ran.outcome.metrics["best"], json!(best));
}

#[test]
fn a_lower_is_better_metric_picks_the_smallest() {
    let a = member(40);
    let b = member(48);
    let ran = a
        .trained
        .ws
        .run(
            "compare",
            json!({ "by": "train.log_loss" }),
            &inputs(&[("a", &a), ("b", &b)]),
        )
        .unwrap();
    let compared = ran.json("compare.json");
    let loss = |m: &Member| {
        m.evaluation.json("metrics.json")["train"]["log_loss"]
            .as_f64()
            .unwrap()
    };
    let best = if loss(&a) <= loss(&b) { "a" } else { "b" };
    assert_eq!(compared["higher_is_better"], json!(false));
    assert_eq!(compared["best"]["member"], json!(best));
}

#[test]
fn the_page_has_a_roc_chart_per_split_and_the_loss_curves_of_every_member() {
    let a = member(40);
    let b = member(48);
    let ran = a
        .trained
        .ws
        .run("compare", json!({}), &inputs(&[("a", &a), ("b", &b)]))
        .unwrap();
    let html = std::fs::read_to_string(ran.path("report.html")).unwrap();
    for split in ["train", "test"] {
        let start = html
            .find(&format!("data-split=\"{split}\""))
            .unwrap_or_else(|| panic!("no section for {split}"));
        let section = &html[start..];
        let section = &section[..section.find("</section>").unwrap()];
        assert_eq!(section.matches("<svg").count(), 1, "{split}: one chart");
        // One curve per member, in the first two palette colours.
        assert!(section.contains("stroke=\"#4E79A7\""), "{split}");
        assert!(section.contains("stroke=\"#F28E2B\""), "{split}");
    }
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "two ROC charts and one loss chart"
    );
    assert!(html.contains("training loss"));
    assert!(!html.contains("http"), "the page is offline");
    assert!(html.contains("★"), "the best member is marked");
}

#[test]
fn bad_inputs_and_parameters_are_named() {
    let a = member(40);
    let ws = &a.trained.ws;
    let err = ws.run(
        "compare",
        json!({ "by": "test.speed" }),
        &inputs(&[("a", &a)]),
    );
    let err = format!("{:#}", err.unwrap_err());
    assert!(err.contains("cannot rank members by `test.speed`"), "{err}");
    let split = a.trained.split.input("split");
    let err = format!("{:#}", ws.run("compare", json!({}), &[split]).unwrap_err());
    assert!(err.contains("has a metrics.json"), "{err}");
    let value: Value = json!({ "by": 3 });
    assert!(ws.run("compare", value, &inputs(&[("a", &a)])).is_err());
}
