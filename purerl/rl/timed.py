"""Training in timed segments, with greedy evaluation between them.

`run_timed(train, hyper, seeds, segment_updates, ...)` trains the seeds of one setting
together (one vmapped batch, sharded over the local devices) as `Segmented(train)`
(purerl.rl.loop): the initial carry, then segments of `segment_updates` updates. The
host times each segment around its compiled program (dispatch to `block_until_ready`),
so per-update wall time is measured per segment rather than interpolated from a run's
total, and compiling (ahead of time, every program before the first segment runs) is
timed apart.

Between segments, and before the first, the greedy policy of every seed (`greedy(state,
raw_obs) -> actions`, exploration off: `greedy_policy(algo, config)`) plays `episodes`
separate evaluation episodes from fresh resets in its own compiled program, outside the
timed segments. The evaluation key after u updates is `evaluation.evaluation_key(u)`, the
same for every seed and every algorithm on the env, so all runs meet the same start
states at a given update (differences are the policies'). The training numbers are those
of `purerl.sweep.run` of the same train, hyper and seeds (same keys, same updates).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purerl.rl import evaluation
from purerl.rl.loop import Segmented, host_metrics

Greedy = Callable[[Any, jax.Array], jax.Array]


def greedy_policy(algo: str, config: Any) -> Greedy:
    """`greedy(state, raw_obs) -> actions` of algorithm `algo`'s training state: its module's
    `greedy_action(config)` (DQN, SAC), else the actor-critic policy's mode (PPO, A2C, ...)."""
    from purerl.algos import get_algorithm

    module = get_algorithm(algo)
    return getattr(module, "greedy_action", evaluation.actor_critic_greedy)(config)


@dataclasses.dataclass
class TimedRun:
    """One setting's seeds trained in timed segments.

    metrics: per-update metrics [seed, update] (with the host counters, e.g. `env_steps`);
    eval_updates [point]: updates done when each evaluation ran (0 = before training);
    eval_returns [point, seed]: mean return of the finished greedy episodes (NaN if none);
    segment_updates, segment_seconds [segment]: updates in each segment and its wall time;
    compile_seconds: {init, segment, evaluation} ahead-of-time compile time of each program;
    init_seconds, eval_seconds: running the initial carry and all evaluations;
    final_state: the trainer's final state (host arrays, seed axis first)."""

    metrics: dict[str, np.ndarray]
    eval_updates: np.ndarray
    eval_returns: np.ndarray
    segment_updates: np.ndarray
    segment_seconds: np.ndarray
    compile_seconds: dict[str, float]
    init_seconds: float
    eval_seconds: float
    final_state: Any = None


def _check(segment_updates: Any, episodes: Any, num_seeds: int) -> None:
    for name, value in (("segment_updates", segment_updates), ("episodes", episodes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: got {value!r}; allowed: a positive integer")
    if num_seeds <= 0:
        raise ValueError(f"seeds: got {num_seeds} seeds; allowed: at least one")


def run_timed(
    train: Callable[[jax.Array, Any], tuple[Any, dict[str, jax.Array]]],
    hyper: Any,
    seeds: int | Sequence[int],
    segment_updates: int,
    *,
    config: Any,
    greedy: Greedy,
    episodes: int = 10,
    devices: Sequence[jax.Device] | None = None,
) -> TimedRun:
    """Train `seeds` (a count, i.e. seeds 0..n-1, or the seed values) of one `hyper` in
    segments of `segment_updates` updates (the last one may be shorter), timing each, and
    evaluate the greedy policy on `episodes` episodes of `config`'s env before the first
    segment and after each one."""
    seed_values = np.arange(seeds) if isinstance(seeds, (int, np.integer)) else np.asarray(list(seeds))
    _check(segment_updates, episodes, len(seed_values))
    devices = list(jax.local_devices() if devices is None else devices)
    devices = devices[: max(d for d in range(1, len(devices) + 1) if len(seed_values) % d == 0)]
    sharding = NamedSharding(Mesh(np.asarray(devices), ("batch",)), PartitionSpec("batch"))
    keys = jax.device_put(jax.vmap(jax.random.PRNGKey)(jnp.asarray(seed_values)), sharding)
    hypers = jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (len(seed_values),)), hyper),
                            sharding)

    seg = Segmented(train)
    env, env_params = evaluation.evaluation_env(config, episodes)
    play = evaluation.make_policy_episode_runner(env, env_params, episodes, evaluation.episode_limit(config))

    def evaluate_one(state: Any, key: jax.Array) -> jax.Array:
        returns, finished = play(lambda obs, _: greedy(state, obs), key)
        return evaluation.mean_finished(returns, finished)

    def advance(keys, hypers, carry, first, num):
        return jax.vmap(lambda k, h, c: seg.advance(k, h, c, first, num))(keys, hypers, carry)

    compile_seconds = {}
    begin = time.perf_counter()
    init = jax.jit(jax.vmap(seg.init)).lower(keys, hypers).compile()
    compile_seconds["init"] = time.perf_counter() - begin

    begin = time.perf_counter()
    carry, extras = init(keys, hypers)
    carry = jax.device_put(carry, sharding)  # the layout every segment program is compiled for
    jax.block_until_ready(carry)
    init_seconds = time.perf_counter() - begin
    num_updates = int(seg.num_updates)
    lengths = [min(segment_updates, num_updates - start) for start in range(0, num_updates, segment_updates)]

    begin = time.perf_counter()
    programs = {n: jax.jit(advance, static_argnums=4).lower(keys, hypers, carry, jnp.int32(0), n).compile()
                for n in sorted(set(lengths))}
    compile_seconds["segment"] = time.perf_counter() - begin
    begin = time.perf_counter()
    evaluate = jax.jit(jax.vmap(evaluate_one, in_axes=(0, None))).lower(carry[0], evaluation.evaluation_key(0))
    evaluate = evaluate.compile()
    compile_seconds["evaluation"] = time.perf_counter() - begin

    eval_seconds = 0.0

    def greedy_returns(carry: Any, done: int) -> np.ndarray:
        nonlocal eval_seconds
        begin = time.perf_counter()
        values = np.asarray(jax.device_get(evaluate(carry[0], evaluation.evaluation_key(done))))
        eval_seconds += time.perf_counter() - begin
        return values

    eval_returns, eval_updates, seconds, parts = [greedy_returns(carry, 0)], [0], [], []
    done = 0
    for num in lengths:
        begin = time.perf_counter()
        carry, metrics = programs[num](keys, hypers, carry, jnp.int32(done))
        jax.block_until_ready((carry, metrics))
        seconds.append(time.perf_counter() - begin)
        carry = jax.device_put(carry, sharding)
        parts.append(jax.device_get(metrics))
        done += num
        eval_returns.append(greedy_returns(carry, done))
        eval_updates.append(done)
    state, metrics = seg.finish(jax.device_get(carry), parts, jax.device_get(extras), axis=1)
    return TimedRun(
        metrics=host_metrics(metrics),
        eval_updates=np.asarray(eval_updates),
        eval_returns=np.stack(eval_returns),
        segment_updates=np.asarray(lengths),
        segment_seconds=np.asarray(seconds),
        compile_seconds=compile_seconds,
        init_seconds=init_seconds,
        eval_seconds=eval_seconds,
        final_state=state,
    )


__all__ = ["Greedy", "TimedRun", "greedy_policy", "run_timed"]
