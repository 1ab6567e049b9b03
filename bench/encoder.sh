#!/usr/bin/env bash
# pipe vs transformers fine-tuning the embedded pretrained model, all-MiniLM-L6-v2, on the
# sample data, side by side in one run: pipelines/student-pretrained.yaml (4 epochs, lr 5e-5,
# batch 16, max length 64, warm-up 10%, weight decay 0.01) through `pipe run`, then
# bench/torch_encoder.py with the same recipe on pipe's own split. Both on THREADS threads
# (default 2). Prints, per side: test accuracy, macro AUC, training seconds, tokens/s (real
# tokens over step time) and peak memory, and the CPU model.
#
#   bench/encoder.sh [SEEDS...]      # default: seed 0
#   PIPE=target/release/pipe bench/encoder.sh   # that binary, not a fresh release build
# Needs: python3 -m pip install torch transformers scikit-learn pyarrow
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
seeds=("${@:-0}")
source bench/embedded_setup.sh
for seed in "${seeds[@]}"; do
  sed -e "s/seed: 0 }/seed: $seed }/" \
      -e "s/device: cpu/device: cpu\n    threads: $threads\n    seed: $seed/" \
      pipelines/student-pretrained.yaml > "$work/p.yaml"
  (cd "$work" && /usr/bin/time -f '%M' -o rss.txt "$pipe" run p.yaml --force > /dev/null)
  python3 - "$work" "$seed" <<'PY'
import json, sys
work, seed = sys.argv[1], sys.argv[2]
out = f"{work}/.pipe/out/student-pretrained"
ev = json.load(open(f"{out}/evaluate/metrics.json"))
ft = json.load(open(f"{out}/finetune/metrics.json"))
rss = int(open(f"{work}/rss.txt").read().split()[-1])
print(json.dumps({"side": "pipe", "seed": int(seed), "test_accuracy": round(ev["test"]["accuracy"], 4),
                  "test_macro_auc": round(ev["test"]["macro_auc"], 4), "train_seconds": round(ft["seconds"], 1),
                  "tokens_per_s": ft["tokens_per_s"], "peak_rss_mib": round(rss / 1024)}))
PY
  python3 bench/torch_encoder.py "$work/.pipe/out/student-pretrained/split" "$minilm" \
    --seed "$seed" --threads "$threads" | sed 's/^{/{"side": "transformers", /'
done
