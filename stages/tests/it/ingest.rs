//! `ingest`: formats, detection, cleaning, and the errors a person meets.

use serde_json::json;

use crate::util::{Workspace, labelled_csv, message, read_parquet, string_lists, strings};

#[test]
fn detects_columns_and_writes_dataset_labels_profile() {
    let ws = Workspace::new();
    let mut csv = String::from("id,question,topic\n");
    for i in 0..40 {
        let topic = ["math", "physics", "biology"][i % 3];
        csv.push_str(&format!(
            "{i},what is the meaning of item {i} in {topic} class today?,{topic}\n"
        ));
    }
    ws.file("data/q.csv", csv);
    let ran = ws
        .run("ingest", json!({ "source": "data/q.csv" }), &[])
        .unwrap();
    assert_eq!(
        ran.files(),
        ["dataset.parquet", "labels.json", "profile.json"]
    );
    assert!(
        ran.notes_contain("text column `question`"),
        "{:?}",
        ran.notes
    );
    assert!(ran.notes_contain("label column `topic`"), "{:?}", ran.notes);
    assert_eq!(
        ran.json("labels.json"),
        json!(["biology", "math", "physics"])
    );
    let profile = ran.json("profile.json");
    assert_eq!(profile["rows_read"], 40);
    assert_eq!(profile["rows_kept"], 40);
    assert_eq!(profile["labels"]["math"], 14);
    assert_eq!(profile["delimiter"], ",");
    assert!(profile["text_chars"]["p50"].as_u64().unwrap() > 40);
    let batch = read_parquet(&ran.path("dataset.parquet"));
    assert_eq!(batch.num_rows(), 40);
    assert_eq!(strings(&batch, "label")[1], "physics");
    assert_eq!(ran.deps, ["data/q.csv"]);
    assert_eq!(ran.outcome.metrics["rows"], 40);
}

#[test]
fn check_fills_defaults_and_rejects_unknown_keys() {
    let registry = pipe_stages::registry();
    let ingest = registry.get("ingest").unwrap();
    let checked = ingest
        .check(&json!({ "source": "d.csv", "delimiter": "tab" }))
        .unwrap();
    assert_eq!(
        checked.key_params,
        json!({ "source": "d.csv", "delimiter": "\t", "multi_label": false, "on_error": "fail" })
    );
    let err = ingest
        .check(&json!({ "source": "d.csv", "lable": "x" }))
        .unwrap_err();
    assert!(
        err.message.contains("unknown field `lable`"),
        "{}",
        err.message
    );
    let err = ingest
        .check(&json!({ "source": "d.csv", "separator": ";" }))
        .unwrap_err();
    assert_eq!(err.path, ["separator"]);
}

#[test]
fn reads_bom_crlf_and_quoted_newlines_and_delimiters() {
    let ws = Workspace::new();
    ws.file(
        "d.csv",
        "\u{feff}text,label\r\n\"hello, world\r\nsecond line\",a\r\n\"say \"\"hi\"\"\",b\r\nplain,a\r\n",
    );
    let ran = ws
        .run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    let batch = read_parquet(&ran.path("dataset.parquet"));
    assert_eq!(
        strings(&batch, "text"),
        ["hello, world\r\nsecond line", "say \"hi\"", "plain"]
    );
    assert_eq!(strings(&batch, "label"), ["a", "b", "a"]);
}

