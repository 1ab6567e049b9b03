//! The data stages through the engine: caching per stage, restoring `.pipe/out`.

use crate::util::{Project, status_of};

fn student_project() -> Project {
    let p = Project::new();
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/data/student_questions.csv"
    ))
    .unwrap();
    p.file("data/q.csv", &csv).file(
        "student.yaml",
        "pipeline: student\nstages:\n  ingest:\n    source: data/q.csv\n  split:\n    from: ingest\n    test: 0.2\n    shuffle: true\n    seed: 42\n  tokenize:\n    from: split\n    tokenizer: { train: { vocab_size: 512 } }\n    max_length: 32\n",
    );
    p
}

#[test]
fn changing_the_split_seed_reruns_split_and_tokenize_not_ingest() {
    let p = student_project();
    let first = p.run_json("student.yaml", 0);
    for s in ["ingest", "split", "tokenize"] {
        assert_eq!(status_of(&first, s), "ran", "{first}");
    }
    p.file(
        "student.yaml",
        &p.read("student.yaml").replace("seed: 42", "seed: 7"),
    );
    let second = p.run_json("student.yaml", 0);
    assert_eq!(status_of(&second, "ingest"), "cached");
    assert_eq!(status_of(&second, "split"), "ran");
    assert_eq!(
        second["stages"][1]["reason"],
        "parameter seed changed 42 → 7"
    );
    assert_eq!(status_of(&second, "tokenize"), "ran");
    p.file(
        "student.yaml",
        &p.read("student.yaml").replace("seed: 7", "seed: 42"),
    );
    let third = p.run_json("student.yaml", 0);
    for s in ["ingest", "split", "tokenize"] {
        assert_eq!(status_of(&third, s), "cached", "{third}");
    }
    assert_eq!(third["stages"][1]["reason"], "restored from the run cache");
}

#[test]
fn a_file_deleted_under_pipe_out_is_restored_not_rerun() {
    let p = student_project();
    p.run_json("student.yaml", 0);
    let train = p.path(".pipe/out/student/split/train.parquet");
    let before = std::fs::read(&train).unwrap();
    std::fs::remove_file(&train).unwrap();
    std::fs::remove_dir_all(p.path(".pipe/out/student/tokenize")).unwrap();
    let report = p.run_json("student.yaml", 0);
    for s in ["ingest", "split", "tokenize"] {
        assert_eq!(status_of(&report, s), "cached", "{report}");
    }
    assert_eq!(std::fs::read(&train).unwrap(), before);
    assert!(p.path(".pipe/out/student/tokenize/train.parquet").exists());
}

#[test]
fn editing_the_source_csv_reruns_from_ingest_with_the_reason() {
    let p = student_project();
    p.run_json("student.yaml", 0);
    let csv = p.read("data/q.csv");
    p.file(
        "data/q.csv",
        &format!("{csv}What is the derivative of x^3?,math\n"),
    );
    let report = p.run_json("student.yaml", 0);
    assert_eq!(status_of(&report, "ingest"), "ran");
    assert_eq!(report["stages"][0]["reason"], "input data/q.csv changed");
}
