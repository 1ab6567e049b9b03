#!/usr/bin/env bash
# The remote cache against a local S3 server (s3s-fs on 127.0.0.1):
#  1. push and pull throughput of one stage whose output is a 500 MB folder
#     (four 100 MB files and one hundred 1 MB files, random bytes);
#  2. the time a fresh clone of a pipeline is fully restored from the remote
#     (`pipe run` reading through) against the time of running it.
# Usage: bench/remote.sh [MANIFEST]   (default pipelines/student.yaml; its
# folder is copied, without .pipe/ and lockfiles, into each clone).
# PIPE: the pipe binary (default: the release build). PIPE_TEST_S3S_FS: s3s-fs
# (default .tools/s3s/bin/s3s-fs, as scripts/test.sh installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
manifest=$(realpath "${1:-$root/pipelines/student.yaml}")
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/release/pipe}
[[ -x $pipe ]] || (cd "$root" && cargo build --release --locked -q)
s3s=${PIPE_TEST_S3S_FS:-$root/.tools/s3s/bin/s3s-fs}
if [[ ! -x $s3s ]]; then
  echo "s3s-fs not found at $s3s; install it with" >&2
  echo "  cargo install s3s-fs@0.14.1 --features binary --locked --root .tools/s3s" >&2
  exit 2
fi

work=$(mktemp -d)
server=""
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  chmod -R u+w "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/server/bench"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/server" \
  >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
unset PIPE_STORE

# Seconds (3 decimals) that "$@" takes; its output goes to $work/last.log.
timed() {
  local start=$EPOCHREALTIME
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
  python3 -c "print(f'{$EPOCHREALTIME - $start:.3f}')"
}
rate() { python3 -c "print(f'{$1 / $2:.0f}')"; }

# 1. Throughput on a 500 MB folder output.
mkdir -p "$work/big-a" "$work/big-b"
cat >"$work/big-a/big.yaml" <<'YAML'
pipeline: big
remote: s3://bench/big
stages:
  data:
    run: >-
      mkdir -p out/data &&
      for i in 1 2 3 4; do head -c 100000000 /dev/urandom > out/data/large-$i.bin; done &&
      for i in $(seq 100); do head -c 1000000 /dev/urandom > out/data/small-$i.bin; done
    outs: [out/data]
YAML
(cd "$work/big-a" && "$pipe" run big.yaml -q --no-remote)
mb=500
push=$(cd "$work/big-a" && timed "$pipe" push big.yaml)
cp "$work/big-a/big.yaml" "$work/big-a/big.lock" "$work/big-b/"
pull=$(cd "$work/big-b" && timed "$pipe" pull big.yaml)
echo "push, 500 MB folder (104 files): ${push} s, $(rate $mb "$push") MB/s"
echo "pull, 500 MB folder (104 files): ${pull} s, $(rate $mb "$pull") MB/s (hash-verified into the store)"

# 2. A fresh clone restored from the remote, against running the pipeline.
src=$(dirname "$manifest")
name=$(basename "$manifest")
for clone in run-a restore-b; do
  mkdir -p "$work/$clone"
  (cd "$src" && tar cf - --exclude=.pipe --exclude='*.lock' .) | tar xf - -C "$work/$clone"
done
export PIPE_REMOTE=s3://bench/pipeline
ran=$(cd "$work/run-a" && timed "$pipe" run "$name")
(cd "$work/run-a" && "$pipe" push "$name" -q)
restored=$(cd "$work/restore-b" && timed "$pipe" run "$name")
grep -q ": 0 ran," "$work/last.log" || { echo "the fresh clone ran stages:" >&2; cat "$work/last.log" >&2; exit 1; }
echo "$name: running it ${ran} s; a fresh clone restored from the remote ${restored} s"
