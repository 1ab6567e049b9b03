#!/usr/bin/env bash
# Proves fine-tuning on CUDA end to end on a machine with an NVIDIA GPU, using only
# this repository and what `scripts/fetch-onnxruntime.sh --gpu [--with-cuda-runtime]`
# put in .tools/ (plus Rust, Python 3 and the NVIDIA driver).
#
#   1. builds pipe (release) and asks `pipe doctor --json` whether a session runs on cuda:0;
#   2. trains the same tiny GPT-Neo for 20 steps on the CPU and on cuda:0 (fp32, TF32 off)
#      and compares the losses and the final weights (tolerances below); the CUDA run must
#      have kept its training state in device memory (`training_state: device` and the
#      arena's peak, `device_peak_memory_bytes`, in its metrics);
#   3. times training steps of random-init models of the tiny, GPT-Neo 125M and 2.7B
#      shapes on cuda:0 (TF32 on; 2.7B with LoRA, and in full when the GPU has the memory),
#      with peak device memory and the PCIe traffic while training (`nvidia-smi dmon`): with
#      the state on the device, a step moves its batch and a loss, not the weights.
#
# Prints one JSON line per result on stdout, progress on stderr. Exit codes:
#   0   every check passed;
#   1   a check failed (pipe cannot use the GPU, or CPU and CUDA disagree);
#   77  skipped: no NVIDIA GPU here (`nvidia-smi -L` lists none) -- the automake
#       convention for "not applicable", so CI can tell "skipped" from "passed".
# Takes about 5 minutes on one H100 (most of it building pipe and the 2.7B model).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "gpu-check: $*" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo '{"check":"gpu","ok":null,"skipped":"no NVIDIA GPU: nvidia-smi is missing or lists no GPU"}'
  say "SKIPPED: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing was checked"
  exit 77
fi

pipe=${PIPE_BIN:-}
if [[ -z $pipe ]]; then
  say "building pipe (release)..."
  (cd "$root" && cargo build --release --quiet --bin pipe)
  pipe="${CARGO_TARGET_DIR:-$root/target}/release/pipe"
fi

