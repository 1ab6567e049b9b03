#!/usr/bin/env python3
"""Evaluation throughput: pipe's exported bundle vs the same weights exported by torch.onnx.

Takes a finetune `model/` folder and the export-onnx bundle made from it (by default those of
`pipelines/student.yaml` after `pipe run`), and:
1. checks that `transformers` loads the `model/` folder and gives the bundle's logits
   (one text at a time, no padding);
2. exports the same model with `torch.onnx.export` (inputs input_ids and attention_mask,
   dynamic batch and sequence; padding with `<|endoftext|>`, id 0, as the pad token);
3. scores every text of the dataset with both ONNX models in Python onnxruntime (same
   tokenizer, batches of 32 sorted by length, right padding, 2 threads) and prints texts/s.

Usage: python3 bench/eval_throughput.py [STORE_OUT_DIR] [CSV]
Needs: python3 -m pip install torch transformers onnxruntime==1.31.1 onnx
"""

import csv
import json
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from transformers import GPTNeoForSequenceClassification

out = sys.argv[1] if len(sys.argv) > 1 else "pipelines/.pipe/out/student"
data = sys.argv[2] if len(sys.argv) > 2 else "pipelines/data/student_questions.csv"
bundle, model_dir = f"{out}/export-onnx", f"{out}/finetune/model"
texts = [row["text"] for row in csv.DictReader(open(data, encoding="utf-8"))]
tok = Tokenizer.from_file(f"{bundle}/tokenizer.json")
encoded = [e.ids for e in tok.encode_batch(texts)]
order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
BATCH, PAD = 32, 0


def batches():
    for s in range(0, len(order), BATCH):
        rows = [encoded[i] for i in order[s : s + BATCH]]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), PAD, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        yield ids, mask


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def throughput(sess):
    feeds = list(batches())
    sess.run(None, {"input_ids": feeds[0][0], "attention_mask": feeds[0][1]})  # warm-up
    t = time.perf_counter()
    for _ in range(3):
        for ids, mask in feeds:
            sess.run(None, {"input_ids": ids, "attention_mask": mask})
    return 3 * len(texts) / (time.perf_counter() - t)


torch.set_num_threads(2)
hf = GPTNeoForSequenceClassification.from_pretrained(model_dir).eval().requires_grad_(False)
hf.config.pad_token_id = PAD
ours = session(f"{bundle}/model.onnx")
worst = 0.0
for i in range(20):
    ids = np.array([encoded[i]], np.int64)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    got = ours.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    worst = max(worst, float(np.abs(ref - got).max()))

with tempfile.TemporaryDirectory() as tmp:
    path = f"{tmp}/torch.onnx"
    ids, mask = next(batches())
    class Logits(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    torch.onnx.export(
        Logits(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask"]},
        opset_version=20,
        dynamo=False,
    )
    theirs = session(path)
    agree = 0
    for ids, mask in batches():
        a = ours.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        b = theirs.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        agree += int((a.argmax(1) == b.argmax(1)).sum())
    result = {
        "texts": len(texts),
        "hf_vs_bundle_max_logit_diff": worst,
        "same_predictions": agree,
        "pipe_bundle_texts_per_s": round(throughput(ours)),
        "torch_onnx_texts_per_s": round(throughput(theirs)),
    }
print(json.dumps(result))