#[test]
fn sniffs_semicolons_and_reads_tsv_by_extension() {
    let ws = Workspace::new();
    ws.file("semi.csv", "text;label\nfirst, with comma;x\nsecond;y\n");
    ws.file("tabs.tsv", "text\tlabel\nfirst;x\tx\nsecond\ty\n");
    let ran = ws
        .run(
            "ingest",
            json!({ "source": "semi.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    assert_eq!(ran.json("profile.json")["delimiter"], ";");
    assert_eq!(
        strings(&read_parquet(&ran.path("dataset.parquet")), "text")[0],
        "first, with comma"
    );
    let ran = ws
        .run(
            "ingest",
            json!({ "source": "tabs.tsv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    assert_eq!(ran.json("profile.json")["format"], "tsv");
    assert_eq!(
        strings(&read_parquet(&ran.path("dataset.parquet")), "text")[0],
        "first;x"
    );
}

#[test]
fn reads_json_lines_with_label_lists() {
    let ws = Workspace::new();
    ws.file(
        "d.jsonl",
        concat!(
            "\u{feff}{\"text\": \"a long question\", \"tags\": [\"math\", \"physics\"]}\r\n",
            "\r\n",
            "{\"text\": \"another question\", \"tags\": [\"math\"], \"extra\": 1}\n",
            "{\"text\": \"third question\", \"tags\": [\"biology\", \" math \", \"math\"]}\n",
        ),
    );
    let params =
        json!({ "source": "d.jsonl", "text": "text", "label": "tags", "multi_label": true });
    let ran = ws.run("ingest", params, &[]).unwrap();
    let batch = read_parquet(&ran.path("dataset.parquet"));
    assert_eq!(
        string_lists(&batch, "labels"),
        [
            vec!["math", "physics"],
            vec!["math"],
            vec!["biology", "math"]
        ]
    );
    assert_eq!(
        ran.json("profile.json")["labels"],
        json!({ "biology": 1, "math": 3, "physics": 1 })
    );
}

#[test]
fn multi_label_cells_split_on_a_detected_separator() {
    let ws = Workspace::new();
    ws.file(
        "d.csv",
        "text,labels\nfirst text,math;physics\nsecond text,math\nthird text,biology; math\n",
    );
    let params =
        json!({ "source": "d.csv", "text": "text", "label": "labels", "multi_label": true });
    let ran = ws.run("ingest", params, &[]).unwrap();
    assert!(ran.notes_contain("separated by `;`"), "{:?}", ran.notes);
    let batch = read_parquet(&ran.path("dataset.parquet"));
    assert_eq!(string_lists(&batch, "labels")[2], ["biology", "math"]);
}

#[test]
fn reads_parquet_sources() {
    let ws = Workspace::new();
    ws.file("d.csv", labelled_csv(30, &["a", "b"]));
    let first = ws.run("ingest", json!({ "source": "d.csv" }), &[]).unwrap();
    std::fs::copy(first.path("dataset.parquet"), ws.path().join("d.parquet")).unwrap();
    let second = ws
        .run("ingest", json!({ "source": "d.parquet" }), &[])
        .unwrap();
    let (a, b) = (
        read_parquet(&first.path("dataset.parquet")),
        read_parquet(&second.path("dataset.parquet")),
    );
    assert_eq!(strings(&a, "text"), strings(&b, "text"));
    assert_eq!(second.json("profile.json")["format"], "parquet");
}

#[test]
fn a_ragged_row_fails_naming_file_and_line_unless_skipped() {
    let ws = Workspace::new();
    ws.file(
        "data/d.csv",
        "text,label\nfine row,a\ntoo,many,fields\nother row,b\n",
    );
    let params = json!({ "source": "data/d.csv", "text": "text", "label": "label" });
    let err = message(ws.run("ingest", params.clone(), &[]).err().unwrap());
    assert!(err.contains("data/d.csv: line 3"), "{err}");
    assert!(err.contains("3 fields but the header has 2"), "{err}");
    assert!(err.contains("on_error: skip"), "{err}");

    let mut skip = params;
    skip["on_error"] = json!("skip");
    let ran = ws.run("ingest", skip, &[]).unwrap();
    assert_eq!(
        ran.json("profile.json")["dropped"]["malformed"],
        json!({ "count": 1, "examples": [3] })
    );
    assert_eq!(ran.json("profile.json")["rows_kept"], 2);
}

#[test]
fn a_file_of_malformed_rows_says_so_when_detecting_columns() {
    let ws = Workspace::new();
    ws.file("d.csv", "text,label\na,b,c\nd,e,f\n");
    let err = message(
        ws.run(
            "ingest",
            json!({ "source": "d.csv", "on_error": "skip" }),
            &[],
        )
        .err()
        .unwrap(),
    );
    assert!(err.contains("every one is malformed"), "{err}");
    assert!(
        err.contains("row 2: the record has 3 fields but the header has 2"),
        "{err}"
    );
    assert!(!err.contains("no column holds text"), "{err}");
}

#[test]
fn invalid_utf8_fails_naming_line_and_column() {
    let ws = Workspace::new();
    ws.file(
        "d.csv",
        b"text,label\nfine,a\nbad \xff byte,b\nalso fine,b\n",
    );
    let err = message(
        ws.run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .err()
        .unwrap(),
    );
    assert!(err.contains("d.csv: line 3, column `text`"), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
}

#[test]
fn empty_file_header_only_and_missing_file_are_errors() {
    let ws = Workspace::new();
    ws.file("empty.csv", "")
        .file("header.csv", "text,label\r\n");
    let run = |source: &str| {
        message(
            ws.run(
                "ingest",
                json!({ "source": source, "text": "text", "label": "label" }),
                &[],
            )
            .err()
            .unwrap(),
        )
    };
    assert!(
        run("empty.csv").contains("empty.csv is empty"),
        "{}",
        run("empty.csv")
    );
    assert!(
        run("header.csv").contains("header.csv has a header but no data rows"),
        "{}",
        run("header.csv")
    );
    assert!(
        run("data/nope.csv").contains("data/nope.csv does not exist"),
        "{}",
        run("data/nope.csv")
    );
}

#[test]
fn a_single_class_is_an_error() {
    let ws = Workspace::new();
    ws.file("d.csv", labelled_csv(10, &["only"]));
    let err = message(
        ws.run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .err()
        .unwrap(),
    );
    assert!(
        err.contains("a classifier needs at least 2 labels"),
        "{err}"
    );
    assert!(err.contains("`only`"), "{err}");
}

#[test]
fn cleaning_counts_blank_labels_empty_texts_and_duplicates() {
    let ws = Workspace::new();
    ws.file(
        "d.csv",
        "text,label\none,a\n   ,a\ntwo,\nthree,b\none,a\none,b\nfour,  \n",
    );
    let ran = ws
        .run(
            "ingest",
            json!({ "source": "d.csv", "text": "text", "label": "label" }),
            &[],
        )
        .unwrap();
    let profile = ran.json("profile.json");
    assert_eq!(profile["rows_read"], 7);
    assert_eq!(profile["rows_kept"], 3);
    assert_eq!(
        profile["dropped"]["empty_text"],
        json!({ "count": 1, "examples": [3] })
    );
    assert_eq!(
        profile["dropped"]["missing_label"],
        json!({ "count": 2, "examples": [4, 8] })
    );
    assert_eq!(
        profile["dropped"]["duplicate"],
        json!({ "count": 1, "examples": [6] })
    );
    assert!(ran.notes_contain("dropped 4 of 7 rows"), "{:?}", ran.notes);
}

#[test]
fn an_unknown_column_lists_columns_and_suggests_the_closest() {
    let ws = Workspace::new();
    ws.file("d.csv", labelled_csv(4, &["a", "b"]));
    let err = message(
        ws.run("ingest", json!({ "source": "d.csv", "text": "txt" }), &[])
            .err()
            .unwrap(),
    );
    assert!(
        err.starts_with("d.csv: choosing the text and label columns"),
        "{err}"
    );
    assert!(
        err.contains("no column `txt` (the columns are: text, label)"),
        "{err}"
    );
    assert!(err.contains("did you mean `text`?"), "{err}");
}

#[test]
fn ambiguous_text_columns_list_the_candidates() {
    let ws = Workspace::new();
    let mut csv = String::from("title,summary,label\n");
    for i in 0..20 {
        csv.push_str(&format!(
            "a title number {i} here,a summary number {i} there,{}\n",
            i % 2
        ));
    }
    ws.file("d.csv", csv);
    let err = message(
        ws.run("ingest", json!({ "source": "d.csv" }), &[])
            .err()
            .unwrap(),
    );
    assert!(
        err.contains("cannot tell which column holds the text"),
        "{err}"
    );
    assert!(
        err.contains("`title`") && err.contains("`summary`"),
        "{err}"
    );
    assert!(err.contains("text: <column>"), "{err}");
}

#[test]
fn a_100k_row_file_streams_through() {
    let ws = Workspace::new();
    let mut csv = String::with_capacity(8 << 20);
    csv.push_str("text,label\n");
    for i in 0..100_000 {
        // Every 1000th row repeats the row before it.
        let n = if i % 1000 == 999 { i - 1 } else { i };
        csv.push_str(&format!(
            "\"generated question {n}, with some filler words\",label{}\n",
            n % 4
        ));
    }
    ws.file("big.csv", csv);
    let ran = ws
        .run("ingest", json!({ "source": "big.csv" }), &[])
        .unwrap();
    let profile = ran.json("profile.json");
    assert_eq!(profile["rows_read"], 100_000);
    assert_eq!(profile["dropped"]["duplicate"]["count"], 100);
    assert_eq!(profile["rows_kept"], 99_900);
    let batch = read_parquet(&ran.path("dataset.parquet"));
    assert_eq!(batch.num_rows(), 99_900);
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(ran.path("dataset.parquet")).unwrap(),
        )
        .unwrap(),
    )
    .clone();
    assert!(meta.num_row_groups() >= 2, "written in several row groups");
}
