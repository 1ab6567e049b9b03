#!/usr/bin/env bash
# Proves fine-tuning on CUDA end to end on a machine with an NVIDIA GPU (driver 580 or later),
# or rehearses every step of that proof on the CPU provider (--rehearse, run by scripts/test.sh).
#
#   scripts/gpu-check.sh                 # on the GPU machine
#   scripts/gpu-check.sh --rehearse      # anywhere: the same steps on the CPU provider
#   scripts/gpu-check.sh --full-2.7b     # also full fine-tuning of the 2.7B shape (64 GiB free)
#
# What it runs (the environment may name prebuilt files; nothing is built or fetched then):
#   PIPE_GPU_STAGE   a folder unpacked by `scripts/gpu-stage.sh --receive`: its `pipe`,
#                    `finetune_step` and `onnxruntime-gpu/` are used (no cargo, no network);
#   PIPE_BIN, PIPE_STEP_BIN   the pipe binary and the `finetune_step` example (else built with
#                    cargo: release, or debug with --rehearse, which CI has already built);
#   ORT_DYLIB_PATH   ONNX Runtime (else pipe's own search, `.tools/onnxruntime-gpu/` first).
# When the system has no CUDA 13 runtime, the CUDA 13 and cuDNN libraries of Python's
# `nvidia-*` packages (site-packages/nvidia/*/lib) go on LD_LIBRARY_PATH.
#
# Steps:
#   1. the NVIDIA driver is 580 or later (CUDA 13 needs it), and `pipe doctor --json` creates a
#      session on cuda:0;
#   2. the same tiny GPT-Neo trains for 20 steps on the CPU (state on the host) and on cuda:0
#      (fp32, TF32 off; the CUDA side forced to run, never restored from the CPU run's cache)
#      and the losses and final weights agree (tolerances below); the CUDA run reports
#      `device: cuda:0`, `training_state: device` and its arenas' peak;
#   3. times training steps of random-init models on cuda:0 (TF32 on): the tiny and the
#      GPT-Neo 125M shape as `finetune` stages, the 2.7B shape with LoRA as a step benchmark
#      (bench/finetune_step.rs: the stage's step graph and trainer, without writing a 10 GB
#      model folder), with peak device memory, PCIe traffic and the host process's peak.
# --rehearse runs all of it on the CPU provider: the "CUDA" side and every benchmark keep their
# state in ONNX Runtime buffers (PIPE_DEVICE_STATE=1, the code path of CUDA), the benchmarks
# take a few steps, the 2.7B shape keeps 2 of its 32 blocks, and nvidia-smi is not asked.
#
# Prints one JSON line per result on stdout, progress on stderr. Exit codes:
#   0   every check passed;
#   1   a check failed (old driver, pipe cannot use the GPU, CPU and CUDA disagree, a
#       benchmark did not validate or run);
#   2   usage error;
#   77  skipped: no NVIDIA GPU here (`nvidia-smi -L` lists none) and no --rehearse.
# Estimated at about 4 minutes on one H100 with staged binaries (not measured there yet);
# the rehearsal under a minute on 2 CPU cores with debug binaries (2.7B-shape init included).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "gpu-check: $*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

rehearse=0
full_2_7b=0
for arg in "$@"; do
  case $arg in
    --rehearse) rehearse=1 ;;
    --full-2.7b) full_2_7b=1 ;;
    -h | --help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

# driver_check VERSION: passes for an NVIDIA driver of 580 or later (CUDA 13's minimum).
driver_check() {
  local major=${1%%.*}
  if ! [[ $major =~ ^[0-9]+$ ]]; then
    say "cannot read the NVIDIA driver version: nvidia-smi says '$1'"
    return 1
  fi
  if ((major < 580)); then
    say "the NVIDIA driver is $1; CUDA 13, which onnxruntime-gpu 1.31 is built for, needs 580" \
      "or later: update the driver"
    return 1
  fi
}

