"""DQN (CartPole-v1) and SAC (Pendulum-v1) throughput: env-steps/s and gradient-steps/s.

    python benchmarks/offpolicy_throughput.py                  # purerl at 1 and 8 seeds
    python benchmarks/offpolicy_throughput.py --peers          # + rejax 0.1.3, same settings

Every row trains `seeds` runs in one compiled `jit(vmap(train))`; compile time is measured
separately, so the rates are pure execution. Shared settings:

- DQN: 10 envs, one gradient step (batch 128) per vector step = per 10 env steps, 10k
  buffer filled with 10k steps before learning, 64×64 ReLU Q-network, hard target copy
  every 500 env steps, double DQN, MSE.
- SAC: 1 env, one gradient step (batch 256) per env step after 1,000 steps, 64×64 ReLU
  actor and twin critics, τ = 0.02, learned α.

rejax runs without evaluation (its `eval_callback` is replaced by a no-op, so the
comparison is training only); its env is gymnax's with the old 5-tuple step.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from purerl import sweep
from purerl.algos import dqn, sac

DQN_SETTINGS = dict(num_envs=10, batch_size=128, buffer_size=10_000, learning_starts=10_000, hidden=(64, 64))
SAC_SETTINGS = dict(num_envs=1, batch_size=256, buffer_size=20_000, learning_starts=1_000, hidden=(64, 64))


def purerl_dqn(total: int) -> tuple[object, object, int]:
    s = DQN_SETTINGS
    config = dqn.Config(
        env="CartPole-v1", num_envs=s["num_envs"], num_steps=100, total_timesteps=total, q_hidden=s["hidden"],
        batch_size=s["batch_size"], buffer_size=s["buffer_size"], learning_starts=s["learning_starts"],
        train_frequency=1, gradient_steps=1, target_update_period=50,
    )
    return dqn.make_train(config), dqn.Hyper(), config.total_gradient_steps


def purerl_sac(total: int) -> tuple[object, object, int]:
    s = SAC_SETTINGS
    config = sac.Config(
        env="Pendulum-v1", num_envs=s["num_envs"], num_steps=200, total_timesteps=total,
        actor_hidden=s["hidden"], critic_hidden=s["hidden"], batch_size=s["batch_size"],
        buffer_size=s["buffer_size"], learning_starts=s["learning_starts"],
    )
    return sac.make_train(config), sac.Hyper(tau=0.02, actor_lr=1e-3, critic_lr=1e-3), config.total_gradient_steps


def bench_purerl(algo: str, num_seeds: int, total: int) -> dict:
    train, hyper, gradient_steps = (purerl_dqn if algo == "dqn" else purerl_sac)(total)
    result = sweep.run(train, hyper, seeds=num_seeds)
    return {"compile_s": result.compile_seconds, "run_s": result.run_seconds, "gradient_steps": gradient_steps}


def bench_rejax(algo: str, num_seeds: int, total: int) -> dict:
    import gymnax
    from ppo_throughput import FiveTupleStep  # the same old-step-API adapter as the PPO benchmark
    from rejax import DQN, SAC

    if algo == "dqn":
        s = DQN_SETTINGS
        env, env_params = gymnax.make("CartPole-v1")
        algorithm = DQN.create(
            env=FiveTupleStep(env), env_params=env_params, num_envs=s["num_envs"], batch_size=s["batch_size"],
            buffer_size=s["buffer_size"], fill_buffer=s["learning_starts"], num_epochs=1, learning_rate=5e-4,
            max_grad_norm=10.0, target_update_freq=500, polyak=0.0, ddqn=True, total_timesteps=total,
            eval_freq=total, skip_initial_evaluation=True, agent_kwargs={"activation": "relu"},
        )
        gradient_steps = (total - s["learning_starts"]) // s["num_envs"]
    else:
        s = SAC_SETTINGS
        env, env_params = gymnax.make("Pendulum-v1")
        algorithm = SAC.create(
            env=FiveTupleStep(env), env_params=env_params, num_envs=s["num_envs"], batch_size=s["batch_size"],
            buffer_size=s["buffer_size"], fill_buffer=s["learning_starts"], num_epochs=1, learning_rate=1e-3,
            polyak=0.98, total_timesteps=total, eval_freq=total, skip_initial_evaluation=True,
            hidden_layer_sizes=s["hidden"], agent_kwargs={"activation": "relu"},
        )
        gradient_steps = total - s["learning_starts"]
    algorithm = algorithm.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()))
    train = jax.jit(jax.vmap(algorithm.train))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    start = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(keys))
    return {"compile_s": compile_s, "run_s": time.perf_counter() - start, "gradient_steps": gradient_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,8", help="comma-separated seed counts")
    parser.add_argument("--dqn-steps", type=int, default=100_000, help="env steps per DQN run")
    parser.add_argument("--sac-steps", type=int, default=10_000, help="env steps per SAC run")
    parser.add_argument("--algos", default="dqn,sac")
    parser.add_argument("--peers", action="store_true", help="also run rejax 0.1.3 (pip install rejax==0.1.3)")
    args = parser.parse_args()

    impls = {"purerl": bench_purerl}
    if args.peers:
        impls["rejax"] = bench_rejax
    rows = []
    for algo in args.algos.split(","):
        total = args.dqn_steps if algo == "dqn" else args.sac_steps
        for num_seeds in [int(s) for s in args.seeds.split(",")]:
            for name, bench in impls.items():
                r = bench(algo, num_seeds, total)
                rows.append((algo, name, num_seeds, r["compile_s"], r["run_s"],
                             num_seeds * total / r["run_s"], num_seeds * r["gradient_steps"] / r["run_s"]))
                print(f"  done: {algo} {name} x{num_seeds}", flush=True)

    print(f"\nDQN CartPole-v1 {args.dqn_steps:,} / SAC Pendulum-v1 {args.sac_steps:,} env steps per seed, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)\n")
    print("| algo | impl | seeds | compile s | run s | env-steps/s | gradient-steps/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for algo, name, seeds, c, r, sps, gps in rows:
        print(f"| {algo} | {name} | {seeds} | {c:.1f} | {r:.1f} | {sps:,.0f} | {gps:,.0f} |")
    if args.peers:
        print()
        by = {(a, n, s): sps for a, n, s, _, _, sps, _ in rows}
        for algo, _, seeds, *_ in rows:
            if ("rejax" in impls) and (algo, "purerl", seeds) in by and (algo, "rejax", seeds) in by:
                ratio = by[(algo, "purerl", seeds)] / by[(algo, "rejax", seeds)]
                print(f"{algo}: purerl / rejax at {seeds} seeds: {ratio:.2f}x")
                by.pop((algo, "rejax", seeds))


if __name__ == "__main__":
    main()
