"""Synchronous vs asynchronous actor–learner (purerl.rl.async_runner): throughput, idle shares, lags.

    python benchmarks/async_actor_learner.py ppo  --seeds 4 --updates 30
    python benchmarks/async_actor_learner.py grpo --seeds 4 --updates 12

Runs on two devices (on CPU the script sets XLA_FLAGS=--xla_force_host_platform_device_count=2
before JAX starts): the actor on device 0, the learner on device 1. Every seed runs every mode
(the same seeds across modes, so differences are paired); both programs are compiled before the
clock starts and shared by all runs (a 2-update run of every mode first, untimed). Per mode:
samples/s (samples learnt: a dropped rollout's do not count), the learner's and the actor's idle
shares of the wall time, the realised mean lag, rollouts dropped, and the learning figure (PPO:
the mean episode return over the last third of the updates; GRPO: held-out accuracy after the last
update); then the paired difference of each async mode from sync with a bootstrap CI
(`experiments.lab.bootstrap_ci` over the per-seed differences).

PPO: CartPole, V-trace (the async lags need a correction), a learner that does more work per
rollout than the actor (4 epochs × 4 minibatches), so sync's learner idles while the actor
collects and async overlaps the two. GRPO: the preference task with up to 16 letters, whose SFT
policy's completion lengths are spread over 1..16 (the demonstrations' uniform lengths), and
generation that stops when the batch's longest completion ends (`stop_early`), so the actor's time
varies from rollout to rollout with the lengths (more so with few completions per update and a
longer warm-up, whose policy ends its completions: `--num-prompts 1 --group-size 4 --sft-steps
300`); the script also reports the lengths' spread and the actor time's coefficient of variation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "jax" not in sys.modules:  # two host devices, set before JAX starts
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.lab import bootstrap_ci  # noqa: E402
from purerl.rl import async_runner as ar  # noqa: E402

MODES = {
    "sync": ar.Settings(mode="sync"),
    "async S=1 block": ar.Settings(mode="async", queue_size=1, push_every=1, max_staleness=1, on_stale="block"),
    "async S=2 block": ar.Settings(mode="async", queue_size=2, push_every=1, max_staleness=2, on_stale="block"),
    "async S=1 drop": ar.Settings(mode="async", queue_size=2, push_every=1, max_staleness=1, on_stale="drop"),
}


def ppo_setup(updates: int):
    from purerl.algos import stale_ppo

    config = stale_ppo.Config(env="CartPole-v1", num_envs=8, num_steps=64, total_timesteps=8 * 64 * updates,
                              update_epochs=4, num_minibatches=4, max_stale=0, max_staleness=0)
    hyper = stale_ppo.Hyper(lr=2.5e-3, correction=float(stale_ppo.correction_code("vtrace")))

    def learning(metrics):
        returns = metrics["episode_return"][-max(1, updates // 3):]
        return float(np.nanmean(returns))

    return ar.ppo_programs(config), hyper, learning, "final-third return"


def grpo_setup(updates: int, num_prompts: int = 4, group_size: int = 4, sft_steps: int = 100):
    from purerl.llm import grpo

    config = grpo.Config(task="preference", task_kwargs={"max_letters": 16}, num_updates=updates,
                         num_prompts=num_prompts, group_size=group_size, eval_prompts=32, sft_steps=sft_steps)
    hyper = grpo.Hyper(lr=3e-3, kl_coef=0.0)
    return ar.grpo_programs(config, stop_early=True), hyper, lambda m: float(m["accuracy"][-1]), "final accuracy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("algo", choices=("ppo", "grpo"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the per-seed rows here")
    parser.add_argument("--num-prompts", type=int, default=4, help="grpo: prompts per update")
    parser.add_argument("--group-size", type=int, default=4, help="grpo: completions per prompt")
    parser.add_argument("--sft-steps", type=int, default=100, help="grpo: supervised warm-up steps")
    args = parser.parse_args()
    if args.algo == "ppo":
        programs, hyper, learning, learning_name = ppo_setup(args.updates)
    else:
        programs, hyper, learning, learning_name = grpo_setup(args.updates, args.num_prompts, args.group_size,
                                                              args.sft_steps)
    print(f"devices: {jax.devices()}", flush=True)
    for settings in MODES.values():  # compiles, and the first calls' one-off costs, off the clock
        ar.run(programs, settings, jax.random.PRNGKey(args.seeds), hyper, 2)
    rows = []
    for seed in range(args.seeds):
        for mode, settings in MODES.items():
            result = ar.run(programs, settings, jax.random.PRNGKey(seed), hyper, args.updates)
            row = {"seed": seed, "mode": mode, **result.summary(), "learning": learning(result.metrics),
                   "act_s_cv": float(np.std(result.rollouts["act_s"]) / np.mean(result.rollouts["act_s"]))}
            if "completion_length_max" in result.metrics:
                row["length_mean"] = float(np.mean(result.metrics["completion_length"]))
                row["length_max_p10"], row["length_max_p90"] = (
                    float(q) for q in np.percentile(result.metrics["completion_length_max"], [10, 90]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))

    def column(mode: str, name: str) -> np.ndarray:
        return np.asarray([r[name] for r in rows if r["mode"] == mode])

    print(f"\n{args.algo}: {args.seeds} seeds × {args.updates} updates; mean over seeds "
          f"(learning = {learning_name})")
    names = ("samples_per_s", "learner_idle_share", "actor_idle_share", "mean_lag", "dropped", "learning", "act_s_cv")
    print("| mode | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 1))
    for mode in MODES:
        print(f"| {mode} | " + " | ".join(f"{np.mean(column(mode, n)):.3g}" for n in names) + " |")
    print(f"\npaired differences from sync (mean [95% bootstrap CI] over {args.seeds} seeds; "
          f"{2 * (len(MODES) - 1)} comparisons):")
    for mode in list(MODES)[1:]:
        gain = column(mode, "samples_per_s") / column("sync", "samples_per_s")
        cost = column(mode, "learning") - column("sync", "learning")
        g, c = bootstrap_ci(gain), bootstrap_ci(cost)
        print(f"- {mode}: throughput ×{g[0]:.2f} [{g[1]:.2f}, {g[2]:.2f}]; "
              f"learning Δ {c[0]:+.3g} [{c[1]:+.3g}, {c[2]:+.3g}]")


if __name__ == "__main__":
    main()
