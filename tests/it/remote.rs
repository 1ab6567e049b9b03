//! The remote cache against a real S3-compatible server (s3s-fs) on
//! 127.0.0.1: push from one clone, restore in another, and every way the
//! remote can fail (stopped, wrong credentials, a corrupt object).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Project, status_of, statuses, stderr};

const ACCESS_KEY: &str = "pipe-test-access";
const SECRET_KEY: &str = "pipe-test-secret";
const BUCKET: &str = "cache";

/// The s3s-fs binary: `PIPE_TEST_S3S_FS`, else `.tools/s3s/bin/s3s-fs` (where
/// `scripts/test.sh` installs it).
fn s3s_fs() -> PathBuf {
    let path = std::env::var_os("PIPE_TEST_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/s3s/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "the remote-cache tests need the S3 server s3s-fs at {}; install it with \
         `cargo install s3s-fs@0.14.1 --features binary --locked --root .tools/s3s` \
         (scripts/test.sh does), or point PIPE_TEST_S3S_FS at it",
        path.display()
    );
    path
}

/// A port nothing listens on (at the moment of asking).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An s3s-fs server on 127.0.0.1 serving the bucket `cache` from a temp folder.
struct Server {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let root = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut server = Server {
            child: None,
            port: free_port(),
            root,
        };
        server.restart();
        server
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    fn restart(&mut self) {
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        // Kept before waiting, so a server that never listens is still stopped on drop.
        let child = self.child.insert(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "s3s-fs exited ({status}) before listening on port {}",
                    self.port
                );
            }
            // Generous: the machine running the tests may be loaded.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "s3s-fs did not listen on port {} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// The files the server keeps for the remote `s3://cache/team`'s objects.
    fn object_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.root.path().join(BUCKET).join("team/objects")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every variable that points pipe at a remote or configures S3.
const AWS_VARS: [&str; 14] = [
    "PIPE_REMOTE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ALLOW_HTTP",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];

/// The AWS environment for a client of `port`, with `secret` as the secret key (and no AWS
/// CLI files: the tester's own `~/.aws/` stays out of the tests).
fn aws_env(cmd: &mut Command, port: u16, secret: &str) {
    for var in AWS_VARS {
        cmd.env_remove(var);
    }
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aws/credentials",
    )
    .env("AWS_CONFIG_FILE", "/nonexistent/aws/config");
    cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true");
}

/// A clone of the project: its manifest and inputs (and, with `lockfile`, its
/// lockfile), never its store or outputs.
fn clone(from: Option<&Project>, lockfile: bool) -> Project {
    let p = Project::new();
    p.file("in/words.txt", "alpha\nbeta\ngamma\n").file(
        "team.yaml",
        r#"pipeline: team
remote: s3://cache/team
stages:
  count:
    run: wc -l < in/words.txt > out/count.txt
    deps: [in/words.txt]
    outs: [out/count.txt]
  big:
    run: mkdir -p out/big && head -c 20000000 /dev/urandom > out/big/blob.bin && date +%s%N > out/big/stamp.txt && cp out/count.txt out/big/
    deps: [out/count.txt]
    outs: [out/big]
  report:
    run: cat out/count.txt out/big/stamp.txt > out/report.txt && date +%s%N >> out/report.txt
    deps: [out/big, out/count.txt]
    outs: [out/report.txt]
"#,
    );
    if let (Some(from), true) = (from, lockfile) {
        std::fs::copy(from.path("team.lock"), p.path("team.lock")).unwrap();
    }
    p
}

/// Runs `pipe args…` in `project` against the server on `port`.
fn pipe(project: &Project, port: u16, secret: &str, args: &[&str]) -> Output {
    let mut cmd = project.command(args);
    aws_env(&mut cmd, port, secret);
    cmd.output().expect("pipe runs")
}

