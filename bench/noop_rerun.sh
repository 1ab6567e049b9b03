#!/usr/bin/env bash
# No-op rerun of a 6-stage pipeline: median wall time of the whole `pipe run`
# process over 10 runs (DESIGN §8 target: under 50 ms). Compares with
# `dvc repro` on the same 6 stages when `dvc` is installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/release/pipe}
[[ -x $pipe ]] || (cd "$root" && cargo build --release --locked -q)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "alpha" > a.txt
{
  echo "pipeline: six"
  echo "stages:"
  prev=a.txt
  for i in 1 2 3 4 5 6; do
    echo "  s$i:"
    echo "    run: cat $prev > s$i.txt"
    echo "    deps: [$prev]"
    echo "    outs: [s$i.txt]"
    prev=s$i.txt
  done
} > six.yaml
"$pipe" run six.yaml -q
python3 - "$pipe" <<'PY'
import statistics, subprocess, sys, time
pipe = sys.argv[1]
times = []
for _ in range(10):
    start = time.perf_counter()
    subprocess.run([pipe, "run", "six.yaml", "-q"], check=True)
    times.append(time.perf_counter() - start)
print(f"pipe no-op rerun, 6 stages: median {statistics.median(times)*1000:.1f} ms "
      f"(min {min(times)*1000:.1f}, max {max(times)*1000:.1f}) over {len(times)} runs")
PY
if command -v dvc >/dev/null; then
  git init -q . && dvc init -q
  prev=a.txt
  for i in 1 2 3 4 5 6; do dvc stage add -q -n s$i -d $prev -o s$i.txt "cat $prev > s$i.txt"; prev=s$i.txt; done
  rm -f s*.txt && dvc repro -q >/dev/null
  python3 - <<'PY'
import statistics, subprocess, time
times = []
for _ in range(10):
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], check=True, stdout=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
print(f"dvc repro no-op, 6 stages: median {statistics.median(times)*1000:.1f} ms")
PY
fi
