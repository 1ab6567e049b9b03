//! `matrix:` members, their fan-out, selection and caching; `command` after typed stages.

use serde_json::Value;

use crate::util::{Project, status_of, statuses, stderr, two_label_csv};

/// A matrix of two `gen` members, a `post` that fans out with it, and a
/// `mult` with a matrix of its own over `post`: 2 + 2 + 2 × 3 stages. Every
/// command appends its stage name to `counter.log` (outside every `outs`).
fn chain(gen_values: &str) -> String {
    format!(
        r#"pipeline: chain
stages:
  gen:
    run: echo ${{member}} > out/gen-${{member}}.txt && echo $PIPE_STAGE >> counter.log
    outs: ['out/gen-${{member}}.txt']
    matrix:
      env: {gen_values}
  post:
    from: gen
    run: cat out/gen-${{member}}.txt > out/post-${{member}}.txt && echo $PIPE_STAGE >> counter.log
    outs: ['out/post-${{member}}.txt']
  mult:
    from: post
    run: echo ${{member}} > out/mult-${{member}}.txt && echo $PIPE_STAGE >> counter.log
    outs: ['out/mult-${{member}}.txt']
    matrix:
      env: [[C], [D], [E]]
"#
    )
}

fn ran(project: &Project) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string(project.path("counter.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn keys(report: &Value) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn members_fan_out_downstream_and_two_matrices_multiply() {
    let p = Project::new();
    p.file("m.yaml", &chain("[[A], [B]]"));
    let report = p.run_json("m.yaml", 0);
    let mut names: Vec<String> = statuses(&report).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "gen@env-A",
            "gen@env-B",
            "mult@env-A-env-C",
            "mult@env-A-env-D",
            "mult@env-A-env-E",
            "mult@env-B-env-C",
            "mult@env-B-env-D",
            "mult@env-B-env-E",
            "post@env-A",
            "post@env-B",
        ]
    );
    assert_eq!(ran(&p), names);
    // Each post member read its own gen member.
    assert_eq!(p.read("out/post-env-B.txt"), "env-B\n");
    // Each member has its own outputs folder and log.
    assert!(p.path(".pipe/logs/chain/gen@env-A.log").exists());
    let lock = p.read("m.lock");
    assert!(lock.contains("mult@env-B-env-E:"), "{lock}");

    let listed = p.pipe(&["dag", "m.yaml"]);
    let dag = String::from_utf8_lossy(&listed.stdout);
    assert!(
        dag.contains("post@env-A") && dag.contains("← gen@env-A"),
        "{dag}"
    );
}

