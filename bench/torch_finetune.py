#!/usr/bin/env python3
"""PyTorch + transformers baseline: sequence-classification fine-tuning throughput.

The reference that pipe's ONNX Runtime training step is measured against:
AutoModelForSequenceClassification of the config's family (GPT-Neo, Llama, GPT-2, BERT,
ModernBERT), fp32, torch.set_num_threads(2), attention as transformers runs it by default
for the family (GPT-Neo: eager, the only one it has; the others: sdpa),
random init from a config (nothing downloaded), random token ids (fixed seed),
every row full length (attention_mask all ones), 4 labels.

One timed step = zero_grad + forward with labels (cross-entropy) + backward
+ clip_grad_norm_(1.0) + AdamW step (lr 5e-5, weight_decay 0.01), i.e. the same
work as one pipe step. Warm-up steps are run first and not timed.

With --lora, the model is wrapped by PEFT for SEQ_CLS with LoRA r=8, lora_alpha=16,
lora_dropout=0 on q_proj and v_proj (GPT-2: c_attn, fan_in_fan_out) (the base frozen, the score head trained in full) and
AdamW runs over the trainable parameters only: the same work as pipe's `lora` step. With
--freeze-half, the embeddings and the lower half of the layers have requires_grad=False (pipe's
`freeze: [embeddings, layers.0-N]`).

Configs:
  tiny  hidden 256, 4 layers, 8 heads, intermediate 1024, max positions 128,
        window 256, global/local alternating, vocab 8192; batch 16 x 64 tokens
  125m  GPT-Neo 125M shape: hidden 768, 12 layers, 12 heads, intermediate 3072,
        vocab 50257, max positions 2048, window 256, global/local alternating;
        batch 8 x 64 tokens
  2.7b  GPT-Neo 2.7B's shape: hidden 2560, 32 layers, 20 heads, intermediate 10240;
        batch 8 x 64 (about 11 GB of fp32 weights; not part of `all`)
  smollm2-135m  SmolLM2-135M's Llama shape: hidden 576, 30 layers, 9 heads over 3
        key/value heads, intermediate 1536, vocab 49152, rope_theta 100000; batch 8 x 64
  gpt2-124m  GPT-2's shape: hidden 768, 12 layers, 12 heads, vocab 50257, 1024
        positions, dropout 0; batch 8 x 64
  bert-base  BERT-base's shape: hidden 768, 12 layers, 12 heads, intermediate 3072, vocab
        30522, dropout 0; batch 8 x 128
  modernbert-base  ModernBERT-base's shape: hidden 768, 22 layers, 12 heads, intermediate
        1152, vocab 50368, global attention every 3rd layer, local window 128, dropout 0;
        batch 8 x 128

Each config runs in a fresh subprocess so that peak RSS (getrusage ru_maxrss)
belongs to that config alone; peak RSS includes the Python interpreter, torch
and transformers themselves.

Usage:
  python3 bench/torch_finetune.py [--config tiny|125m|2.7b|smollm2-135m|gpt2-124m|all] [--steps N] [--warmup N] [--threads N] [--lora] [--freeze-half] [--json]
--json prints one JSON object per config on stdout (nothing else on stdout).
Needs: python3 -m pip install torch transformers (and peft for --lora)
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def gpt_neo(vocab, hidden, layers, heads, positions, batch, steps, warmup):
    """A GPT-Neo shape: blocks alternating global and local attention (window 256), MLP 4x."""
    model = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=positions,
        window_size=256,
        attention_types=[[["global", "local"], layers // 2]],
    )
    return dict(family="gpt_neo", model=model, batch=batch, seq=64, steps=steps, warmup=warmup)


CONFIGS = {
    "tiny": gpt_neo(8192, 256, 4, 8, 128, batch=16, steps=20, warmup=3),
    "125m": gpt_neo(50257, 768, 12, 12, 2048, batch=8, steps=5, warmup=2),
    "2.7b": gpt_neo(50257, 2560, 32, 20, 2048, batch=8, steps=3, warmup=1),
    "smollm2-135m": dict(
        family="llama",
        model=dict(
            vocab_size=49152,
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        batch=8,
        seq=64,
        steps=5,
        warmup=2,
    ),
    "gpt2-124m": dict(
        family="gpt2",
        model=dict(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
        ),
        batch=8,
        seq=64,
        steps=5,
        warmup=2,
    ),
    "bert-base": dict(
        family="bert",
        model=dict(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout=0.0,
        ),
        batch=8,
        seq=128,
        steps=5,
        warmup=2,
    ),
    "modernbert-base": dict(
        family="modernbert",
        model=dict(
            vocab_size=50368,
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            global_rope_theta=160000.0,
            local_rope_theta=10000.0,
            classifier_pooling="cls",
        ),
        batch=8,
        seq=128,
        steps=5,
        warmup=2,
    ),
}
# Per family: the extra config keys of its GPT-Neo-style setup, the LoRA targets (PEFT's
# defaults), and the name prefixes of the embeddings and of block i (for --freeze-half).
FAMILIES = {
    "gpt_neo": dict(
        extra=dict(
            activation_function="gelu_new",
            embed_dropout=0.0,
            attention_dropout=0.0,
            resid_dropout=0.0,
            layer_norm_epsilon=1e-5,
        ),
        lora=dict(target_modules=["q_proj", "v_proj"]),
        embeddings=("transformer.wte.", "transformer.wpe."),
        block="transformer.h.{}.",
    ),
    "llama": dict(
        extra=dict(attention_dropout=0.0),
        lora=dict(target_modules=["q_proj", "v_proj"]),
        embeddings=("model.embed_tokens.",),
        block="model.layers.{}.",
    ),
    "gpt2": dict(
        extra=dict(),
        lora=dict(target_modules=["c_attn"], fan_in_fan_out=True),
        embeddings=("transformer.wte.", "transformer.wpe."),
        block="transformer.h.{}.",
    ),
    "bert": dict(
        extra=dict(),
        lora=dict(target_modules=["query", "value"]),
        embeddings=("bert.embeddings.",),
        block="bert.encoder.layer.{}.",
    ),
    "modernbert": dict(
        extra=dict(),
        lora=dict(target_modules=["Wqkv"]),
        embeddings=("model.embeddings.",),
        block="model.layers.{}.",
    ),
}
# transformers' attention for GPT-Neo is eager only; the other families default to sdpa.
ATTENTION = {"gpt_neo": "eager"}
NUM_LABELS = 4
SEED = 0


LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0)


def worker(name, steps, warmup, threads, lora, freeze_half):
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    spec = CONFIGS[name]
    family = FAMILIES[spec["family"]]
    vocab = spec["model"]["vocab_size"]
    cfg = AutoConfig.for_model(
        spec["family"],
        **spec["model"],
        **family["extra"],
        num_labels=NUM_LABELS,
        pad_token_id=vocab - 1,  # never drawn below, so pooling is at the last position
        bos_token_id=None,  # unused for classification; 50256 would be out of the tiny vocab
        eos_token_id=None,
        use_cache=False,
        problem_type="single_label_classification",
    )
    attention = ATTENTION.get(spec["family"], "sdpa")
    t0 = time.perf_counter()
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attention, dtype=torch.float32)
    init_s = time.perf_counter() - t0
    assert model.config._attn_implementation == attention
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **LORA, **family["lora"]))
    if freeze_half:
        frozen = family["embeddings"] + tuple(
            family["block"].format(i) for i in range(cfg.num_hidden_layers // 2)
        )
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith(frozen))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    B, T = spec["batch"], spec["seq"]
    g = torch.Generator().manual_seed(SEED)
    batches = [
        (
            torch.randint(0, vocab - 1, (B, T), generator=g),
            torch.randint(0, NUM_LABELS, (B,), generator=g),
        )
        for _ in range(warmup + steps)
    ]
    mask = torch.ones((B, T), dtype=torch.long)

    def step(ids, labels):
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, max_norm=1.0)
        opt.step()
        return out.loss.item()

    load_before = os.getloadavg()[0]
    for ids, labels in batches[:warmup]:
        step(ids, labels)
    times, losses = [], []
    for ids, labels in batches[warmup:]:
        t0 = time.perf_counter()
        losses.append(step(ids, labels))
        times.append(time.perf_counter() - t0)

    mean = statistics.fmean(times)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "bench": "torch_finetune",
        "config": name,
        "lora": dict(LORA, **family["lora"]) if lora else None,
        "freeze_half": freeze_half,
        "params": n_params,
        "trained_params": sum(p.numel() for p in trained),
        "batch": B,
        "seq": T,
        "threads": threads,
        "warmup_steps": warmup,
        "steps": steps,
        "step_s_mean": round(mean, 5),
        "step_s_median": round(statistics.median(times), 5),
        "step_s_min": round(min(times), 5),
        "tokens_per_s": round(B * T / mean, 1),
        "peak_rss_bytes": peak_kb * 1024,
        "peak_rss_gb": round(peak_kb * 1024 / 1e9, 3),
        "init_s": round(init_s, 3),
        # 1-minute load average before warm-up and after the timed steps: the numbers are
        # only meaningful when nothing else was using the cores (load ~ threads)
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "final_loss": round(losses[-1], 5),
        "dtype": "float32",
        "attn_implementation": attention,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 tiny, 5 the others)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 3 tiny, 2 the others)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", action="store_true", help="train a PEFT LoRA adapter (r 8 on q_proj, v_proj; GPT-2: c_attn)")
    ap.add_argument(
        "--freeze-half", action="store_true", help="freeze the embeddings and the lower half of the layers"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per config on stdout")
    ap.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        spec = CONFIGS[args.worker]
        res = worker(
            args.worker,
            args.steps if args.steps is not None else spec["steps"],
            args.warmup if args.warmup is not None else spec["warmup"],
            args.threads,
            args.lora,
            args.freeze_half,
        )
        print(json.dumps(res), flush=True)
        return 0

    names = [n for n in CONFIGS if n != "2.7b"] if args.config == "all" else [args.config]
    rc = 0
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(args.threads)]
        if args.lora:
            cmd.append("--lora")
        if args.freeze_half:
            cmd.append("--freeze-half")
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        if args.warmup is not None:
            cmd += ["--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"torch_finetune: config {name} failed (exit {proc.returncode})", file=sys.stderr)
            rc = 1
            continue
        res = json.loads(lines[-1])
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(
                f"{name:12s} params {res['params'] / 1e6:6.1f}M  batch {res['batch']}x{res['seq']}  "
                f"threads {res['threads']}  step {res['step_s_mean']:.3f} s (median {res['step_s_median']:.3f})  "
                f"{res['tokens_per_s']:,.0f} tokens/s  peak RSS {res['peak_rss_gb']:.2f} GB  "
                f"load {res['loadavg_1m'][0]}->{res['loadavg_1m'][1]}  "
                f"[{res['steps']} timed steps after {res['warmup_steps']} warm-up; "
                f"torch {res['versions']['torch']}, transformers {res['versions']['transformers']}]",
                flush=True,
            )
    return rc


if __name__ == "__main__":
    sys.exit(main())
