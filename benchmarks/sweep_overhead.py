"""Overhead of `purerl-train` (Hydra, validation, tidy parquet results) over a direct
`purerl.sweep.run` call doing the same work, and the compile time of a second identical
job with a warm persistent compilation cache.

    .venv/bin/python benchmarks/sweep_overhead.py [--total-timesteps 40960 --seeds 8]

Both sides run as fresh processes (imports included) with their own empty compilation
cache, so both pay one cold compile. Targets: purerl-train ≤ 1.10 × direct once compile
time is taken out of both; warm-cache compile ≤ 1 s.

The sweep engine in one process: a second `sweep.run` of the same
program reuses its compiled executable (target: no compile, ≤ 5% of the first call's
compile time), and a sweep split into chunks (`max_batch`) dispatches every chunk before
fetching any (the chunked run's wall time is printed next to the unchunked one's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DIRECT = textwrap.dedent(
    """
    import purerl, json, sys, time, jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    from purerl import sweep
    from purerl.algos import ppo
    n_envs, n_steps, total, seeds = map(int, sys.argv[2:6])
    clips = [float(c) for c in sys.argv[6].split(",")]
    config = ppo.Config(num_envs=n_envs, num_steps=n_steps, total_timesteps=total)
    hyper = ppo.Hyper(lr=5e-4)
    result = sweep.run(ppo.make_train(config), sweep.grid(hyper, clip_eps=clips), seeds)
    print(json.dumps({"compile": result.compile_seconds, "run": result.run_seconds}))
    """
)


ENGINE = textwrap.dedent(
    """
    import purerl, json, sys, jax
    from purerl import sweep
    from purerl.algos import ppo
    n_envs, n_steps, total, seeds = map(int, sys.argv[1:5])
    clips = [float(c) for c in sys.argv[5].split(",")]
    train = ppo.make_train(ppo.Config(num_envs=n_envs, num_steps=n_steps, total_timesteps=total))
    grid = sweep.grid(ppo.Hyper(lr=5e-4), clip_eps=clips)
    first = sweep.run(train, grid, seeds)
    second = sweep.run(train, grid, seeds)
    runs = len(clips) * seeds
    chunked = sweep.run(train, grid, seeds, max_batch=runs // len(clips))
    chunked_again = sweep.run(train, grid, seeds, max_batch=runs // len(clips))
    print(json.dumps({"first": first.compile_seconds, "second": second.compile_seconds,
                      "run": second.run_seconds, "chunked_compile": chunked_again.compile_seconds,
                      "chunked_run": chunked_again.run_seconds, "chunks": len(clips)}))
    """
)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--total-timesteps", type=int, default=40960)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--clips", default="0.1,0.2,0.3")
    args = p.parse_args()
    sizes = [str(args.num_envs), str(args.num_steps), str(args.total_timesteps), str(args.seeds)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        direct_wall, out = timed([sys.executable, "-c", DIRECT, str(tmp / "cache-direct"), *sizes, args.clips])
        direct = json.loads(out.strip().splitlines()[-1])

        env = {**os.environ, "PURERL_COMPILE_CACHE": str(tmp / "cache-train")}
        train = [
            sys.executable, "-m", "purerl.cli.train", "name=bench", f"seeds={args.seeds}",
            f"algo.config.num_envs={args.num_envs}", f"algo.config.num_steps={args.num_steps}",
            f"algo.config.total_timesteps={args.total_timesteps}", "algo.hyper.lr=5e-4",
            f"grid.clip_eps=[{args.clips}]", "print_table=false",
        ]  # fmt: skip
        cold_wall, _ = timed([*train, f"hydra.run.dir={tmp}/cold"], env)
        cold = json.loads((tmp / "cold" / "job.json").read_text())
        warm_wall, _ = timed([*train, f"hydra.run.dir={tmp}/warm"], env)
        warm = json.loads((tmp / "warm" / "job.json").read_text())
        _, out = timed([sys.executable, "-c", ENGINE, *sizes, args.clips])
        engine = json.loads(out.strip().splitlines()[-1])

    runs = len(args.clips.split(",")) * args.seeds
    steps = runs * args.total_timesteps
    rows = [
        ("direct purerl.sweep.run (cold cache)", direct_wall, direct["compile"], direct["run"]),
        ("purerl-train (cold cache)", cold_wall, cold["compile_seconds"], cold["run_seconds"]),
        ("purerl-train, identical 2nd job (warm)", warm_wall, warm["compile_seconds"], warm["run_seconds"]),
    ]
    print(f"PPO CartPole: {runs} runs ({args.seeds} seeds x clip_eps {args.clips}), {steps:,} env steps total")
    print(f"| {'':40s} | process wall s | compile s | train s | wall - compile s |")
    print(f"|{'-' * 42}|---------------:|----------:|--------:|-----------------:|")
    for name, wall, compile_s, run_s in rows:
        print(f"| {name:40s} | {wall:14.2f} | {compile_s:9.2f} | {run_s:7.2f} | {wall - compile_s:16.2f} |")
    ratio = (cold_wall - cold["compile_seconds"]) / (direct_wall - direct["compile"])
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"overhead ratio (wall - compile): purerl-train / direct = {ratio:.2f}x (target <= 1.10x): "
          f"{verdict(ratio <= 1.10)}")
    print(f"overhead ratio (wall incl. compile): {cold_wall / direct_wall:.2f}x")
    print(f"warm-cache compile of the 2nd identical job: {warm['compile_seconds']:.2f} s (target <= 1 s): "
          f"{verdict(warm['compile_seconds'] <= 1.0)}")
    print(f"\nsweep engine, one process: 1st sweep.run compile {engine['first']:.2f} s, 2nd (same program) "
          f"{engine['second']:.3f} s: executable reused "
          f"{verdict(engine['second'] <= 0.05 * engine['first'])} (target <= 5% of the 1st)")
    print(f"{engine['chunks']} chunks (max_batch), all dispatched before any fetch: run {engine['chunked_run']:.2f} s "
          f"vs one chunk of everything {engine['run']:.2f} s (info: the chunked executable was reused too, compile "
          f"{engine['chunked_compile']:.3f} s)")


if __name__ == "__main__":
    main()
