#!/usr/bin/env bash
# Runs every test of the workspace. Fetches what the tests need first
# (ONNX Runtime's library, Python's `onnx` for the model checker tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh
if ! python3 -c "import onnx" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "onnx>=1.17" numpy
fi
cargo test --workspace --locked "$@"
