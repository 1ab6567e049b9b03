#!/usr/bin/env python3
"""Where the time of pipe's training step goes, by ONNX Runtime's own profiler.

Reads the trace `finetune_step --profile PREFIX` leaves in `PREFIX_<timestamp>.json` (the
step graph run by pipe itself, with pipe's fused CPU kernels, which Python's onnxruntime
cannot load) and prints the nodes ONNX Runtime ran (after its own fusions), the kernel time
per step, the share of it in matrix products (MatMul, Gemm, FusedMatMul) and the op types
and shapes that take the most time.

Usage:
  target/release/examples/finetune_step tiny --threads 2 --profile /tmp/tiny
  python3 bench/profile_step.py /tmp/tiny_*.json [--top 12] [--json]
Needs only the Python standard library.
"""

import argparse
import collections
import json
import sys

MATMUL = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger"}


def summarise(events, top):
    """Kernel time by op type and by (op type, output shape), per step."""
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    by_op = collections.Counter()
    by_shape = collections.Counter()
    nodes = set()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        shapes = [next(iter(s.values())) for s in e["args"].get("output_type_shape", [])]
        nodes.add(e["name"])
        by_op[op] += e["dur"]
        by_shape[(op, json.dumps(shapes[:1]))] += e["dur"]
    total = sum(by_op.values())
    per_run = max(runs, 1)
    matmul = sum(v for k, v in by_op.items() if k in MATMUL)

    def row(key, value):
        return {"key": key, "share": round(value / max(total, 1), 4), "ms_per_step": round(value / 1000 / per_run, 2)}

    return {
        "steps_profiled": runs,
        "nodes_run": len(nodes),
        "kernel_ms_per_step": round(total / 1000 / per_run, 2),
        "matmul_share": round(matmul / max(total, 1), 4),
        "top_ops": [row(k, v) for k, v in by_op.most_common(top)],
        "top_shapes": [row(f"{k[0]} {k[1]}", v) for k, v in by_shape.most_common(top)],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="PREFIX_<timestamp>.json written by finetune_step --profile")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        with open(args.trace) as f:
            events = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{args.trace}: cannot read an ONNX Runtime trace: {e}")
    result = summarise(events, args.top)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.trace}: {result['nodes_run']} nodes run, {result['kernel_ms_per_step']} ms of kernels per step "
          f"over {result['steps_profiled']} steps, {100 * result['matmul_share']:.1f}% in matrix products")
    for title, rows in (("by op type", result["top_ops"]), ("by op type and output shape", result["top_shapes"])):
        print(f"  {title}:")
        for t in rows:
            print(f"    {t['key']:48s} {100 * t['share']:5.1f}%  {t['ms_per_step']:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
