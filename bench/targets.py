#!/usr/bin/env python3
"""Every speed and memory target of the model issues that depends on the CPU, measured side
by side with its peer in one run, and one table that says which are met on this CPU.

A target met on one CPU kind (an AMD EPYC, an Intel Xeon) and not measured on the other is
not met, so this is the one command to run on a machine of the kind not measured yet. Each
target runs an existing benchmark of this folder and judges the JSON lines it prints; the
raw output of every run is kept in the log folder, and `--judge DIR` judges a kept folder
again without running anything.

    python3 bench/targets.py                   # every target (~1.5 h; `big` needs ~35 GB of disk)
    python3 bench/targets.py bert smollm2      # these targets only
    python3 bench/targets.py --rounds 3 lora-int8   # 3 back-to-back pairs, median ratio
    python3 bench/targets.py --list            # the targets, their issue and command
    python3 bench/targets.py --judge /tmp/pipe-targets-20261207-2300

Set PIPE=path/to/pipe to run a built binary (else the scripts build a release one). Needs
what the benchmarks need: python3 -m pip install torch transformers peft scikit-learn
pyarrow; npm for `big`. Prints the table as Markdown, with `lscpu`'s model name and the
CPU's vector extensions, ready for a note.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Check:
    """One bound of a target: a figure of pipe's, the peer's, and the ratio's limit."""

    what: str
    pipe: float
    peer: float
    at_least: float | None = None
    at_most: float | None = None
    #: "bytes" prints the figures in GB.
    unit: str = ""

    def show(self, value: float) -> str:
        return f"{value / 1e9:.2f} GB" if self.unit == "bytes" else f"{value:,.1f}"

    @property
    def ratio(self) -> float:
        return self.pipe / self.peer if self.peer else float("inf")

    @property
    def met(self) -> bool:
        low = self.at_least is None or self.ratio >= self.at_least
        high = self.at_most is None or self.ratio <= self.at_most
        return low and high

    @property
    def bound(self) -> str:
        return f">= {self.at_least}x" if self.at_least is not None else f"<= {self.at_most}x"


@dataclass
class Target:
    name: str
    issue: int
    command: list[str]
    judge: Callable[[list[dict]], list[Check]]
    env: dict[str, str] | None = None
    #: Whether `--rounds` repeats it (the finetune pairs, whose judge takes the median).
    repeated: bool = False


def rows(lines: list[dict], **match) -> list[dict]:
    """The JSON lines whose keys hold the given values (a callable value is a predicate)."""
    found = []
    for line in lines:
        if all(k in line and (v(line[k]) if callable(v) else line[k] == v) for k, v in match.items()):
            found.append(line)
    return found


def one(lines: list[dict], **match) -> dict:
    found = rows(lines, **match)
    if not found:
        keys = ", ".join(k if callable(v) else f"{k}={v}" for k, v in match.items())
        raise LookupError(f"no output line with {keys}")
    return found[-1]


def is_pipe(impl: str) -> bool:
    return impl.startswith("pipe")


def finetune_pair(speed: float | None, memory: float | None) -> Callable[[list[dict]], list[Check]]:
    """`finetune.sh PAIR`: pipe's `finetune_step` against `torch_finetune.py`, per round; the
    median ratio of the rounds (each round is one pipe run then one PyTorch run)."""

    def judge(lines: list[dict]) -> list[Check]:
        ours, peers = rows(lines, impl=is_pipe), rows(lines, bench="torch_finetune")
        if not ours or len(ours) != len(peers):
            raise LookupError(f"{len(ours)} pipe runs and {len(peers)} PyTorch runs")
        checks = []
        if speed is not None:
            ratios = [o["tokens_per_s"] / p["tokens_per_s"] for o, p in zip(ours, peers)]
            mid = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
            checks.append(Check("tokens/s", ours[mid]["tokens_per_s"], peers[mid]["tokens_per_s"], at_least=speed))
        if memory is not None:
            checks.append(Check("peak RSS", max(o["host_peak_maxrss_bytes"] for o in ours),
                                max(p["peak_rss_bytes"] for p in peers), at_most=memory, unit="bytes"))
        return checks

    return judge


