"""One prepared accelerator check: on a machine with a GPU, run the test suite, the attention
benchmark and PPO throughput up to 16,384 seeds, each under its own time limit, and write one
Markdown report of what ran, how long it took and what it printed.

    python benchmarks/gpu_check.py --out gpu_check          # (make gpu-check) ~8 minutes on one GPU
    python benchmarks/gpu_check.py --quick --out /tmp/gc     # a seconds-long rehearsal on any machine

Every step is a subprocess with a timeout, so one slow or failing step never hides the
others; the report says, per step, the command, its exit status (or "timed out"), its wall
time and the tail of its output. Run it in one call on a lent GPU machine and keep the report.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    timeout_s: int


def plan(quick: bool) -> list[Step]:
    python = sys.executable
    if quick:
        return [
            Step("devices", [python, "-c", "import jax; print(jax.devices())"], 60),
            Step("tests", [python, "-m", "pytest", "-q", "-x", "tests/test_lint.py"], 120),
            Step("attention", [python, "benchmarks/attention.py", "--only", "decode", "--contexts", "256",
                               "--decode-steps", "2", "--rounds", "1"], 120),
            Step("ppo_throughput", [python, "benchmarks/ppo_throughput.py", "--seeds", "1,2",
                                    "--total-timesteps", "2048", "--repeats", "1"], 300),
        ]
    return [
        Step("devices", [python, "-c", "import jax; print(jax.devices()); print(jax.print_environment_info())"], 20),
        # Four workers share the GPU: no preallocation (set below for every step).
        Step("tests", [python, "-m", "pytest", "-q", "-n", "4", "--dist", "loadgroup", "tests"], 240),
        Step("attention", [python, "benchmarks/attention.py"], 80),
        # 5e5 steps per seed up to 1,024 seeds; 1e5 per seed beyond, so 16,384 seeds fit the budget.
        Step("ppo_throughput", [python, "benchmarks/ppo_throughput.py", "--seeds", "1,64,1024", "--repeats", "2"],
             60),
        Step("ppo_throughput_16k", [python, "benchmarks/ppo_throughput.py", "--seeds", "4096,16384",
                                    "--total-timesteps", "100000", "--repeats", "1"], 60),
    ]


def run_step(step: Step, env: dict[str, str]) -> dict[str, object]:
    start = time.perf_counter()
    try:
        done = subprocess.run(step.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=step.timeout_s)
        status, output = f"exit {done.returncode}", done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {step.timeout_s} s"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    return {"step": step, "status": status, "seconds": time.perf_counter() - start, "output": output}


def report(outcomes: list[dict[str, object]]) -> str:
    lines = [
        "# Accelerator check",
        "",
        f"Host {platform.node()}, Python {platform.python_version()}; commands run from the repository root.",
        "",
        "| step | status | wall s |",
        "|---|---|---:|",
    ]
    lines += [f"| {o['step'].name} | {o['status']} | {o['seconds']:.1f} |" for o in outcomes]
    for o in outcomes:
        tail = "\n".join(str(o["output"]).strip().splitlines()[-60:])
        lines += ["", f"## {o['step'].name}", "", f"`{' '.join(o['step'].command[1:])}` — {o['status']}",
                  "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check")),
                        help="folder for gpu_check.md (default: $OUT or ./gpu_check)")
    parser.add_argument("--quick", action="store_true", help="a tiny rehearsal of every step (any machine)")
    args = parser.parse_args(argv)
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONPATH": str(ROOT)}
    outcomes = []
    for step in plan(args.quick):
        print(f"[gpu_check] {step.name}: {' '.join(step.command[1:])} (limit {step.timeout_s} s)", flush=True)
        outcomes.append(run_step(step, env))
        print(f"[gpu_check] {step.name}: {outcomes[-1]['status']} in {outcomes[-1]['seconds']:.1f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_check.md"
    path.write_text(report(outcomes))
    print(f"[gpu_check] wrote {path}")
    return 0 if all(o["status"] == "exit 0" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
