//! Classification metrics against scikit-learn: the golden values in
//! `tests/fixtures/metrics/*.json` come from `make_fixtures.py` there (its docstring says
//! what each case exercises; the scikit-learn version is in each file's `versions`).
//! Floating-point values must match to 1e-9, counts exactly.

use std::path::PathBuf;

use pipe_stages::scoring::{
    RocCurve, SplitMetrics, TaskMetrics, multi_label, one_hot, predicted_class, roc_curves,
    single_label,
};
use serde_json::{Value, json};

const TOL: f64 = 1e-9;

/// A fixture's inputs and sklearn's values.
pub struct Fixture {
    pub labels: Vec<String>,
    /// Row-major rows × labels.
    pub probabilities: Vec<f32>,
    pub json: Value,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/metrics")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let labels = json["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        // Stored as the exact f64 value of each f32, so the cast is exact.
        let probabilities = flat(&json["probabilities"])
            .into_iter()
            .map(|p| p as f32)
            .collect();
        Fixture {
            labels,
            probabilities,
            json,
        }
    }

    pub fn expected(&self, key: &str) -> &Value {
        self.json["expected"]
            .get(key)
            .unwrap_or_else(|| panic!("the fixture has no expected `{key}`"))
    }

    /// Single-label truth: class indices.
    pub fn class_truth(&self) -> Vec<usize> {
        self.json["truth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect()
    }

    /// Multi-label truth: row-major 0/1.
    pub fn indicator_truth(&self) -> Vec<f32> {
        flat(&self.json["truth"])
            .into_iter()
            .map(|t| t as f32)
            .collect()
    }
}

/// A JSON array of numbers, or of arrays of numbers, flattened row-major.
fn flat(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| match v.as_array() {
            Some(row) => row.iter().map(|x| x.as_f64().unwrap()).collect(),
            None => vec![v.as_f64().unwrap()],
        })
        .collect()
}

fn assert_close(ours: f64, theirs: &Value, what: &str) {
    let theirs = theirs
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {theirs}"));
    assert!(
        (ours - theirs).abs() <= TOL,
        "{what}: ours {ours}, sklearn {theirs}, diff {:e}",
        (ours - theirs).abs()
    );
}

fn assert_close_opt(ours: Option<f64>, theirs: &Value, what: &str) {
    match ours {
        Some(ours) => assert_close(ours, theirs, what),
        None => assert!(theirs.is_null(), "{what}: ours undefined, sklearn {theirs}"),
    }
}

/// Per-class precision/recall/F1/support and AUC, and the macro AUC and F1s.
fn assert_shared(m: &SplitMetrics, f: &Fixture) {
    let rows = f.expected("rows").as_u64().unwrap() as usize;
    assert_eq!(m.rows, rows);
    assert_close(m.macro_f1, f.expected("macro_f1"), "macro F1");
    assert_close(m.weighted_f1, f.expected("weighted_f1"), "weighted F1");
    assert_close_opt(m.macro_auc, f.expected("macro_auc"), "macro AUC");
    let prfs = f.expected("per_class");
    assert_eq!(m.per_class.len(), f.labels.len());
    for (j, class) in m.per_class.iter().enumerate() {
        let what = |metric: &str| format!("{metric} of `{}`", class.label);
        assert_eq!(class.label, f.labels[j]);
        assert_close(class.precision, &prfs["precision"][j], &what("precision"));
        assert_close(class.recall, &prfs["recall"][j], &what("recall"));
        assert_close(class.f1, &prfs["f1"][j], &what("F1"));
        assert_eq!(
            Some(class.support),
            prfs["support"][j].as_u64(),
            "{}",
            what("support")
        );
        assert_close_opt(class.auc, &f.expected("auc")[j], &what("AUC"));
    }
}

fn assert_single_label(f: &Fixture) -> SplitMetrics {
    let truth = f.class_truth();
    let m = single_label(&f.labels, &truth, &f.probabilities).unwrap();
    assert_shared(&m, f);
    let k = f.labels.len();
    let predicted: Vec<usize> = f.probabilities.chunks(k).map(predicted_class).collect();
    let sk_predicted: Vec<usize> = flat(f.expected("predicted"))
        .iter()
        .map(|&p| p as usize)
        .collect();
    assert_eq!(predicted, sk_predicted, "argmax");
    let TaskMetrics::SingleLabel {
        accuracy,
        log_loss,
        confusion_matrix,
        confusion_cells: None,
    } = &m.task
    else {
        panic!("single-label data gave {:?}", m.task);
    };
    assert_close(*accuracy, f.expected("accuracy"), "accuracy");
    assert_close(*log_loss, f.expected("log_loss"), "log loss");
    // sklearn on the float32 array itself computes in float32: same value to ~1e-7.
    let ll32 = f.expected("log_loss_float32_input").as_f64().unwrap();
    assert!(
        (log_loss - ll32).abs() <= 1e-6 * ll32,
        "{log_loss} vs {ll32}"
    );
    let sk_confusion: Vec<Vec<u64>> =
        serde_json::from_value(f.expected("confusion_matrix").clone()).unwrap();
    assert_eq!(confusion_matrix.as_ref(), Some(&sk_confusion));
    m
}

