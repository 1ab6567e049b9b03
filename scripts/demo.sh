#!/usr/bin/env bash
# Builds pipe and runs the reference pipeline (pipelines/student.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh
cargo build --release --locked
"${CARGO_TARGET_DIR:-target}/release/pipe" run pipelines/student.yaml "$@"
