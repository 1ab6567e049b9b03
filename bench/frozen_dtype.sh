#!/usr/bin/env bash
# Quality of LoRA over quantized frozen weights (`frozen_dtype`) on a real pretrained model:
# pipelines/student-pretrained.yaml (all-MiniLM-L6-v2, the sample data, 4 epochs, batch 16,
# rows cut at 64 tokens) with LoRA r 8 on every linear layer of the encoder (query, key,
# value, dense; learning rate 5e-4) and the frozen weights in f32, bf16, int8 and int4 (or
# the DTYPES given), for each seed. Prints per run: test accuracy and macro AUC of the exported f32 model (evaluate),
# tokens/s, frozen bytes and peak memory, and PEFT's LoRA (fp32) with the same recipe on the
# same split (bench/torch_encoder.py --lora 8); then pipe's mean per dtype. On THREADS threads
# (default 2). PIPE=path/to/pipe uses that binary instead of building a release one.
#
#   bench/frozen_dtype.sh [SEEDS...]      # default: seeds 0 1 2
#   SKIP_PEFT=1 bench/frozen_dtype.sh     # pipe's runs only (PEFT takes ~10 min per seed)
#   DTYPES="f32 bf16" bench/frozen_dtype.sh   # only these frozen_dtype values
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
seeds=("$@")
[[ $# -eq 0 ]] && seeds=(0 1 2)
read -r -a dtypes <<< "${DTYPES:-f32 bf16 int8 int4}"
source bench/embedded_setup.sh
results="$work/results.jsonl"
for seed in "${seeds[@]}"; do
  for dtype in "${dtypes[@]}"; do
    sed -e "s/seed: 0 }/seed: $seed }/" \
        -e "s/learning_rate: 5.0e-5/learning_rate: 5.0e-4\n    lora: { r: 8, alpha: 16, targets: [query, key, value, dense] }\n    frozen_dtype: $dtype/" \
        -e "s/device: cpu/device: cpu\n    threads: $threads\n    seed: $seed/" \
        pipelines/student-pretrained.yaml > "$work/p.yaml"
    (cd "$work" && /usr/bin/time -f '%M' -o rss.txt "$pipe" run p.yaml --force > /dev/null)
    python3 - "$work" "$seed" "$dtype" <<'PY' | tee -a "$results"
import json, sys
work, seed, dtype = sys.argv[1:4]
out = f"{work}/.pipe/out/student-pretrained"
ev = json.load(open(f"{out}/evaluate/metrics.json"))
ft = json.load(open(f"{out}/finetune/metrics.json"))
rss = int(open(f"{work}/rss.txt").read().split()[-1])
print(json.dumps({"frozen_dtype": dtype, "seed": int(seed),
                  "test_accuracy": round(ev["test"]["accuracy"], 4),
                  "test_macro_auc": round(ev["test"]["macro_auc"], 4),
                  "tokens_per_s": ft["tokens_per_s"], "frozen_weight_bytes": ft["frozen_weight_bytes"],
                  "peak_rss_mib": round(rss / 1024)}))
PY
  done
  # PEFT's LoRA with the same recipe on pipe's split of this seed, fp32: the peer.
  [[ -n ${SKIP_PEFT:-} ]] && continue
  python3 bench/torch_encoder.py "$work/.pipe/out/student-pretrained/split" \
    "$minilm" --seed "$seed" --threads "$threads" --lr 5e-4 --lora 8 \
    | sed 's/^{/{"side": "PEFT 0.21 fp32", /'
done
python3 - "$results" "${dtypes[@]}" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
for dtype in sys.argv[2:]:
    r = [x for x in rows if x["frozen_dtype"] == dtype]
    print(json.dumps({"frozen_dtype": dtype, "runs": len(r),
                      "mean_test_accuracy": round(st.mean(x["test_accuracy"] for x in r), 4),
                      "mean_test_macro_auc": round(st.mean(x["test_macro_auc"] for x in r), 4),
                      "mean_tokens_per_s": round(st.mean(x["tokens_per_s"] for x in r))}))
PY