/// Every curve's points and area against `roc_curve` / `roc_auc_score`.
fn assert_roc(curves: &[RocCurve], f: &Fixture) {
    assert_eq!(curves.len(), f.labels.len());
    for (j, curve) in curves.iter().enumerate() {
        let expected = &f.expected("roc")[j];
        assert_eq!(curve.label, f.labels[j]);
        assert_close_opt(
            curve.auc,
            &f.expected("auc")[j],
            &format!("AUC of {}", curve.label),
        );
        if expected.is_null() {
            assert!(curve.fpr.is_empty() && curve.tpr.is_empty());
            continue;
        }
        let (fpr, tpr) = (flat(&expected["fpr"]), flat(&expected["tpr"]));
        assert_eq!(curve.fpr.len(), fpr.len(), "points of {}", curve.label);
        for (i, (ours, theirs)) in curve.fpr.iter().zip(&fpr).enumerate() {
            assert!((ours - theirs).abs() <= TOL, "fpr[{i}] of {}", curve.label);
        }
        for (i, (ours, theirs)) in curve.tpr.iter().zip(&tpr).enumerate() {
            assert!((ours - theirs).abs() <= TOL, "tpr[{i}] of {}", curve.label);
        }
    }
}

#[test]
fn single_label_matches_scikit_learn() {
    let f = Fixture::load("single_label.json");
    let m = assert_single_label(&f);
    // Every class is present, so sklearn's own macro ovr is defined and equals ours.
    assert_close_opt(m.macro_auc, f.expected("sklearn_macro_ovr"), "macro ovr");
}

#[test]
fn a_class_absent_from_the_truth_has_no_auc_and_is_left_out_of_the_macro_auc() {
    let f = Fixture::load("missing_class.json");
    let m = assert_single_label(&f);
    assert_eq!(m.per_class[3].auc, None);
    assert_eq!(m.per_class[3].support, 0);
    // sklearn's macro ovr is nan here; ours averages the three defined classes.
    assert!(f.expected("sklearn_macro_ovr").is_null());
    let defined: f64 = m.per_class[..3].iter().map(|c| c.auc.unwrap()).sum();
    assert_close(defined / 3.0, f.expected("macro_auc"), "macro AUC");
}

#[test]
fn single_label_roc_curves_match_roc_curve_with_ties() {
    for name in ["single_label.json", "missing_class.json"] {
        let f = Fixture::load(name);
        let truth = one_hot(&f.class_truth(), f.labels.len());
        assert_roc(&roc_curves(&f.labels, &truth, &f.probabilities), &f);
    }
}

#[test]
fn multi_label_matches_scikit_learn() {
    let f = Fixture::load("multi_label.json");
    let truth = f.indicator_truth();
    let m = multi_label(&f.labels, &truth, &f.probabilities).unwrap();
    assert_shared(&m, &f);
    let TaskMetrics::MultiLabel {
        threshold,
        subset_accuracy,
        micro_f1,
        hamming_loss,
    } = m.task
    else {
        panic!("multi-label data gave {:?}", m.task);
    };
    assert_eq!(
        f64::from(threshold),
        f.expected("threshold").as_f64().unwrap()
    );
    assert_close(
        subset_accuracy,
        f.expected("subset_accuracy"),
        "subset accuracy",
    );
    assert_close(micro_f1, f.expected("micro_f1"), "micro F1");
    assert_close(hamming_loss, f.expected("hamming_loss"), "Hamming loss");
    // The never- and always-positive labels have no AUC.
    assert_eq!((m.per_class[3].auc, m.per_class[4].auc), (None, None));
    assert_roc(&roc_curves(&f.labels, &truth, &f.probabilities), &f);
}

