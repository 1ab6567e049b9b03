#!/usr/bin/env bash
# kill -9 campaign on the reference job: runs pipelines/student.yaml (with
# `epochs` cut to EPOCHS, default 1, so an iteration takes about a minute on two
# cores) once without interruption, then ITERATIONS times: a fresh copy, `pipe
# run` SIGKILLed at a random moment, then `pipe run` again to completion. Every
# rerun must end with the same weights, byte for byte, and the same evaluation
# as the uninterrupted run (finetune resumes from its checkpoint bit-exactly),
# and with no temp file left in the store.
# usage: bench/kill_reference.sh [ITERATIONS]   (PIPE=path/to/pipe, EPOCHS=n)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/release/pipe}
[[ -x $pipe ]] || (cd "$root" && cargo build --release --locked -q --bin pipe)
iterations=${1:-5}
epochs=${EPOCHS:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
project() {
  mkdir -p "$1/data"
  cp "$root/pipelines/data/student_questions.csv" "$1/data/"
  sed "s/^\(    epochs:\) *[0-9]*/\1 $epochs/" "$root/pipelines/student.yaml" > "$1/student.yaml"
}
# What must not depend on a kill: the trained weights (bytes) and the test and
# train metrics evaluate computed from them (timings are left out: they differ
# between any two runs).
outcome() {
  (cd "$1/.pipe/out/student" && sha256sum finetune/model/*.safetensors \
    && python3 -c 'import json; m = json.load(open("evaluate/metrics.json")); print(json.dumps({k: v for k, v in m.items() if k in ("train", "test")}, sort_keys=True))')
}
project "$work/ref"
start=$(date +%s.%N)
(cd "$work/ref" && "$pipe" run student.yaml -q)
full=$(python3 -c "import time; print(time.time() - $start)")
expected=$(outcome "$work/ref")
echo "uninterrupted run: ${full%.*} s"
bad=0
for i in $(seq 1 "$iterations"); do
  dir="$work/run$i"
  project "$dir"
  (cd "$dir" && exec "$pipe" run student.yaml -q) &
  pid=$!
  at=$(python3 -c "import random; print(round(random.uniform(0.5, $full), 1))")
  sleep "$at"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  (cd "$dir" && "$pipe" run student.yaml -q)
  got=$(outcome "$dir")
  leftovers=$(find "$dir/.pipe" -name '*.tmp*' | wc -l)
  if [[ $got == "$expected" && $leftovers == 0 ]]; then
    echo "iteration $i: killed at ${at} s, rerun equal"
  else
    echo "iteration $i: killed at ${at} s, DIFFERENT (temp files left: $leftovers)"
    diff <(echo "$expected") <(echo "$got") || true
    bad=$((bad + 1))
  fi
  rm -rf "$dir"
done
echo "$bad of $iterations reruns differ from the uninterrupted run"
[[ $bad == 0 ]]
