//! Answers go to stdout, whoever reads them: a reader that leaves early ends `pipe`
//! quietly.

use crate::predict;
use crate::util::{Project, pipe_into_closed_stdout, stderr};

fn assert_quiet_end(p: &Project, args: &[&str]) {
    let (code, err) = pipe_into_closed_stdout(p, args);
    assert_eq!(code, Some(0), "pipe {args:?} on a closed stdout:\n{err}");
    assert!(!err.contains("panicked"), "pipe {args:?}:\n{err}");
}

#[test]
fn every_answer_ends_quietly_when_stdout_closes_early() {
    let p = predict::project();
    p.run_json("demo.yaml", 0);
    assert_quiet_end(&p, &["schema"]);
    assert_quiet_end(&p, &["show", "demo.yaml", "evaluate"]);
    assert_quiet_end(&p, &["show", "demo.yaml", "evaluate", "--json"]);
    assert_quiet_end(&p, &["status", "--json"]);
    assert_quiet_end(&p, &["doctor", "--json"]);
    assert_quiet_end(&p, &["predict", "export-onnx", "--file", "data.csv"]);
    assert_quiet_end(
        &p,
        &["predict", "export-onnx", "--file", "data.csv", "--json"],
    );
    assert_quiet_end(&p, &["gc", "--dry-run", "--json"]);
}

#[test]
fn doctor_and_gc_answer_on_stdout_even_when_quiet() {
    let p = predict::project();
    p.run_json("demo.yaml", 0);
    let out = p.pipe(&["-q", "doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        report.contains("runtime ONNX Runtime 1.31.1") && report.contains("store "),
        "{report}"
    );
    assert_eq!(stderr(&out), "");

    let out = p.pipe(&["-q", "gc", "--dry-run", "demo.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer = String::from_utf8(out.stdout).unwrap();
    assert!(answer.contains("Would free "), "{answer}");
}
