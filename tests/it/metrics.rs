//! `pipe metrics`: the table, `--json`, and `--diff` against git and the previous run.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::util::{Project, stderr};

/// Ingest → split → tokenize: real stages whose metrics are nested (`labels.biology`,
/// `test.mean_length`), numeric and not (`stratified`), and move with split's `test`.
fn project() -> Project {
    let p = Project::new();
    p.file(
        "data/q.csv",
        include_str!("../../pipelines/data/student_questions.csv"),
    )
    .file(
        "student.yaml",
        "pipeline: student\nstages:\n  ingest:\n    source: data/q.csv\n  split:\n    from: ingest\n    test: 0.2\n    shuffle: true\n    seed: 42\n  tokenize:\n    from: split\n    tokenizer: { train: { vocab_size: 512 } }\n    max_length: 32\n",
    );
    p
}

/// Sets split's test fraction and runs the pipeline.
fn run_with_test_fraction(p: &Project, fraction: &str) {
    let manifest = p.read("student.yaml");
    let (before, after) = manifest.split_once("test: ").unwrap();
    let rest = &after[after.find('\n').unwrap()..];
    p.file("student.yaml", &format!("{before}test: {fraction}{rest}"));
    p.run_json("student.yaml", 0);
}

/// `pipe ARGS` where git finds no repository above the project.
fn pipe(p: &Project, args: &[&str]) -> Output {
    p.command(args)
        .env("GIT_CEILING_DIRECTORIES", p.root().parent().unwrap())
        .output()
        .unwrap()
}