if ((rehearse)); then
  dev=cpu
  # The "CUDA" side of every run keeps its state in ONNX Runtime buffers, as on CUDA.
  on_dev=(env PIPE_DEVICE_STATE=1)
  # The parser itself, on versions the GPU machine could report.
  driver_check 580.65.06 && driver_check 590.44.01 || fail "driver 580/590 refused"
  ! driver_check 575.57.08 2>/dev/null || fail "driver 575 accepted"
  ! driver_check "" 2>/dev/null || fail "an empty driver version accepted"
  echo '{"check":"driver","ok":true,"rehearsed":"580.65.06 and 590.44.01 pass, 575.57.08 and \"\" fail"}'
else
  dev=cuda:0
  on_dev=(env)
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo '{"check":"gpu","ok":null,"skipped":"no NVIDIA GPU: nvidia-smi is missing or lists no GPU"}'
    say "SKIPPED: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing was checked"
    exit 77
  fi
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 | head -n1 | tr -d ' ')
  driver_ok=true
  driver_check "$driver" || driver_ok=false
  echo "{\"check\":\"driver\",\"ok\":$driver_ok,\"driver\":\"$driver\",\"needs\":\"580 or later (CUDA 13)\"}"
  [[ $driver_ok == true ]] || fail "the NVIDIA driver is too old for CUDA 13 (see above)"
fi

# --- what runs -------------------------------------------------------------------------------
if [[ -n ${PIPE_GPU_STAGE:-} ]]; then
  [[ -x $PIPE_GPU_STAGE/pipe ]] || fail "PIPE_GPU_STAGE=$PIPE_GPU_STAGE has no pipe binary"
  PIPE_BIN=${PIPE_BIN:-$PIPE_GPU_STAGE/pipe}
  PIPE_STEP_BIN=${PIPE_STEP_BIN:-$PIPE_GPU_STAGE/finetune_step}
  export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PIPE_GPU_STAGE/onnxruntime-gpu/libonnxruntime.so.1.31.1}
fi
if [[ -z ${PIPE_BIN:-} || -z ${PIPE_STEP_BIN:-} ]]; then
  profile=release
  ((rehearse)) && profile=dev
  say "building pipe and bench/finetune_step.rs (cargo profile $profile)..."
  (cd "$root" && cargo build --locked --quiet --profile "$profile" --workspace --bin pipe \
    --example finetune_step)
  target="${CARGO_TARGET_DIR:-$root/target}/$( ((rehearse)) && echo debug || echo release)"
  PIPE_BIN=${PIPE_BIN:-$target/pipe}
  PIPE_STEP_BIN=${PIPE_STEP_BIN:-$target/examples/finetune_step}
fi
pipe=$PIPE_BIN
step_bin=$PIPE_STEP_BIN
[[ -x $pipe ]] || fail "no pipe binary at $pipe"
[[ -x $step_bin ]] || fail "no finetune_step binary at $step_bin"

# The CUDA 13 runtime: the system's, else the `nvidia-*` Python packages' (PyTorch's).
if ! ldconfig -p 2>/dev/null | grep -q 'libcudart\.so\.13'; then
  nvidia_libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib")))))' \
    2>/dev/null || true)
  if [[ -n $nvidia_libs ]]; then
    export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  say "CUDA libraries from Python's nvidia packages: ${nvidia_libs:-none}"
fi