def encoder_training(pipe_match: dict, peer_match: dict, speed: float) -> Callable[[list[dict]], list[Check]]:
    """`encoder.sh` / `frozen_dtype.sh` on all-MiniLM-L6-v2: training tokens/s and peak RSS."""

    def judge(lines: list[dict]) -> list[Check]:
        ours, peer = one(lines, **pipe_match), one(lines, **peer_match)
        return [Check("tokens/s", ours["tokens_per_s"], peer["tokens_per_s"], at_least=speed),
                Check("peak RSS (MiB)", ours["peak_rss_mib"], peer["peak_rss_mib"], at_most=1.0)]

    return judge


def evaluate_pair(lines: list[dict]) -> list[Check]:
    """`encoder_eval.sh SHAPE`: pipe's evaluate stage against the faster of PyTorch's two
    orders (rows as given, rows sorted by length)."""
    ours = one(lines, side="pipe evaluate")
    fastest = max(rows(lines, sorted=lambda _: True), key=lambda r: r["texts_per_s"])
    return [Check("texts/s", ours["texts_per_s"], fastest["texts_per_s"], at_least=1.0)]


def big_job(lines: list[dict]) -> list[Check]:
    """`big_model.sh` with `FROZEN=int4`: #25's and #29's targets on the 2.7B stand-in."""
    stages = rows(lines, side="pipe", stage=lambda _: True)
    f32 = one(lines, side="pipe", finetune_tokens_per_s=lambda _: True)
    int4 = one(lines, side="pipe-int4", finetune_tokens_per_s=lambda _: True)
    int4_peak = one(lines, side="pipe-int4", stage="finetune")["peak_bytes"]
    peft = one(lines, side="peft", tokens_per_s=lambda _: True)
    peft_peak = one(lines, side="peft", time_peak_bytes=lambda _: True)["time_peak_bytes"]
    checkpoint = one(lines, checkpoint_bytes=lambda _: True)["checkpoint_bytes"]
    cat = one(lines, cat_seconds=lambda _: True)["cat_seconds"]
    finetune_peak = next(s["peak_bytes"] for s in stages if s["stage"] == "finetune")
    # Steps after the first on both sides (PEFT's first is a warm-up); older logs lack it.
    def speed(side: dict) -> float:
        return side.get("steady_tokens_per_s") or side["finetune_tokens_per_s"]

    return [
        Check("#25 finetune tokens/s vs PEFT", speed(f32), peft["tokens_per_s"], at_least=1.0),
        Check("#25 whole job's peak vs PEFT's training peak", max(s["peak_bytes"] for s in stages), peft_peak,
              at_most=1.0, unit="bytes"),
        Check("#25 finetune peak vs checkpoint size", finetune_peak, checkpoint, at_most=1.1, unit="bytes"),
        Check("#25 start to first step (s) vs cold `cat` (s)", f32["setup_seconds"], cat, at_most=1.5),
        Check("#29 int4 tokens/s vs PEFT fp32", speed(int4), peft["tokens_per_s"], at_least=1.5),
        Check("#29 int4 finetune peak vs 4 GB", int4_peak, 4e9, at_most=1.0, unit="bytes"),
    ]


