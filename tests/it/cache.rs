//! Caching semantics on a six-stage chain of command stages.

use crate::util::{Project, status_of, statuses};

/// Six command stages in a chain; each appends its name to `counter.log`
/// (outside every `outs`), so the counter proves which stages really ran.
fn six_stage_project() -> Project {
    let project = Project::new();
    project
        .file("in/a.txt", "alpha\n")
        .file("params/p3.txt", "three\n")
        .file(
            "six.yaml",
            r#"pipeline: six
stages:
  s1:
    run: cat in/a.txt > out/s1.txt && echo s1 >> counter.log
    deps: [in/a.txt]
    outs: [out/s1.txt]
  s2:
    run: cat out/s1.txt > out/s2.txt && echo s2 >> counter.log
    deps: [out/s1.txt]
    outs: [out/s2.txt]
  s3:
    run: cat out/s2.txt params/p3.txt > out/s3.txt && echo s3 >> counter.log
    deps: [out/s2.txt, params/p3.txt]
    outs: [out/s3.txt]
  s4:
    run: cat out/s3.txt > out/s4.txt && echo s4 >> counter.log
    deps: [out/s3.txt]
    outs: [out/s4.txt]
  s5:
    run: cat out/s4.txt > out/s5.txt && echo s5 >> counter.log
    deps: [out/s4.txt]
    outs: [out/s5.txt]
  s6:
    run: cat out/s5.txt > out/s6.txt && echo s6 >> counter.log
    deps: [out/s5.txt]
    outs: [out/s6.txt]
"#,
        );
    project
}

fn ran(project: &Project) -> Vec<String> {
    std::fs::read_to_string(project.path("counter.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn reset_counter(project: &Project) {
    std::fs::write(project.path("counter.log"), "").unwrap();
}

#[test]
fn six_stage_chain_caches_cuts_off_early_and_restores_from_the_run_cache() {
    let p = six_stage_project();
    let first = p.run_json("six.yaml", 0);
    assert!(statuses(&first).iter().all(|(_, s)| s == "ran"), "{first}");
    assert_eq!(ran(&p), ["s1", "s2", "s3", "s4", "s5", "s6"]);
    assert_eq!(p.read("out/s6.txt"), "alpha\nthree\n");
    assert_eq!(first["stages"][0]["reason"], "new stage");

    reset_counter(&p);
    let second = p.run_json("six.yaml", 0);
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "cached"),
        "{second}"
    );
    assert!(ran(&p).is_empty());

    // A dependency of stage 3 changes: 3–6 run, 1–2 stay cached.
    p.file("params/p3.txt", "THREE\n");
    let third = p.run_json("six.yaml", 0);
    assert_eq!(status_of(&third, "s1"), "cached");
    assert_eq!(status_of(&third, "s2"), "cached");
    for s in ["s3", "s4", "s5", "s6"] {
        assert_eq!(status_of(&third, s), "ran", "{s}: {third}");
    }
    assert_eq!(third["stages"][2]["reason"], "input params/p3.txt changed");
    assert_eq!(p.read("out/s6.txt"), "alpha\nTHREE\n");

    // Stage 3's command changes but writes the same bytes: 4–6 stay cached (early cutoff).
    let manifest = p.read("six.yaml");
    let edited = manifest.replace(
        "cat out/s2.txt params/p3.txt > out/s3.txt && echo s3",
        "cat out/s2.txt   params/p3.txt > out/s3.txt && echo s3",
    );
    assert_ne!(manifest, edited);
    p.file("six.yaml", &edited);
    reset_counter(&p);
    let fourth = p.run_json("six.yaml", 0);
    assert_eq!(status_of(&fourth, "s3"), "ran");
    assert_eq!(fourth["stages"][2]["reason"], "command changed");
    for s in ["s1", "s2", "s4", "s5", "s6"] {
        assert_eq!(status_of(&fourth, s), "cached", "{s}: {fourth}");
    }
    assert_eq!(ran(&p), ["s3"]);

    // Back to the old dependency: everything is restored from the run cache, nothing runs.
    p.file("six.yaml", &manifest);
    p.file("params/p3.txt", "three\n");
    reset_counter(&p);
    let fifth = p.run_json("six.yaml", 0);
    assert!(
        statuses(&fifth).iter().all(|(_, s)| s == "cached"),
        "{fifth}"
    );
    assert!(ran(&p).is_empty(), "nothing may run: {:?}", ran(&p));
    assert_eq!(p.read("out/s6.txt"), "alpha\nthree\n");
}