#[test]
fn editing_one_matrix_value_reruns_only_its_members_and_their_descendants() {
    let p = Project::new();
    p.file("m.yaml", &chain("[[A], [B]]"));
    p.run_json("m.yaml", 0);
    std::fs::write(p.path("counter.log"), "").unwrap();
    p.file("m.yaml", &chain("[[A], [Z]]"));
    let status = p.pipe(&["status", "m.yaml"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let report = p.run_json("m.yaml", 0);
    assert_eq!(
        ran(&p),
        [
            "gen@env-Z",
            "mult@env-Z-env-C",
            "mult@env-Z-env-D",
            "mult@env-Z-env-E",
            "post@env-Z",
        ]
    );
    for name in [
        "gen@env-A",
        "post@env-A",
        "mult@env-A-env-C",
        "mult@env-A-env-E",
    ] {
        assert_eq!(status_of(&report, name), "cached", "{name}: {report}");
    }
    // Members that no longer exist leave the lockfile.
    assert!(!p.read("m.lock").contains("gen@env-B"));
}

#[test]
fn member_keys_do_not_depend_on_the_order_of_values() {
    let p = Project::new();
    p.file("m.yaml", &chain("[[A], [B]]"));
    let first = p.run_json("m.yaml", 0);
    p.file("m.yaml", &chain("[[B], [A]]"));
    let reordered = p.run_json("m.yaml", 0);
    assert!(
        statuses(&reordered).iter().all(|(_, s)| s == "cached"),
        "{reordered}"
    );
    assert_eq!(keys(&first), keys(&reordered));
}

#[test]
fn a_stage_name_selects_all_its_members_and_a_member_name_one() {
    let p = Project::new();
    p.file("m.yaml", &chain("[[A], [B]]"));
    let out = p.pipe(&["run", "m.yaml", "post", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = statuses(&report).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        ["gen@env-A", "gen@env-B", "post@env-A", "post@env-B"]
    );

    let out = p.pipe(&["run", "m.yaml", "mult@env-B-env-D", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = statuses(&report).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["gen@env-B", "post@env-B", "mult@env-B-env-D"]);

    let out = p.pipe(&["run", "m.yaml", "post@env-Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no stage named 'post@env-Q'"),
        "{}",
        stderr(&out)
    );
}

/// Typed stages with a matrix: `split` over two test fractions, and a command
/// after it that fans out and reads each member's folder through `$PIPE_FROM`.
const TYPED: &str = r#"pipeline: typed
stages:
  ingest:
    source: data.csv
  split:
    from: ingest
    matrix:
      test: [0.25, 0.5]
  count:
    from: split
    run: ls "$PIPE_FROM" > counts/${member}.txt && basename "$PIPE_FROM_SPLIT" >> counts/${member}.txt
    outs: ['counts/${member}.txt']
  show:
    from: ingest
    run: cat "$PIPE_FROM/labels.json" > labels-copy.json
    outs: [labels-copy.json]
"#;

#[test]
fn a_command_after_typed_stages_sees_their_folders_and_reruns_when_they_change() {
    let p = Project::new();
    p.file("data.csv", &two_label_csv(16)).file("t.yaml", TYPED);
    let report = p.run_json("t.yaml", 0);
    let names: Vec<String> = statuses(&report).into_iter().map(|(n, _)| n).collect();
    for name in [
        "split@test-0.25",
        "split@test-0.5",
        "count@test-0.25",
        "count@test-0.5",
    ] {
        assert!(names.contains(&name.to_string()), "{name}: {names:?}");
    }
    let listing = p.read("counts/test-0.5.txt");
    assert!(
        listing.contains("train.parquet") && listing.contains("test.parquet"),
        "{listing}"
    );
    assert!(listing.ends_with("split@test-0.5\n"), "{listing}");
    assert_eq!(
        p.read("labels-copy.json"),
        p.read(".pipe/out/typed/ingest/labels.json")
    );

    // New data: ingest's outputs change, so the commands after it rerun.
    p.file("data.csv", &two_label_csv(20));
    let report = p.run_json("t.yaml", 0);
    for name in ["show", "count@test-0.25", "count@test-0.5"] {
        assert_eq!(status_of(&report, name), "ran", "{name}: {report}");
    }

    let metrics = p.pipe(&["metrics", "t.yaml", "--json"]);
    assert_eq!(metrics.status.code(), Some(0), "{}", stderr(&metrics));
    assert!(String::from_utf8_lossy(&metrics.stdout).contains("split@test-0.25"));
    let shown = p.pipe(&["show", "t.yaml", "split@test-0.5"]);
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("split@test-0.5/train.parquet"));
}

/// (what is wrong, stages, line:col the error must name, words it must contain)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "empty list",
        "  a:\n    run: echo\n    matrix:\n      env: []\n",
        "m.yaml:6:12",
        "`matrix.env` is an empty list",
    ),
    (
        "empty matrix",
        "  a:\n    run: echo\n    matrix: {}\n",
        "m.yaml:5:13",
        "`matrix` must map parameters to lists of values",
    ),
    (
        "values not a list",
        "  a:\n    run: echo\n    matrix:\n      env: LANG\n",
        "m.yaml:6:12",
        "must be a list of values",
    ),
    (
        "unknown parameter",
        "  a:\n    run: echo\n    matrix:\n      enf: [[A]]\n",
        "m.yaml:6:7",
        "unknown parameter 'enf' for command; did you mean 'env'?",
    ),
    (
        "bad value",
        "  a:\n    run: echo\n    matrix:\n      env: [[A], 3]\n",
        "m.yaml:6:18",
        "command parameter `env`",
    ),
    (
        "duplicate slugs",
        "  a:\n    run: echo\n    matrix:\n      env: [['A B'], ['A-B']]\n",
        "m.yaml:6:22",
        "both get the name `@env-A-B`",
    ),
    (
        "also a plain parameter",
        "  a:\n    run: echo\n    env: [A]\n    matrix:\n      env: [[B]]\n",
        "m.yaml:7:7",
        "set both in `matrix` and as a plain parameter",
    ),
    (
        "reserved key",
        "  a:\n    run: echo\n    matrix:\n      run: [a, b]\n",
        "m.yaml:6:7",
        "`run` cannot vary in a matrix",
    ),
    (
        "member placeholder without members",
        "  a:\n    run: echo hi > ${member}.txt\n    outs: ['${member}.txt']\n",
        "m.yaml:5:12",
        "which has no matrix members",
    ),
    (
        "members writing one path",
        "  a:\n    run: echo\n    outs: [same.txt]\n    matrix:\n      env: [[A], [B]]\n",
        "m.yaml:5:12",
        "${member}",
    ),
    (
        "deps into the store",
        "  a:\n    run: echo\n    deps: [.pipe/out/m/evaluate/metrics.json]\n",
        "m.yaml:5:12",
        "write `from: evaluate` instead",
    ),
];

#[test]
fn every_matrix_mistake_is_reported_with_its_place() {
    for (what, stages, place, words) in BAD {
        let p = Project::new();
        p.file("m.yaml", &format!("pipeline: m\nstages:\n{stages}"));
        let out = p.pipe(&["validate", "m.yaml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(place), "{what}: expected {place} in\n{err}");
        assert!(err.contains(words), "{what}: expected {words:?} in\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

/// Two finetune members of a small model, each exported and evaluated, then compared: the
/// whole chain through the engine, as `pipelines/student-compare.yaml` runs it.
#[test]
fn compare_gathers_every_evaluated_member_into_one_page() {
    let p = Project::new();
    p.file("data/q.csv", &two_label_csv(120));
    p.file(
        "c.yaml",
        r#"pipeline: cmp
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.25
    seed: 1
  tokenize:
    from: split
    tokenizer: { train: { vocab_size: 300 } }
    max_length: 32
  finetune:
    from: tokenize
    model: { seed: 7, config: { hidden_size: 32, num_layers: 1, num_heads: 4, intermediate_size: 64, max_position_embeddings: 32, window_size: 8, attention_types: [[[global], 1]] } }
    batch_size: 8
    threads: 1
    matrix:
      learning_rate: [1.0e-3, 3.0e-3]
      max_steps: [2]
  export-onnx:
    from: finetune
  evaluate:
    from: { model: export-onnx, data: split }
    splits: [test]
  compare:
    from: [evaluate, export-onnx]
    by: test.accuracy
"#,
    );
    let report = p.run_json("c.yaml", 0);
    assert_eq!(status_of(&report, "compare"), "ran", "{report}");
    let compared: Value =
        serde_json::from_str(&p.read(".pipe/out/cmp/compare/compare.json")).unwrap();
    let members: Vec<&str> = compared["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member"].as_str().unwrap())
        .collect();
    assert_eq!(members.len(), 2, "{compared}");
    assert!(members.iter().all(|m| m.starts_with("lr-")), "{members:?}");
    let best = compared["best"]["member"].as_str().unwrap();
    assert!(members.contains(&best), "{compared}");
    let page = p.read(".pipe/out/cmp/compare/report.html");
    assert!(
        members.iter().all(|m| page.contains(m)),
        "the page names every member"
    );
}