work=$(mktemp -d)
samplers=()
cleanup() {
  for p in ${samplers[@]+"${samplers[@]}"}; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. can pipe run a session on the device? ------------------------------------------------
"$pipe" doctor --json >"$work/doctor.json"
python3 - "$work/doctor.json" "$dev" <<'PY'
import json, sys
d, dev = json.load(open(sys.argv[1])), sys.argv[2]
c = d.get("cuda") or {}
library = (d.get("onnxruntime") or {}).get("loaded")
ok = bool(library) and (dev == "cpu" or bool(c.get("available")))
line = {"check": "doctor", "ok": ok, "device": dev, "library": library,
        "cuda_available": c.get("available"), "name": c.get("name"),
        "memory_total_bytes": c.get("memory_total_bytes"),
        "cuda_runtime": c.get("cuda_runtime"), "cuda_driver": c.get("cuda_driver")}
if dev != "cpu" and not c.get("available"):
    line["reason"], line["fix"] = c.get("reason"), c.get("fix")
print(json.dumps(line))
if not ok:
    print(f"gpu-check: FAILED: pipe cannot use {dev}: {c.get('reason') or 'no ONNX Runtime'}\n"
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
  (cd "$work" && "$pipe" validate "$1.yaml" >/dev/null 2>"$work/validate.err") ||
    fail "the manifest $1.yaml does not validate: $(cat "$work/validate.err")"
}

# finetune NAME [ENV...]: runs the manifest's finetune stage, always for real (`--force`: the
# device and the state's place are not in the stage key, so another device's run would be
# restored); its outputs are in $work/.pipe/out/NAME/finetune.
finetune() {
  local name=$1
  shift
  (cd "$work" && "$@" "$pipe" run "$name.yaml" finetune --force=finetune --quiet >/dev/null) ||
    fail "pipe run $name.yaml failed"
}

# --- 2. CPU and the device agree -----------------------------------------------------------
steps=20
lr=5.0e-4
say "training the tiny model for $steps steps on the CPU and on $dev (state on the device)..."
manifest compare-cpu cpu '{ config: tiny, seed: 0 }' $steps 16 $lr ''
manifest compare-dev "$dev" '{ config: tiny, seed: 0 }' $steps 16 $lr '    tf32: false'
finetune compare-cpu env
finetune compare-dev "${on_dev[@]}"
# Tolerances: the first loss is one forward pass from identical weights, so only summation
# order differs (relative 1e-4). Later steps feed those differences through AdamW, whose
# update is at most about lr per step: losses stay within 1e-2 relative, and no weight may
# move more than 2 * lr * steps apart (the most two Adam runs can drift); on average
# weights must agree to 1 % of that bound.
python3 - "$work/.pipe/out" $steps $lr "$dev" <<'PY'
import json, struct, sys, array, os
out, steps, lr, dev = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
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
def metrics(name):
    return json.load(open(os.path.join(out, name, "finetune", "metrics.json")))
cpu_m, dev_m = metrics("compare-cpu"), metrics("compare-dev")
# Each side ran where it was asked to, with its state where that device keeps it.
ran = {"cpu_device": cpu_m.get("device"), "cpu_training_state": cpu_m.get("training_state"),
       "dev_device": dev_m.get("device"), "dev_training_state": dev_m.get("training_state"),
       "dev_device_peak_memory_bytes": dev_m.get("device_peak_memory_bytes")}
on_device = (ran["cpu_device"] == "cpu" and ran["cpu_training_state"] == "host"
             and ran["dev_device"] == dev and ran["dev_training_state"] == "device"
             and (ran["dev_device_peak_memory_bytes"] or 0) > 0)
cpu_l, dev_l = losses("compare-cpu"), losses("compare-dev")
rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(cpu_l, dev_l)] or [float("inf")]
cpu_w, dev_w = weights("compare-cpu"), weights("compare-dev")
max_abs, total, count = 0.0, 0.0, 0
for k, a in cpu_w.items():
    b = dev_w[k]
    for x, y in zip(a, b):
        d = abs(x - y)
        max_abs = max(max_abs, d)
        total += d
        count += 1
bound = 2 * lr * steps
agree = (len(cpu_l) == len(dev_l) == steps and rel[0] <= 1e-4 and max(rel) <= 1e-2
         and max_abs <= bound and total / max(count, 1) <= 0.01 * bound)
