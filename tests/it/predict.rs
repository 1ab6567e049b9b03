//! `pipe predict`: a bundle made by `pipe run` (a fixed random model standing in for
//! finetune, then export-onnx and evaluate) labels texts from the command line and from a
//! file, with the probabilities evaluate wrote; a stage name resolves to its output folder;
//! missing bundles fail with exit code 1.

use std::collections::BTreeMap;
use std::fs::File;

use arrow::array::{AsArray, RecordBatchReader};
use arrow::datatypes::Float32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipe_models::gpt_neo::{GptNeoConfig, GptNeoForSequenceClassification, ProblemType};
use pipe_models::{hf_folder, init_params};
use pipe_onnx::Graph;
use serde_json::{Value, json};

use crate::util::{Project, on_a_terminal, stderr};

pub const LABELS: [&str; 3] = ["art", "math", "physics"];
const WORDS: [&str; 6] = ["question", "number", "about", "and", "more", "words"];

pub fn text(i: usize) -> String {
    let label = LABELS[i % 3];
    format!("question number {i} about {label} and more words")
}

/// A word-level tokenizer over the words of [`text`] (numbers 0..40 included), cut at 16.
fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    let words = ["[UNK]"]
        .into_iter()
        .map(String::from)
        .chain(WORDS.map(String::from))
        .chain(LABELS.map(String::from))
        .chain((0..40).map(|n| n.to_string()));
    for (id, word) in words.enumerate() {
        vocab.insert(word, json!(id));
    }
    json!({
        "version": "1.0",
        "truncation": { "direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0 },
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" },
    })
    .to_string()
}

/// A project whose pipeline ingests and splits 40 rows, copies a random model folder in as
/// `trained` (standing in for finetune), exports and evaluates it.
pub fn project() -> Project {
    let p = Project::new();
    let mut csv = String::from("text,label\n");
    for i in 0..40 {
        csv.push_str(&format!("{},{}\n", text(i), LABELS[i % 3]));
    }
    p.file("data.csv", &csv);
    let labels: Vec<String> = LABELS.map(String::from).to_vec();
    let mut cfg = GptNeoConfig::test(1 + WORDS.len() + LABELS.len() + 40, LABELS.len());
    cfg.initializer_range = 0.3;
    let mut g = Graph::new("fixture");
    let model = GptNeoForSequenceClassification::new(&cfg, &mut g).unwrap();
    let params = init_params(model.params(), 11);
    let dir = p.path("fixture/model");
    let problem = ProblemType::SingleLabelClassification;
    hf_folder::write(&dir, &cfg, &labels, problem, model.params(), &params).unwrap();
    p.file("fixture/model/tokenizer.json", &tokenizer_json());
    p.file("fixture/model/labels.json", &json!(LABELS).to_string());
    p.file(
        "demo.yaml",
        r#"pipeline: demo
stages:
  ingest:
    source: data.csv
    text: text
    label: label
  split:
    from: ingest
    test: 0.25
    shuffle: true
    seed: 3
  trained:
    run: cp -r fixture/model model
    deps: [fixture/model]
    outs: [model]
  export-onnx:
    from: trained
    threads: 1
  evaluate:
    from: { model: export-onnx, data: split }
    batch_size: 4
    threads: 1
"#,
    );
    p
}

