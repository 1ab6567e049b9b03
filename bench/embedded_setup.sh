# Sourced, from the repository root with `threads` set, by the benchmarks that run `pipe` on
# the embedded all-MiniLM-L6-v2 (encoder.sh, frozen_dtype.sh, encoder_eval.sh): fetches ONNX
# Runtime and the model, builds a release pipe unless PIPE=path/to/pipe names a binary, sets
# `pipe` (an absolute path: the runs `cd` into their folder), `minilm` (the model's folder,
# for the Python side) and `work` (a temporary folder holding a copy of pipelines/data,
# removed on exit), and prints the CPU.
./scripts/fetch-onnxruntime.sh
./scripts/fetch-model.sh
if [[ -z "${PIPE:-}" ]]; then
  cargo build --release --locked --workspace --bin pipe
fi
minilm=$PWD/.tools/models/all-MiniLM-L6-v2
pipe=$(realpath "${PIPE:-${CARGO_TARGET_DIR:-$PWD/target}/release/pipe}")
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') · $threads threads"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r pipelines/data "$work/"
