#!/usr/bin/env bash
# Scoring throughput of the encoders' shapes (issue #24): pipe's evaluate stage against
# PyTorch, side by side in one run, on the same weights and the same texts. For each of
# BERT-base's and ModernBERT-base's shapes (random init, 4 labels): a pipe job over the
# sample data (the embedded all-MiniLM-L6-v2's WordPiece tokenizer, BERT-base's own
# vocabulary; rows cut at 128 tokens) trains one step (to have a model/ and a bundle), then
# its evaluate stage scores the train and test splits (2,422 texts) under /usr/bin/time;
# bench/torch_eval.py scores the same texts with the same model/ in transformers, batched in
# the rows' order and then shortest first (as pipe batches them). pipe's figure is the whole
# stage (loading the bundle, tokenizing, scoring, metrics); PyTorch's leaves its model
# loading out. Prints the CPU, then per shape: wall seconds, texts/s and
# peak memory of each side, and both sides' accuracies (equal: the same weights).
#
#   bench/encoder_eval.sh                 # both shapes
#   bench/encoder_eval.sh bert            # one of bert, modernbert
#   PIPE=target/release/pipe bench/encoder_eval.sh   # that binary, not a fresh release build
# Needs: python3 -m pip install torch transformers pyarrow
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
shapes=("${@:-bert modernbert}")
read -r -a shapes <<< "${shapes[*]}"
source bench/embedded_setup.sh
for shape in "${shapes[@]}"; do
  case "$shape" in
    bert) config='{ model_type: bert, vocab_size: 30522, hidden_size: 768, num_hidden_layers: 12,
        num_attention_heads: 12, intermediate_size: 3072, max_position_embeddings: 512 }' ;;
    modernbert) config='{ model_type: modernbert, vocab_size: 50368, hidden_size: 768,
        num_hidden_layers: 22, num_attention_heads: 12, intermediate_size: 1152,
        max_position_embeddings: 8192, global_attn_every_n_layers: 3, local_attention: 128,
        pad_token_id: 0 }' ;;
    *) echo "encoder_eval.sh: unknown shape $shape (bert, modernbert)" >&2; exit 2 ;;
  esac
  cat > "$work/$shape.yaml" <<YAML
pipeline: $shape
stages:
  ingest: { source: data/student_questions.csv, text: text, label: label }
  split: { from: ingest, test: 0.2, shuffle: true, seed: 42 }
  tokenize: { from: split, tokenizer: { embedded: all-MiniLM-L6-v2 }, max_length: 128 }
  finetune:
    from: tokenize
    model: { config: $config, seed: 0 }
    max_steps: 1
    batch_size: 8
    device: cpu
    threads: $threads
  export-onnx: { from: finetune, threads: $threads }
  evaluate: { from: { model: export-onnx, data: split }, splits: [train, test], threads: $threads }
YAML
  (cd "$work" && "$pipe" run "$shape.yaml" -q > /dev/null)
  (cd "$work" && /usr/bin/time -v -o time.txt "$pipe" run "$shape.yaml" evaluate --force=evaluate -q > /dev/null)
  out="$work/.pipe/out/$shape"
  python3 - "$work/time.txt" "$out/evaluate/metrics.json" "$shape" "$out/split" <<'PY'
import json, sys
import pyarrow.parquet as pq
time_v, metrics, shape, split = sys.argv[1:5]
fields = dict(l.strip().split(": ", 1) for l in open(time_v) if ": " in l)
wall = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall)))
m = json.load(open(metrics))
texts = sum(pq.read_metadata(f"{split}/{s}.parquet").num_rows for s in ["train", "test"])
print(json.dumps({"shape": shape, "side": "pipe evaluate", "texts": texts, "seconds": round(seconds, 2),
                  "texts_per_s": round(texts / seconds, 1),
                  "accuracy": {s: round(m[s]["accuracy"], 4) for s in ["train", "test"]},
                  "peak_rss_bytes": int(fields["Maximum resident set size (kbytes)"]) * 1024}))
PY
  for order in "" --sorted; do
    python3 bench/torch_eval.py "$out/split" "$out/finetune/model" "$minilm" \
      --threads "$threads" $order | sed "s/^{/{\"shape\": \"$shape\", /"
  done
done
