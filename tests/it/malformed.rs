//! Malformed manifests: each exits 2 with a message naming the line, never a panic.

use crate::util::{Project, stderr};

/// (what is wrong, manifest, line the error must name, words the message must contain)
pub const BAD_MANIFESTS: &[(&str, &str, usize, &str)] = &[
    (
        "syntax: unclosed bracket",
        "stages:\n  a:\n    run: [echo\n",
        4,
        "expected ',' or ']'",
    ),
    (
        "syntax: bad indentation",
        "stages:\n  a:\n    run: echo\n   deps: [x]\n",
        4,
        "",
    ),
    ("syntax: tab indentation", "stages:\n\ta:\n", 2, ""),
    ("empty file", "", 1, "empty"),
    ("only a comment", "# nothing here\n", 1, "empty"),
    ("top level is a list", "- a\n- b\n", 1, "mapping"),
    ("top level is a scalar", "hello\n", 1, "mapping"),
    ("no stages", "pipeline: x\n", 1, "no `stages:`"),
    (
        "stages is a list",
        "stages:\n  - a\n",
        2,
        "mapping of stage names",
    ),
    ("stages is empty", "stages: {}\n", 1, "empty"),
    (
        "unknown top-level key",
        "pipeline: x\nstagse:\n  a:\n    run: echo\n",
        2,
        "did you mean 'stages'",
    ),
    (
        "bad pipeline name",
        "pipeline: 'a b'\nstages:\n  a:\n    run: echo\n",
        1,
        "pipeline",
    ),
    (
        "stage is a scalar",
        "stages:\n  a: echo hi\n",
        2,
        "must be a mapping",
    ),
    (
        "unknown kind",
        "stages:\n  a:\n    uses: comand\n    run: echo\n",
        3,
        "did you mean 'command'",
    ),
    (
        "no kind at all",
        "stages:\n  thing:\n    x: 1\n",
        2,
        "has no kind",
    ),
    (
        "run is a list",
        "stages:\n  a:\n    run: [echo, hi]\n",
        3,
        "must be a string",
    ),
    (
        "deps is a mapping",
        "stages:\n  a:\n    run: echo\n    deps: {x: 1}\n",
        4,
        "list of paths",
    ),
    (
        "unknown parameter",
        "stages:\n  a:\n    run: echo\n    evn: [HOME]\n",
        4,
        "did you mean 'env'",
    ),
    (
        "wrong parameter type",
        "stages:\n  a:\n    run: echo\n    env: 3\n",
        4,
        "must be a list, not 3",
    ),
    (
        "unknown stage in from",
        "stages:\n  a:\n    run: echo\n  b:\n    run: echo\n    from: aa\n",
        6,
        "did you mean 'a'",
    ),
    (
        "from is a number",
        "stages:\n  a:\n    run: echo\n    from: 3\n",
        4,
        "from",
    ),
    (
        "cycle",
        "stages:\n  a:\n    run: echo\n    from: b\n  b:\n    run: echo\n    from: a\n",
        2,
        "cycle: a → b → a",
    ),
    (
        "self cycle",
        "stages:\n  a:\n    run: echo\n    from: a\n",
        2,
        "cycle: a → a",
    ),
    (
        "cycle through paths",
        "stages:\n  a:\n    run: cp y x\n    deps: [y]\n    outs: [x]\n  b:\n    run: cp x y\n    deps: [x]\n    outs: [y]\n",
        2,
        "cycle",
    ),
    (
        "duplicate stage names",
        "stages:\n  a:\n    run: echo\n  a:\n    run: echo\n",
        4,
        "duplicate key `a`",
    ),
    (
        "duplicate parameter",
        "stages:\n  a:\n    run: echo\n    run: echo 2\n",
        4,
        "duplicate key `run`",
    ),
    (
        "escaping dep with ..",
        "stages:\n  a:\n    run: echo\n    deps: [../secret.txt]\n",
        4,
        "leaves the manifest's folder",
    ),
    (
        "absolute out",
        "stages:\n  a:\n    run: echo\n    outs: [/tmp/x]\n",
        4,
        "absolute path",
    ),
    (
        "two stages write one path",
        "stages:\n  a:\n    run: echo\n    outs: [x]\n  b:\n    run: echo\n    outs: [x]\n",
        7,
        "also written",
    ),
    (
        "outs on a non-command kind",
        "stages:\n  split:\n    outs: [x]\n",
        3,
        "only for command",
    ),
    (
        "run on a non-command kind",
        "stages:\n  split:\n    run: echo\n",
        3,
        "only for command",
    ),
    (
        "invalid stage name",
        "stages:\n  a.b:\n    run: echo\n",
        2,
        "invalid stage name",
    ),
    (
        "finetune reading an ingest stage",
        "stages:\n  ingest:\n    source: d.csv\n  finetune:\n    from: ingest\n    model: { config: tiny }\n",
        5,
        "point `from:` at your tokenize stage",
    ),
    (
        "evaluate without named inputs",
        "stages:\n  ingest:\n    source: d.csv\n  split:\n    from: ingest\n  evaluate:\n    from: split\n",
        7,
        "evaluate needs an input named `model`",
    ),
    (
        "evaluate asking for a split the data lacks",
        "stages:\n  ingest:\n    source: d.csv\n  split:\n    from: ingest\n  e:\n    uses: evaluate\n    from: { model: x, data: split }\n    splits: [validation]\n  x:\n    uses: command\n    run: echo\n    outs: [bundle]\n",
        9,
        "has no split `validation`",
    ),
    (
        "compare without metrics",
        "stages:\n  ingest:\n    source: d.csv\n  compare:\n    from: ingest\n",
        5,
        "writes `metrics.json`",
    ),
    (
        "a model config whose heads do not divide its width",
        "stages:\n  finetune:\n    model:\n      config: { hidden_size: 63, num_heads: 4, num_layers: 1, max_position_embeddings: 16, window_size: 16, attention_types: [[[global], 1]] }\n",
        4,
        "hidden_size 63 is not a multiple of num_heads 4",
    ),
    (
        "matrix values are not a list",
        "stages:\n  a:\n    run: echo\n    matrix: {env: LANG}\n",
        4,
        "must be a list of values",
    ),
    (
        "command without run",
        "stages:\n  a:\n    uses: command\n",
        2,
        "needs a `run:`",
    ),
    (
        "several documents",
        "stages:\n  a:\n    run: echo\n---\nstages: {}\n",
        4,
        "several",
    ),
    ("alias to nowhere", "stages:\n  a: *nothing\n", 2, ""),
    (
        "unknown executor",
        "executor: slurmm\nstages:\n  a:\n    run: echo\n",
        1,
        "unknown executor `slurmm`",
    ),
    (
        "unknown resource",
        "stages:\n  a:\n    run: echo\n    resources: { cpus: 2, gpu: 1 }\n",
        4,
        "did you mean 'gpus'",
    ),
    (
        "bad time limit",
        "resources:\n  time: 1h\nstages:\n  a:\n    run: echo\n",
        2,
        "not a time limit",
    ),
];

