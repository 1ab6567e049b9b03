//! Drives `ingest`, `split` and `tokenize` directly (no CLI) on a CSV and
//! prints their throughput as JSON lines. Run by `bench/ingest_tokenize.sh`.
//!
//! Usage: `cargo run --release -p pipe-stages --example ingest_tokenize -- DATA.csv WORK_DIR`
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pipe_engine::{Input, Reporter, RunContext};
use serde_json::{Value, json};

struct Quiet;

impl Reporter for Quiet {
    fn note(&self, message: &str) {
        eprintln!("  note: {message}");
    }
    fn progress(&self, _total: u64, _unit: &str) -> indicatif::ProgressBar {
        indicatif::ProgressBar::hidden()
    }
}

/// Runs `kind` with `params` into `work/<name>`; returns its outputs and the seconds it took.
fn run(
    workspace: &Path,
    work: &Path,
    name: &str,
    kind: &str,
    params: Value,
    inputs: &[Input],
) -> anyhow::Result<(Input, f64)> {
    let registry = pipe_stages::registry();
    let stage = registry
        .get(kind)
        .ok_or_else(|| anyhow::anyhow!("no kind {kind}"))?;
    stage.check(&params).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = work.join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let log = work.join(format!("{name}.log"));
    let ctx = RunContext {
        stage: name,
        key: "0000",
        params: &params,
        workspace,
        out_dir: &out,
        scratch_dir: work,
        inputs,
        run: None,
        outs: &[],
        log_path: &log,
        reporter: &Quiet,
    };
    let start = Instant::now();
    stage.run(&ctx)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut outputs = BTreeMap::new();
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        outputs.insert(stem, path);
    }
    Ok((
        Input {
            name: name.into(),
            stage: name.into(),
            outputs,
        },
        seconds,
    ))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, work] = &args[..] else {
        anyhow::bail!("usage: ingest_tokenize DATA.csv WORK_DIR");
    };
    let data = std::path::absolute(data)?;
    let work = PathBuf::from(work);
    std::fs::create_dir_all(&work)?;
    let workspace = data.parent().unwrap_or(Path::new("/"));
    let source = data
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    let (ingest, t_ingest) = run(
        workspace,
        &work,
        "ingest",
        "ingest",
        json!({ "source": source }),
        &[],
    )?;
    let rows = std::fs::read_to_string(&ingest.outputs["profile"])?;
    let rows = serde_json::from_str::<Value>(&rows)?["rows_read"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "{}",
        json!({ "step": "ingest", "rows": rows, "seconds": t_ingest, "rows_per_s": rows as f64 / t_ingest })
    );

    let (split, t_split) = run(
        workspace,
        &work,
        "split",
        "split",
        json!({ "test": 0.2, "shuffle": true, "seed": 1 }),
        &[ingest],
    )?;
    println!(
        "{}",
        json!({ "step": "split", "rows": rows, "seconds": t_split })
    );

    let train = json!({ "tokenizer": { "train": { "vocab_size": 8192 } }, "max_length": 128 });
    let (trained, t_train) = run(
        workspace,
        &work,
        "tokenize-train",
        "tokenize",
        train,
        std::slice::from_ref(&split),
    )?;
    println!(
        "{}",
        json!({ "step": "tokenize (train 8k BPE + encode)", "texts": rows, "seconds": t_train })
    );

    // Encoding alone, with the tokenizer just trained.
    let tokenizer = trained.outputs["tokenizer"].to_string_lossy().into_owned();
    let given = json!({ "tokenizer": { "path": tokenizer }, "max_length": 128 });
    let (_, t_encode) = run(workspace, &work, "tokenize", "tokenize", given, &[split])?;
    println!(
        "{}",
        json!({ "step": "tokenize (encode)", "texts": rows, "seconds": t_encode, "texts_per_s": rows as f64 / t_encode })
    );
    Ok(())
}
