#!/usr/bin/env bash
# Runs every test of the workspace. Fetches what the tests need first
# (ONNX Runtime's library; Python's `onnx` for the model checker tests and
# `onnxruntime` for the test that runs an exported bundle from Python).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh
if ! python3 -c "import onnx" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "onnx>=1.17" numpy
fi
if ! python3 -c "import onnxruntime" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check onnxruntime==1.31.1
fi
cargo test --workspace --locked "$@"
