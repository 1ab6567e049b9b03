#!/usr/bin/env python3
"""Writes a wide pipeline for the no-op rerun benchmark: N command stages,
each reading 10 dep files of its own (N x 10 deps in all) and writing one out.

usage: noop_gen.py N FOLDER   (writes FOLDER/wide.yaml and FOLDER/deps/)
"""
import os
import sys

n, folder = int(sys.argv[1]), sys.argv[2]
os.makedirs(os.path.join(folder, "deps"), exist_ok=True)
os.makedirs(os.path.join(folder, "outs"), exist_ok=True)
lines = ["pipeline: wide", "stages:"]
for s in range(n):
    deps = [f"deps/s{s}_{d}.txt" for d in range(10)]
    for d in deps:
        with open(os.path.join(folder, d), "w") as f:
            f.write(f"{d}\n")
    lines += [
        f"  s{s}:",
        f"    run: cat {' '.join(deps)} > outs/s{s}.txt",
        f"    deps: [{', '.join(deps)}]",
        f"    outs: [outs/s{s}.txt]",
    ]
with open(os.path.join(folder, "wide.yaml"), "w") as f:
    f.write("\n".join(lines) + "\n")
