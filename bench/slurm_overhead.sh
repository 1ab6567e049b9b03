#!/usr/bin/env bash
# Overhead per stage of the Slurm executor: a chain of N (default 10) no-op
# command stages, each needing the one before it, run from a fresh store with
# `--executor local` and with `--executor slurm`, ROUNDS (default 3) times each;
# prints the median wall time of each and the difference per stage. Needs a
# cluster: run it as `scripts/with-slurm.sh bench/slurm_overhead.sh` (the
# single-node cluster on this machine) or on a login node.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stages=${1:-10}
rounds=${ROUNDS:-3}
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/release/pipe}
[[ -x $pipe ]] || (cd "$root" && cargo build --release --locked -q)
[[ -n ${SLURM_CONF:-} ]] || command -v sbatch >/dev/null \
  || { echo "no Slurm cluster: run scripts/with-slurm.sh $0" >&2; exit 2; }
# In .tools/ (git-ignored): on the filesystem of the clone, which a cluster's nodes share.
mkdir -p "$root/.tools"
work=$(mktemp -d "$root/.tools/slurm-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
{
  echo "pipeline: chain"
  echo "stages:"
  echo "  s1:"
  echo "    run: echo 1 > s1.txt"
  echo "    outs: [s1.txt]"
  for ((i = 2; i <= stages; i++)); do
    echo "  s$i:"
    echo "    run: cat s$((i - 1)).txt > s$i.txt"
    echo "    deps: [s$((i - 1)).txt]"
    echo "    outs: [s$i.txt]"
  done
} > chain.yaml
python3 - "$pipe" "$stages" "$rounds" <<'PY'
import shutil, statistics, subprocess, sys, time
pipe, stages, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
median = {}
for executor in ["local", "slurm"]:
    times = []
    for _ in range(rounds):
        shutil.rmtree(".pipe", ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([pipe, "run", "chain.yaml", "-q", "--executor", executor], check=True)
        times.append(time.perf_counter() - start)
    median[executor] = statistics.median(times)
    print(f"{executor:>5}: {stages} chained no-op stages in {median[executor]:.2f} s "
          f"(median of {rounds}; min {min(times):.2f}, max {max(times):.2f})")
extra = (median["slurm"] - median["local"]) / stages
print(f"Slurm overhead: {extra:.2f} s per stage")
PY