print(json.dumps({"check": "cpu-vs-device", "ok": agree and on_device, "device": dev,
                  "steps": steps, "tf32": False, "first_loss_rel_diff": rel[0],
                  "max_loss_rel_diff": max(rel), "max_weight_abs_diff": max_abs,
                  "mean_weight_abs_diff": total / max(count, 1), "weights": count, **ran,
                  "tolerance": {"first_loss_rel": 1e-4, "loss_rel": 1e-2,
                                "weight_abs": bound, "mean_weight_abs": 0.01 * bound}}))
if not on_device:
    sys.exit(f"gpu-check: FAILED: the runs did not run where asked: the CPU side must report "
             f"device cpu and training_state host, the other device {dev}, training_state "
             f"device and its arenas' peak; they report {ran}")
if not agree:
    sys.exit(f"gpu-check: FAILED: CPU and {dev} training disagree beyond the tolerance")
PY

# --- 3. timings ----------------------------------------------------------------------------
# Peak device memory: the most nvidia-smi reports in use on GPU 0 while a run lasts (this
# process and any other; ONNX Runtime's arenas keep what they took, so this is the peak).
sample_memory() {
  local peak=0 used
  while :; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null || echo 0)
    ((used > peak)) && peak=$used && echo "$peak" >"$work/peak_mib"
    sleep 0.2
  done
}

