#!/usr/bin/env python3
"""PyTorch's side of bench/encoder_eval.sh: scores the texts of pipe's split (train and test)
with the model folder pipe's finetune wrote (model/, a Hugging Face folder), as a user of
transformers would: AutoTokenizer (truncation at max length), AutoModelForSequenceClassification
in eval mode under torch.no_grad, fp32, sdpa attention, batches padded to their longest row;
the rows in their order, or with --sorted shortest first, as pipe's evaluate batches them.

Prints one JSON object: texts, seconds (tokenizing and scoring; loading the model excluded),
texts/s, accuracy per split (to set beside pipe's evaluate metrics: the same weights must
give the same answers), peak RSS.

Usage: python3 bench/torch_eval.py SPLIT_DIR MODEL_DIR TOKENIZER_DIR [--threads N]
       [--batch N] [--max-length N]
Needs: python3 -m pip install torch transformers pyarrow
"""

import argparse
import json
import resource
import time

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("split_dir")
    ap.add_argument("model_dir")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--sorted", action="store_true", help="batch the rows shortest first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, attn_implementation="sdpa"
    ).eval()
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    label_ids = {l: int(i) for i, l in model.config.id2label.items()}
    splits = {s: pq.read_table(f"{args.split_dir}/{s}.parquet").to_pydict() for s in ["train", "test"]}
    texts = sum(len(v["text"]) for v in splits.values())
    accuracy = {}
    start = time.perf_counter()
    with torch.no_grad():
        for name, rows in splits.items():
            ids = tok(rows["text"], truncation=True, max_length=args.max_length)["input_ids"]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if args.sorted else range(len(ids))
            order = list(order)
            right = 0
            for at in range(0, len(order), args.batch):
                rows_here = order[at:at + args.batch]
                batch = tok.pad({"input_ids": [ids[i] for i in rows_here]}, return_tensors="pt")
                predicted = model(**batch).logits.argmax(-1).tolist()
                truth = [label_ids[rows["label"][i]] for i in rows_here]
                right += sum(p == t for p, t in zip(predicted, truth))
            accuracy[name] = round(right / len(ids), 4)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "side": f"transformers {__import__('transformers').__version__} + torch {torch.__version__}",
        "sorted": args.sorted,
        "texts": texts, "seconds": round(seconds, 2), "texts_per_s": round(texts / seconds, 1),
        "accuracy": accuracy,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