#[test]
fn deleted_outputs_are_restored_not_rerun_and_edited_outs_rerun() {
    let p = six_stage_project();
    p.run_json("six.yaml", 0);
    reset_counter(&p);
    std::fs::remove_file(p.path("out/s4.txt")).unwrap();
    std::fs::remove_file(p.path("out/s2.txt")).unwrap();
    let report = p.run_json("six.yaml", 0);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "cached"),
        "{report}"
    );
    assert!(ran(&p).is_empty());
    assert_eq!(p.read("out/s4.txt"), "alpha\nthree\n");
    assert_eq!(p.read("out/s2.txt"), "alpha\n");

    // An out edited by hand cannot be trusted: its stage reruns and rewrites it.
    p.file("out/s5.txt", "tampered\n");
    let report = p.run_json("six.yaml", 0);
    assert_eq!(status_of(&report, "s5"), "ran", "{report}");
    assert_eq!(
        report["stages"][4]["reason"],
        "output out/s5.txt was modified"
    );
    assert_eq!(status_of(&report, "s6"), "cached");
    assert_eq!(p.read("out/s5.txt"), "alpha\nthree\n");
}

/// After `git checkout` of an older lockfile the workspace holds what a later run wrote:
/// pipe's output, not an edit by hand. The older key's result is restored from the cache,
/// nothing reruns, and nothing goes to the trash.
#[test]
fn an_older_lockfile_restores_its_outputs_over_what_a_later_run_wrote() {
    let p = six_stage_project();
    p.run_json("six.yaml", 0);
    let older_lock = p.read("six.lock");
    p.file("params/p3.txt", "THREE\n");
    p.run_json("six.yaml", 0);
    assert_eq!(p.read("out/s3.txt"), "alpha\nTHREE\n");
    reset_counter(&p);

    // What `git checkout HEAD~1` does to the tracked files.
    p.file("params/p3.txt", "three\n")
        .file("six.lock", &older_lock);
    let status = p.pipe(&["status", "six.yaml", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status_of(&status, "s3"), "cached", "{status}");
    let report = p.run_json("six.yaml", 0);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "cached"),
        "{report}"
    );
    assert!(ran(&p).is_empty(), "{:?}", ran(&p));
    assert_eq!(p.read("out/s3.txt"), "alpha\nthree\n");
    assert!(
        !p.path(".pipe/trash").exists(),
        "something went to the trash"
    );

    // A hand edit is still one.
    p.file("out/s3.txt", "mine\n");
    let report = p.run_json("six.yaml", 0);
    assert_eq!(status_of(&report, "s3"), "ran", "{report}");
    assert!(p.path(".pipe/trash").exists());
}

#[test]
fn a_failing_stage_stops_its_descendants_but_not_unrelated_branches() {
    let p = Project::new();
    p.file(
        "p.yaml",
        r#"stages:
  bad:
    run: echo about to fail; exit 3
  after-bad:
    run: echo never > never.txt
    from: bad
    outs: [never.txt]
  other:
    run: echo fine > fine.txt
    outs: [fine.txt]
"#,
    );
    let report = p.run_json("p.yaml", 1);
    assert_eq!(report["ok"], false);
    assert_eq!(status_of(&report, "bad"), "failed");
    assert_eq!(status_of(&report, "after-bad"), "skipped");
    assert_eq!(status_of(&report, "other"), "ran");
    let bad = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "bad")
        .unwrap();
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(
        error.contains("about to fail"),
        "the log tail is shown: {error}"
    );
    assert!(!p.path("never.txt").exists());
}

