//! `gradient_accumulation_steps`: micro-batches that add up to the batch they cut, the log
//! and the resume in optimizer steps, and the values refused.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::finetune::{small_model, tokenized, weights_of};
use crate::util::{Ran, Workspace};

/// The sample's train split: 336 rows (a multiple of 8, not of 10).
const TRAIN_ROWS: usize = 336;

/// `base` with `extra`'s keys set.
fn with(base: &Value, extra: Value) -> Value {
    let mut params = base.clone();
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    params
}

/// How far apart two trainings from the same start ended: the L2 norm of the difference
/// of their weights over the L2 norm of what the reference moved (`start` → `reference`).
fn relative_gap(
    start: &BTreeMap<String, Vec<f32>>,
    reference: &BTreeMap<String, Vec<f32>>,
    other: &BTreeMap<String, Vec<f32>>,
) -> f64 {
    let (mut gap, mut moved) = (0.0f64, 0.0f64);
    for (name, r) in reference {
        for ((&r, &o), &s) in r.iter().zip(&other[name]).zip(&start[name]) {
            gap += (f64::from(r) - f64::from(o)).powi(2);
            moved += (f64::from(r) - f64::from(s)).powi(2);
        }
    }
    (gap / moved).sqrt()
}

fn step_lines(ran: &Ran) -> Vec<Value> {
    std::fs::read_to_string(ran.path("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("loss").is_some())
        .collect()
}

/// `batch_size: b, gradient_accumulation_steps: n` trains to the weights of
/// `batch_size: b·n`: the same rows per step, each micro-batch's gradient weighted by its
/// share of the step's loss denominator (rows, or total class weight), also when the last
/// step of an epoch is short and its micro-batches are unequal.
///
/// Tolerance: the two runs differ only by float rounding (a sum of two f32 gradients
/// against one computed at once, rows padded to another width), about 1e-7 relative per
/// gradient element. AdamW divides by √v, which lifts rounding in elements whose gradient
/// is near 0 to a visible update, so single weights can move apart by up to the learning
/// rate; what stays small is the difference over the whole model, measured against how far
/// training moved it: under 1e-4 of it here (about 1e-6 measured). A wrong share (1/n for micro-batches of 5 and
/// 1 rows, or counting rows instead of class weight) moves the gradient by tens of percent,
/// and not accumulating at all (`batch_size: b` alone) ends farther than 0.1 away, both
/// checked below.
#[test]
fn accumulated_micro_batches_train_like_the_batch_they_cut() {
    let ws = Workspace::new();
    let tokens = tokenized(&ws, 400);
    let input = [tokens.input("tokenize")];
    assert_eq!(
        tokens.outcome.metrics["train"]["rows"],
        json!(TRAIN_ROWS),
        "the sample changed: pick batch sizes for its train split"
    );
    let base = json!({
        "model": small_model(6), "learning_rate": 1e-3, "warmup_ratio": 0.2,
        "weight_decay": 0.01, "threads": 1, "dropout": { "embed": 0.0, "attention": 0.0, "resid": 0.0 }
    });
    let start = weights_of(
        &ws.run(
            "finetune",
            with(&base, json!({ "max_steps": 1, "learning_rate": 0.0 })),
            &input,
        )
        .unwrap(),
    );
    let weighted = json!({ "math": 3.0, "physics": 0.5 });
    let cases = [
        // Five full steps of 8 rows.
        (json!({ "max_steps": 5 }), 4, 2),
        // The same with class weights: shares by weight, not rows.
        (json!({ "max_steps": 5, "class_weights": weighted }), 4, 2),
        // A whole epoch of steps of 10 rows: the last has 6, micro-batches of 5 and 1.
        (json!({ "epochs": 1, "class_weights": weighted }), 5, 2),
    ];
    for (extra, micro, n) in cases {
        let params = with(&base, extra.clone());
        let whole = ws
            .run(
                "finetune",
                with(&params, json!({ "batch_size": micro * n })),
                &input,
            )
            .unwrap();
        let accumulated = ws
            .run(
                "finetune",
                with(
                    &params,
                    json!({ "batch_size": micro, "gradient_accumulation_steps": n }),
                ),
                &input,
            )
            .unwrap();
        let unaccumulated = ws
            .run(
                "finetune",
                with(&params, json!({ "batch_size": micro })),
                &input,
            )
            .unwrap();
        let (w, a) = (weights_of(&whole), weights_of(&accumulated));
        let gap = relative_gap(&start, &w, &a);
        let apart = relative_gap(&start, &w, &weights_of(&unaccumulated));
        eprintln!("{extra} as {micro}×{n}: gap {gap:.2e}, without accumulation {apart:.2e}");
        assert!(gap < 1e-4, "{extra} as {micro}×{n}: relative gap {gap:.2e}");
        assert!(
            apart > 0.1,
            "{extra}: the batch size changes nothing ({apart:.2e})"
        );

        // The log has a line per optimizer step with the same rows, so the same tokens,
        // and the step's loss (the micro-batches' losses by share) within float rounding.
        let (lw, la) = (step_lines(&whole), step_lines(&accumulated));
        assert_eq!(lw.len(), la.len());
        let steps = whole.json("metrics.json")["steps"].as_u64().unwrap();
        assert_eq!(accumulated.json("metrics.json")["steps"], steps);
        assert_eq!(lw.len() as u64, steps);
        for (i, (w, a)) in lw.iter().zip(&la).enumerate() {
            assert_eq!(a["step"], json!(i + 1));
            assert_eq!(a["tokens"], w["tokens"], "step {}", i + 1);
            assert_eq!(a["lr"], w["lr"], "step {}", i + 1);
            let (lw, la) = (w["loss"].as_f64().unwrap(), a["loss"].as_f64().unwrap());
            assert!(
                (lw - la).abs() < 1e-4 * lw.abs().max(1.0),
                "step {}: {lw} vs {la}",
                i + 1
            );
        }
    }
}

#[test]
fn accumulation_steps_must_be_a_positive_integer_and_join_the_key_when_used() {
    let registry = pipe_stages::registry();
    let kind = registry.get("finetune").unwrap();
    let params =
        |n: Value| json!({ "model": { "config": "tiny" }, "gradient_accumulation_steps": n });
    for bad in [json!(0), json!(-2), json!(1.5), json!("2")] {
        let e = kind.check(&params(bad.clone())).unwrap_err();
        assert_eq!(
            e.path,
            ["gradient_accumulation_steps"],
            "{bad}: {}",
            e.message
        );
    }
    let e = kind.check(&params(json!(0))).unwrap_err();
    assert!(e.message.contains("at least 1"), "{}", e.message);
    // 1 is the default and stays out of the key (existing caches stay valid); 2 changes
    // the results, so it is in.
    let one = kind.check(&params(json!(1))).unwrap();
    assert!(one.key_params.get("gradient_accumulation_steps").is_none());
    let two = kind.check(&params(json!(2))).unwrap();
    assert_eq!(two.key_params["gradient_accumulation_steps"], 2);
}
