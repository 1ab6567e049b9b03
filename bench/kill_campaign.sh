#!/usr/bin/env bash
# kill -9 campaign: start `pipe run` on a command-stage pipeline, SIGKILL it at
# a random moment, run again to completion, and compare every out with an
# uninterrupted run. Also checks that no grandchild of a killed run is still
# writing, and that every stage record's objects exist.
# usage: bench/kill_campaign.sh [ITERATIONS]   (PIPE=path/to/pipe)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/debug/pipe}
iterations=${1:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
write_project() {
  mkdir -p "$1/data"
  seq 1 2000 > "$1/data/raw.txt"
  cat > "$1/k.yaml" <<'YAML'
pipeline: k
stages:
  double:
    run: (sleep 0.3; echo late >> data/bg.log) & awk '{print $1*2}' data/raw.txt > data/double.txt && sleep 0.2
    deps: [data/raw.txt]
    outs: [data/double.txt]
  square:
    run: awk '{print $1*$1}' data/raw.txt > data/square.txt && sleep 0.3
    deps: [data/raw.txt]
    outs: [data/square.txt]
  folder:
    run: mkdir -p built && for i in 1 2 3 4 5; do sort -n data/double.txt | head -$((i*100)) > built/part$i.txt; sleep 0.05; done && ln -sf part1.txt built/first
    deps: [data/double.txt]
    outs: [built]
  join:
    run: cat data/square.txt built/part5.txt | sort -n | uniq > joined.txt && sleep 0.2
    deps: [data/square.txt, built]
    outs: [joined.txt]
YAML
}
snapshot() { (cd "$1" && find data/double.txt data/square.txt built joined.txt -exec sh -c 'if [ -L "$1" ]; then echo "$1 -> $(readlink "$1")"; elif [ -f "$1" ]; then echo "$1 $(sha256sum < "$1")"; fi' _ {} \; | sort); }
write_project "$work/ref"
(cd "$work/ref" && "$pipe" run k.yaml -q)
expected=$(snapshot "$work/ref")
bad=0
for i in $(seq 1 "$iterations"); do
  dir="$work/run$i"
  write_project "$dir"
  # Some iterations kill a run that restores from a warm cache instead.
  if (( i % 4 == 0 )); then (cd "$dir" && "$pipe" run k.yaml -q && rm -rf built joined.txt); fi
  (cd "$dir" && exec "$pipe" run k.yaml -q --jobs 2) &
  pid=$!
  sleep "$(python3 -c "import random; print(random.uniform(0, 1.4))")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sleep 0.5
  before=$(stat -c %s "$dir/data/bg.log" 2>/dev/null || echo 0)
  sleep 0.5
  after=$(stat -c %s "$dir/data/bg.log" 2>/dev/null || echo 0)
  (cd "$dir" && "$pipe" run k.yaml -q)
  got=$(snapshot "$dir")
  missing=$(cd "$dir" && python3 - <<'PY'
import json, os
n = 0
for f in os.listdir(".pipe/stages"):
    record = json.load(open(os.path.join(".pipe/stages", f)))
    for out in record["outputs"].values():
        h = out["hash"]
        n += not os.path.exists(f".pipe/objects/{h[:2]}/{h[2:]}")
print(n)
PY
)
  if [[ $got != "$expected" || $before != "$after" || $missing != 0 ]]; then
    bad=$((bad + 1))
    echo "iteration $i: BAD (outs equal: $([[ $got == "$expected" ]] && echo yes || echo no), late writes: $before -> $after, missing objects: $missing)"
  fi
done
echo "kill -9 campaign: $bad bad in $iterations iterations"
