#!/usr/bin/env bash
# `pipe serve` against `pipe predict` on the same texts (the student pipeline's bundle):
#   - serve, one client (batch 1): requests/s and p50/p99 latency of one text per request;
#   - serve, 16 clients at once: the same, with the server batching across requests;
#   - the same beside one request of 200,000 texts (BIG): how long the small ones wait;
#   - `pipe predict TEXT` per text (a process, a model load and one run each): its latency;
#   - `pipe predict --file` over all texts at once: its throughput.
# Usage: bench/serve.sh [TEXTS] (default 200). BIG=n: the texts of the big request (default
# 200000). PIPE=path/to/pipe picks the binary (default: the release build, built when
# missing). Numbers depend on the cores free at the time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
texts=${1:-200}
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/release/pipe}
[[ -x $pipe ]] || (cd "$root" && cargo build --release --locked -q)
manifest=$root/pipelines/student.yaml
"$pipe" run "$manifest" export-onnx -q
work=$(mktemp -d)
server=""
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
python3 - "$root/pipelines/data/student_questions.csv" "$texts" > "$work/texts.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))[: int(sys.argv[2])]
out = csv.writer(sys.stdout)
out.writerow(["text"])
for row in rows:
    out.writerow([row["text"]])
PY
# The address is the server's answer, on stdout.
"$pipe" serve --manifest "$manifest" export-onnx --port 0 --max-body-bytes 67108864 \
  > "$work/serve.out" 2> "$work/serve.log" &
server=$!
for _ in $(seq 300); do
  grep -q "http://" "$work/serve.out" && break
  sleep 0.1
done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out" | head -1)
[[ -n $url ]] || { cat "$work/serve.log"; exit 1; }
python3 "$root/bench/serve_load.py" "$url" "$work/texts.csv" 1
python3 "$root/bench/serve_load.py" "$url" "$work/texts.csv" 16
python3 "$root/bench/serve_load.py" "$url" "$work/texts.csv" 16 "${BIG:-200000}"
python3 - "$pipe" "$manifest" "$work/texts.csv" <<'PY'
import csv, statistics, subprocess, sys, time
pipe, manifest, path = sys.argv[1:]
texts = [r["text"] for r in csv.DictReader(open(path))]
latencies = []
for text in texts[:20]:
    start = time.perf_counter()
    subprocess.run([pipe, "predict", "--manifest", manifest, "export-onnx", text, "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    latencies.append(time.perf_counter() - start)
latencies.sort()
print(f"pipe predict TEXT (one process per text, 20 texts): {1 / statistics.mean(latencies):.1f} texts/s, "
      f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
start = time.perf_counter()
subprocess.run([pipe, "predict", "--manifest", manifest, "export-onnx", "--file", path, "--json"],
               check=True, stdout=subprocess.DEVNULL)
took = time.perf_counter() - start
print(f"pipe predict --file ({len(texts)} texts, one process): {len(texts) / took:.1f} texts/s, {took * 1000:.0f} ms in all")
PY
