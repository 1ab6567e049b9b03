#!/usr/bin/env bash
# Fine-tuning throughput and peak memory, pipe vs PyTorch + transformers (+ PEFT for LoRA),
# each pair back to back on this machine: the `tiny` shape with an 8192-token vocabulary
# (batch 16 × 64), the GPT-Neo 125M shape (batch 8 × 64), and LoRA r 8 on q_proj/v_proj on
# the 125M shape; the SmolLM2-135M (Llama) and GPT-2 124M shapes in full and with LoRA r 8
# (batch 8 × 64); the BERT-base and ModernBERT-base shapes in full (batch 8 × 128); random
# init, fp32, 2 threads each. Prints one JSON object per run, with the
# 1-minute load average before each pair (the machine may be shared: compare pairs, not runs).
# Needs: python3 -m pip install torch transformers peft (for the baseline).
# Usage: bench/finetune.sh [PAIR|all], PAIR one of tiny 125m lora freeze lora-bf16 lora-int8
# lora-int4 smollm2 smollm2-lora gpt2 gpt2-lora bert modernbert, or (not in `all`: about
# 19 GB for PEFT) big-lora big-lora-bf16 big-lora-int8 big-lora-int4. freeze: the 125M shape
# with the embeddings and layers 0-5 frozen, `requires_grad=False` on the PyTorch side;
# lora-bf16 / lora-int8 / lora-int4: pipe's LoRA over frozen weights kept in bfloat16 / int8 /
# 4-bit (`frozen_dtype`) against PEFT's fp32 LoRA, the peer a CPU user has; big-lora*: the
# same on GPT-Neo 2.7B's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
scripts/fetch-onnxruntime.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.tools/onnxruntime/libonnxruntime.so.1.31.1}"
cargo build --release --locked -q --workspace --example finetune_step
target="${CARGO_TARGET_DIR:-target}"
runs=(tiny 125m lora freeze lora-bf16 lora-int8 lora-int4 smollm2 smollm2-lora gpt2 gpt2-lora bert modernbert)
[[ "$which" != all ]] && runs=("$which")
for r in "${runs[@]}"; do
  case "$r" in
    lora) config=125m flag=--lora pipe_flags= ;;
    lora-bf16) config=125m flag=--lora pipe_flags="--frozen-dtype bf16" ;;
    lora-int8) config=125m flag=--lora pipe_flags="--frozen-dtype int8" ;;
    lora-int4) config=125m flag=--lora pipe_flags="--frozen-dtype int4" ;;
    freeze) config=125m flag=--freeze-half pipe_flags= ;;
    big-lora) config=2.7b flag=--lora pipe_flags= ;;
    big-lora-bf16) config=2.7b flag=--lora pipe_flags="--frozen-dtype bf16" ;;
    big-lora-int8) config=2.7b flag=--lora pipe_flags="--frozen-dtype int8" ;;
    big-lora-int4) config=2.7b flag=--lora pipe_flags="--frozen-dtype int4" ;;
    smollm2) config=smollm2-135m flag= pipe_flags= ;;
    smollm2-lora) config=smollm2-135m flag=--lora pipe_flags= ;;
    gpt2) config=gpt2-124m flag= pipe_flags= ;;
    gpt2-lora) config=gpt2-124m flag=--lora pipe_flags= ;;
    bert) config=bert-base flag= pipe_flags= ;;
    modernbert) config=modernbert-base flag= pipe_flags= ;;
    *) config="$r" flag= pipe_flags= ;;
  esac
  echo "{\"pair\": \"$r\", \"loadavg_1m\": $(cut -d' ' -f1 /proc/loadavg)}"
  "$target/release/examples/finetune_step" "$config" --threads 2 $flag ${pipe_flags:-}
  python3 bench/torch_finetune.py --config "$config" --threads 2 $flag --json
done
