//! pipe's side of the fine-tuning benchmark (`bench/finetune.sh`): the compiled training
//! step of the `finetune` stage, timed on random batches, the same shapes and work
//! as `bench/torch_finetune.py` (full-length rows, 4 labels, clipping at 1.0, AdamW lr 5e-5
//! and weight decay 0.01; warm-up steps untimed).
//!
//! Usage: `cargo run --release -p pipe-stages --example finetune_step --
//! tiny|125m|2.7b|smollm2-135m|gpt2-124m|bert-base|modernbert-base [--steps N] [--warmup N]
//! [--threads N] [--batch N] [--seq N] [--layers N] [--device D] [--lora] [--freeze-half]
//! [--frozen-dtype f32|bf16|int8|int4] [--save-graph FILE] [--profile PREFIX]`.
//! Prints one JSON object (with the step graph's node count). `tiny`, `125m` and `2.7b` are
//! GPT-Neo shapes, `2.7b` GPT-Neo 2.7B's; `smollm2-135m` is SmolLM2-135M's Llama shape (hidden
//! 576, 30 layers, 9 heads over 3 key/value heads), `gpt2-124m` GPT-2's, `bert-base` and
//! `modernbert-base` those encoders' (batch 8 × 128); all random weights.
//! `--layers N` keeps only N of a GPT-Neo shape's blocks (a reduced shape for checks on
//! small machines). `--device cuda:0` trains on CUDA with the state on the device
//! ([`step_trainer`]; `PIPE_DEVICE_STATE=1` does that on the CPU too) and reports the
//! device arenas' peak; the host's peak is reported as `VmHWM` and `getrusage`'s `ru_maxrss`. `--lora` trains a LoRA adapter
//! (r 8, alpha 16 on the family's default targets: q_proj and v_proj, GPT-2's c_attn; the base
//! frozen, the head trained), as
//! `bench/torch_finetune.py --lora` does with PEFT; `--freeze-half` freezes the embeddings and
//! the lower half of the layers (`freeze: [embeddings, layers.0-N]`), as
//! `bench/torch_finetune.py --freeze-half` does with `requires_grad`. `--frozen-dtype` keeps
//! the frozen weights quantized (the stage's `frozen_dtype`). `--save-graph` writes the step graph as an
//! ONNX file (its backward uses pipe's CPU kernels, domain `ai.pipe.host`, which only pipe
//! registers); `--profile PREFIX` runs ONNX Runtime's profiler over every step and leaves
//! its trace in `PREFIX_<timestamp>.json` for `bench/profile_step.py`.
#![allow(clippy::disallowed_methods)] // tests arrange files with std::fs directly

use std::time::Instant;

use std::collections::BTreeMap;

