//! The command line: help, JSON shapes, exit codes, dag, show, gc.

use crate::util::{Project, on_a_terminal, small_finetune_manifest, stderr, two_label_csv};

fn two_stage() -> Project {
    let p = Project::new();
    p.file("data.txt", "hello\n").file(
        "p.yaml",
        "pipeline: demo\nstages:\n  upper:\n    run: tr a-z A-Z < data.txt > upper.txt\n    deps: [data.txt]\n    outs: [upper.txt]\n  count:\n    run: wc -c < upper.txt > count.txt\n    deps: [upper.txt]\n    outs: [count.txt]\n",
    );
    p
}

#[test]
fn help_has_examples_and_exit_codes() {
    let p = Project::new();
    let top = p.pipe(&["--help"]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(text.contains("Exit codes"), "{text}");
    for sub in ["run", "status", "dag", "show", "metrics", "gc"] {
        let out = p.pipe(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Examples:"),
            "{sub} --help has examples"
        );
    }
}

#[test]
fn run_json_is_one_document_with_the_documented_fields() {
    let p = two_stage();
    let out = p.pipe(&["run", "p.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document");
    assert_eq!(report["pipeline"], "demo");
    assert_eq!(report["ok"], true);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["name"], "upper", "execution order");
    for s in stages {
        assert_eq!(s["kind"], "command");
        assert_eq!(s["status"], "ran");
        assert_eq!(s["key"].as_str().unwrap().len(), 64);
        assert!(s["seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["reason"], "new stage");
    }
    assert_eq!(p.read("count.txt").trim(), "6");
}

#[test]
fn human_output_has_one_line_per_stage_and_a_summary() {
    let p = two_stage();
    let out = p.pipe(&["run", "p.yaml"]);
    let err = stderr(&out);
    assert!(
        err.contains("Ran upper") && err.contains("new stage"),
        "{err}"
    );
    assert!(
        err.contains("Finished demo") && err.contains("2 ran, 0 cached"),
        "{err}"
    );
    assert!(
        !err.contains("\u{1b}["),
        "NO_COLOR turns colour off: {err:?}"
    );
    assert!(out.stdout.is_empty(), "human output goes to stderr");
    let again = stderr(&p.pipe(&["run", "p.yaml"]));
    assert!(
        again.contains("Cached upper") && again.contains("0 ran, 2 cached"),
        "{again}"
    );
}

#[test]
fn the_lockfile_is_yaml_beside_the_manifest_and_explains_parameter_changes() {
    let p = two_stage();
    p.pipe(&["run", "p.yaml"]);
    let lock = p.read("p.lock");
    assert!(
        lock.contains("pipeline: demo") && lock.contains("upper:") && lock.contains("dep:data.txt"),
        "{lock}"
    );
    let node = pipe_engine::yaml::parse(&lock).expect("the lockfile is YAML");
    assert!(node.get("stages").is_some());
}

#[test]
fn unknown_stage_names_are_usage_errors() {
    let p = two_stage();
    let out = p.pipe(&["run", "p.yaml", "uper"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean 'upper'"),
        "{}",
        stderr(&out)
    );
    let out = p.pipe(&["run", "--jobs", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_manifest_defaults_to_the_one_in_the_current_folder() {
    let p = two_stage();
    let out = p.pipe(&["run", "upper", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stages"].as_array().unwrap().len(), 1);
    p.file("other.yaml", "stages:\n  a:\n    run: echo\n");
    let out = p.pipe(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("several manifests"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dag_prints_text_dot_and_mermaid() {
    let p = two_stage();
    let text = String::from_utf8(p.pipe(&["dag", "p.yaml"]).stdout).unwrap();
    assert!(
        text.contains("upper (command)\ncount (command) ← upper"),
        "{text}"
    );
    let dot = String::from_utf8(p.pipe(&["dag", "p.yaml", "--format", "dot"]).stdout).unwrap();
    assert!(
        dot.starts_with("digraph \"demo\"") && dot.contains("\"upper\" -> \"count\";"),
        "{dot}"
    );
    let mermaid =
        String::from_utf8(p.pipe(&["dag", "p.yaml", "--format", "mermaid"]).stdout).unwrap();
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("s0 --> s1"),
        "{mermaid}"
    );
}

#[test]
fn show_gives_outputs_and_metrics_as_json() {
    let p = two_stage();
    let out = p.pipe(&["show", "p.yaml", "count", "--json"]);
    assert_eq!(out.status.code(), Some(2), "not run yet");
    assert!(stderr(&out).contains("has not run yet"));
    p.pipe(&["run", "p.yaml"]);
    let out = p.pipe(&["show", "p.yaml", "count", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["stage"], "count");
    assert_eq!(shown["key"].as_str().unwrap().len(), 64);
    let path = shown["outputs"]["count.txt"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap().trim(), "6");
    assert!(shown["metrics"].is_object());
}

#[test]
fn gc_frees_what_no_lockfile_references() {
    let p = two_stage();
    p.pipe(&["run", "p.yaml"]);
    p.file("data.txt", "a different input\n");
    p.pipe(&["run", "p.yaml"]);
    let dry = p.pipe(&["gc", "p.yaml", "--grace", "0s", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        dry["records"], 2,
        "the first run's two records are unreferenced: {dry}"
    );
    assert!(dry["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        std::fs::read_dir(p.path(".pipe/stages")).unwrap().count(),
        4,
        "dry run removes nothing"
    );
    let out = p.pipe(&["gc", "p.yaml", "--grace", "0s"]);
    assert_eq!(out.status.code(), Some(0));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("Freed"), "{answer}");
    assert_eq!(
        std::fs::read_dir(p.path(".pipe/stages")).unwrap().count(),
        2
    );
    let report = p.run_json("p.yaml", 0);
    assert!(
        crate::util::statuses(&report)
            .iter()
            .all(|(_, s)| s == "cached"),
        "what the lockfile references survives"
    );
    let young = p.pipe(&["gc", "p.yaml", "--json"]);
    let young: serde_json::Value = serde_json::from_slice(&young.stdout).unwrap();
    assert_eq!(
        young["records"], 0,
        "the default grace period keeps recent results"
    );
}

#[test]
fn env_listed_variables_are_part_of_the_key() {
    let p = Project::new();
    p.file(
        "e.yaml",
        "stages:\n  e:\n    run: echo $GREETING > e.txt\n    outs: [e.txt]\n    env: [GREETING]\n",
    );
    let run = |value: &str| {
        let out = p
            .command(&["run", "e.yaml", "--json"])
            .env("GREETING", value)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        crate::util::status_of(&report, "e")
    };
    assert_eq!(run("hi"), "ran");
    assert_eq!(run("hi"), "cached");
    assert_eq!(run("hello"), "ran");
    assert_eq!(p.read("e.txt"), "hello\n");
}

#[test]
fn status_of_a_stage_that_cannot_run_says_so_in_summary_json_and_help() {
    let p = Project::new();
    p.file(
        "mis.yaml",
        "pipeline: mis\nstages:\n  ingest: { source: data/nonexist.csv }\n  split: { from: ingest }\n",
    );
    let out = p.pipe(&["status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("up to date"), "{err}");
    assert!(
        err.contains("mis: 1 of 2 stages cannot run (ingest), 1 would be skipped, 0 would run"),
        "{err}"
    );

    let out = p.pipe(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["stages"][0]["status"], "failed");
    assert_eq!(report["stages"][1]["status"], "skipped");

    let help = String::from_utf8(p.pipe(&["status", "--help"]).stdout).unwrap();
    for word in [
        "`cached`",
        "`would_run`",
        "`failed`",
        "`skipped`",
        "Exit codes",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

/// Whether `text` holds an ANSI colour or style code (`ESC [ … m`); cursor moves are fine.
fn has_colour_codes(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(rest.len());
        rest[end..].starts_with('m')
    })
}

#[test]
fn color_never_holds_for_progress_bars_help_and_usage_errors() {
    let p = Project::new();
    p.file("data/q.csv", &two_label_csv(64));
    p.file(
        "t.yaml",
        &small_finetune_manifest("t", "    max_steps: 40\n    threads: 1\n"),
    );
    let pipe = env!("CARGO_BIN_EXE_pipe");
    let shown = on_a_terminal(&p, &format!("'{pipe}' --color never run t.yaml"));
    assert!(
        shown.contains('━') || shown.contains('─'),
        "no progress bar:\n{shown}"
    );
    assert!(
        !has_colour_codes(&shown),
        "colour despite --color never:\n{shown:?}"
    );

    for args in [
        &["--color", "never", "--help"][..],
        &["--color=never", "run", "--bogus"],
    ] {
        let colour = p
            .command(&args[1..])
            .env_remove("NO_COLOR")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&colour.stdout),
            stderr(&colour)
        );
        if args[0] == "--color" {
            // Without the flag, forced colour does colour clap's help: the check can fail.
            assert!(has_colour_codes(&all), "{all}");
        }
        let out = p
            .command(args)
            .env_remove("NO_COLOR")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(!has_colour_codes(&all), "pipe {args:?}:\n{all:?}");
    }
}

#[test]
fn force_with_a_space_before_a_stage_is_refused_not_read_as_force_all() {
    let p = two_stage();
    let out = p.pipe(&["run", "p.yaml", "--force", "count"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`--force count` would rerun every selected stage")
            && err.contains("`--force=count`"),
        "{err}"
    );
    assert!(!p.path("upper.txt").exists(), "nothing ran");

    // The documented forms still work: one stage, and everything.
    p.run_json("p.yaml", 0);
    let out = p.pipe(&["run", "p.yaml", "--force=count", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(crate::util::status_of(&report, "upper"), "cached");
    assert_eq!(crate::util::status_of(&report, "count"), "ran");
    let out = p.pipe(&["run", "--force", "p.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(crate::util::status_of(&report, "upper"), "ran");
    assert_eq!(crate::util::status_of(&report, "count"), "ran");
}

#[test]
fn gc_without_a_manifest_cleans_the_current_folders_store_whatever_manifests_it_holds() {
    let p = Project::new();
    let out = p.pipe(&["gc", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no store at"), "{}", stderr(&out));

    let p = two_stage();
    p.run_json("p.yaml", 0);
    p.file(
        "q.yaml",
        "pipeline: other\nstages:\n  one:\n    run: echo hi\n",
    );
    let out = p.pipe(&["gc", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("Would free") && answer.contains("1 lockfile(s)"),
        "{answer}"
    );
}

#[test]
fn counts_of_zero_and_unknown_hosts_are_usage_errors() {
    let p = two_stage();
    for (args, words) in [
        (
            &["run", "--jobs", "0"][..],
            "`0` is not a whole number of at least 1",
        ),
        (&["predict", "x", "hello", "--threads", "0"], "at least 1"),
        (&["serve", "x", "--host", "nowhere"], "write e.g. 127.0.0.1"),
    ] {
        let out = p.pipe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
}
