#!/usr/bin/env bash
# Restore-kill campaign (issue #27): a stage whose out is a folder of FILES
# files is cached under two keys; each iteration switches the manifest to the
# other key (or removes the folder), starts `pipe run`, which restores it
# from the cache, and kills it (SIGTERM or SIGKILL, at random) at a random
# moment. The next run must restore, never rerun, never trash pipe's files,
# and leave the folder exactly as cached.
# usage: bench/restore_kill_campaign.sh [ITERATIONS] [FILES]   (PIPE=path/to/pipe)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pipe=${PIPE:-${CARGO_TARGET_DIR:-$root/target}/debug/pipe}
iterations=${1:-30}
files=${2:-3000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
manifest() {
  printf 'pipeline: big\nstages:\n  s:\n    run: mkdir -p big && for i in $(seq %s); do echo %s > big/f$i; done\n    outs: [big]\n' "$files" "$1" > p.yaml
}
for word in one two; do manifest $word; "$pipe" run p.yaml -q; done
mid=0 reran=0 trashed=0 wrong=0
for i in $(seq "$iterations"); do
  word=$([[ $((i % 2)) == 0 ]] && echo one || echo two)
  [[ $((RANDOM % 3)) == 0 ]] && rm -rf big
  manifest $word
  "$pipe" run p.yaml -q & pid=$!
  sleep "0.$(printf '%03d' $((RANDOM % 400)))"
  kill -s "$([[ $((RANDOM % 2)) == 0 ]] && echo TERM || echo KILL)" $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  [[ -e .pipe/restoring/big/s.json ]] && mid=$((mid + 1))
  status=$("$pipe" run p.yaml --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stages"][0]["status"])')
  [[ $status == cached ]] || reran=$((reran + 1))
  [[ -d .pipe/trash ]] && trashed=$((trashed + 1)) && rm -rf .pipe/trash
  n=$(grep -lx "$word" big/* | wc -l)
  [[ $n == "$files" && $(ls -A big | wc -l) == "$files" ]] || wrong=$((wrong + 1))
done
echo "restore-kill campaign: $iterations kills, $mid during a restore; reran $reran, trashed pipe's files $trashed, wrong folder $wrong"
[[ $reran == 0 && $trashed == 0 && $wrong == 0 ]]