#[test]
fn metrics_json_has_the_documented_shape() {
    let f = Fixture::load("missing_class.json");
    let m = single_label(&f.labels, &f.class_truth(), &f.probabilities).unwrap();
    let value = serde_json::to_value(&m).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "rows",
            "macro_f1",
            "weighted_f1",
            "macro_auc",
            "per_class",
            "task",
            "accuracy",
            "log_loss",
            "confusion_matrix"
        ]
    );
    assert_eq!(value["task"], "single_label");
    assert_eq!(value["per_class"][3]["label"], "never");
    assert_eq!(value["per_class"][3]["auc"], Value::Null);
    assert_eq!(value["per_class"][3]["support"], 0);

    let f = Fixture::load("multi_label.json");
    let m = multi_label(&f.labels, &f.indicator_truth(), &f.probabilities).unwrap();
    let value = serde_json::to_value(&m).unwrap();
    assert_eq!(value["task"], "multi_label");
    assert_eq!(value["threshold"], 0.5);
    for key in ["subset_accuracy", "micro_f1", "hamming_loss"] {
        assert!(value[key].is_f64(), "{key}");
    }
    assert!(value.get("confusion_matrix").is_none());
}

#[test]
fn headline_shows_macro_auc_and_accuracy_or_micro_f1() {
    let f = Fixture::load("single_label.json");
    let m = single_label(&f.labels, &f.class_truth(), &f.probabilities).unwrap();
    // sklearn: macro AUC 0.88655…, accuracy 0.75.
    assert_eq!(m.headline(), "AUC 0.887 · accuracy 0.750");

    let f = Fixture::load("multi_label.json");
    let m = multi_label(&f.labels, &f.indicator_truth(), &f.probabilities).unwrap();
    // sklearn: macro AUC over the defined labels 0.87854…, micro F1 0.77064….
    assert_eq!(m.headline(), "AUC 0.879 · micro F1 0.771");

    // Only one class in the truth: no AUC anywhere.
    let labels = ["a".to_string(), "b".to_string()];
    let m = single_label(&labels, &[0, 0], &[0.9, 0.1, 0.4, 0.6]).unwrap();
    assert_eq!(m.macro_auc, None);
    assert_eq!(m.headline(), "accuracy 0.500");
}

fn single_label_error(truth: &[usize], probabilities: &[f32]) -> String {
    let labels = ["a".to_string(), "b".to_string()];
    format!(
        "{:#}",
        single_label(&labels, truth, probabilities).unwrap_err()
    )
}

fn multi_label_error(truth: &[f32], probabilities: &[f32]) -> String {
    let labels = ["a".to_string(), "b".to_string()];
    format!(
        "{:#}",
        multi_label(&labels, truth, probabilities).unwrap_err()
    )
}

#[test]
fn bad_inputs_are_errors_that_say_what_is_wrong() {
    assert_eq!(single_label_error(&[], &[]), "no rows to evaluate");
    assert_eq!(
        single_label_error(&[0, 1], &[0.5, 0.5, 0.5]),
        "probabilities hold 3 values, expected 2 × 2 = 4 (rows × labels)"
    );
    assert_eq!(
        single_label_error(&[0, 2], &[0.5, 0.5, 0.5, 0.5]),
        "row 1: true class index 2 is out of range for 2 labels"
    );
    assert_eq!(
        single_label_error(&[0, 1], &[0.5, 0.5, f32::NAN, 0.5]),
        "row 1: the probability of `a` is NaN"
    );
    assert_eq!(
        single_label_error(&[0], &[3.2, -1.0]),
        "row 0: the probability of `a` is 3.2, outside [0, 1]"
    );
    assert_eq!(
        format!("{:#}", single_label(&[], &[0], &[]).unwrap_err()),
        "no labels to evaluate against"
    );

    assert_eq!(multi_label_error(&[], &[]), "no rows to evaluate");
    assert_eq!(
        multi_label_error(&[1.0, 0.0, 1.0], &[0.5; 3]),
        "truth holds 3 values, not a whole number of rows of 2 labels"
    );
    assert_eq!(
        multi_label_error(&[1.0, 0.0], &[0.5; 4]),
        "probabilities hold 4 values, expected 1 × 2 = 2 (rows × labels)"
    );
    assert_eq!(
        multi_label_error(&[1.0, 0.0, 0.0, 0.5], &[0.5; 4]),
        "row 1: the truth of `b` is 0.5, expected 0 or 1"
    );
    assert_eq!(
        multi_label_error(&[1.0, 0.0], &[0.2, f32::NAN]),
        "row 0: the probability of `b` is NaN"
    );
}

#[test]
fn fixtures_record_the_scikit_learn_version() {
    for name in [
        "single_label.json",
        "missing_class.json",
        "multi_label.json",
    ] {
        let f = Fixture::load(name);
        assert_eq!(f.json["versions"]["scikit-learn"], json!("1.9.1"), "{name}");
    }
}