/// stdout as text, after asserting exit code `code`.
fn stdout(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stderr:\n{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout as JSON, after asserting success.
fn json_out(out: &Output) -> Value {
    serde_json::from_str(&stdout(out, 0)).expect("stdout is one JSON document")
}

/// `(stage, metric, cells…)` of each row of a table, without the header.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// The lockfile's metrics per stage, flattened with dots: what `--json` should print.
fn lockfile_metrics(p: &Project) -> Value {
    fn flatten(prefix: &str, value: &Value, into: &mut serde_json::Map<String, Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&name, v, into);
                }
            }
            leaf => {
                into.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let lock = pipe_engine::yaml::parse(&p.read("student.lock"))
        .unwrap()
        .to_json();
    let mut stages = serde_json::Map::new();
    for (stage, entry) in lock["stages"].as_object().unwrap() {
        let mut flat = serde_json::Map::new();
        flatten("", &entry["metrics"], &mut flat);
        stages.insert(stage.clone(), Value::Object(flat));
    }
    Value::Object(stages)
}

/// Runs git in the project, with no user or system configuration. None when git is missing.
fn git(p: &Project, args: &[&str]) -> Option<()> {
    let out = Command::new("git")
        .args(["-c", "user.name=pipe", "-c", "user.email=pipe@example.com"])
        .args(args)
        .current_dir(p.root())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .ok()?;
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    Some(())
}

/// A git repository in the project; None (with a note) when git is missing.
fn git_repo(p: &Project) -> Option<()> {
    if git(p, &["init", "-q", "."]).is_none() {
        eprintln!("note: git is not installed; skipping this test");
        return None;
    }
    Some(())
}

#[test]
fn before_any_run_there_are_no_metrics() {
    let p = project();
    let out = pipe(&p, &["metrics", "student.yaml"]);
    assert_eq!(stdout(&out, 1), "");
    assert!(
        stderr(&out).contains("no metrics yet: run `pipe run student.yaml` first"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_table_lists_numeric_metrics_in_pipeline_order() {
    let p = project();
    p.run_json("student.yaml", 0);
    let table = stdout(&pipe(&p, &["metrics", "student.yaml"]), 0);
    assert!(table.starts_with("stage"), "{table}");
    let rows = table_rows(&table);
    let stages: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let first = |s: &str| stages.iter().position(|x| *x == s).unwrap();
    let last = |s: &str| stages.iter().rposition(|x| *x == s).unwrap();
    assert!(
        last("ingest") < first("split") && last("split") < first("tokenize"),
        "stages in pipeline order, each together: {table}"
    );
    let expected = lockfile_metrics(&p);
    for row in &rows {
        let [stage, metric, value] = row.as_slice() else {
            panic!("three cells: {row:?}")
        };
        let recorded = &expected[stage][metric];
        assert!(recorded.is_number(), "only numbers: {row:?}");
        if let Some(whole) = recorded.as_i64() {
            assert_eq!(value, &whole.to_string());
        } else {
            let shown: f64 = value.parse().unwrap();
            let recorded = recorded.as_f64().unwrap();
            assert!(
                (shown - recorded).abs() <= recorded.abs() * 5e-4,
                "{metric}: {shown} shows {recorded} to 4 significant digits"
            );
        }
    }
    let names: Vec<String> = rows.iter().map(|r| format!("{}.{}", r[0], r[1])).collect();
    for name in [
        "ingest.labels.biology",
        "split.test",
        "tokenize.test.mean_length",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {table}");
    }
    assert!(
        !names.contains(&"split.stratified".to_string()),
        "a boolean is not in the table"
    );
}

#[test]
fn json_gives_the_lockfiles_metrics_flattened() {
    let p = project();
    p.run_json("student.yaml", 0);
    let shown = json_out(&pipe(&p, &["metrics", "student.yaml", "--json"]));
    assert_eq!(shown, lockfile_metrics(&p));
    assert_eq!(shown["split"]["stratified"], true, "non-numbers are kept");
    let stages: Vec<&String> = shown.as_object().unwrap().keys().collect();
    assert_eq!(stages, ["ingest", "split", "tokenize"]);
}

#[test]
fn diff_against_git_head_shows_old_new_and_the_change() {
    let p = project();
    if git_repo(&p).is_none() {
        return;
    }
    p.run_json("student.yaml", 0);
    git(&p, &["add", "student.yaml", "student.lock"]);
    git(&p, &["commit", "-q", "-m", "first run"]);
    let old = lockfile_metrics(&p);
    let unchanged = pipe(&p, &["metrics", "student.yaml", "--diff"]);
    assert_eq!(stdout(&unchanged, 0), "", "nothing changed since HEAD");

    run_with_test_fraction(&p, "0.3");
    let new = lockfile_metrics(&p);
    assert_ne!(old["split"]["test"], new["split"]["test"]);
    let table = stdout(&pipe(&p, &["metrics", "student.yaml", "--diff"]), 0);
    let rows = table_rows(&table);
    let split_test = rows
        .iter()
        .find(|r| r[0] == "split" && r[1] == "test")
        .unwrap_or_else(|| panic!("split test changed: {table}"));
    let (before, after) = (
        old["split"]["test"].as_i64().unwrap(),
        new["split"]["test"].as_i64().unwrap(),
    );
    assert_eq!(
        split_test[2..],
        [
            before.to_string(),
            after.to_string(),
            format!("+{}", after - before)
        ]
    );
    let split_train = rows.iter().find(|r| r[0] == "split" && r[1] == "train");
    assert!(
        split_train.is_some_and(|r| r[4].starts_with('-')),
        "fewer training rows: {table}"
    );
    assert!(
        rows.iter().all(|r| r[0] != "ingest"),
        "unchanged metrics are left out: {table}"
    );

    let all = stdout(
        &pipe(&p, &["metrics", "student.yaml", "--diff", "HEAD", "--all"]),
        0,
    );
    assert!(
        table_rows(&all)
            .iter()
            .any(|r| r[..2] == ["ingest", "rows"] && r[4] == "0"),
        "--all lists unchanged metrics: {all}"
    );

    let changes = json_out(&pipe(&p, &["metrics", "student.yaml", "--diff", "--json"]));
    let changes = changes.as_array().unwrap();
    let change = changes
        .iter()
        .find(|c| c["stage"] == "split" && c["metric"] == "test")
        .unwrap();
    assert_eq!(
        change,
        &json!({"stage": "split", "metric": "test", "old": before, "new": after, "delta": after - before})
    );
    assert!(changes.iter().all(|c| c["old"] != c["new"]));
}

#[test]
fn diff_without_git_compares_with_the_previous_run() {
    let p = project();
    p.run_json("student.yaml", 0);
    let none = pipe(&p, &["metrics", "student.yaml", "--diff"]);
    assert_eq!(stdout(&none, 1), "");
    assert!(
        stderr(&none).contains("no previous lockfile for `student.lock` yet"),
        "{}",
        stderr(&none)
    );

    let old = lockfile_metrics(&p);
    run_with_test_fraction(&p, "0.25");
    // A run that changes nothing keeps the lockfile before the last change.
    p.run_json("student.yaml", 0);
    assert!(
        p.path(".pipe/lockfiles/student.previous.lock").is_file(),
        "pipe run keeps the lockfile it replaced"
    );
    let new = lockfile_metrics(&p);
    for args in [&["--diff"][..], &["--diff", "previous"]] {
        let out = pipe(
            &p,
            &[&["metrics", "student.yaml", "--json"][..], args].concat(),
        );
        let change = split_train_change(&out);
        assert_eq!(change["old"], old["split"]["train"], "{args:?}");
        assert_eq!(change["new"], new["split"]["train"], "{args:?}");
        assert!(
            change["delta"].as_i64().unwrap() < 0,
            "a bigger test split leaves fewer training rows"
        );
    }
}

#[test]
fn diff_in_a_repository_without_commits_compares_with_the_previous_run() {
    let p = project();
    if git_repo(&p).is_none() {
        return;
    }
    p.run_json("student.yaml", 0);
    let old = lockfile_metrics(&p);
    run_with_test_fraction(&p, "0.25");
    let out = pipe(&p, &["metrics", "student.yaml", "--diff", "--json"]);
    assert_eq!(split_train_change(&out)["old"], old["split"]["train"]);
}

#[test]
fn diff_when_head_lacks_the_lockfile_compares_with_the_previous_run_and_says_so() {
    let p = project();
    if git_repo(&p).is_none() {
        return;
    }
    git(&p, &["add", "student.yaml"]);
    git(&p, &["commit", "-q", "-m", "manifest only"]);
    p.run_json("student.yaml", 0);
    let old = lockfile_metrics(&p);
    run_with_test_fraction(&p, "0.25");
    let out = pipe(&p, &["metrics", "student.yaml", "--diff", "--json"]);
    assert_eq!(split_train_change(&out)["old"], old["split"]["train"]);
    assert!(
        stderr(&out)
            .contains("`student.lock` is not committed in HEAD; comparing with the previous run"),
        "{}",
        stderr(&out)
    );
}

/// The change of split's `train` metric in a `--diff --json` answer.
fn split_train_change(out: &Output) -> Value {
    let changes = json_out(out);
    changes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stage"] == "split" && c["metric"] == "train")
        .cloned()
        .unwrap_or_else(|| panic!("split train changed: {changes}"))
}

#[test]
fn a_bad_revision_or_a_lockfile_not_in_it_fails_with_exit_1() {
    let p = project();
    p.run_json("student.yaml", 0);
    let outside = pipe(&p, &["metrics", "student.yaml", "--diff", "HEAD"]);
    assert_eq!(stdout(&outside, 1), "");
    assert!(
        stderr(&outside).contains("is not in a git repository")
            && stderr(&outside).contains("--diff previous"),
        "{}",
        stderr(&outside)
    );
    if git_repo(&p).is_none() {
        return;
    }
    git(&p, &["add", "student.yaml"]);
    git(&p, &["commit", "-q", "-m", "manifest only"]);
    let missing = pipe(&p, &["metrics", "student.yaml", "--diff", "HEAD"]);
    assert_eq!(stdout(&missing, 1), "");
    assert!(
        stderr(&missing).contains("`student.lock` is not in revision HEAD"),
        "{}",
        stderr(&missing)
    );
    let bad = pipe(&p, &["metrics", "student.yaml", "--diff", "no-such-branch"]);
    assert_eq!(stdout(&bad, 1), "");
    assert!(
        stderr(&bad).contains("`no-such-branch` is not a revision"),
        "{}",
        stderr(&bad)
    );
    let usage = pipe(&p, &["metrics", "student.yaml", "--all"]);
    assert_eq!(usage.status.code(), Some(2), "--all needs --diff");
}