/// text → probabilities, from evaluate's predictions.parquet.
fn evaluated(p: &Project) -> BTreeMap<String, Vec<f32>> {
    let path = p.path(".pipe/out/demo/evaluate/predictions.parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let texts = batch
        .column_by_name("text")
        .unwrap()
        .as_string::<i32>()
        .clone();
    let probabilities = batch
        .column_by_name("probabilities")
        .unwrap()
        .as_list::<i32>()
        .clone();
    (0..batch.num_rows())
        .map(|i| {
            let row = probabilities.value(i);
            let p = row.as_primitive::<Float32Type>().values().to_vec();
            (texts.value(i).to_string(), p)
        })
        .collect()
}

pub fn json_of(out: &std::process::Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn predict_agrees_with_evaluate_and_finds_bundles_by_stage_name() {
    let p = project();
    let before = p.pipe(&["predict", "export-onnx", "some text"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(
        stderr(&before).contains(
            "stage `export-onnx` has not run yet; run `pipe run demo.yaml export-onnx` first"
        ),
        "{}",
        stderr(&before)
    );

    p.run_json("demo.yaml", 0);
    let expected = evaluated(&p);
    assert_eq!(expected.len(), 40);

    // Every row of the data file, by stage name, as JSON.
    let out = p.pipe(&["predict", "export-onnx", "--file", "data.csv", "--json"]);
    let rows = json_of(&out);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 40);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["text"], json!(text(i)));
        let probabilities: Vec<f32> = LABELS
            .iter()
            .map(|l| row["probabilities"][l].as_f64().unwrap() as f32)
            .collect();
        assert_close(&probabilities, &expected[&text(i)]);
        let top = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(row["label"], json!(LABELS[top]));
        assert!(row.get("labels").is_none());
    }

    // Two texts from the command line, by folder, in the human form.
    let folder = p.path(".pipe/out/demo/export-onnx");
    let folder = folder.to_str().unwrap();
    let out = p.pipe(&["predict", folder, &text(1), &text(2)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2 * 4, "{shown}");
    let first = &expected[&text(1)];
    let best = (0..3)
        .max_by(|&a, &b| first[a].total_cmp(&first[b]))
        .unwrap();
    assert_eq!(lines[0], format!("{}  {}", LABELS[best], text(1)));
    assert_eq!(
        lines[1],
        format!("    {:<7}  {:.3}", LABELS[best], first[best])
    );
    assert!(lines[1..4].iter().all(|l| l.starts_with("    ")));
}

#[test]
fn predict_fails_clearly_without_a_bundle() {
    let p = project();
    let out = p.pipe(&["predict", "no/such/bundle", "text"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no bundle folder no/such/bundle"),
        "{}",
        stderr(&out)
    );

    // Issue #27: a stage the manifest lacks is a usage error (exit 2, was 1).
    let out = p.pipe(&["predict", "exprot-onnx", "text"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("`exprot-onnx` is neither a folder nor a stage of demo.yaml")
            && err.contains("export-onnx"),
        "{err}"
    );

    // A folder that is not a bundle names what is missing.
    p.file("empty/readme.txt", "not a bundle");
    let out = p.pipe(&["predict", "empty", "text"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bundle.json"), "{}", stderr(&out));

    // No text and no file is a usage error.
    let out = p.pipe(&["predict", "empty"]);
    assert_eq!(out.status.code(), Some(2));
}

/// [`project`] with export-onnx fanned out into two matrix members, `export-onnx@slow` and
/// `export-onnx@fast`, in `mx.yaml`, run.
pub fn matrix_project() -> Project {
    let p = project();
    let manifest = p.read("demo.yaml").replace(
        "  export-onnx:\n    from: trained\n    threads: 1\n",
        "  export-onnx:\n    from: trained\n    matrix: [{member: slow, threads: 1}, {member: fast, threads: 2}]\n",
    );
    p.file("mx.yaml", &manifest);
    p.run_json("mx.yaml", 0);
    p
}

#[test]
fn predict_addresses_matrix_members() {
    let p = matrix_project();
    for member in ["export-onnx@slow", "export-onnx@fast"] {
        let out = p.pipe(&[
            "predict",
            "--manifest",
            "mx.yaml",
            member,
            &text(1),
            "--json",
        ]);
        let rows = json_of(&out);
        assert_eq!(rows.as_array().unwrap().len(), 1, "{member}");
    }

    let out = p.pipe(&["predict", "--manifest", "mx.yaml", "export-onnx", "hi"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a matrix stage with one bundle per member; name one: ")
            && err.contains("export-onnx@slow")
            && err.contains("export-onnx@fast"),
        "{err}"
    );

    let out = p.pipe(&[
        "predict",
        "--manifest",
        "mx.yaml",
        "export-onnx@medium",
        "hi",
    ]);
    let err = stderr(&out);
    // Issue #27: an unknown stage is a usage error (exit 2, was 1).
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`export-onnx@medium` is neither a folder nor a stage"),
        "{err}"
    );
}

#[test]
fn predict_colours_its_table_only_on_a_terminal() {
    let p = project();
    p.run_json("demo.yaml", 0);
    let pipe = env!("CARGO_BIN_EXE_pipe");
    let shown = on_a_terminal(&p, &format!("'{pipe}' predict export-onnx 'some text'"));
    assert!(shown.contains("\x1b["), "no colour on a terminal:\n{shown}");

    on_a_terminal(
        &p,
        &format!("'{pipe}' predict export-onnx 'some text' > table.txt"),
    );
    let table = p.read("table.txt");
    assert!(table.contains("some text"), "{table}");
    assert!(
        !table.contains('\x1b'),
        "colour codes in a file:\n{table:?}"
    );
}

#[test]
fn predict_file_errors_name_the_file_line_and_column() {
    let p = project();
    p.run_json("demo.yaml", 0);

    // A bad byte in the text column is an error, not a reason to label the label column.
    std::fs::write(
        p.path("enc.csv"),
        b"text,label\nh\xff\xfello,math\nworld,physics\n",
    )
    .unwrap();
    let out = p.pipe(&["predict", "export-onnx", "--file", "enc.csv"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("enc.csv: line 2, column `text`") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // Blank texts are named, with their lines.
    p.file(
        "blank.csv",
        "text,label\nfirst text,math\n  ,art\nthird,art\n,art\n",
    );
    let out = p.pipe(&[
        "predict",
        "export-onnx",
        "--file",
        "blank.csv",
        "--text-column",
        "text",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("blank.csv: line 3 (and line 5), column `text`: the text is empty"),
        "{err}"
    );

    // An unknown extension says what predict reads, not manifest syntax.
    p.file("texts.dat", "text\nhello\n");
    let out = p.pipe(&["predict", "export-onnx", "--file", "texts.dat"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("name it .csv, .tsv, .jsonl or .parquet"),
        "{err}"
    );
    assert!(!err.contains("format:"), "{err}");
}