#[test]
fn every_bad_manifest_exits_2_and_names_the_line() {
    assert!(BAD_MANIFESTS.len() >= 25);
    let mut problems = Vec::new();
    for (what, text, line, words) in BAD_MANIFESTS {
        let p = Project::new();
        p.file("bad.yaml", text);
        for command in [&["validate", "bad.yaml"][..], &["run", "bad.yaml"][..]] {
            let out = p.pipe(command);
            let err = stderr(&out);
            if out.status.code() != Some(2) {
                problems.push(format!(
                    "{what}: {command:?} exited {:?}:\n{err}",
                    out.status.code()
                ));
            } else if err.contains("panicked") {
                problems.push(format!("{what}: panic:\n{err}"));
            } else if !err.contains(&format!("bad.yaml:{line}:")) {
                problems.push(format!("{what}: must name line {line}:\n{err}"));
            } else if !err.contains(words) {
                problems.push(format!("{what}: must say {words:?}:\n{err}"));
            }
        }
        if p.path("bad.lock").exists() {
            problems.push(format!("{what}: a lockfile was written"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let mut prev = "a".to_string();
    for i in 0..12 {
        let name = format!("l{i}");
        doc.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        prev = name;
    }
    doc.push_str("stages:\n  s:\n    run: echo\n");
    let p = Project::new();
    p.file("bomb.yaml", &doc);
    let out = p.pipe(&["validate", "bomb.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("alias bomb"), "{}", stderr(&out));
}

#[test]
fn every_error_in_a_manifest_is_reported_in_one_pass() {
    let p = Project::new();
    p.file(
        "two.yaml",
        "stages:\n  a:\n    run: echo\n    evn: [X]\n  b:\n    run: echo\n    from: zz\n",
    );
    let out = p.pipe(&["validate", "two.yaml"]);
    let err = stderr(&out);
    assert!(
        err.contains("two.yaml:4:") && err.contains("two.yaml:7:"),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");
}

#[test]
fn symlinks_out_of_the_workspace_are_refused_unless_allowed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "s").unwrap();
    let p = Project::new();
    std::os::unix::fs::symlink(outside.path(), p.path("link")).unwrap();
    p.file(
        "m.yaml",
        "stages:\n  a:\n    run: cat link/secret.txt\n    deps: [link/secret.txt]\n",
    );
    let out = p.pipe(&["validate", "m.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    let allowed = p.pipe(&["run", "m.yaml", "--allow-outside"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
}

#[test]
fn parameter_errors_speak_the_manifests_words_not_rusts() {
    let p = Project::new();
    p.file("d.csv", "text,label\na,b\n");
    let cases = [
        (
            "model: { config: tiny }\n    epochs: -1",
            "finetune parameter `epochs`: must be a whole number ≥ 0, not -1",
            None,
        ),
        (
            "model: tiny",
            "finetune parameter `model`: must be a mapping of its parameters, not `tiny` (text)",
            Some("help: write its entries indented below it"),
        ),
        (
            "model: { config: 5 }",
            "finetune parameter `model.config`: is none of the forms this parameter takes",
            Some("help: see this stage's section of the README, or `pipe schema`"),
        ),
        (
            "epochs: 2",
            "finetune parameter: `model` is required",
            Some("help: add `model:` to the stage"),
        ),
        (
            "model: { config: tiny }\n    learning_rate: fast",
            "finetune parameter `learning_rate`: must be a number, not `fast` (text)",
            None,
        ),
    ];
    for (params, expected, help) in cases {
        p.file(
            "p.yaml",
            &format!(
                "pipeline: s\nstages:\n  ingest: {{ source: d.csv }}\n  tokenize:\n    from: ingest\n    tokenizer: {{ train: {{ vocab_size: 300 }} }}\n  finetune:\n    from: tokenize\n    {params}\n"
            ),
        );
        let out = p.pipe(&["validate", "p.yaml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{params}:\n{err}");
        if let Some(help) = help {
            assert!(err.contains(help), "{params}:\n{err}");
        }
        for rust in [
            "u64",
            "f64",
            "struct",
            "untagged",
            "ModelParams",
            "missing field",
        ] {
            assert!(!err.contains(rust), "`{rust}` in:\n{err}");
        }
    }
}
