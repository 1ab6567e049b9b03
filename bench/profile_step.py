#!/usr/bin/env python3
"""Where the time of pipe's training step goes, by ONNX Runtime's own profiler.

Takes a step graph written by `finetune_step --save-graph FILE` (forward + gradients; the
optimizer runs on the host), feeds it random weights and a full-length random batch of the
benchmark's shape, runs it a few times with profiling on and prints the node count, the share
of kernel time spent in matrix products (MatMul, Gemm, FusedMatMul) and the op types that
take the most time.

Usage: python3 bench/profile_step.py STEP.onnx [--batch 16] [--seq 64] [--threads 2]
       [--runs 3] [--json]
Needs: python3 -m pip install onnxruntime==1.31.1 onnx numpy
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

MATMUL = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger"}


def feeds_for(model, batch, seq, rng):
    vocab = None
    for init in model.graph.input:
        if init.name == "transformer.wte.weight":
            vocab = init.type.tensor_type.shape.dim[0].dim_value
    ids = rng.integers(0, (vocab or 8192) - 1, size=(batch, seq))
    distinct, index = np.unique(ids, return_inverse=True)
    out = {}
    for i in model.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.name == "token_ids":
            out[i.name] = distinct.astype(np.int64)
        elif i.name == "token_index":
            out[i.name] = index.reshape(batch, seq).astype(np.int64)
        elif i.name == "input_ids":
            out[i.name] = ids.astype(np.int64)
        elif i.name == "lengths":
            out[i.name] = np.full((batch,), seq, dtype=np.int64)
        elif i.name == "labels":
            out[i.name] = rng.integers(0, 4, size=(batch,)).astype(np.int64)
        else:
            out[i.name] = (rng.standard_normal(dims) * 0.02).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graph")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = onnx.load(args.graph, load_external_data=False)
    feeds = feeds_for(model, args.batch, args.seq, np.random.default_rng(0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "step")
    opts.optimized_model_filepath = os.path.join(os.path.dirname(opts.profile_file_prefix), "optimized.onnx")
    sess = ort.InferenceSession(args.graph, opts, providers=["CPUExecutionProvider"])
    for _ in range(args.runs):
        sess.run(None, feeds)
    trace = sess.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    optimized = onnx.load(opts.optimized_model_filepath, load_external_data=False)

    by_op = collections.Counter()
    runs_seen = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs_seen += 1
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values())
    matmul = sum(v for k, v in by_op.items() if k in MATMUL)
    result = {
        "graph": os.path.basename(args.graph),
        "nodes": len(model.graph.node),
        "nodes_after_ort_optimization": len(optimized.graph.node),
        "runs_profiled": runs_seen,
        "kernel_ms_per_run": round(total / 1000 / max(runs_seen, 1), 2),
        "matmul_share": round(matmul / max(total, 1), 4),
        "top_ops": [
            {"op": k, "share": round(v / max(total, 1), 4), "ms_per_run": round(v / 1000 / max(runs_seen, 1), 2)}
            for k, v in by_op.most_common(12)
        ],
    }
    os.remove(trace)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['graph']}: {result['nodes']} nodes ({result['nodes_after_ort_optimization']} after ORT's fusions), "
              f"{result['kernel_ms_per_run']} ms of kernels per run, {100 * result['matmul_share']:.1f}% in matrix products")
        for t in result["top_ops"]:
            print(f"  {t['op']:24s} {100 * t['share']:5.1f}%  {t['ms_per_run']:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
