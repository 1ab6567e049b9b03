#!/usr/bin/env bash
# Ingest and tokenize throughput of pipe against pyarrow and Hugging Face
# tokenizers driven from Python, on the same machine in the same run.
#
#   bench/ingest_tokenize.sh [ROWS]     (default 120000)
#
# 1. generates a CSV of ROWS ~80-character questions over 4 labels;
# 2. runs pipe's ingest, split and tokenize stages in-process (release build of
#    the `ingest_tokenize` example, which drives the stages without the CLI):
#    ingest rows/s, then tokenize texts/s with an 8k byte-level BPE trained on
#    the train split (timed again with the trained tokenizer given, to time
#    encoding alone);
# 3. if a Python with pyarrow and tokenizers is at hand ($BENCH_PYTHON, or
#    `pip install pyarrow tokenizers` into a virtualenv works): pyarrow.csv.read_csv +
#    pyarrow.parquet.write_table on the same CSV, and Tokenizer.encode_batch
#    with the same tokenizer.json on the same texts; prints the ratios.
set -euo pipefail
ROWS=${1:-120000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 "$HERE/ingest_tokenize_gen.py" "$WORK/questions.csv" "$ROWS"
echo "data: $ROWS rows, $(du -h "$WORK/questions.csv" | cut -f1)" >&2

cd "$ROOT"
cargo build --release -q -p pipe-stages --example ingest_tokenize
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/ingest_tokenize"
"$BIN" "$WORK/questions.csv" "$WORK/pipe" | tee "$WORK/pipe.jsonl"

# A Python with pyarrow and tokenizers: $BENCH_PYTHON, python3 if it has them,
# else a fresh virtualenv.
PY=${BENCH_PYTHON:-}
if [ -z "$PY" ]; then
  if python3 -c "import pyarrow, tokenizers" 2>/dev/null; then
    PY=python3
  elif python3 -m venv "$WORK/venv" >/dev/null 2>&1 && "$WORK/venv/bin/pip" install -q pyarrow tokenizers >/dev/null 2>&1; then
    PY="$WORK/venv/bin/python"
  fi
fi
if [ -n "$PY" ]; then
  "$PY" - "$WORK" <<'PYEOF'
import json, os, sys, time
import pyarrow.csv as pacsv, pyarrow.parquet as pq
from tokenizers import Tokenizer

work = sys.argv[1]
pipe = {r["step"]: r for r in map(json.loads, open(os.path.join(work, "pipe.jsonl")))}

t = time.perf_counter()
table = pacsv.read_csv(os.path.join(work, "questions.csv"))
pq.write_table(table, os.path.join(work, "py.parquet"), compression="zstd")
t_arrow = time.perf_counter() - t
rows = table.num_rows

texts = table.column("question").to_pylist()
tok = Tokenizer.from_file(os.path.join(work, "pipe", "tokenize-train", "tokenizer.json"))
t = time.perf_counter()
tok.encode_batch(texts)
t_tok = time.perf_counter() - t

py_ingest = rows / t_arrow
py_tok = rows / t_tok
print(json.dumps({"step": "pyarrow read_csv + write_table", "rows": rows, "seconds": t_arrow, "rows_per_s": py_ingest}))
print(json.dumps({"step": "tokenizers encode_batch (python)", "texts": rows, "seconds": t_tok, "texts_per_s": py_tok}))
print(f"ingest:   pipe {pipe['ingest']['rows_per_s']:,.0f} rows/s vs pyarrow {py_ingest:,.0f} rows/s "
      f"-> ratio {pipe['ingest']['rows_per_s'] / py_ingest:.2f}")
print(f"tokenize: pipe {pipe['tokenize (encode)']['texts_per_s']:,.0f} texts/s vs tokenizers {py_tok:,.0f} texts/s "
      f"-> ratio {pipe['tokenize (encode)']['texts_per_s'] / py_tok:.2f}")
PYEOF
else
  echo "pyarrow/tokenizers not installable here: Python comparison skipped" >&2
fi
