//! The classification loss options against PyTorch: label smoothing and class weights
//! (`torch.nn.CrossEntropyLoss(weight=…, label_smoothing=…)`), loss and gradient with
//! respect to the logits, and scikit-learn's balanced weights. The golden values are in
//! `tests/fixtures/loss/loss.json`, written by `make_fixtures.py` beside it.

use pipe_models::loss::{CrossEntropy, balanced_class_weights};
use pipe_onnx::{DType, Dim, Graph, HostTensor, Session, SessionOptions};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loss/loss.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The loss and its gradient with respect to the logits under `options`.
fn loss_and_grad(options: &CrossEntropy, logits: &[f32], labels: &[i64]) -> (f64, Vec<f32>) {
    let (n, c) = (labels.len() as i64, (logits.len() / labels.len()) as i64);
    let mut g = Graph::new("loss");
    let x = g
        .input("logits", DType::F32, &[Dim::from("batch"), Dim::from(c)])
        .unwrap();
    let y = g
        .input("labels", DType::I64, &[Dim::from("batch")])
        .unwrap();
    let loss = options.loss(&mut g, x, y).unwrap();
    let grad = pipe_onnx::gradients(&mut g, loss, &[x]).unwrap()[0];
    g.output(loss, "loss").unwrap();
    g.output(grad, "grad").unwrap();
    let mut session = Session::from_model(&g.build().unwrap(), &SessionOptions::default()).unwrap();
    let x = HostTensor::f32(&[n, c], logits.to_vec()).unwrap();
    let y = HostTensor::i64(&[n], labels.to_vec()).unwrap();
    let out = session.run(&[("logits", &x), ("labels", &y)]).unwrap();
    (
        out["loss"].to_f64_vec()[0],
        out["grad"].as_f32().unwrap().to_vec(),
    )
}

/// float32 graph against float64 PyTorch on logits of magnitude ≈ 2: the losses agree to a
/// few float32 ulps of values ≈ 1, the gradients (entries ≤ 1/N) likewise.
const TOL: f64 = 2e-6;

#[test]
fn label_smoothing_and_class_weights_match_torch() {
    let f = fixture();
    let logits: Vec<f32> = floats(&f["logits"]).iter().map(|&v| v as f32).collect();
    let labels: Vec<i64> = floats(&f["labels"]).iter().map(|&v| v as i64).collect();
    let (plain, _) = loss_and_grad(&CrossEntropy::default(), &logits, &labels);
    assert!((plain - f["plain_loss"].as_f64().unwrap()).abs() < TOL);
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let options = CrossEntropy {
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
            class_weights: case["class_weights"].as_array().map(|_| {
                floats(&case["class_weights"])
                    .iter()
                    .map(|&w| w as f32)
                    .collect()
            }),
        };
        let (loss, grad) = loss_and_grad(&options, &logits, &labels);
        let want = case["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < TOL * want.abs().max(1.0),
            "{name}: loss {loss}, torch {want}"
        );
        assert!(
            (loss - plain).abs() > 1e-3,
            "{name}: the options do not change the loss"
        );
        for (i, (&ours, want)) in grad.iter().zip(floats(&case["grad"])).enumerate() {
            assert!(
                (f64::from(ours) - want).abs() < TOL,
                "{name}: grad[{i}] {ours}, torch {want}"
            );
        }
    }
}

#[test]
fn balanced_weights_match_scikit_learn() {
    let f = fixture();
    let labels: Vec<i64> = floats(&f["labels"]).iter().map(|&v| v as i64).collect();
    let ours = balanced_class_weights(&labels, 4).unwrap();
    for (o, s) in ours.iter().zip(floats(&f["balanced_weights"])) {
        assert!((f64::from(*o) - s).abs() < 1e-6, "{ours:?} vs {s}");
    }
    // A class without rows has no finite weight: its index is the error.
    assert_eq!(balanced_class_weights(&[0, 0, 2], 3), Err(1));
}
