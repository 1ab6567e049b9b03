#!/usr/bin/env bash
# Fine-tuning throughput and peak memory, pipe vs PyTorch + transformers, one after the other
# on this machine (DESIGN §8): the `tiny` shape with an 8192-token vocabulary (batch 16 × 64)
# and the GPT-Neo 125M shape (batch 8 × 64), random init, 2 threads each.
# Needs: python3 -m pip install torch transformers (for the baseline).
# Usage: bench/finetune.sh [tiny|125m|all]
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
scripts/fetch-onnxruntime.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.tools/onnxruntime/libonnxruntime.so.1.31.1}"
cargo build --release --locked -q -p pipe-stages --example finetune_step
target="${CARGO_TARGET_DIR:-target}"
configs=(tiny 125m)
[[ "$which" != all ]] && configs=("$which")
for c in "${configs[@]}"; do
  "$target/release/examples/finetune_step" "$c" --threads 2
  python3 bench/torch_finetune.py --config "$c" --threads 2 --json
done