# measured CMD...: runs CMD in $work with the GPU samplers on (not in a rehearsal), its stdout
# in $work/stdout; $work/run.json gets its wall time and its peak resident memory
# (getrusage RUSAGE_CHILDREN of a process that ran only CMD).
measured() {
  echo null >"$work/peak_mib"
  : >"$work/dmon.txt"
  if ((!rehearse)); then
    echo 0 >"$work/peak_mib"
    sample_memory &
    samplers+=($!)
    # PCIe throughput of GPU 0 once a second (rxpci/txpci, MB/s).
    nvidia-smi dmon -i 0 -s t -d 1 >"$work/dmon.txt" 2>/dev/null &
    samplers+=($!)
  fi
  local rc=0
  python3 -c '
import json, resource, subprocess, sys, time
began = time.monotonic()
with open(sys.argv[2], "wb") as out:
    rc = subprocess.run(sys.argv[4:], stdout=out, cwd=sys.argv[3]).returncode
json.dump({"wall_s": time.monotonic() - began, "rc": rc,
           "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024},
          open(sys.argv[1], "w"))
sys.exit(rc)' "$work/run.json" "$work/stdout" "$work" "$@" || rc=$?
  for p in ${samplers[@]+"${samplers[@]}"}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  samplers=()
  return $rc
}

# report NAME KIND BATCH: prints the JSON line of a finished benchmark, from the stage's
# outputs (KIND stage) or the step benchmark's JSON (KIND step); fails unless it ran on $dev
# with its state on the device.
report() {
  python3 - "$1" "$2" "$3" "$work" "$dev" <<'PY'
import json, os, sys
name, kind, batch, work, dev = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
run = json.load(open(os.path.join(work, "run.json")))
peak = open(os.path.join(work, "peak_mib")).read().strip()
# `nvidia-smi dmon -s t`: "# gpu rxpci txpci" headers, then "0 <rx MB/s> <tx MB/s>" rows.
pcie = []
for line in open(os.path.join(work, "dmon.txt")):
    parts = line.split()
    if len(parts) >= 3 and not line.startswith("#"):
        try:
            pcie.append((float(parts[1]), float(parts[2])))
        except ValueError:
            pass
mean = lambda xs: sum(xs) / len(xs) if xs else None
if kind == "stage":
    out = os.path.join(work, ".pipe", "out", name, "finetune")
    rows = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl"))]
    steps = [r for r in rows if "loss" in r]
    timed = steps[2:] if len(steps) > 3 else steps  # the first steps warm the device up
    seconds = sum(r["seconds"] for r in timed)
    m = json.load(open(os.path.join(out, "metrics.json")))
    line = {"params": m.get("parameters"), "trained_params": m.get("trained_parameters"),
            "steps_timed": len(timed), "step_s": seconds / len(timed),
            "tokens_per_s": sum(r["tokens"] for r in timed) / seconds,
            "host_peak_vmhwm_bytes": m.get("peak_memory_bytes")}
else:
    m = json.load(open(os.path.join(work, "stdout")))
    line = {"params": m.get("params"), "trained_params": m.get("trained_params"),
            "steps_timed": m.get("steps"), "step_s": m.get("step_s_mean"),
            "tokens_per_s": m.get("tokens_per_s"), "init_s": m.get("init_s"),
            "setup_s": m.get("setup_s"), "host_peak_vmhwm_bytes": m.get("host_peak_vmhwm_bytes"),
            "device_reserved_bytes": m.get("device_reserved_bytes")}
ok = m.get("device") == dev and m.get("training_state") == "device"
line = {"bench": name, "ok": ok, "device": m.get("device"), "batch": batch,
        "training_state": m.get("training_state"), **line,
        "device_peak_memory_bytes": m.get("device_peak_memory_bytes"),
        "peak_device_memory_mib": json.loads(peak),
        "host_peak_rss_bytes": run["host_peak_rss_bytes"],
        "pcie_rx_mb_s_mean": mean([r for r, _ in pcie]),
        "pcie_tx_mb_s_mean": mean([t for _, t in pcie]), "wall_s": run["wall_s"]}
print(json.dumps(line))
if not ok:
    sys.exit(f"gpu-check: FAILED: benchmark {name} ran on {m.get('device')} with its state "
             f"on the {m.get('training_state')}, not on {dev} with the state on the device")
PY
}

# bench_stage NAME MODEL BATCH STEPS: times the finetune stage of a fresh manifest on $dev.
bench_stage() {
  manifest "$1" "$dev" "$2" "$4" "$3" 1.0e-5 ''
  measured "${on_dev[@]}" "$pipe" run "$1.yaml" finetune --force=finetune --quiet ||
    fail "benchmark $1: pipe run failed"
  report "$1" stage "$3"
}

# bench_step NAME ARGS...: times bench/finetune_step.rs on $dev with ARGS.
bench_step() {
  local name=$1
  shift
  measured "${on_dev[@]}" "$step_bin" "$@" --device "$dev" --threads "$(nproc)" ||
    fail "benchmark $name: finetune_step $* failed"
  report "$name" step "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["batch"])' "$work/stdout")"
}

# The published GPT-Neo 125M shape, as its config.json has it (no window_size: 256 by default).
neo_125m='{ config: { hidden_size: 768, num_layers: 12, num_heads: 12, max_position_embeddings: 2048, attention_types: [[[global, local], 6]], vocab_size: 50257 }, seed: 0 }'
if ((rehearse)); then
  tiny=(16 3) neo=(2 1) big=(--layers 2 --batch 2 --seq 32 --steps 1 --warmup 0)
else
  tiny=(16 30) neo=(8 12) big=(--batch 8 --seq 64 --steps 4 --warmup 2)
fi
say "timing the tiny and 125M shapes (finetune stage) and the 2.7B shape (LoRA step) on $dev..."
bench_stage tiny '{ config: tiny, seed: 0 }' "${tiny[@]}"
bench_stage gpt-neo-125m-shape "$neo_125m" "${neo[@]}"
bench_step gpt-neo-2_7b-shape-lora 2.7b --lora "${big[@]}"
if ((full_2_7b)); then
  # Full fine-tuning keeps weights, gradients and two AdamW moments (16 B per parameter) plus
  # activations: 2.7e9 x 16 B = 43 GB, and room for the step's buffers.
  if ((!rehearse)); then
    free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i 0)
    ((free_mib >= 64 * 1024)) || fail "--full-2.7b needs 64 GiB free on GPU 0, it has $free_mib MiB"
  fi
  bench_step gpt-neo-2_7b-shape-full 2.7b "${big[@]}"
fi
if ((rehearse)); then
  say "PASSED (rehearsal on the CPU provider: everything but CUDA itself)"
else
  say "PASSED: pipe trains on CUDA and agrees with the CPU"
fi
