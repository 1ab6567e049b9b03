#!/usr/bin/env bash
# Fine-tuning throughput and peak memory, pipe vs PyTorch + transformers (+ PEFT for LoRA),
# each pair back to back on this machine: the `tiny` shape with an 8192-token vocabulary
# (batch 16 × 64), the GPT-Neo 125M shape (batch 8 × 64), and LoRA r 8 on q_proj/v_proj on
# the 125M shape; random init, fp32, 2 threads each. Prints one JSON object per run, with the
# 1-minute load average before each pair (the machine may be shared: compare pairs, not runs).
# Needs: python3 -m pip install torch transformers peft (for the baseline).
# Usage: bench/finetune.sh [tiny|125m|lora|freeze|lora-int8|lora-int4|all] (freeze: the 125M
# shape with the embeddings and layers 0-5 frozen, `requires_grad=False` on the PyTorch side;
# lora-int8 / lora-int4: pipe's LoRA over frozen weights kept in int8 / 4-bit
# (`frozen_dtype`) against PEFT's fp32 LoRA, the peer a CPU user has)
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
scripts/fetch-onnxruntime.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.tools/onnxruntime/libonnxruntime.so.1.31.1}"
cargo build --release --locked -q --workspace --example finetune_step
target="${CARGO_TARGET_DIR:-target}"
runs=(tiny 125m lora freeze lora-int8 lora-int4)
[[ "$which" != all ]] && runs=("$which")
for r in "${runs[@]}"; do
  case "$r" in
    lora) config=125m flag=--lora pipe_flags= ;;
    lora-int8) config=125m flag=--lora pipe_flags="--frozen-dtype int8" ;;
    lora-int4) config=125m flag=--lora pipe_flags="--frozen-dtype int4" ;;
    freeze) config=125m flag=--freeze-half pipe_flags= ;;
    *) config="$r" flag= pipe_flags= ;;
  esac
  echo "{\"pair\": \"$r\", \"loadavg_1m\": $(cut -d' ' -f1 /proc/loadavg)}"
  "$target/release/examples/finetune_step" "$config" --threads 2 $flag ${pipe_flags:-}
  python3 bench/torch_finetune.py --config "$config" --threads 2 $flag --json
done
