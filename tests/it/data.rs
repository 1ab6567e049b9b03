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

/// One CSV cell of a megabyte without whitespace (base64, a minified blob) made BPE
/// training quadratic in its length; pre-tokens are capped, so it tokenizes, every id
/// within the vocabulary (the cap itself is `tokenize::source`'s unit test).
#[test]
fn a_megabyte_cell_without_whitespace_tokenizes_to_valid_ids() {
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    let p = Project::new();
    let mut state = 11u64;
    let blob: String = (0..1_000_000)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + ((state >> 33) % 26) as u8) as char
        })
        .collect();
    let mut csv = String::from("text,label\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "row number {i} of the data,{}\n",
            ["a", "b"][i % 2]
        ));
    }
    csv.push_str(&format!("{blob},a\n"));
    p.file("data/q.csv", &csv).file(
        "p.yaml",
        "pipeline: big\nstages:\n  ingest:\n    source: data/q.csv\n  tokenize:\n    from: ingest\n    tokenizer: { train: { vocab_size: 400 } }\n    max_length: 64\n",
    );
    let report = p.run_json("p.yaml", 0);
    assert_eq!(status_of(&report, "tokenize"), "ran");
    let tokenizer: serde_json::Value =
        serde_json::from_str(&p.read(".pipe/out/big/tokenize/tokenizer.json")).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap().len() as i32;
    assert!(vocab > 256, "{vocab}");
    let path = p.path(".pipe/out/big/tokenize/dataset.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_list::<i32>();
        for row in 0..batch.num_rows() {
            let row_ids = ids.value(row);
            let row_ids = row_ids.as_primitive::<Int32Type>();
            assert!(!row_ids.is_empty() && row_ids.len() <= 64);
            assert!(row_ids.values().iter().all(|&id| (0..vocab).contains(&id)));
            rows += 1;
        }
    }
    assert_eq!(rows, 41);
}
