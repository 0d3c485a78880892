"""PPO throughput on CartPole-v1 at PureJaxRL's settings: env-steps/s, compile time, targets.

    python benchmarks/ppo_throughput.py                 # purerl, 1 / 8 / 32 seeds
    python benchmarks/ppo_throughput.py --peers         # + rejax 0.1.3, ratios and targets
    python benchmarks/ppo_throughput.py --profile       # what one PPO update costs, piece by piece
    python benchmarks/ppo_throughput.py --cpus 1 ...    # this process on one core only (see below)

Every row trains `seeds` runs of 5e5 steps in one compiled `jit(vmap(train))`. Compile
time is measured separately (`lower().compile()`), so env-steps/s is pure execution.
The machine this runs on is shared: each compiled program is run `--repeats` times,
purerl and rejax alternating, and the fastest run of each counts (the least disturbed
one); the process CPU time of that run is printed too, and so is the load average.
Final return: purerl = mean training return over the last 10 updates; rejax = its own
evaluation (128 episodes) at the end of training, evaluated once only (`eval_freq` =
total steps) so evaluation does not dominate its time.

`--cpus N` restricts the process to N cores before JAX starts. XLA:CPU sizes its thread
pool and splits large elementwise ops ("outer_dimension_partitions", a fork-join each)
by the cores it may use; on a small machine shared with other work those fork-joins wait
for a busy core, so `--cpus 1` measures the compute and the default measures what a user
of the shared machine gets (docs/ppo_speed.md).

`--cpu-devices N` exposes the CPU as N XLA devices (`--xla_force_host_platform_device_count`).
`purerl.sweep.run` shards the seeds over all local devices, so each device runs its share of
the vmapped batch on its own core, with tensors small enough that XLA:CPU does not split
their element-wise ops across threads (the fork-joins above); rejax's `train` is vmapped on
one device (its API has no sharding), so it gets the same cores but uses them through XLA's
intra-op threads only. A purerl user gets the same by setting the flag for a CPU sweep:
`XLA_FLAGS=--xla_force_host_platform_device_count=2 purerl-train ...` (docs/ppo_speed.md).

Targets: purerl ≥ 1.5× rejax's env-steps/s at 1 seed, ≥ 1.3× at 8 and 32
seeds, with equal returns (purerl's final return ≥ 95% of rejax's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from purerl import sweep
from purerl.algos import ppo

TARGETS = {1: 1.5, 8: 1.3, 32: 1.3}  # purerl / rejax env-steps/s, by number of seeds
RETURN_FRACTION = 0.95  # "equal returns": purerl's final return >= 95% of rejax's


def load() -> str:
    return "load {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one blocking call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu, out


def in_seed_chunks(train_one: Callable, seed_chunk: int | None) -> Callable:
    """keys [S] -> outputs [S, ...]: one vmap over all S seeds, or (seed_chunk) a
    sequential `lax.map` over chunks of `seed_chunk` vmapped seeds, in one program."""
    if not seed_chunk:
        return jax.vmap(train_one)
    return lambda keys: lax.map(train_one, keys, batch_size=seed_chunk)


class PurerlRun:
    def __init__(self, num_seeds: int, total_timesteps: int, seed_chunk: int | None = None):
        self.train = ppo.make_train(ppo.Config(total_timesteps=total_timesteps))
        self.num_seeds, self.seed_chunk = num_seeds, seed_chunk
        if seed_chunk:
            self.keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
            start = time.perf_counter()
            self.compiled = jax.jit(in_seed_chunks(lambda key: self.train(key, ppo.Hyper()), seed_chunk)).lower(
                self.keys).compile()
            self.compile_s = time.perf_counter() - start
        else:
            self.compile_s = sweep.run(self.train, ppo.Hyper(), seeds=num_seeds).compile_seconds

    def __call__(self) -> float:
        if self.seed_chunk:
            _, metrics = self.compiled(self.keys)
            return float(np.nanmean(np.asarray(metrics["episode_return"])[:, -10:]))
        # The executable is cached by sweep.run: this call only runs it.
        result = sweep.run(self.train, ppo.Hyper(), seeds=self.num_seeds)
        return float(np.mean(result.final("episode_return", last=10)))


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


class RejaxRun:
    def __init__(self, num_seeds: int, total_timesteps: int, seed_chunk: int | None = None):
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
        self.keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
        start = time.perf_counter()
        self.compiled = jax.jit(in_seed_chunks(algo.train, seed_chunk)).lower(self.keys).compile()
        self.compile_s = time.perf_counter() - start

    def __call__(self) -> float:
        _, (_, returns) = self.compiled(self.keys)
        return float(np.mean(np.asarray(returns)[:, -1]))


def thread_split_ops(compiled) -> int:
    """How many ops of a compiled XLA:CPU program run split across threads (fork-joins)."""
    return compiled.as_text().count('"outer_dimension_partitions":["')


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def throughput(args: argparse.Namespace) -> None:
    impls: dict[str, type] = {"purerl": PurerlRun}
    if args.peers:
        impls["rejax 0.1.3"] = RejaxRun
    rows, loads = [], []
    for num_seeds in [int(s) for s in args.seeds.split(",")]:
        runs = {name: make(num_seeds, args.total_timesteps, args.seed_chunk) for name, make in impls.items()}
        best = {name: (np.inf, np.inf, np.nan) for name in runs}
        loads.append(f"{num_seeds} seeds: {load()} before")
        for _ in range(args.repeats):
            for name, run in runs.items():
                wall, cpu, final_return = timed(run)
                if wall < best[name][0]:
                    best[name] = (wall, cpu, final_return)
        loads[-1] += f", {load()} after"
        steps = num_seeds * args.total_timesteps
        for name, run in runs.items():
            wall, cpu, final_return = best[name]
            rows.append((name, num_seeds, run.compile_s, wall, cpu, steps / wall, final_return))
        print(f"  done: {num_seeds} seeds ({loads[-1]})", flush=True)

    print(f"\nPPO CartPole-v1, PureJaxRL settings, {args.total_timesteps:,} steps per seed, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {len(os.sched_getaffinity(0))} "
          f"core(s) usable, seeds vmapped in chunks of {args.seed_chunk or 'all'}, best of {args.repeats} runs\n")
    print("| impl | seeds | compile s | run s | CPU s | env-steps/s | env-steps/s per seed | final return |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seeds, compile_s, wall, cpu, sps, ret in rows:
        print(f"| {name} | {seeds} | {compile_s:.1f} | {wall:.2f} | {cpu:.2f} | {sps:,.0f} | "
              f"{sps / seeds:,.0f} | {ret:.1f} |")
    print("\n" + "\n".join(f"uptime: {line}" for line in loads))
    if not args.peers:
        return
    print()
    by = {(name, seeds): (wall, cpu, ret) for name, seeds, _, wall, cpu, _, ret in rows}
    for seeds in sorted({s for _, s, *_ in rows}):
        ours, theirs = by[("purerl", seeds)], by[("rejax 0.1.3", seeds)]
        ratio, cpu_ratio = theirs[0] / ours[0], theirs[1] / ours[1]
        target = TARGETS.get(seeds)
        line = f"{seeds} seeds: purerl / rejax env-steps/s {ratio:.2f}x (CPU time {cpu_ratio:.2f}x)"
        if target is not None:
            line += f"; target >= {target}x: {verdict(ratio >= target)}"
        returns_ok = ours[2] >= RETURN_FRACTION * theirs[2]
        line += (f"; final return {ours[2]:.1f} vs {theirs[2]:.1f}, target >= "
                 f"{RETURN_FRACTION:.0%} of rejax: {verdict(returns_ok)}")
        print(line)


# ----------------------------------------------------------------------------- profile
def profile(args: argparse.Namespace) -> None:
    """Per-update cost of each piece of a PPO update, every piece run alone for
    `--profile-updates` updates in one compiled scan (vmapped over the seeds), and the
    ablations that motivated the current code."""
    from purerl.rl import on_policy, rollout
    from purerl.rl.agent import build_env_and_network
    from purerl.rl.rollout import make_policy_sampler, make_value_fn
    from purerl.rl.training import adam_clipped, random_permutation

    config = ppo.Config()
    env, env_params, network = build_env_and_network(config)
    optimizer = adam_clipped(2.5e-4, 0.5)
    num_updates = args.profile_updates
    full_train = ppo.make_train(ppo.Config(total_timesteps=num_updates * config.batch_size))

    def over_updates(piece):
        """Run piece(state, key) -> (state, scalar) num_updates times from a fresh state."""

        def run(key):
            state = on_policy.init_state(config, env, env_params, network, optimizer.init, key)
            _, outputs = lax.scan(piece, state, jax.random.split(key, num_updates))
            return jnp.sum(outputs)

        return run

    def keep(state, *arrays):
        """Make the outputs observable so XLA cannot drop the work."""
        return state, sum(jnp.sum(jnp.asarray(a, jnp.float32)) for a in jax.tree.leaves(arrays))

    def rollout_only(state, key):
        policy_fn = make_policy_sampler(network, state.params, state.obs_stats)
        runner, batch, totals = rollout.collect(env, env_params, policy_fn, state.runner, key, config.num_steps)
        return keep(state.replace(runner=runner), batch, totals)

    def per_step_gumbel(state):
        """The lean categorical sampler, drawing its Gumbel noise inside each step."""
        policy = make_policy_sampler(network, state.params, state.obs_stats)

        def policy_fn(obs, key):
            dist = policy.distribution(obs)
            return rollout.sample_categorical(dist, rollout.gumbel_noise(dist, key))

        return policy_fn

    def rollout_per_step_rng(state, key):
        """The rollout as it was: every step splits its keys and the env draws its own."""
        policy_fn = per_step_gumbel(state)

        def step(runner, step_key):
            policy_key, env_key = jax.random.split(step_key)
            action, log_prob = policy_fn(runner.obs, policy_key)
            obs, env_state, reward, terminated, truncated, info = env.step(
                env_key, runner.env_state, action, env_params
            )
            outputs = (action, log_prob, reward, terminated, truncated, info["final_observation"],
                       info["episode_return"])
            return rollout.EnvRunner(env_state, obs), outputs

        runner, outputs = lax.scan(step, state.runner, jax.random.split(key, config.num_steps))
        return keep(state.replace(runner=runner), outputs)

    def rollout_policy_per_step(state, key):
        """Env randomness presampled, the policy's Gumbel noise drawn per step."""
        runner, batch, totals = rollout.collect(
            env, env_params, rollout.KeyedPolicy(per_step_gumbel(state)), state.runner, key, config.num_steps
        )
        return keep(state.replace(runner=runner), batch, totals)

    def critic_pass(state, key, all_rows=False):
        """Rollout, then V(s_t) and V(s'_t): from (T+1)·N rows plus the ended rows, or
        from all 2·T·N rows of obs and next_obs (before)."""
        policy_fn = make_policy_sampler(network, state.params, state.obs_stats)
        runner, batch, totals = rollout.collect(env, env_params, policy_fn, state.runner, key, config.num_steps)
        values = rollout.evaluate_values(make_value_fn(network, state.params), batch, None if all_rows else runner.obs)
        return keep(state.replace(runner=runner), values, totals)

    def experience(state, key):
        state, collected = on_policy.collect_rollout(env, env_params, network, state, key, config.num_steps)
        advantages, targets = on_policy.gae(collected, 0.99, 0.95)
        return keep(state, advantages, targets, collected.batch.log_prob)

    def permutations(state, key):
        return keep(state, jax.vmap(random_permutation, (0, None))(jax.random.split(key, 4), config.batch_size))

    def jax_permutations(state, key):
        return keep(state, jax.vmap(jax.random.permutation, (0, None))(jax.random.split(key, 4), config.batch_size))

    def full(key):
        _, metrics = full_train(key, ppo.Hyper())
        return jnp.sum(metrics["policy_loss"])

    pieces = {
        "full PPO update": full,
        "rollout scan (128 steps x 4 envs)": over_updates(rollout_only),
        "  ... policy's Gumbel noise drawn per step": over_updates(rollout_policy_per_step),
        "  ... all randomness drawn per step (before)": over_updates(rollout_per_step_rng),
        "rollout + critic on (T+1)·N rows + ended rows": over_updates(critic_pass),
        "  ... critic on all 2·T·N rows (before)": over_updates(
            lambda state, key: critic_pass(state, key, all_rows=True)),
        "rollout + critic pass + GAE": over_updates(experience),
        "4 minibatch permutations (packed sort)": over_updates(permutations),
        "  ... jax.random.permutation (before)": over_updates(jax_permutations),
    }
    for num_seeds in [int(s) for s in args.seeds.split(",")]:
        keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
        print(f"\n{num_seeds} seed(s), {num_updates} updates per measurement, best of {args.repeats}, "
              f"{len(os.sched_getaffinity(0))} core(s) usable ({load()})")
        print("| piece | ms per update (wall) | ms per update (CPU) |")
        print("|---|---:|---:|")
        for name, fn in pieces.items():
            compiled = jax.jit(jax.vmap(fn)).lower(keys).compile()
            times = [timed(lambda c=compiled, k=keys: c(k))[:2] for _ in range(args.repeats)]
            wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
            print(f"| {name} | {wall / num_updates * 1e3:.3f} | {cpu / num_updates * 1e3:.3f} |", flush=True)
            if fn is full:
                split_ops = thread_split_ops(compiled)
        print(f"ops XLA:CPU splits across threads in the full program: {split_ops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,8,32", help="comma-separated seed counts")
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per compiled program; the fastest counts")
    parser.add_argument("--peers", action="store_true", help="also run rejax 0.1.3 (pip install rejax==0.1.3)")
    parser.add_argument("--profile", action="store_true", help="time the pieces of one PPO update instead")
    parser.add_argument("--profile-updates", type=int, default=100)
    parser.add_argument("--seed-chunk", type=int, default=None,
                        help="both implementations: a lax.map over chunks of this many vmapped seeds")
    parser.add_argument("--cpus", type=int, default=0, help="run on this many cores only (0: all usable)")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="expose the CPU as this many XLA devices (0: leave XLA's default, one)")
    args = parser.parse_args()
    flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
    if args.cpu_devices and flag not in os.environ.get("XLA_FLAGS", ""):
        # Read when JAX's CPU backend starts: restart this script with the flag set.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        os.execv(sys.executable, [sys.executable, *sys.argv])
    usable = sorted(os.sched_getaffinity(0))
    if 0 < args.cpus < len(usable):
        # JAX's CPU client (started on import here) sizes its thread pool from the
        # usable cores: restart this script with the smaller set.
        os.sched_setaffinity(0, usable[: args.cpus])
        os.execv(sys.executable, [sys.executable, *sys.argv])
    profile(args) if args.profile else throughput(args)


if __name__ == "__main__":
    main()
