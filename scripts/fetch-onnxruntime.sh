#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from the PyPI wheel `onnxruntime==1.31.1`
# into .tools/onnxruntime/ (git-ignored), where `pipe` finds it without any
# environment variable. Idempotent: does nothing when the library is there.
set -euo pipefail
version=1.31.1
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.tools/onnxruntime"
lib="$dest/libonnxruntime.so.$version"
if [[ -f $lib ]]; then
  exit 0
fi
mkdir -p "$dest"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
echo "fetching onnxruntime==$version from PyPI (once)..." >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "onnxruntime==$version" -d "$wheels"
wheel=$(ls "$wheels"/onnxruntime-*.whl)
python3 - "$wheel" "$dest" "$version" <<'PY'
import sys, zipfile, os
wheel, dest, version = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    data = z.read(name)
tmp = os.path.join(dest, f".libonnxruntime.so.{version}.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(dest, f"libonnxruntime.so.{version}"))
PY
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so"
echo "onnxruntime $version: $lib" >&2
