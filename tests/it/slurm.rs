//! `pipe run --executor slurm` against a real single-node Slurm cluster.
//!
//! These tests need the cluster `scripts/with-slurm.sh` starts (`SLURM_CONF`
//! names it); `./scripts/test.sh` runs them under it. Without one they fail,
//! saying how to run them.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Project, status_of, statuses, stderr, two_label_csv};

/// Panics with how to get a cluster unless `SLURM_CONF` names one.
fn cluster() {
    if std::env::var_os("SLURM_CONF").is_none_or(|v| v.is_empty()) {
        panic!(
            "the Slurm tests need a cluster and SLURM_CONF is not set: run them as \
             `scripts/with-slurm.sh cargo test --workspace slurm::` (./scripts/test.sh does)"
        );
    }
}

/// `pipe run <manifest> --executor slurm --json`, asserting exit code `code`.
fn run_slurm(p: &Project, manifest: &str, code: i32) -> Value {
    let out = p.pipe(&["run", manifest, "--executor", "slurm", "--json"]);
    json_of(&out, code)
}

fn json_of(out: &Output, code: i32) -> Value {
    assert_eq!(out.status.code(), Some(code), "stderr:\n{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn stage<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

/// What `scontrol show job` says about job `id`.
fn scontrol(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .expect("scontrol runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ingest → split, and two commands: `words` reads split's outputs and asks
/// for `mem`, `echo` stands alone (so it is in the queue together with ingest).
fn pipeline(echo: &str, mem: &str) -> String {
    format!(
        r#"pipeline: onslurm
resources: {{ time: "5" }}
stages:
  ingest:
    source: data.csv
  split:
    from: ingest
    test: 0.25
    seed: 3
  words:
    from: split
    run: ls "$PIPE_FROM" > words.txt; echo "words saw $PIPE_FROM"
    outs: [words.txt]
    resources: {{ cpus: 1, mem: {mem} }}
  echo:
    run: echo {echo} > echo.txt
    outs: [echo.txt]
"#
    )
}

#[test]
fn each_stage_that_runs_is_one_job_cached_ones_none_and_results_match_a_local_run() {
    cluster();
    let p = Project::new();
    p.file("data.csv", &two_label_csv(24))
        .file("p.yaml", &pipeline("one", "100M"));
    let out = p.pipe(&["run", "p.yaml", "--executor", "slurm", "--json"]);
    let report = json_of(&out, 0);
    // The kind's notes, written in the job, reach the terminal as in a local run.
    assert!(
        stderr(&out).contains("ingest: text column `text`"),
        "{}",
        stderr(&out)
    );
    let mut ids = Vec::new();
    for name in ["ingest", "split", "words", "echo"] {
        let s = stage(&report, name);
        assert_eq!(s["status"], "ran", "{report}");
        assert_eq!(s["executor"], "slurm", "{report}");
        assert_eq!(s["job_state"], "COMPLETED", "{report}");
        let id = s["job_id"].as_str().expect("a job id").to_string();
        let shown = scontrol(&id);
        assert!(
            shown.contains(&format!("JobName=pipe-onslurm-{name}-")),
            "job {id} is not {name}'s: {shown}"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one job per stage: {report}");
    // `words.resources` overrides nothing of the default time but adds its own cpus and mem.
    let words = scontrol(stage(&report, "words")["job_id"].as_str().unwrap());
    assert!(words.contains("TimeLimit=00:05:00"), "{words}");
    assert!(words.contains("MinMemoryNode=100M"), "{words}");
    // The job's output is in the stage's log, where a local run puts it.
    assert!(
        p.read(".pipe/logs/onslurm/words.log")
            .contains("words saw "),
        "{}",
        p.read(".pipe/logs/onslurm/words.log")
    );
    assert!(p.read("words.txt").lines().any(|l| l == "test.parquet"));

    // One command changes, and words' resources (not part of its key): only echo gets a job.
    p.file("p.yaml", &pipeline("two", "200M"));
    let report = run_slurm(&p, "p.yaml", 0);
    for (name, status) in statuses(&report) {
        let s = stage(&report, &name);
        if name == "echo" {
            assert_eq!(status, "ran", "{report}");
            assert!(s["job_id"].is_string(), "{report}");
        } else {
            assert_eq!(status, "cached", "{report}");
            assert!(s["job_id"].is_null() && s["executor"].is_null(), "{report}");
        }
    }

    // A local run of the same pipeline elsewhere produces the same bytes: same
    // lockfile (keys, output hashes, metrics); and a local rerun here is all cached.
    let local = Project::new();
    local
        .file("data.csv", &two_label_csv(24))
        .file("p.yaml", &pipeline("two", "200M"));
    let local_report = local.run_json("p.yaml", 0);
    assert_eq!(stage(&local_report, "echo")["executor"], "local");
    assert!(stage(&local_report, "echo")["job_id"].is_null());
    assert_eq!(p.read("p.lock"), local.read("p.lock"));
    let rerun = p.run_json("p.yaml", 0);
    assert!(
        statuses(&rerun).iter().all(|(_, s)| s == "cached"),
        "{rerun}"
    );
}

#[test]
fn a_failing_stage_reports_its_job_state_and_log_tail() {
    cluster();
    let p = Project::new();
    p.file(
        "f.yaml",
        "pipeline: fails\nstages:\n  bad:\n    run: echo about to fail; echo x > bad.txt; exit 3\n    outs: [bad.txt]\n  after:\n    run: echo never > after.txt\n    deps: [bad.txt]\n    outs: [after.txt]\n  crash:\n    run: echo crashing; kill -9 $PPID\n",
    );
    let out = p.pipe(&["run", "f.yaml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("Failed bad"), "{text}");
    assert!(
        text.contains("job 1 FAILED") || text.contains(" FAILED · "),
        "{text}"
    );
    assert!(text.contains("exited with status 3"), "{text}");
    assert!(text.contains("ended FAILED"), "{text}");
    assert!(text.contains("| about to fail"), "the log tail: {text}");
    assert!(text.contains("Skipped after"), "{text}");

    let report = run_slurm(&p, "f.yaml", 1);
    let bad = stage(&report, "bad");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["job_state"], "FAILED");
    assert!(bad["job_id"].is_string());
    assert!(bad["error"].as_str().unwrap().contains("about to fail"));
    assert_eq!(status_of(&report, "after"), "skipped");
    assert!(!p.path("after.txt").exists());
    // A job that dies without replying (here `pipe exec-stage` is killed, as an
    // out-of-memory killer would) fails with its state and exit signal.
    let crash = stage(&report, "crash");
    assert_eq!(crash["job_state"], "FAILED", "{report}");
    let error = crash["error"].as_str().unwrap();
    assert!(
        error.contains("exit code 0:9) without finishing the stage"),
        "{error}"
    );
    assert!(error.contains("| crashing"), "{error}");
}

#[test]
fn a_stage_past_its_time_limit_fails_with_timeout() {
    cluster();
    let p = Project::new();
    p.file(
        "t.yaml",
        "pipeline: timeout\nstages:\n  slow:\n    run: echo started; sleep 120; echo done > slow.txt\n    outs: [slow.txt]\n    resources: { time: \"0:01\" }\n",
    );
    let started = Instant::now();
    let report = run_slurm(&p, "t.yaml", 1);
    let slow = stage(&report, "slow");
    assert_eq!(slow["status"], "failed", "{report}");
    assert_eq!(slow["job_state"], "TIMEOUT", "{report}");
    let error = slow["error"].as_str().unwrap();
    assert!(error.contains("ended TIMEOUT"), "{error}");
    assert!(error.contains("resources.time: 0:01"), "{error}");
    assert!(error.contains("| started"), "the log tail: {error}");
    assert!(
        started.elapsed() < Duration::from_secs(115),
        "the job was stopped by its limit, not by finishing its sleep ({:?})",
        started.elapsed()
    );
    assert!(!p.path("slow.txt").exists());
}

/// The id of the running job whose name starts with `name` (pipe adds a unique suffix),
/// waiting up to a minute for it.
fn running_job(name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-t", "RUNNING", "-o", "%i %j"])
            .output()
            .expect("squeue runs");
        // Job names are `pipe-<pipeline>-<stage>-<unique>`.
        let prefix = format!("{name}-");
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(id) = listed.lines().find_map(|line| {
            let (id, job) = line.split_once(' ')?;
            job.starts_with(&prefix).then(|| id.to_string())
        }) {
            return id;
        }
        assert!(Instant::now() < deadline, "job {name} never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits up to 20 s for job `id` to leave the RUNNING state; returns its state.
fn ended_state(id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = scontrol(id);
        let state = shown
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("JobState="))
            .unwrap_or("?")
            .to_string();
        if !["RUNNING", "PENDING", "COMPLETING"].contains(&state.as_str())
            || Instant::now() > deadline
        {
            return state;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killing_pipe_run_cancels_its_jobs() {
    cluster();
    for signal in ["INT", "KILL"] {
        let p = Project::new();
        let name = format!("killed-{}", signal.to_lowercase());
        p.file(
            "k.yaml",
            &format!("pipeline: {name}\nstages:\n  sleepy:\n    run: sleep 120\n"),
        );
        // SIGINT back to its default in pipe: a shell starting these tests in the background
        // (`cmd &`) hands them SIGINT ignored, and `kill -INT` would then do nothing.
        let mut run = p.command(&["run", "k.yaml", "--executor", "slurm"]);
        // SAFETY: `signal` is async-signal-safe and touches no memory of the parent.
        unsafe {
            run.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = run
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pipe starts");
        let id = running_job(&format!("pipe-{name}-sleepy"));
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let _ = child.wait();
        assert_eq!(
            ended_state(&id),
            "CANCELLED",
            "SIG{signal}: {}",
            scontrol(&id)
        );
        assert!(!p.path("k.lock").exists(), "nothing was committed");
    }
}

#[test]
fn a_cuda_stage_without_gpus_gets_a_warning() {
    cluster();
    let p = Project::new();
    let manifest = |resources: &str| {
        format!(
            "pipeline: gpu\nstages:\n  ingest:\n    source: data.csv\n  split:\n    from: ingest\n  tokenize:\n    from: split\n    tokenizer: {{ train: {{ vocab_size: 300 }} }}\n  finetune:\n    from: tokenize\n    model: {{ config: tiny }}\n    device: cuda\n{resources}"
        )
    };
    p.file("data.csv", &two_label_csv(8))
        .file("g.yaml", &manifest(""));
    // Only ingest runs: the warning is about the manifest, before anything runs.
    let out = p.pipe(&["run", "g.yaml", "ingest", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("stage finetune asks for `device: cuda` but no GPU"),
        "{text}"
    );
    p.file("g.yaml", &manifest("    resources: { gpus: 1 }\n"));
    let out = p.pipe(&["run", "g.yaml", "ingest", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("but no GPU"), "{}", stderr(&out));
}

#[test]
fn without_a_reachable_cluster_the_run_stops_before_anything_runs() {
    let p = Project::new();
    p.file(
        "n.yaml",
        "pipeline: nocluster\nexecutor: slurm\nstages:\n  a:\n    run: echo ran > a.txt\n    outs: [a.txt]\n",
    );
    // A controller that does not answer (nothing listens on port 1).
    p.file(
        "down.conf",
        "ClusterName=down\nSlurmctldHost=localhost\nSlurmctldPort=1\n",
    );
    // `executor: slurm` in the manifest.
    let out = p
        .command(&["run", "n.yaml"])
        .env("SLURM_CONF", p.path("down.conf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("`sinfo` failed (slurm_load_partitions: Unable to contact slurm controller"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("scripts/with-slurm.sh"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path("a.txt").exists());
    // The flag wins over the manifest.
    let out = p
        .command(&["run", "n.yaml", "--executor", "local"])
        .env("SLURM_CONF", p.path("down.conf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(p.read("a.txt"), "ran\n");
}

#[test]
fn independent_stages_are_in_the_queue_together() {
    cluster();
    let p = Project::new();
    // Each stage announces itself and then waits (up to 2 minutes) for the
    // other: both succeed only when their jobs run at the same time.
    let waiting = |me: &str, other: &str| {
        format!(
            "  {me}:\n    run: touch {me}.here; i=0; while test ! -e {other}.here && test $i -lt 1200; do sleep 0.1; i=$((i+1)); done; test -e {other}.here && echo met > {me}.txt\n    outs: [{me}.txt]\n"
        )
    };
    p.file(
        "q.yaml",
        &format!(
            "pipeline: together\nstages:\n{}{}",
            waiting("left", "right"),
            waiting("right", "left")
        ),
    );
    let out = p.pipe(&[
        "run",
        "q.yaml",
        "--executor",
        "slurm",
        "--jobs",
        "2",
        "--json",
    ]);
    let report = json_of(&out, 0);
    assert_eq!(status_of(&report, "left"), "ran", "{report}");
    assert_eq!(status_of(&report, "right"), "ran", "{report}");
    assert_ne!(
        stage(&report, "left")["job_id"],
        stage(&report, "right")["job_id"]
    );
}

/// The job runs the stage, but the parent prepares its outs: a file the user dropped into
/// a folder out is kept in the trash, as in a local run, never deleted on the node.
#[test]
fn a_users_file_in_a_folder_out_goes_to_the_trash_when_the_stage_runs_as_a_job() {
    cluster();
    let p = Project::new();
    let manifest = |word: &str| {
        format!(
            "pipeline: keep\nstages:\n  build:\n    run: mkdir -p build && echo {word} > build/made.txt\n    outs: [build]\n"
        )
    };
    p.file("k.yaml", &manifest("one"));
    run_slurm(&p, "k.yaml", 0);
    p.file("build/mine.txt", "my notes");
    p.file("k.yaml", &manifest("two"));
    let report = run_slurm(&p, "k.yaml", 0);
    assert_eq!(stage(&report, "build")["executor"], "slurm", "{report}");
    assert_eq!(p.read("build/made.txt"), "two\n");
    assert!(!p.path("build/mine.txt").exists());
    let (note, bytes) = crate::safety::trashed(&p, "build/mine.txt");
    assert_eq!(bytes, "my notes");
    assert_eq!(note["stage"], "build", "{note}");
}
