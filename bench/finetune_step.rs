//! pipe's side of the fine-tuning benchmark (`bench/finetune.sh`): the compiled GPT-Neo
//! training step of the `finetune` stage, timed on random batches, the same shapes and work
//! as `bench/torch_finetune.py` (full-length rows, 4 labels, clipping at 1.0, AdamW lr 5e-5
//! and weight decay 0.01; warm-up steps untimed).
//!
//! Usage: `cargo run --release -p pipe-stages --example finetune_step -- tiny|125m [--steps N]
//! [--warmup N] [--threads N] [--lora] [--freeze-half] [--save-graph FILE] [--profile PREFIX]`.
//! Prints one JSON object (with the step graph's node count). `--lora` trains a LoRA adapter
//! (r 8, alpha 16 on q_proj and v_proj; the base frozen, the head trained), as
//! `bench/torch_finetune.py --lora` does with PEFT; `--freeze-half` freezes the embeddings and
//! the lower half of the layers (`freeze: [embeddings, layers.0-N]`), as
//! `bench/torch_finetune.py --freeze-half` does with `requires_grad`. `--save-graph` writes the step graph as an
//! ONNX file (its backward uses pipe's CPU kernels, domain `ai.pipe.host`, which only pipe
//! registers); `--profile PREFIX` runs ONNX Runtime's profiler over every step and leaves
//! its trace in `PREFIX_<timestamp>.json` for `bench/profile_step.py`.

use std::time::Instant;

use std::collections::BTreeMap;

use pipe_models::gpt_neo::{AttentionKind, GptNeoConfig, ProblemType};
use pipe_models::lora::{LoraParams, LoraTarget};
use pipe_models::{Xoshiro256, init_params};
use pipe_onnx::{AdamW, FlatTrainer, HostTensor, Session, SessionOptions};
use pipe_stages::finetune::{FreezeEntry, StepGraph, Trained, distinct_tokens, peak_memory_bytes};
use serde_json::json;

const NUM_LABELS: usize = 4;

/// The value after `flag`, if `flag` is given.
fn flag_value<'a>(args: &'a [String], flag: &str) -> anyhow::Result<Option<&'a str>> {
    match args.iter().position(|a| a == flag) {
        Some(i) => match args.get(i + 1) {
            Some(v) => Ok(Some(v)),
            None => anyhow::bail!("{flag} needs a value"),
        },
        None => Ok(None),
    }
}

/// The number after `flag`, or `default`.
fn arg(args: &[String], flag: &str, default: usize) -> anyhow::Result<usize> {
    Ok(match flag_value(args, flag)? {
        Some(v) => v.parse()?,
        None => default,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("tiny");
    let (config, batch, seq, steps, warmup) = match name {
        "tiny" => (GptNeoConfig::tiny(8192, NUM_LABELS), 16, 64, 20, 3),
        "125m" => (
            GptNeoConfig {
                hidden_size: 768,
                num_layers: 12,
                num_heads: 12,
                intermediate_size: Some(3072),
                max_position_embeddings: 2048,
                attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 6)],
                ..GptNeoConfig::tiny(50257, NUM_LABELS)
            },
            8,
            64,
            5,
            2,
        ),
        other => anyhow::bail!("unknown config {other}; expected tiny or 125m"),
    };
    let steps = arg(&args, "--steps", steps)?;
    let warmup = arg(&args, "--warmup", warmup)?;
    let threads = arg(&args, "--threads", 2)?;

    let adamw = AdamW {
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        ..AdamW::default()
    };
    let started = Instant::now();
    let lora = args.iter().any(|a| a == "--lora").then(|| LoraParams {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec![LoraTarget::QProj, LoraTarget::VProj],
    });
    let freeze = [
        FreezeEntry::Embeddings,
        FreezeEntry::Layers(0, config.num_layers / 2 - 1),
    ];
    let freeze_half = args.iter().any(|a| a == "--freeze-half");
    let trained = match (&lora, freeze_half) {
        (Some(lora), _) => Trained::Lora(lora),
        (None, true) => Trained::Unfrozen(&freeze),
        (None, false) => Trained::All,
    };
    let step = StepGraph::compile(&config, ProblemType::SingleLabelClassification, trained)?;
    let nodes = step
        .model
        .proto()
        .graph
        .as_ref()
        .map_or(0, |g| g.node.len());
    if let Some(path) = flag_value(&args, "--save-graph")? {
        step.model.save(std::path::Path::new(path), None)?;
    }
    let opts = SessionOptions {
        intra_threads: Some(threads),
        profile_prefix: flag_value(&args, "--profile")?.map(std::path::PathBuf::from),
        ..SessionOptions::default()
    };
    let session = Session::from_model(&step.model, &opts)?;
    let (trained, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) = init_params(&step.specs, 0)
        .into_iter()
        .partition(|(name, _)| step.signature.layout.entry(name).is_some());
    let trained_params: usize = trained
        .values()
        .map(|t| t.shape().iter().product::<i64>() as usize)
        .sum();
    let mut trainer = FlatTrainer::new(session, step.signature, adamw, trained, frozen)?;
    let setup_s = started.elapsed().as_secs_f64();

    let mut rng = Xoshiro256::new(0);
    let mut batch_of = || -> anyhow::Result<[(&'static str, HostTensor); 4]> {
        let ids: Vec<i64> = (0..batch * seq)
            .map(|_| (rng.next_u64() % (config.vocab_size as u64 - 1)) as i64)
            .collect();
        let labels = (0..batch)
            .map(|_| (rng.next_u64() % NUM_LABELS as u64) as i64)
            .collect();
        let (distinct, index) = distinct_tokens(&ids);
        Ok([
            (
                "token_ids",
                HostTensor::i64(&[distinct.len() as i64], distinct)?,
            ),
            (
                "token_index",
                HostTensor::i64(&[batch as i64, seq as i64], index)?,
            ),
            (
                "lengths",
                HostTensor::i64(&[batch as i64], vec![seq as i64; batch])?,
            ),
            ("labels", HostTensor::i64(&[batch as i64], labels)?),
        ])
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let feeds = batch_of()?;
        let feeds: Vec<(&str, &HostTensor)> = feeds.iter().map(|(k, v)| (*k, v)).collect();
        let t = Instant::now();
        trainer.step(&feeds, 5e-5)?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let peak_bytes = peak_memory_bytes().unwrap_or(0);
    let params: usize = step.specs.iter().map(|s| s.numel()).sum();
    println!(
        "{}",
        json!({
            "impl": "pipe (ONNX Runtime 1.31.1)", "config": name, "params": params,
            "lora": lora, "freeze_half": freeze_half, "trained_params": trained_params, "step_graph_nodes": nodes,
            "batch": batch, "seq": seq, "threads": threads, "steps": steps,
            "setup_s": setup_s, "step_s_mean": mean,
            "tokens_per_s": (batch * seq) as f64 / mean,
            "peak_rss_mb": peak_bytes as f64 / (1024.0 * 1024.0),
        })
    );
    Ok(())
}
