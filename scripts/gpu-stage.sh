#!/usr/bin/env bash
# Stages here what scripts/gpu-check.sh needs on a GPU machine that has no network and no Rust
# (the device machines lent to sessions), as pieces small enough for one device call each;
# and, there, takes the pieces back.
#
#   scripts/gpu-stage.sh             # here: build, fetch, pack into .gpu/, print the calls
#   scripts/gpu-stage.sh --receive   # there: keep the pieces carried in .gpu/; once all are
#                                    # there, unpack and check them, and print the folder
#                                    # (for PIPE_GPU_STAGE)
#
# The pack (`pipe-gpu/`, xz-compressed, split into .gpu/pipe-gpu.tar.xz.partNN):
#   pipe, finetune_step   the release binaries (stripped): pipe and bench/finetune_step.rs;
#   onnxruntime-gpu/      libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so and
#                         libonnxruntime_providers_cuda.so from PyPI's onnxruntime-gpu wheel;
#   SHA256SUMS            of those files.
# .gpu/MANIFEST.sha256 lists every piece's sha256; each call carries it with its piece.
# The CUDA 13 runtime is not packed: the GPU machine's Python packages provide it
# (gpu-check.sh puts their lib folders on LD_LIBRARY_PATH).
#
# Environment: PIPE_BIN and PIPE_STEP_BIN (release binaries to pack; else built with cargo),
# PIPE_GPU_PIECE_BYTES (default 55000000: a piece, the manifest and a 3.4 MB
# checkout stay under a call's 64 MiB), PIPE_GPU_STASH (where --receive gathers the pieces;
# default .gpu/stash, ignored files that a warm device machine keeps between calls),
# CARGO_TARGET_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=1.31.1
stage_dir=$root/.gpu
stash=${PIPE_GPU_STASH:-$stage_dir/stash}
say() { echo "gpu-stage: $*" >&2; }

# --- there: gather the pieces, then unpack -----------------------------------------------------
receive() {
  [[ -f $stage_dir/MANIFEST.sha256 ]] || { say "no .gpu/MANIFEST.sha256 was carried"; exit 1; }
  mkdir -p "$stash"
  cp "$stage_dir/MANIFEST.sha256" "$stash/"
  local piece
  for piece in "$stage_dir"/pipe-gpu.tar.xz.part*; do
    if [[ -f $piece ]]; then cp "$piece" "$stash/"; fi
  done
  local have=0 total=0 name
  while read -r _ name; do
    total=$((total + 1))
    [[ -f $stash/$name ]] && have=$((have + 1))
  done <"$stash/MANIFEST.sha256"
  if ((have < total)); then
    say "holding $have of $total pieces in $stash"
    return 0
  fi
  (cd "$stash" && sha256sum --quiet -c MANIFEST.sha256) || { say "a piece is damaged"; exit 1; }
  rm -rf "$stash/pipe-gpu"
  cat "$stash"/pipe-gpu.tar.xz.part* | xz -d | tar -x -C "$stash"
  (cd "$stash/pipe-gpu" && sha256sum --quiet -c SHA256SUMS) || { say "an unpacked file is damaged"; exit 1; }
  say "all $total pieces unpacked and verified"
  echo "$stash/pipe-gpu"
}

case ${1:-} in
  --receive) receive; exit 0 ;;
  "") ;;
  -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu-stage.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

# --- here: build, fetch, pack, split -----------------------------------------------------------
piece_bytes=${PIPE_GPU_PIECE_BYTES:-55000000}
if [[ -z ${PIPE_BIN:-} || -z ${PIPE_STEP_BIN:-} ]]; then
  say "building pipe and bench/finetune_step.rs (release)..."
  (cd "$root" && cargo build --locked --quiet --release --workspace --bin pipe --example finetune_step)
fi
target=${CARGO_TARGET_DIR:-$root/target}/release
pipe_bin=${PIPE_BIN:-$target/pipe}
step_bin=${PIPE_STEP_BIN:-$target/examples/finetune_step}

mkdir -p "$stage_dir/wheels"
wheel=$(ls "$stage_dir/wheels"/onnxruntime_gpu-$version-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $wheel ]]; then
  say "fetching onnxruntime-gpu==$version from PyPI (once, about 256 MB)..."
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$stage_dir/wheels" \
    "onnxruntime-gpu==$version"
  wheel=$(ls "$stage_dir/wheels"/onnxruntime_gpu-$version-*.whl | head -n1)
fi

pack=$(mktemp -d)
trap 'rm -rf "$pack"' EXIT
mkdir -p "$pack/pipe-gpu/onnxruntime-gpu"
strip -o "$pack/pipe-gpu/pipe" "$pipe_bin"
strip -o "$pack/pipe-gpu/finetune_step" "$step_bin"
unzip -q -j -d "$pack/pipe-gpu/onnxruntime-gpu" "$wheel" \
  "onnxruntime/capi/libonnxruntime.so.$version" \
  "onnxruntime/capi/libonnxruntime_providers_shared.so" \
  "onnxruntime/capi/libonnxruntime_providers_cuda.so"
(cd "$pack/pipe-gpu" && sha256sum pipe finetune_step onnxruntime-gpu/* >SHA256SUMS)

say "packing (xz)..."
rm -f "$stage_dir"/pipe-gpu.tar.xz.part* "$stage_dir/MANIFEST.sha256"
tar -C "$pack" -cf - pipe-gpu | xz -T0 -6 |
  split -b "$piece_bytes" -d -a 2 - "$stage_dir/pipe-gpu.tar.xz.part"
(cd "$stage_dir" && sha256sum pipe-gpu.tar.xz.part* >MANIFEST.sha256)

# --- the calls ---------------------------------------------------------------------------------
pieces=("$stage_dir"/pipe-gpu.tar.xz.part*)
n=${#pieces[@]}
tree=$(cd "$root" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
biggest=$(stat -c %s "${pieces[@]}" | sort -n | tail -n1)
say "$n pieces of at most $biggest bytes; the checkout's tracked files are $tree bytes"
if ((biggest + tree > 64 * 1024 * 1024)); then
  say "WARNING: a piece and the checkout exceed 64 MiB: set PIPE_GPU_PIECE_BYTES lower"
fi
cat <<EOF

Device calls, back to back (a warm machine keeps the checkout's ignored files between calls;
it stays warm about 30 s after each). Each call carries the manifest and one piece:
EOF
i=0
for p in "${pieces[@]}"; do
  i=$((i + 1))
  carry="[\".gpu/MANIFEST.sha256\", \".gpu/$(basename "$p")\"]"
  if ((i < n)); then
    echo "  call $i: carry $carry, timeout_s 120, command: scripts/gpu-stage.sh --receive"
  else
    echo "  call $i: carry $carry, timeout_s 480, command:"
    echo "    set -o pipefail; s=\$(scripts/gpu-stage.sh --receive) && [ -n \"\$s\" ] &&"
    echo "    PIPE_GPU_STAGE=\$s scripts/gpu-check.sh 2>&1 | tee \$OUT/gpu-check.log"
  fi
done
echo "then give_back. The JSON lines are in \$OUT/gpu-check.log."
