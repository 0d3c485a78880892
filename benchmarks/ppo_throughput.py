"""PPO throughput on CartPole-v1 at PureJaxRL's settings: env-steps/s and compile time.

    python benchmarks/ppo_throughput.py                 # purerl, 1 / 8 / 32 seeds
    python benchmarks/ppo_throughput.py --peers         # + rejax 0.1.3 in the same run

Every row trains `seeds` runs of 5e5 steps in one compiled `jit(vmap(train))`. Compile
time is measured separately (`lower().compile()`), so env-steps/s is pure execution.
Final return: purerl = mean training return over the last 10 updates; rejax = its own
greedy-free evaluation (128 episodes) at the end of training, evaluated once only
(`eval_freq` = total steps) so evaluation does not dominate its time.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import purerl  # noqa: F401  (XLA:CPU flags before jax starts)
from purerl import sweep
from purerl.algos import ppo


def bench_purerl(num_seeds: int, total_timesteps: int) -> dict:
    train = ppo.make_train(ppo.Config(total_timesteps=total_timesteps))
    result = sweep.run(train, ppo.Hyper(), seeds=num_seeds)
    return {
        "compile_s": result.compile_seconds,
        "run_s": result.run_seconds,
        "final_return": float(np.mean(result.final("episode_return", last=10))),
    }


class FiveTupleStep:
    """gymnax 1.x env with the old step API (obs, state, reward, done, info) that rejax
    0.1.3 expects. gymnax's own LegacyStepAPIWrapper cannot be deep-copied (its
    __getattr__ recurses before `_env` exists), and rejax deep-copies its config."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        if name.startswith("__") or name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    def reset(self, key, params=None):
        return self._env.reset(key, params)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        return obs, state, reward, jnp.logical_or(terminated, truncated), info


def bench_rejax(num_seeds: int, total_timesteps: int) -> dict:
    import gymnax
    from rejax import PPO

    env, env_params = gymnax.make("CartPole-v1")
    algo = PPO.create(
        env=FiveTupleStep(env),
        env_params=env_params,
        num_envs=4,
        num_steps=128,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        max_grad_norm=0.5,
        total_timesteps=total_timesteps,
        eval_freq=total_timesteps,
        skip_initial_evaluation=True,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        agent_kwargs={"activation": "tanh"},
    )
    train = jax.jit(jax.vmap(algo.train))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    start = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    _, (_, returns) = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - start
    return {
        "compile_s": compile_s,
        "run_s": run_s,
        "final_return": float(np.mean(np.asarray(returns)[:, -1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,8,32", help="comma-separated seed counts")
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--peers", action="store_true", help="also run rejax 0.1.3 (pip install rejax==0.1.3)")
    args = parser.parse_args()

    impls = {"purerl": bench_purerl}
    if args.peers:
        impls["rejax"] = bench_rejax
    rows = []
    for num_seeds in [int(s) for s in args.seeds.split(",")]:
        for name, bench in impls.items():
            r = bench(num_seeds, args.total_timesteps)
            steps = num_seeds * args.total_timesteps
            rows.append((name, num_seeds, r["compile_s"], r["run_s"], steps / r["run_s"],
                         steps / r["run_s"] / num_seeds, r["final_return"]))
            print(f"  done: {name} x{num_seeds}", flush=True)

    print(f"\nPPO CartPole-v1, PureJaxRL settings, {args.total_timesteps:,} steps per seed, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)\n")
    print("| impl | seeds | compile s | run s | env-steps/s | env-steps/s per seed | final return |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, seeds, c, r, sps, per_seed, ret in rows:
        print(f"| {name} | {seeds} | {c:.1f} | {r:.1f} | {sps:,.0f} | {per_seed:,.0f} | {ret:.1f} |")
    if args.peers:
        print()
        by = {(n, s): sps for n, s, _, _, sps, _, _ in rows}
        for seeds in sorted({s for _, s, *_ in rows}):
            print(f"purerl / rejax env-steps/s at {seeds} seeds: {by[('purerl', seeds)] / by[('rejax', seeds)]:.2f}x")


if __name__ == "__main__":
    main()
