#!/usr/bin/env python3
"""transformers' side of bench/encoder.sh: fine-tunes all-MiniLM-L6-v2 as
AutoModelForSequenceClassification on pipe's own split of the sample data, with pipe's recipe
(pipelines/student-pretrained.yaml): 4 epochs, AdamW lr 5e-5, weight decay 0.01 (not on biases
and LayerNorm weights, as transformers' Trainer), linear warm-up over 10% of the steps then
linear decay, gradient clipping at 1.0, batch 16, max length 64, rows shuffled each epoch and
padded to the batch's longest, fp32, eager attention.

Prints one JSON object: test accuracy, macro F1, macro one-vs-rest ROC AUC, training seconds,
tokens/s (real tokens of the training steps over their time, as pipe's metrics.json counts
them), peak RSS.

Usage: python3 bench/torch_encoder.py SPLIT_DIR MODEL_DIR [--seed N] [--threads N] [--epochs N]
       [--lr X] [--lora R]  (--lora: PEFT LoRA of rank R, alpha 2R, on query/key/value/dense)
Needs: python3 -m pip install torch transformers scikit-learn pyarrow
"""

import argparse
import json
import math
import random
import resource
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("split_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lora", type=int, default=0,
                    help="train a PEFT LoRA adapter of this rank (alpha 2r) on query/key/value/dense "
                         "instead of every weight, as bench/frozen_dtype.sh does with pipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    train = pq.read_table(f"{args.split_dir}/train.parquet").to_pydict()
    test = pq.read_table(f"{args.split_dir}/test.parquet").to_pydict()
    labels = sorted(set(train["label"]))
    index = {l: i for i, l in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    enc = lambda texts: tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
    train_ids, test_ids = enc(train["text"]), enc(test["text"])
    train_y = [index[l] for l in train["label"]]
    test_y = [index[l] for l in test["label"]]

    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=len(labels), attn_implementation="eager", dtype=torch.float32)
    if args.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0,
            target_modules=["query", "key", "value", "dense"]))
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [n for n, p in trained if n.endswith("bias") or "LayerNorm" in n]
    groups = [
        {"params": [p for n, p in trained if n not in no_decay], "weight_decay": 0.01},
        {"params": [p for n, p in trained if n in no_decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = math.ceil(len(train_ids) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = math.ceil(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))

    def batch(ids, rows):
        width = max(len(ids[r]) for r in rows)
        x = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        m = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(ids[r])] = torch.tensor(ids[r])
            m[i, : len(ids[r])] = 1
        return x, m

    model.train()
    tokens, seconds = 0, 0.0
    began = time.perf_counter()
    for epoch in range(args.epochs):
        order = list(range(len(train_ids)))
        random.shuffle(order)
        for s in range(steps_per_epoch):
            rows = order[s * args.batch:(s + 1) * args.batch]
            x, m = batch(train_ids, rows)
            y = torch.tensor([train_y[r] for r in rows])
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model(input_ids=x, attention_mask=m, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seconds += time.perf_counter() - t0
            tokens += int(m.sum())
    train_seconds = time.perf_counter() - began

    model.eval()
    probs = []
    with torch.no_grad():
        for s in range(0, len(test_ids), 64):
            x, m = batch(test_ids, list(range(s, min(s + 64, len(test_ids)))))
            probs.append(torch.softmax(model(input_ids=x, attention_mask=m).logits, -1).numpy())
    probs = np.concatenate(probs)
    pred = probs.argmax(-1)
    print(json.dumps({
        "seed": args.seed,
        "test_accuracy": round(accuracy_score(test_y, pred), 4),
        "test_macro_f1": round(f1_score(test_y, pred, average="macro"), 4),
        "test_macro_auc": round(roc_auc_score(test_y, probs, multi_class="ovr", average="macro"), 4),
        "train_seconds": round(train_seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