def targets() -> list[Target]:

    def pair(name: str, issue: int, speed: float | None, memory: float) -> Target:
        return Target(name, issue, ["bench/finetune.sh", name], finetune_pair(speed, memory), repeated=True)

    return [
        Target("minilm", 24, ["bench/encoder.sh", "0"],
               encoder_training({"side": "pipe"}, {"side": "transformers"}, 1.3)),
        Target("minilm-lora", 24, ["bench/frozen_dtype.sh", "0"],
               encoder_training({"frozen_dtype": "f32", "seed": 0}, {"side": lambda s: s.startswith("PEFT")}, 1.3),
               env={"DTYPES": "f32"}),
        pair("bert", 24, 1.0, 1.0),
        pair("modernbert", 24, 1.0, 1.0),
        Target("bert-eval", 24, ["bench/encoder_eval.sh", "bert"], evaluate_pair),
        Target("modernbert-eval", 24, ["bench/encoder_eval.sh", "modernbert"], evaluate_pair),
        pair("smollm2", 26, 1.0, 1.0),
        pair("smollm2-lora", 26, 1.0, 1.0),
        pair("gpt2", 26, 1.0, 1.0),
        pair("lora-int8", 29, 1.5, 0.6),
        pair("lora-int4", 29, None, 0.4),
        Target("big", 25, ["bench/big_model.sh"], big_job,
               env={"FROZEN": "int4", **({"COLD": "1"} if os.geteuid() == 0 else {})}),
    ]


def parse(text: str) -> list[dict]:
    """The JSON objects among a run's output lines (progress and notes are skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


def cpu_line() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
    return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, "
            f"model {fields.get('Model', '?').strip()}; {' '.join(f for f in wanted if f in flags)})")


def run(target: Target, log: Path, rounds: int) -> None:
    """Runs the target's command (ROUNDS times for a finetune pair) into its log."""
    env = {**os.environ, **(target.env or {})}
    with open(log / f"{target.name}.log", "w") as out:
        for r in range(rounds if target.repeated else 1):
            print(f"targets: {target.name} ({r + 1}/{rounds}): {' '.join(target.command)}", file=sys.stderr)
            code = subprocess.run(target.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0:
                print(f"targets: {target.name} exited {code}; see {log / f'{target.name}.log'}", file=sys.stderr)
                break


def table(chosen: list[Target], log: Path) -> tuple[str, bool]:
    lines = ["| target | issue | check | pipe | peer | ratio | needs | met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    all_met = True
    for target in chosen:
        path = log / f"{target.name}.log"
        try:
            checks = target.judge(parse(path.read_text()))
        except (OSError, LookupError, KeyError, StopIteration, ValueError) as e:
            # ValueError: max() of no rows, a log cut short.
            lines.append(f"| {target.name} | #{target.issue} | not judged: {e} | | | | | no |")
            all_met = False
            continue
        for c in checks:
            all_met &= c.met
            lines.append(f"| {target.name} | #{target.issue} | {c.what} | {c.show(c.pipe)} | {c.show(c.peer)} "
                         f"| {c.ratio:.2f}x | {c.bound} | {'yes' if c.met else '**no**'} |")
    return "\n".join(lines), all_met


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="targets to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--rounds", type=int, default=1, help="pairs per target, the median ratio counts")
    ap.add_argument("--log", type=Path, help="folder for the raw output (default: a new one in /tmp)")
    ap.add_argument("--judge", type=Path, metavar="DIR", help="judge the logs kept in DIR; run nothing")
    args = ap.parse_args()
    known = {t.name: t for t in targets()}
    if args.list:
        for t in known.values():
            env = " ".join(f"{k}={v}" for k, v in (t.env or {}).items())
            print(f"{t.name:16} #{t.issue}  {env + ' ' if env else ''}{' '.join(t.command)}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"targets: unknown target {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.names] if args.names else list(known.values())
    if args.judge:
        log = args.judge
        chosen = [t for t in chosen if (log / f"{t.name}.log").exists()]
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
        log = args.log or Path(f"/tmp/pipe-targets-{stamp}")
        log.mkdir(parents=True, exist_ok=True)
        (log / "cpu.txt").write_text(cpu_line())
        for target in chosen:
            run(target, log, args.rounds)
    cpu = (log / "cpu.txt").read_text() if (log / "cpu.txt").exists() else "not recorded"
    text, all_met = table(chosen, log)
    print(f"CPU: {cpu} · logs: {log}\n\n{text}")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