/// `pipe run team.yaml --json`, asserting exit code 0; returns the report and stderr.
fn run(project: &Project, port: u16, secret: &str) -> (serde_json::Value, String) {
    let out = pipe(project, port, secret, &["run", "team.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let report = serde_json::from_slice(&out.stdout).expect("one JSON report");
    (report, stderr(&out))
}

/// The outputs of a clone, byte for byte (the random blob, the time stamps).
fn outputs(project: &Project) -> Vec<Vec<u8>> {
    [
        "out/count.txt",
        "out/big/blob.bin",
        "out/big/stamp.txt",
        "out/report.txt",
    ]
    .iter()
    .map(|rel| std::fs::read(project.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")))
    .collect()
}

/// `pipe status` says all three stages would come from the remote, and `pipe run` restores
/// them from it without running any.
fn restores_everything_from_the_remote(project: &Project, server: &Server) {
    let status = pipe(project, server.port, SECRET_KEY, &["status", "team.yaml"]);
    assert!(
        stderr(&status).contains("3 would be restored from the remote"),
        "{}",
        stderr(&status)
    );
    let (report, _) = run(project, server.port, SECRET_KEY);
    for stage in ["count", "big", "report"] {
        assert_eq!(status_of(&report, stage), "cached", "{report}");
    }
    assert!(
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reason"] == "restored from the remote"),
        "{report}"
    );
}

/// A clone that ran the pipeline and pushed it.
fn pushed_clone(server: &Server) -> Project {
    let first = clone(None, false);
    let (report, _) = run(&first, server.port, SECRET_KEY);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "ran"),
        "{report}"
    );
    let out = pipe(&first, server.port, SECRET_KEY, &["push", "team.yaml"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("Pushed 3 stage(s)"),
        "{}",
        stderr(&out)
    );
    first
}

#[test]
fn a_fresh_clone_restores_everything_a_teammate_pushed_without_running() {
    let server = Server::start();
    let first = pushed_clone(&server);

    let again = pipe(&first, server.port, SECRET_KEY, &["push", "team.yaml"]);
    assert!(
        stderr(&again).contains("Pushed 0 stage(s)") && stderr(&again).contains("3 already there"),
        "a second push uploads nothing: {}",
        stderr(&again)
    );

    let second = clone(Some(&first), true);
    restores_everything_from_the_remote(&second, &server);
    assert_eq!(outputs(&second), outputs(&first), "byte-identical outputs");
    assert_eq!(second.read("team.lock"), first.read("team.lock"));
}

#[test]
fn a_pulled_clone_runs_nothing_with_the_server_stopped() {
    let mut server = Server::start();
    let first = pushed_clone(&server);
    let second = clone(Some(&first), true);
    let out = pipe(&second, server.port, SECRET_KEY, &["pull", "team.yaml"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("Pulled 3 stage(s)"),
        "{}",
        stderr(&out)
    );

    server.stop();
    let (report, log) = run(&second, server.port, SECRET_KEY);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "cached"),
        "{report}"
    );
    assert!(!log.contains("Warning"), "nothing asks the remote: {log}");
    assert_eq!(outputs(&second), outputs(&first));
}

#[test]
fn a_stopped_server_is_one_warning_and_the_run_goes_on_locally() {
    let mut server = Server::start();
    let first = pushed_clone(&server);
    server.stop();

    let second = clone(Some(&first), true);
    let (report, log) = run(&second, server.port, SECRET_KEY);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "ran"),
        "{report}"
    );
    assert_eq!(
        log.matches("is unavailable").count(),
        1,
        "one warning, not one per stage: {log}"
    );
    assert!(log.contains("s3://cache/team"), "{log}");

    // `first` has results to push; a fresh clone has results to pull.
    let third = clone(Some(&first), true);
    for (project, command) in [(&first, "push"), (&third, "pull")] {
        let out = pipe(project, server.port, SECRET_KEY, &[command, "team.yaml"]);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("did not answer"),
            "{command}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn wrong_credentials_are_a_warning_for_run_and_a_failure_for_push() {
    let server = Server::start();
    let project = clone(None, false);
    let (report, log) = run(&project, server.port, "not-the-secret");
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "ran"),
        "{report}"
    );
    assert!(log.contains("refused the credentials"), "{log}");

    let out = pipe(&project, server.port, "not-the-secret", &["push"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );
    assert!(server.object_files().is_empty(), "nothing was uploaded");
}