#[test]
fn naming_a_stage_runs_it_and_what_it_needs_only() {
    let p = six_stage_project();
    let report = p.run_json_args(&["run", "six.yaml", "s2", "--json"]);
    assert_eq!(
        statuses(&report)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert_eq!(ran(&p), ["s1", "s2"]);
}

#[test]
fn force_reruns_only_the_forced_stage() {
    let p = six_stage_project();
    p.run_json("six.yaml", 0);
    reset_counter(&p);
    let report = p.run_json_args(&["run", "six.yaml", "--force=s4", "--json"]);
    assert_eq!(status_of(&report, "s4"), "ran");
    assert_eq!(report["stages"][3]["reason"], "forced");
    assert_eq!(
        status_of(&report, "s5"),
        "cached",
        "identical output keeps downstream cached"
    );
    assert_eq!(ran(&p), ["s4"]);
}

#[test]
fn status_and_dry_run_explain_without_running() {
    let p = six_stage_project();
    p.run_json("six.yaml", 0);
    p.file("params/p3.txt", "changed\n");
    reset_counter(&p);
    let out = p.pipe(&["status", "six.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "s2"), "cached");
    assert_eq!(status_of(&report, "s3"), "would_run");
    assert_eq!(report["stages"][2]["reason"], "input params/p3.txt changed");
    assert_eq!(report["stages"][3]["reason"], "upstream s3 will run");
    assert!(report["stages"][3]["key"].is_null());
    assert!(ran(&p).is_empty());
    let human = p.pipe(&["run", "six.yaml", "--dry-run"]);
    let text = crate::util::stderr(&human);
    assert!(
        text.contains("Would run s3") && text.contains("input params/p3.txt changed"),
        "{text}"
    );
    assert!(ran(&p).is_empty());
}

#[test]
fn parallel_branches_run_at_once_with_jobs() {
    let p = Project::new();
    p.file(
        "p.yaml",
        r#"stages:
  left:
    run: touch left.started; while [ ! -e right.started ]; do sleep 0.05; done; echo l > left.txt
    outs: [left.txt]
  right:
    run: touch right.started; while [ ! -e left.started ]; do sleep 0.05; done; echo r > right.txt
    outs: [right.txt]
"#,
    );
    // Each branch waits for the other to start: this only finishes if they run at the same time.
    let out = p.pipe(&["run", "p.yaml", "--jobs", "2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::stderr(&out));
}

impl Project {
    /// `pipe <args>` expecting exit 0 and one JSON document.
    pub fn run_json_args(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pipe(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr:\n{}",
            crate::util::stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON document")
    }
}

#[test]
fn an_input_changed_while_the_stage_runs_is_not_cached_under_the_old_input() {
    let p = Project::new();
    p.file("in.txt", "v1\n");
    // The first run edits its input while it runs (as a user saving the file
    // mid-run would); later runs only copy it.
    p.file(
        "p.yaml",
        "pipeline: race\nstages:\n  copy:\n    run: '[ -e once ] || { touch once; echo v2 > in.txt; }; cp in.txt out.txt'\n    deps: [in.txt]\n    outs: [out.txt]\n",
    );
    let out = p.pipe(&["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::stderr(&out));
    let err = crate::util::stderr(&out);
    assert!(
        err.contains("copy: `in.txt` changed while the stage ran"),
        "{err}"
    );
    assert_eq!(p.read("out.txt"), "v2\n", "the outputs are kept");

    p.file("in.txt", "v1\n");
    let report = p.run_json("p.yaml", 0);
    assert_eq!(
        status_of(&report, "copy"),
        "ran",
        "v2's output was not cached as v1's"
    );
    assert_eq!(p.read("out.txt"), "v1\n");
    assert_eq!(status_of(&p.run_json("p.yaml", 0), "copy"), "cached");
}

/// `pipe run p.yaml --json` under umask `umask`, asserting exit code 0.
fn run_with_umask(p: &Project, umask: &str) -> serde_json::Value {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("umask {umask}; exec \"$0\" run p.yaml --json"),
        ])
        .arg(env!("CARGO_BIN_EXE_pipe"))
        .current_dir(p.root())
        .env("NO_COLOR", "1")
        .env_remove("PIPE_STORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode_of(p: &Project, rel: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p.path(rel)).unwrap().permissions().mode() & 0o777
}

#[test]
fn restored_outs_keep_their_owner_only_modes_and_honour_the_umask() {
    let p = Project::new();
    p.file(
        "p.yaml",
        "pipeline: modes\nstages:\n  s:\n    run: mkdir -p private && echo secret > private/creds.env && chmod 600 private/creds.env && echo hi > public.txt && chmod 644 public.txt\n    outs: [private, public.txt]\n",
    );
    run_with_umask(&p, "022");
    assert_eq!(mode_of(&p, "private/creds.env"), 0o600);
    std::fs::remove_dir_all(p.path("private")).unwrap();
    std::fs::remove_file(p.path("public.txt")).unwrap();
    assert_eq!(status_of(&run_with_umask(&p, "022"), "s"), "cached");
    assert_eq!(p.read("private/creds.env"), "secret\n");
    assert_eq!(mode_of(&p, "private/creds.env"), 0o600, "not 0644");
    assert_eq!(mode_of(&p, "public.txt"), 0o644);

    std::fs::remove_dir_all(p.path("private")).unwrap();
    std::fs::remove_file(p.path("public.txt")).unwrap();
    assert_eq!(status_of(&run_with_umask(&p, "077"), "s"), "cached");
    assert_eq!(
        mode_of(&p, "private"),
        0o700,
        "the folder follows the umask"
    );
    assert_eq!(mode_of(&p, "private/creds.env"), 0o600);
    assert_eq!(mode_of(&p, "public.txt"), 0o600, "the umask applies");
}