use pipe_models::gpt_neo::{AttentionKind, GptNeoConfig, ProblemType};
use pipe_models::lora::{LoraParams, LoraTarget};
use pipe_models::{Architecture, ModelConfig, Xoshiro256, init_params_with, weights};
use pipe_onnx::{AdamW, Device, FrozenDType, HostTensor, Session, SessionOptions, step_trainer};
use pipe_stages::finetune::{
    FreezeEntry, StepGraph, StepOptions, Trained, distinct_tokens, peak_memory_bytes,
};
use pipe_stages::memory::release_large_frees;
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
    release_large_frees(); // as the finetune stage does
    let name = args.first().map(String::as_str).unwrap_or("tiny");
    // GPT-Neo's published shapes: hidden size, heads, layers (global and local alternating).
    let neo = |hidden_size: usize, num_heads: usize, num_layers: usize| GptNeoConfig {
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size: Some(4 * hidden_size),
        max_position_embeddings: 2048,
        attention_types: vec![(
            vec![AttentionKind::Global, AttentionKind::Local],
            num_layers / 2,
        )],
        ..GptNeoConfig::tiny(50257, NUM_LABELS)
    };
    // The published shapes of the other families, as their `config.json` writes them; every
    // dropout 0 and the pad id one no batch draws, as on the PyTorch side.
    let smollm2 = json!({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "intermediate_size": 1536, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "pad_token_id": 49151,
        "num_labels": NUM_LABELS,
    });
    let gpt2 = json!({
        "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
        "n_layer": 12, "n_head": 12, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "pad_token_id": 50256, "num_labels": NUM_LABELS,
    });
    let bert = json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "max_position_embeddings": 512, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0,
        "num_labels": NUM_LABELS,
    });
    let modernbert = json!({
        "model_type": "modernbert", "vocab_size": 50368, "hidden_size": 768,
        "num_hidden_layers": 22, "num_attention_heads": 12, "intermediate_size": 1152,
        "max_position_embeddings": 8192, "global_attn_every_n_layers": 3,
        "local_attention": 128, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
        "classifier_pooling": "cls", "num_labels": NUM_LABELS,
    });
    let (mut config, batch, seq, steps, warmup) = match name {
        "tiny" => (
            ModelConfig::GptNeo(GptNeoConfig::tiny(8192, NUM_LABELS)),
            16,
            64,
            20,
            3,
        ),
        "125m" => (ModelConfig::GptNeo(neo(768, 12, 12)), 8, 64, 5, 2),
        "2.7b" => (ModelConfig::GptNeo(neo(2560, 20, 32)), 8, 64, 3, 1),
        "smollm2-135m" => (ModelConfig::from_json(smollm2)?, 8, 64, 5, 2),
        "gpt2-124m" => (ModelConfig::from_json(gpt2)?, 8, 64, 5, 2),
        "bert-base" => (ModelConfig::from_json(bert)?, 8, 128, 5, 2),
        "modernbert-base" => (ModelConfig::from_json(modernbert)?, 8, 128, 5, 2),
        other => anyhow::bail!(
            "unknown config {other}; expected tiny, 125m, 2.7b, smollm2-135m, gpt2-124m, \
             bert-base or modernbert-base"
        ),
    };
    if let Some(layers) = flag_value(&args, "--layers")? {
        let layers: usize = layers.parse()?;
        let ModelConfig::GptNeo(neo) = &mut config else {
            anyhow::bail!("--layers applies to the GPT-Neo shapes only");
        };
        anyhow::ensure!(
            layers >= 2 && layers.is_multiple_of(2),
            "--layers takes an even number of at least 2 (blocks alternate global and local)"
        );
        neo.num_layers = layers;
        neo.attention_types = vec![(
            vec![AttentionKind::Global, AttentionKind::Local],
            layers / 2,
        )];
    }
    let steps = arg(&args, "--steps", steps)?;
    let warmup = arg(&args, "--warmup", warmup)?;
    let threads = arg(&args, "--threads", 2)?;
    let batch = arg(&args, "--batch", batch)?;
    let seq = arg(&args, "--seq", seq)?;
    let device: Device = flag_value(&args, "--device")?.unwrap_or("cpu").parse()?;
    if device != Device::Cpu {
        // Loads the CUDA build of ONNX Runtime, or says why the device cannot be used.
        pipe_onnx::runtime::probe(device)?;
    }

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
        targets: ModelConfig::default_lora_targets(config.model_type())
            .unwrap_or_default()
            .iter()
            .map(|t| LoraTarget::new(t).expect("a module name"))
            .collect(),
    });
    let freeze = [
        FreezeEntry::Embeddings,
        FreezeEntry::Layers(0, config.num_layers() / 2 - 1),
    ];
    let freeze_half = args.iter().any(|a| a == "--freeze-half");
    let trained = match (&lora, freeze_half) {
        (Some(lora), _) => Trained::Lora(lora),
        (None, true) => Trained::Unfrozen(&freeze),
        (None, false) => Trained::All,
    };
    let frozen_dtype = match flag_value(&args, "--frozen-dtype")? {
        None | Some("f32") => FrozenDType::F32,
        Some("int8") => FrozenDType::Int8,
        Some("int4") => FrozenDType::Int4,
        Some("bf16") => FrozenDType::Bf16,
        Some(other) => anyhow::bail!("--frozen-dtype takes f32, bf16, int8 or int4, not {other}"),
    };
    let options = StepOptions {
        frozen_dtype,
        ..StepOptions::plain(&config)
    };
    let step = StepGraph::compile_with(
        &config,
        ProblemType::SingleLabelClassification,
        &options,
        trained,
    )?;
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
        device,
        intra_threads: Some(threads),
        profile_prefix: flag_value(&args, "--profile")?.map(std::path::PathBuf::from),
        ..SessionOptions::default()
    };
    let session = Session::from_model(&step.model, &opts)?;
    let init_began = Instant::now();
    // Frozen weights quantized as they are made, as the stage does when it loads them.
    let transform = weights::for_training(&step.quantized, &step.half_tables, |_| true);
    let params = init_params_with(&step.specs, 0, &transform)?;
    let init_s = init_began.elapsed().as_secs_f64();
    let (trained, frozen): (BTreeMap<_, _>, BTreeMap<_, _>) = params
        .into_iter()
        .partition(|(name, _)| step.signature.layout.entry(name).is_some());
    let trained_params: usize = trained
        .values()
        .map(|t| t.shape().iter().product::<i64>() as usize)
        .sum();
    let mut trainer = step_trainer(session, step.signature, adamw, trained, frozen)?;
    let setup_s = started.elapsed().as_secs_f64();
    let setup_peak_bytes = peak_memory_bytes().unwrap_or(0);

    let mut rng = Xoshiro256::new(0);
    let mut batch_of = || -> anyhow::Result<[(&'static str, HostTensor); 4]> {
        let ids: Vec<i64> = (0..batch * seq)
            .map(|_| (rng.next_u64() % (config.vocab_size() as u64 - 1)) as i64)
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
    let device_memory = trainer.memory_stats()?;
    let params: usize = step.specs.iter().map(|s| s.numel()).sum();
    println!(
        "{}",
        json!({
            "impl": "pipe (ONNX Runtime 1.31.1)", "config": name, "params": params,
            "lora": lora, "freeze_half": freeze_half, "frozen_dtype": format!("{frozen_dtype:?}").to_lowercase(), "trained_params": trained_params, "step_graph_nodes": nodes,
            "batch": batch, "seq": seq, "threads": threads, "steps": steps,
            "device": device.to_string(),
            "training_state": if trainer.state_on_device() { "device" } else { "host" },
            "setup_s": setup_s, "init_s": init_s, "step_s_mean": mean,
            "tokens_per_s": (batch * seq) as f64 / mean,
            "peak_rss_mb": peak_bytes as f64 / (1024.0 * 1024.0),
            "host_peak_vmhwm_bytes": peak_bytes, "host_peak_after_setup_bytes": setup_peak_bytes,
            "host_peak_maxrss_bytes": max_rss_bytes(),
            "device_peak_memory_bytes": device_memory.map(|m| m.max_in_use),
            "device_reserved_bytes": device_memory.map(|m| m.reserved),
        })
    );
    Ok(())
}

/// This process's peak resident set as `getrusage(RUSAGE_SELF)` reports it (`ru_maxrss`, KiB on
/// Linux), in bytes.
fn max_rss_bytes() -> Option<u64> {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    u64::try_from(usage.ru_maxrss).ok().map(|kib| kib * 1024)
}
