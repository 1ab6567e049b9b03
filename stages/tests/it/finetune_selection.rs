//! `finetune`'s best-checkpoint selection, early stopping, dropout and loss options through
//! the stage: what the outputs and the training log say, resuming, reproducibility, and the
//! parameter values refused at validation.

use pipe_engine::ParamError;
use serde_json::{Value, json};

use crate::finetune::{copy_dir, small_model, tokenized, tokenized_with, weights_of};
use crate::util::{Ran, Workspace};

/// The lines of a run's training log.
fn log_lines(ran: &Ran) -> Vec<Value> {
    std::fs::read_to_string(ran.path("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(step, eval_loss, eval_accuracy)` of every evaluation in the log.
fn evaluations(ran: &Ran) -> Vec<(u64, f64, f64)> {
    log_lines(ran)
        .iter()
        .filter(|l| l.get("eval_loss").is_some())
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["eval_loss"].as_f64().unwrap(),
                l["eval_accuracy"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// A learning rate high enough that the small model overfits the 30 training batches and
/// its validation loss turns back up within the run.
fn overfitting(extra: Value) -> Value {
    let mut params = json!({
        "model": small_model(2), "max_steps": 24, "batch_size": 8, "learning_rate": 1e-2,
        "lr_schedule": "constant", "eval_every": 2, "threads": 1
    });
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    params
}

#[test]
fn select_best_keeps_the_weights_of_the_lowest_validation_loss() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let ran = ws
        .run(
            "finetune",
            overfitting(json!({ "select_best": "eval_loss" })),
            &input,
        )
        .unwrap();
    let evals = evaluations(&ran);
    assert_eq!(evals.len(), 12, "every 2 steps and at the end: {evals:?}");
    // The first strictly lowest loss of the log.
    let best = evals
        .iter()
        .fold(None::<(u64, f64, f64)>, |b, &e| match b {
            Some(b) if b.1 <= e.1 => Some(b),
            _ => Some(e),
        })
        .unwrap();
    assert!(
        best.0 < 24,
        "the validation loss never rose, so the test shows nothing: {evals:?}"
    );
    let metrics = ran.json("metrics.json");
    assert_eq!(metrics["best_step"], best.0);
    assert_eq!(metrics["validation_loss"], best.1);
    assert_eq!(metrics["validation_accuracy"], best.2);
    assert_eq!(metrics["steps"], 24);
    let headline = ran.outcome.headline.clone().unwrap();
    assert!(
        headline.contains(&format!("best step {}", best.0)),
        "{headline}"
    );

    // The output weights are the best step's: evaluated again (a zero learning rate leaves
    // them as loaded), they give the logged validation loss of that step.
    copy_dir(&ran.path("model"), &ws.path().join("best"));
    let again = ws
        .run(
            "finetune",
            json!({ "model": { "path": "best" }, "max_steps": 1, "learning_rate": 0.0,
                    "batch_size": 8, "threads": 1 }),
            &input,
        )
        .unwrap();
    let loss = again.json("metrics.json")["validation_loss"]
        .as_f64()
        .unwrap();
    assert!(
        (loss - best.1).abs() < 1e-6,
        "reloaded {loss}, logged {}",
        best.1
    );
}

#[test]
fn early_stopping_stops_where_the_log_says_and_survives_a_resume() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let params = overfitting(json!({
        "select_best": "eval_loss", "early_stopping_patience": 2, "eval_every": 1,
        "checkpoint_every": 1
    }));
    let scratch = tempfile::tempdir().unwrap();
    let whole = ws
        .run_with_scratch("finetune", params.clone(), &input, scratch.path())
        .unwrap();
    let evals = evaluations(&whole);
    // Replay the rule on the log: stop at the second evaluation in a row that is not
    // strictly below the best loss so far.
    let (mut best, mut since, mut stop) = (f64::INFINITY, 0, None);
    for &(step, loss, _) in &evals {
        if loss < best {
            (best, since) = (loss, 0);
        } else {
            since += 1;
            if since == 2 {
                stop = Some(step);
                break;
            }
        }
    }
    let stop = stop.expect("the validation loss never rose twice in a row");
    let metrics = whole.json("metrics.json");
    assert_eq!(metrics["stopped_early_at_step"], stop);
    assert_eq!(metrics["steps"], stop);
    assert_eq!(
        evals.last().unwrap().0,
        stop,
        "no evaluation after the stop"
    );
    let lines = log_lines(&whole);
    let last = lines.last().unwrap();
    assert_eq!(last["early_stop"], true);
    assert_eq!(last["step"], stop);
    assert_eq!(last["best_step"], metrics["best_step"]);
    assert!(
        whole
            .outcome
            .headline
            .clone()
            .unwrap()
            .contains(&format!("stopped early at step {stop}"))
    );
    assert!(whole.notes_contain(&format!("stopped early at step {stop}")));

    // The checkpoint of the step before the stop holds one evaluation without improvement;
    // a run resuming there stops at the same step with the same weights.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(scratch.path().join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(meta["step"], stop - 1);
    assert_eq!(meta["selection"]["since_best"], 1);
    let resumed = ws
        .run_with_scratch("finetune", params, &input, scratch.path())
        .unwrap();
    assert!(resumed.notes_contain(&format!("resumed from the checkpoint at step {}", stop - 1)));
    let again = resumed.json("metrics.json");
    assert_eq!(again["stopped_early_at_step"], stop);
    assert_eq!(again["best_step"], metrics["best_step"]);
    assert_eq!(weights_of(&whole), weights_of(&resumed));
}

#[test]
fn dropout_is_reproducible_at_any_thread_count_and_changes_training() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let params = |threads: usize, dropout: Value| {
        json!({
            "model": small_model(4), "max_steps": 6, "batch_size": 16, "learning_rate": 1e-3,
            "dropout": dropout, "threads": threads
        })
    };
    let on = json!({ "embed": 0.1, "attention": 0.1, "resid": 0.1 });
    let one = ws.run("finetune", params(1, on.clone()), &input).unwrap();
    let two = ws.run("finetune", params(2, on), &input).unwrap();
    assert_eq!(
        weights_of(&one),
        weights_of(&two),
        "masks depend on threads"
    );
    let off = ws
        .run("finetune", params(1, json!({ "embed": 0.0 })), &input)
        .unwrap();
    assert_ne!(
        weights_of(&one),
        weights_of(&off),
        "dropout changed nothing"
    );
}

#[test]
fn bad_values_are_refused_at_validation_with_their_path() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let refused = |extra: Value| {
        let mut params = json!({ "model": { "config": "tiny" } });
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let e = kind.check(&params).unwrap_err();
        (e.path.join("."), e.message)
    };
    let cases = [
        (json!({ "label_smoothing": -0.1 }), "label_smoothing"),
        (json!({ "label_smoothing": 1.0 }), "label_smoothing"),
        (
            json!({ "dropout": { "attention": 1.5 } }),
            "dropout.attention",
        ),
        (json!({ "dropout": { "resid": -0.2 } }), "dropout.resid"),
        (json!({ "dropout": { "mlp": 0.1 } }), "dropout.mlp"),
        (
            json!({ "class_weights": { "math": -1.0 } }),
            "class_weights.math",
        ),
        (
            json!({ "class_weights": { "math": 0.0 } }),
            "class_weights.math",
        ),
        (json!({ "class_weights": {} }), "class_weights"),
        (json!({ "class_weights": "uniform" }), "class_weights"),
        (json!({ "select_best": "f1" }), "select_best"),
        (
            json!({ "early_stopping_patience": 3 }),
            "early_stopping_patience",
        ),
        (
            json!({ "select_best": "eval_loss", "early_stopping_patience": 0 }),
            "early_stopping_patience",
        ),
    ];
    for (extra, path) in cases {
        let (got, msg) = refused(extra.clone());
        assert_eq!(got, path, "{extra}: {msg}");
    }
    let ok = kind
        .check(
            &json!({ "model": { "config": "tiny" }, "select_best": "eval_accuracy",
                        "early_stopping_patience": 3, "label_smoothing": 0.1,
                        "class_weights": "balanced", "dropout": { "embed": 0.1 } }),
        )
        .unwrap();
    assert_eq!(ok.key_params["select_best"], "eval_accuracy");
    // Unset options stay out of the key: existing caches stay valid.
    let plain = kind
        .check(&json!({ "model": { "config": "tiny" } }))
        .unwrap();
    for key in ["select_best", "dropout", "label_smoothing", "class_weights"] {
        assert!(plain.key_params.get(key).is_none(), "{key} in the key");
    }
}

/// Errors of settings checked against the data are `ParamError`s at the setting, which the
/// engine shows at its place in the manifest.
#[test]
fn errors_that_need_the_data_name_the_setting_and_what_to_change() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    let refused = |params: Value, input: &[pipe_engine::Input]| {
        let e = ws.run("finetune", params, input).unwrap_err();
        let e = e.downcast::<ParamError>().expect("a ParamError");
        (e.path.join("."), e.message, e.help.unwrap_or_default())
    };
    let (path, msg, _) = refused(
        json!({ "model": small_model(1), "max_steps": 1, "threads": 1,
                "class_weights": { "astronomy": 2.0 } }),
        &input,
    );
    assert_eq!(path, "class_weights.astronomy");
    assert!(
        msg.contains("`astronomy`") && msg.contains("biology, chemistry, math, physics"),
        "{msg}"
    );

    // Without a validation split there is nothing to select by (refused at validation when
    // the plan knows the split's outputs; here, when it runs).
    let no_validation = tokenized_with(&ws, 400, 0.0);
    let (path, msg, help) = refused(
        json!({ "model": small_model(1), "max_steps": 1, "select_best": "eval_loss" }),
        &[no_validation.input("tokenize")],
    );
    assert_eq!(path, "select_best");
    assert!(msg.contains("no validation split"), "{msg}");
    assert!(help.contains("`validation:`"), "{help}");
}

#[test]
fn select_best_is_checked_against_the_planned_inputs() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let params = json!({ "model": { "config": "tiny" }, "select_best": "eval_loss" });
    let input = |outputs: Option<&[&str]>| pipe_engine::PlannedInput {
        name: "tokenize",
        stage: "tokenize",
        outputs: outputs.map(|o| o.iter().map(|s| s.to_string()).collect()),
    };
    let without = ["train", "test", "tokenizer", "labels"];
    let e = kind
        .check_inputs(&params, &[input(Some(&without))])
        .unwrap_err();
    assert_eq!(e.path, ["select_best"]);
    assert!(e.help.unwrap().contains("`validation:`"));
    let with = ["train", "validation", "test", "tokenizer", "labels"];
    kind.check_inputs(&params, &[input(Some(&with))]).unwrap();
    // Unknown outputs are left to the run.
    kind.check_inputs(&params, &[input(None)]).unwrap();
    // Without `select_best` nothing is needed.
    let plain = json!({ "model": { "config": "tiny" } });
    kind.check_inputs(&plain, &[input(Some(&without))]).unwrap();
}