work=$(mktemp -d)
sampler=
dmon=
cleanup() {
  [[ -n $sampler ]] && kill "$sampler" 2>/dev/null || true
  [[ -n $dmon ]] && kill "$dmon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. can pipe run a session on cuda:0? ---------------------------------------------
"$pipe" doctor --json >"$work/doctor.json"
python3 - "$work/doctor.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
c = d.get("cuda") or {}
line = {"check": "doctor", "ok": bool(c.get("available")), "device": c.get("device"),
        "name": c.get("name"), "memory_total_bytes": c.get("memory_total_bytes"),
        "library": (d.get("onnxruntime") or {}).get("loaded"),
        "cuda_runtime": c.get("cuda_runtime"), "cuda_driver": c.get("cuda_driver")}
if not c.get("available"):
    line["reason"], line["fix"] = c.get("reason"), c.get("fix")
print(json.dumps(line))
if not c.get("available"):
    print(f"gpu-check: FAILED: this machine has a GPU but pipe cannot use it: {c.get('reason')}\n"
          f"gpu-check: help: {c.get('fix')}", file=sys.stderr)
    sys.exit(1)
PY

# --- a project with the reference data --------------------------------------------------
mkdir -p "$work/data"
cp "$root/pipelines/data/student_questions.csv" "$work/data/"

# manifest NAME DEVICE MODEL STEPS BATCH LR EXTRA: writes $work/NAME.yaml.
manifest() {
  cat >"$work/$1.yaml" <<EOF
pipeline: $1
stages:
  ingest: { source: data/student_questions.csv, text: text, label: label }
  split: { from: ingest, test: 0.2, shuffle: true, seed: 42 }
  tokenize: { from: split, tokenizer: { train: { vocab_size: 4096 } }, max_length: 64 }
  finetune:
    from: tokenize
    model: $3
    max_steps: $4
    batch_size: $5
    learning_rate: $6
    checkpoint_every: 0
    device: $2
$7
EOF
}

# finetune NAME: runs the manifest's finetune stage; its output folder is $work/.pipe/out/NAME/finetune.
finetune() {
  (cd "$work" && "$pipe" run "$1.yaml" finetune --quiet >/dev/null)
}

# --- 2. CPU and CUDA agree ---------------------------------------------------------------
steps=20
lr=5.0e-4
say "training the tiny model for $steps steps on the CPU and on cuda:0..."
manifest compare-cpu cpu '{ config: tiny, seed: 0 }' $steps 16 $lr ''
manifest compare-cuda cuda:0 '{ config: tiny, seed: 0 }' $steps 16 $lr '    tf32: false'
finetune compare-cpu
finetune compare-cuda
# Tolerances: the first loss is one forward pass from identical weights, so only summation
# order differs (relative 1e-4). Later steps feed those differences through AdamW, whose
# update is at most about lr per step: losses stay within 1e-2 relative, and no weight may
# move more than 2 * lr * steps apart (the most two Adam runs can drift); on average
# weights must agree to 1 % of that bound.
python3 - "$work/.pipe/out" $steps $lr <<'PY'
import json, struct, sys, array, os
out, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def losses(name):
    rows = [json.loads(l) for l in open(os.path.join(out, name, "finetune", "train_log.jsonl"))]
    return [r["loss"] for r in rows if "loss" in r]
def weights(name):
    path = os.path.join(out, name, "finetune", "model", "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for key, meta in header.items():
        if key == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        tensors[key] = array.array("f", data[a:b])
    return tensors
cpu_l, cuda_l = losses("compare-cpu"), losses("compare-cuda")
rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(cpu_l, cuda_l)]
cpu_w, cuda_w = weights("compare-cpu"), weights("compare-cuda")
def metrics(name):
    return json.load(open(os.path.join(out, name, "finetune", "metrics.json")))
cpu_m, cuda_m = metrics("compare-cpu"), metrics("compare-cuda")
on_device = (cpu_m.get("training_state") == "host" and cuda_m.get("training_state") == "device"
             and (cuda_m.get("device_peak_memory_bytes") or 0) > 0)
max_abs, total, count = 0.0, 0.0, 0
for k, a in cpu_w.items():
    b = cuda_w[k]
    for x, y in zip(a, b):
        d = abs(x - y)
        max_abs = max(max_abs, d)
        total += d
        count += 1
bound = 2 * lr * steps
ok = (len(cpu_l) == len(cuda_l) == steps and rel[0] <= 1e-4 and max(rel) <= 1e-2
      and max_abs <= bound and total / count <= 0.01 * bound and on_device)
print(json.dumps({"check": "cpu-vs-cuda", "ok": ok, "steps": steps, "tf32": False,
                  "first_loss_rel_diff": rel[0], "max_loss_rel_diff": max(rel),
                  "max_weight_abs_diff": max_abs, "mean_weight_abs_diff": total / count,
                  "weights": count, "cuda_training_state": cuda_m.get("training_state"),
                  "cuda_device_peak_memory_bytes": cuda_m.get("device_peak_memory_bytes"),
                  "tolerance": {"first_loss_rel": 1e-4, "loss_rel": 1e-2,
                                "weight_abs": bound, "mean_weight_abs": 0.01 * bound}}))
if not ok:
    print("gpu-check: FAILED: CPU and CUDA training disagree beyond the tolerance, or the "
          "CUDA run did not keep its state on the device", file=sys.stderr)
    sys.exit(1)
PY

# --- 3. timings ----------------------------------------------------------------------------
# Peak device memory: the most nvidia-smi reports in use on GPU 0 while a run lasts (this
# process and any other; ONNX Runtime's arena keeps what it took, so this is the peak).
sample_memory() {
  local peak=0 used
  while :; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null || echo 0)
    ((used > peak)) && peak=$used && echo "$peak" >"$work/peak_mib"
    sleep 0.2
  done
}