#[test]
fn a_corrupt_object_on_the_server_is_detected_and_the_stage_reruns_locally() {
    let server = Server::start();
    let first = pushed_clone(&server);
    let blob = server
        .object_files()
        .into_iter()
        .find(|f| std::fs::metadata(f).unwrap().len() == 20_000_000)
        .expect("the 20 MB blob is on the server");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[12_345_678] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let puller = clone(Some(&first), true);
    let out = pipe(&puller, server.port, SECRET_KEY, &["pull", "team.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is corrupt"), "{}", stderr(&out));

    let second = clone(Some(&first), true);
    let (report, log) = run(&second, server.port, SECRET_KEY);
    assert!(log.contains("big: cannot use the remote's copy"), "{log}");
    assert!(log.contains("is corrupt"), "{log}");
    assert_eq!(status_of(&report, "count"), "cached", "{report}");
    assert_eq!(status_of(&report, "big"), "ran", "{report}");
    assert_eq!(status_of(&report, "report"), "ran", "{report}");
    let blob = std::fs::read(second.path("out/big/blob.bin")).unwrap();
    assert_eq!(blob.len(), 20_000_000);
    assert_ne!(
        blob,
        outputs(&first)[1],
        "a fresh local run, not the corrupt copy"
    );
}

#[test]
fn two_clones_pushing_the_same_results_at_once_leave_a_usable_remote() {
    let server = Server::start();
    // Deterministic stages, so both clones produce the same keys and objects.
    let clones: Vec<Project> = (0..2)
        .map(|_| {
            let p = Project::new();
            p.file("in/words.txt", "alpha\nbeta\n").file(
                "team.yaml",
                r#"pipeline: team
remote: s3://cache/team
stages:
  big:
    run: mkdir -p out/big && seq 1 3000000 > out/big/numbers.txt && wc -l < in/words.txt > out/big/count.txt
    deps: [in/words.txt]
    outs: [out/big]
  sum:
    run: wc -c < out/big/numbers.txt > out/sum.txt
    deps: [out/big]
    outs: [out/sum.txt]
"#,
            );
            run(&p, server.port, SECRET_KEY);
            p
        })
        .collect();
    let pushes: Vec<Child> = clones
        .iter()
        .map(|p| {
            let mut cmd = p.command(&["push", "team.yaml"]);
            aws_env(&mut cmd, server.port, SECRET_KEY);
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for push in pushes {
        let out = push.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let fresh = Project::new();
    fresh
        .file("in/words.txt", "alpha\nbeta\n")
        .file("team.yaml", &clones[0].read("team.yaml"));
    let (report, _) = run(&fresh, server.port, SECRET_KEY);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "cached"),
        "{report}"
    );
    assert_eq!(
        fresh.read("out/big/numbers.txt"),
        clones[0].read("out/big/numbers.txt")
    );
    assert_eq!(fresh.read("out/sum.txt"), clones[1].read("out/sum.txt"));
}

#[test]
fn no_remote_runs_without_asking_and_a_bad_url_names_its_line() {
    let server = Server::start();
    let first = pushed_clone(&server);
    let second = clone(Some(&first), true);
    let out = pipe(
        &second,
        server.port,
        SECRET_KEY,
        &["run", "team.yaml", "--no-remote", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "ran"),
        "{report}"
    );

    second.file(
        "team.yaml",
        &second
            .read("team.yaml")
            .replace("s3://cache/team", "cache team"),
    );
    let out = pipe(&second, server.port, SECRET_KEY, &["status", "team.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("team.yaml:2:9"), "{}", stderr(&out));
}

#[test]
fn push_waits_for_the_run_holding_the_store_and_no_wait_names_its_pid() {
    let server = Server::start();
    let project = clone(None, false);
    run(&project, server.port, SECRET_KEY);
    // What a running `pipe run` holds: the store's lock, with its holder's pid.
    let store = pipe_engine::Store::open(&pipe_engine::store_dir(project.root())).unwrap();
    let held = store.lock(false, |_| {}).unwrap();
    let me = std::process::id();

    let out = pipe(&project, server.port, SECRET_KEY, &["push", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("another pipe run (pid {me}) is using the store")),
        "{}",
        stderr(&out)
    );

    let mut cmd = project.command(&["push"]);
    aws_env(&mut cmd, server.port, SECRET_KEY);
    let mut push = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pipe push starts");
    let (lines, waiting) = std::sync::mpsc::channel();
    let reader = BufReader::new(push.stderr.take().unwrap());
    let copier = std::thread::spawn(move || {
        let mut all = String::new();
        for line in reader.lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let line = waiting
        .recv_timeout(Duration::from_secs(60))
        .expect("push says it waits");
    assert!(
        line.contains(&format!("Waiting for another pipe run (pid {me})")),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.object_files().is_empty(),
        "pushed while a run held the store"
    );
    assert_eq!(push.try_wait().unwrap(), None, "push did not wait");

    drop(held);
    let status = push.wait().unwrap();
    let log = copier.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("Pushed 3 stage(s)"), "{log}");
    assert!(!server.object_files().is_empty());
}

/// `pipe args…` in `project` with no AWS variable but `HOME` and `extra`.
fn pipe_with_aws_files(
    project: &Project,
    home: &Path,
    extra: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut cmd = project.command(args);
    for var in AWS_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home).envs(extra.iter().copied());
    cmd.output().expect("pipe runs")
}

#[test]
fn push_and_pull_take_keys_and_endpoint_from_the_aws_cli_files() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = someone-else\naws_secret_access_key = wrong\n\n\
             [team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "# written by hand\n[profile team]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:{}\n",
            server.port
        ),
    )
    .unwrap();
    let team = [("AWS_PROFILE", "team")];

    let first = clone(None, false);
    let out = pipe_with_aws_files(&first, home.path(), &team, &["run", "team.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = pipe_with_aws_files(&first, home.path(), &team, &["push"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Pushed 3 stage(s)"),
        "{}",
        stderr(&out)
    );
    assert!(!server.object_files().is_empty());

    let second = clone(Some(&first), true);
    let out = pipe_with_aws_files(&second, home.path(), &team, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Pulled 3 stage(s)"),
        "{}",
        stderr(&out)
    );
    let out = pipe_with_aws_files(
        &second,
        home.path(),
        &[],
        &["run", "team.yaml", "--json", "--no-remote"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "cached"),
        "{report}"
    );
    assert_eq!(outputs(&second), outputs(&first));

    // The environment wins over the files: its wrong secret is refused.
    let env_wins = [
        ("AWS_PROFILE", "team"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let third = clone(Some(&first), true);
    let out = pipe_with_aws_files(&third, home.path(), &env_wins, &["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the credentials"),
        "{}",
        stderr(&out)
    );

    // Files named by the environment, and a profile neither file has.
    let moved = home.path().join("elsewhere");
    std::fs::rename(&aws, &moved).unwrap();
    let files = [
        ("AWS_PROFILE", "team"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            &*moved.join("credentials").to_string_lossy(),
        ),
        ("AWS_CONFIG_FILE", &*moved.join("config").to_string_lossy()),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = pipe_with_aws_files(&third, home.path(), &files, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = pipe_with_aws_files(&third, home.path(), &[("AWS_PROFILE", "nobody")], &["push"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("profile `nobody`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_malformed_aws_config_file_is_named_with_its_line() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join(".aws/config");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\nendpoint_url http://127.0.0.1:9\n",
    )
    .unwrap();
    let project = clone(None, false);
    let out = pipe_with_aws_files(&project, home.path(), &[], &["push"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:3: `endpoint_url http://127.0.0.1:9` is neither",
            config.display()
        )),
        "{err}"
    );
}

#[test]
fn a_record_whose_objects_are_gone_is_restored_from_the_remote_not_rerun() {
    let server = Server::start();
    let first = pushed_clone(&server);
    let before = outputs(&first);
    // The records stay; every object they name is gone (collected, or a store copied in part).
    let objects = pipe_engine::store_dir(first.root()).join("objects");
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::create_dir(&objects).unwrap();

    restores_everything_from_the_remote(&first, &server);
    // A rerun would have drawn a new random blob and new time stamps.
    assert_eq!(outputs(&first), before);
    assert!(std::fs::read_dir(&objects).unwrap().next().is_some());

    // Without a remote it reruns, as before.
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::create_dir(&objects).unwrap();
    let out = pipe(
        &first,
        server.port,
        SECRET_KEY,
        &["run", "team.yaml", "--json", "--no-remote"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&report, "count"), "ran", "{report}");
}
