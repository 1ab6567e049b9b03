//! A temporary project folder and a way to run the built `pipe` in it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A temporary folder holding a manifest and its files.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// An empty project.
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Writes `contents` to `rel` (creating folders).
    pub fn file(&self, rel: &str, contents: &str) -> &Project {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Reads `rel` as text.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    /// A `pipe` command in the project folder, without colour.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipe"));
        cmd.args(args)
            .current_dir(self.root())
            .env("NO_COLOR", "1")
            .env_remove("PIPE_STORE");
        cmd
    }

    /// Runs `pipe` to completion.
    pub fn pipe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("pipe runs")
    }

    /// Starts `pipe` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pipe starts")
    }

    /// `pipe run <manifest> --json`, asserting exit code `code`; returns the JSON.
    pub fn run_json(&self, manifest: &str, code: i32) -> Value {
        let out = self.pipe(&["run", manifest, "--json"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stderr:\n{}\nstdout:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// `name → status` of a `pipe run --json` report, in report order.
pub fn statuses(report: &Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .expect("stages is a list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The status of stage `name` in a report.
pub fn status_of(report: &Value, name: &str) -> String {
    statuses(report)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
        .1
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CSV of `rows` texts (`row number N`) with labels `a` and `b` alternating.
pub fn two_label_csv(rows: usize) -> String {
    let mut text = String::from("text,label\n");
    for i in 0..rows {
        let label = ["a", "b"][i % 2];
        text.push_str(&format!("row number {i},{label}\n"));
    }
    text
}

/// Pipeline `name`: ingest of `data/q.csv` → split → tokenize → finetune of a GPT-Neo small
/// enough for a test (hidden 32, 2 layers, batch 8), its finetune entry ending with `rest`
/// (more parameters, more stages). The finetune's parameters after `batch_size` start on
/// line 26.
pub fn small_finetune_manifest(name: &str, rest: &str) -> String {
    format!(
        r#"pipeline: {name}
stages:
  ingest:
    source: data/q.csv
  split:
    from: ingest
    test: 0.2
    seed: 1
  tokenize:
    from: split
    tokenizer: {{ train: {{ vocab_size: 400 }} }}
    max_length: 32
  finetune:
    from: tokenize
    model:
      seed: 7
      config:
        hidden_size: 32
        num_layers: 2
        num_heads: 4
        intermediate_size: 64
        max_position_embeddings: 32
        window_size: 8
        attention_types: [[[global, local], 1]]
    batch_size: 8
{rest}"#
    )
}

/// Runs `pipe` with a stdout whose reader has already gone (as `pipe … | head -1` once
/// `head` has its line); returns the exit code and stderr.
pub fn pipe_into_closed_stdout(p: &Project, args: &[&str]) -> (Option<i32>, String) {
    let mut child = p.spawn(args);
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("pipe ends");
    (out.status.code(), stderr(&out))
}

/// Runs `shell` (a `sh -c` line) in `p` on a terminal (`script` from util-linux gives it one),
/// with colour left to pipe; what the terminal showed.
pub fn on_a_terminal(p: &Project, shell: &str) -> String {
    let out = std::process::Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .current_dir(p.root())
        .env_remove("NO_COLOR")
        .env_remove("FORCE_COLOR")
        .env("TERM", "xterm")
        .output()
        .expect("`script` (util-linux) runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