# bench NAME MODEL BATCH STEPS EXTRA: times the finetune stage of a fresh manifest on cuda:0.
bench() {
  local name=$1
  manifest "$name" cuda:0 "$2" "$4" "$3" 1.0e-5 "$5"
  if ! (cd "$work" && "$pipe" validate "$name.yaml" >/dev/null 2>"$work/validate.err"); then
    python3 -c 'import json,sys; print(json.dumps({"bench": sys.argv[1], "ok": None, "skipped": open(sys.argv[2]).read().strip().splitlines()[0]}))' \
      "$name" "$work/validate.err"
    return 0
  fi
  echo 0 >"$work/peak_mib"
  sample_memory &
  sampler=$!
  # PCIe throughput of GPU 0 once a second (rxpci/txpci, MB/s), for the traffic line below.
  nvidia-smi dmon -i 0 -s t -d 1 >"$work/dmon.txt" 2>/dev/null &
  dmon=$!
  local began=$SECONDS
  finetune "$name"
  kill "$sampler" "$dmon" 2>/dev/null || true
  wait "$sampler" "$dmon" 2>/dev/null || true
  sampler= dmon=
  python3 - "$work/.pipe/out/$name/finetune" "$name" "$(cat "$work/peak_mib")" $((SECONDS - began)) "$3" "$work/dmon.txt" <<'PY'
import json, sys, os
out, name, peak_mib, wall, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# `nvidia-smi dmon -s t`: "# gpu rxpci txpci" headers, then "0 <rx MB/s> <tx MB/s>" rows.
pcie = []
for line in open(sys.argv[6]):
    parts = line.split()
    if len(parts) >= 3 and not line.startswith("#"):
        try:
            pcie.append((float(parts[1]), float(parts[2])))
        except ValueError:
            pass
mean = lambda xs: sum(xs) / len(xs) if xs else None
# For comparison: what host state would move per step (the weights in, the gradients out, f32).
rows = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl"))]
steps = [r for r in rows if "loss" in r]
timed = steps[2:] if len(steps) > 3 else steps  # the first steps warm CUDA and the arena up
seconds = sum(r["seconds"] for r in timed)
tokens = sum(r["tokens"] for r in timed)
metrics = json.load(open(os.path.join(out, "metrics.json")))
print(json.dumps({"bench": name, "ok": True, "device": metrics.get("device"),
                  "params": metrics.get("parameters"), "batch": batch,
                  "steps_timed": len(timed), "step_s": seconds / len(timed),
                  "tokens_per_s": tokens / seconds, "peak_device_memory_mib": peak_mib,
                  "peak_host_memory_bytes": metrics.get("peak_memory_bytes"),
                  "training_state": metrics.get("training_state"),
                  "device_peak_memory_bytes": metrics.get("device_peak_memory_bytes"),
                  "pcie_rx_mb_s_mean": mean([r for r, _ in pcie]),
                  "pcie_tx_mb_s_mean": mean([t for _, t in pcie]),
                  "host_state_bytes_per_step": 8 * (metrics.get("trained_parameters")
                                                    or metrics.get("parameters") or 0),
                  "wall_s": wall}))
PY
}

neo_125m='{ config: { hidden_size: 768, num_layers: 12, num_heads: 12, max_position_embeddings: 2048, attention_types: [[[global, local], 6]], vocab_size: 50257 }, seed: 0 }'
neo_2_7b='{ config: { hidden_size: 2560, num_layers: 32, num_heads: 20, max_position_embeddings: 2048, attention_types: [[[global, local], 16]], vocab_size: 50257 }, seed: 0 }'
say "timing tiny, 125M-shape and 2.7B-shape steps on cuda:0..."
bench tiny '{ config: tiny, seed: 0 }' 16 30 ''
bench gpt-neo-125m-shape "$neo_125m" 8 12 ''
bench gpt-neo-2_7b-shape-lora "$neo_2_7b" 8 6 '    lora: { r: 8, alpha: 16, targets: [q_proj, v_proj] }'
# Full fine-tuning keeps weights, gradients and two AdamW moments (16 B per parameter) plus
# activations: ask for 64 GB free (2.7e9 x 16 B = 43 GB, and room for the step's buffers).
free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i 0)
if ((free_mib >= 64 * 1024)); then
  bench gpt-neo-2_7b-shape-full "$neo_2_7b" 8 6 ''
else
  echo "{\"bench\":\"gpt-neo-2_7b-shape-full\",\"ok\":null,\"skipped\":\"needs 64 GiB free on GPU 0, has $free_mib MiB\"}"
fi
say "PASSED: pipe trains on CUDA and agrees with the CPU"
