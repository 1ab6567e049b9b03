//! Kills and concurrent runs: the store stays consistent.

use std::time::{Duration, Instant};

use crate::util::{Project, status_of, stderr};

fn wait_for(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SLOW: &str = r#"pipeline: slow
stages:
  first:
    run: echo one > one.txt
    outs: [one.txt]
  slow:
    run: touch started.flag && sleep 2 && cat one.txt > two.txt && echo two >> two.txt
    deps: [one.txt]
    outs: [two.txt]
  last:
    run: cat two.txt > three.txt
    deps: [two.txt]
    outs: [three.txt]
"#;

/// Every record in the store must point only at objects that exist.
fn assert_store_consistent(p: &Project) {
    let stages = p.path(".pipe/stages");
    for entry in std::fs::read_dir(stages).unwrap() {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        for (name, output) in record["outputs"].as_object().unwrap() {
            let hash = output["hash"].as_str().unwrap();
            let object = p.path(&format!(".pipe/objects/{}/{}", &hash[..2], &hash[2..]));
            assert!(
                object.exists(),
                "record {} output {name} points to a missing object",
                record["stage"]
            );
        }
    }
}

#[test]
fn sigkill_in_the_middle_of_a_stage_loses_nothing() {
    let p = Project::new();
    p.file("slow.yaml", SLOW);
    let mut child = p.spawn(&["run", "slow.yaml"]);
    wait_for(&p.path("started.flag"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_store_consistent(&p);
    assert!(!p.path("three.txt").exists());

    let report = p.run_json("slow.yaml", 0);
    assert_eq!(status_of(&report, "first"), "cached");
    assert_eq!(status_of(&report, "slow"), "ran");
    assert_eq!(status_of(&report, "last"), "ran");
    assert_store_consistent(&p);
    assert_eq!(
        std::fs::read_dir(p.path(".pipe/tmp")).unwrap().count(),
        0,
        ".pipe/tmp is cleaned"
    );

    let clean = Project::new();
    clean.file("slow.yaml", SLOW);
    clean.run_json("slow.yaml", 0);
    assert_eq!(p.read("three.txt"), clean.read("three.txt"));
    assert_eq!(p.read("three.txt"), "one\ntwo\n");
}

#[test]
fn two_runs_at_once_are_serialised() {
    let p = Project::new();
    p.file("slow.yaml", SLOW);
    let a = p.spawn(&["run", "slow.yaml", "--json"]);
    wait_for(&p.path("started.flag"));
    let b = p.spawn(&["run", "slow.yaml", "--json"]);
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    assert!(
        stderr(&b).contains("Waiting"),
        "the second run says it waits: {}",
        stderr(&b)
    );
    let second: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(
        status_of(&second, "slow"),
        "cached",
        "the second run found the first's result"
    );
}

#[test]
fn no_wait_fails_fast_while_another_run_holds_the_store() {
    let p = Project::new();
    p.file("slow.yaml", SLOW);
    let a = p.spawn(&["run", "slow.yaml"]);
    wait_for(&p.path("started.flag"));
    let b = p.pipe(&["run", "slow.yaml", "--no-wait"]);
    assert_eq!(b.status.code(), Some(2));
    assert!(stderr(&b).contains("another pipe run"), "{}", stderr(&b));
    assert_eq!(a.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn sigkill_of_pipe_kills_the_commands_whole_process_group() {
    let p = Project::new();
    p.file(
        "g.yaml",
        "pipeline: g\nstages:\n  writer:\n    run: (while true; do echo x >> ticks.txt; sleep 0.02; done) & touch started.flag; sleep 60\n    outs: [done.txt]\n",
    );
    let mut child = p.spawn(&["run", "g.yaml"]);
    wait_for(&p.path("started.flag"));
    wait_for(&p.path("ticks.txt"));
    child.kill().unwrap(); // SIGKILL: pipe gets no chance to clean up
    child.wait().unwrap();
    // The guard needs a moment to notice pipe is gone.
    std::thread::sleep(Duration::from_millis(500));
    let after_kill = std::fs::metadata(p.path("ticks.txt")).unwrap().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        std::fs::metadata(p.path("ticks.txt")).unwrap().len(),
        after_kill,
        "the grandchild went on writing after pipe was killed"
    );
}
