"""Evaluation episodes of an actor-critic policy: the one episode loop (`make_episode_runner`)
that both the periodic evaluation during training (`with_periodic_evaluation`: `eval_every`,
metric `eval_return`) and the evaluation of saved policies (`evaluate`, `evaluation_table`:
purerl-eval) run.

An evaluation plays `episodes` separate envs from fresh resets for `max_steps` steps (by
default the env's time limit, by which every episode has ended) and keeps the return of
each env's first episode. Actions are the distribution's mode (deterministic: argmax for
discrete actions, the mean for Gaussian ones) or samples; observations are normalised
with the agent's own statistics.

`evaluate` and `evaluation_table` take the saved policies of a job as
`purerl.policies.load_policies` returns them, and read only their fields (config, algo,
settings, seeds, params, obs_stats, all arrays with leading [setting, seed] axes), so this
module does not depend on how policies are stored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from purerl import envs

EpisodeRunner = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, jax.Array]]


def act(network: Any, params: Any, obs_stats: Any, obs: Any, key: Any, deterministic: Any) -> Any:
    """The action of the policy network for raw observations [..., obs_dim]: normalised with
    the agent's own statistics, then the distribution's mode or a sample. `deterministic`
    is a Python bool, or a traced one (then one program serves both modes)."""
    from purerl.nets import ActorCritic
    from purerl.rl import normalization

    dist = network.apply(params, normalization.normalize(obs_stats, obs), method=ActorCritic.policy)
    if isinstance(deterministic, bool):
        return dist.mode() if deterministic else dist.sample(seed=key)
    return jnp.where(deterministic, dist.mode(), dist.sample(seed=key))


def evaluation_env(config: Any, episodes: int) -> tuple[Any, Any]:
    """(vectorised env of `episodes` envs, env params): the training env stack of `config`
    (same wrappers, env kwargs and action transform), only the number of envs differs."""
    return envs.make_vec_env(
        config.env, episodes, env_kwargs=dict(config.env_kwargs), action_transform=config.action_transform
    )


def episode_limit(config: Any) -> int:
    """The env's time limit (steps after which gymnax truncates an episode)."""
    _, env_params = config.make_env()
    limit = getattr(env_params, "max_steps_in_episode", None)
    if limit is None:
        raise ValueError(f"{config.env}: its params have no max_steps_in_episode; pass max_steps")
    return int(limit)


def make_episode_runner(env: Any, env_params: Any, network: Any, episodes: int, max_steps: int) -> EpisodeRunner:
    """`run(deterministic, params, obs_stats, key) -> (returns, finished)`, both [episodes]:
    the return of each env's first episode and whether it ended within `max_steps`."""
    play = make_policy_episode_runner(env, env_params, episodes, max_steps)

    def run(deterministic: Any, params: Any, obs_stats: Any, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return play(lambda obs, act_key: act(network, params, obs_stats, obs, act_key, deterministic), key)

    return run


def make_policy_episode_runner(
    env: Any, env_params: Any, episodes: int, max_steps: int
) -> Callable[[Callable[[jax.Array, jax.Array], jax.Array], jax.Array], tuple[jax.Array, jax.Array]]:
    """`play(policy, key) -> (returns, finished)`, both [episodes], for any
    `policy(raw_obs [episodes, ...], key) -> actions`: the return of each env's first
    episode from fresh resets and whether it ended within `max_steps`."""

    def play(policy: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def step(carry, step_key):
            obs, state, returns, finished = carry
            act_key, env_key = jax.random.split(step_key)
            action = policy(obs, act_key)
            obs, state, _, _, _, info = env.step(env_key, state, action, env_params)
            first_end = info["episode_done"] & ~finished
            returns = jnp.where(first_end, info["episode_return"], returns)
            return (obs, state, returns, finished | info["episode_done"]), None

        # A while loop that stops once every env's first episode has ended (under vmap: every
        # env of the batch), on the keys a scan over all `max_steps` would use: the same returns,
        # without the steps after the last episode ends (most of them while a policy is poor).
        step_keys = jax.random.split(steps_key, max_steps)

        def unfinished(carry):
            t, (_, _, _, finished) = carry
            return (t < max_steps) & ~jnp.all(finished)

        def body(carry):
            t, inner = carry
            inner, _ = step(inner, step_keys[t])
            return t + 1, inner

        init = (obs, state, jnp.zeros(episodes, jnp.float32), jnp.zeros(episodes, bool))
        _, (_, _, returns, finished) = lax.while_loop(unfinished, body, (jnp.int32(0), init))
        return returns, finished

    return play


def actor_critic_greedy(config: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """`greedy(state, raw_obs) -> actions` of an actor-critic trainer's state (`params`,
    `obs_stats`): the policy's mode, the exploration of training off."""
    from purerl.rl.agent import build_env_and_network

    network = build_env_and_network(config, num_envs=1)[2]

    def greedy(state: Any, obs: jax.Array) -> jax.Array:
        return act(network, state.params, state.obs_stats, obs, None, True)

    return greedy


def mean_finished(returns: jax.Array, finished: jax.Array) -> jax.Array:
    """Mean return over the episodes that ended (NaN if none did)."""
    count = jnp.sum(finished)
    return jnp.where(count > 0, jnp.sum(jnp.where(finished, returns, 0.0)) / jnp.maximum(count, 1), jnp.nan)


# Evaluation during training: the key of the evaluation after update u is
# fold_in(EVAL_KEY, u), the same for every run, so that at a given update all runs meet the
# same start states and env randomness (differences are the policies', as in
# `evaluate` of saved policies), and the training's own random stream is untouched.
EVAL_KEY = 0


def evaluation_key(update_index: Any) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(EVAL_KEY), update_index)


def with_periodic_evaluation(update_step: Callable, config: Any, network: Any) -> Callable:
    """`update_step` that also reports `eval_return`: after every `config.eval_every`-th
    update (update indices eval_every - 1, 2 * eval_every - 1, ...) the mean return of
    `config.eval_episodes` deterministic episodes of the updated policy, NaN on the other
    updates. `eval_every = 0` returns `update_step` itself (no metric, same program).

    The episodes run inside the training program, under `lax.cond` on the update index
    (the same for every run of a vmapped batch, so the cond stays a branch and the other
    updates skip the episodes)."""
    if not config.eval_every:
        return update_step
    env, env_params = evaluation_env(config, config.eval_episodes)
    run = make_episode_runner(env, env_params, network, config.eval_episodes, episode_limit(config))

    def periodic_return(state: Any, update_index: jax.Array) -> jax.Array:
        returns, finished = run(True, state.params, state.obs_stats, evaluation_key(update_index))
        return mean_finished(returns, finished)

    def step(state: Any, key: jax.Array, update_index: jax.Array):
        state, metrics = update_step(state, key, update_index)
        due = (update_index + 1) % config.eval_every == 0
        value = lax.cond(due, periodic_return, lambda *_: jnp.float32(jnp.nan), state, update_index)
        return state, {**metrics, "eval_return": value}

    return step


# ---------------------------------------------------------------- what one update does
# The episodes of the update evaluation after update u come from fold_in(UPDATE_EVAL_KEY, u):
# the same for every run of a batch (and every method), and apart from the training's stream
# and from the periodic evaluation's.
UPDATE_EVAL_KEY = 1
UPDATE_METRICS = ("eval_before", "eval_after", "eval_before_repeat")


def update_evaluation_keys(update_index: Any) -> tuple[jax.Array, jax.Array]:
    """(paired key, repeat key) of the update evaluation at `update_index`: the policies
    before and after the update both play the paired key's episodes; the repeat key gives
    independent episodes of the policy before."""
    paired, repeat = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(UPDATE_EVAL_KEY), update_index))
    return paired, repeat


def with_update_evaluation(update_step: Callable, config: Any, network: Any) -> Callable:
    """`update_step` that also reports what the update did to the objective J (the expected
    return of the stochastic policy), on every `config.update_eval_every`-th update (update
    indices 0, k, 2k, ...; NaN on the others):

    - `eval_before`, `eval_after`: mean return of `config.eval_episodes` episodes (sampled
      actions) of the policy before and after the update, on the same episodes (the same
      start states, env randomness and action-sampling draws: common random numbers), so
      `eval_after − eval_before` is a paired estimate of J(π_new) − J(π_old);
    - `eval_before_repeat`: the policy before the update on independent episodes, so
      `eval_before_repeat − eval_before` is what an update of size 0 would show if the two
      evaluations did not share their episodes: the evaluation-noise control.

    The three evaluations run as one vmapped episode loop, under `lax.cond` on the update index.
    `update_eval_every = 0` returns `update_step` itself (no metrics, same program)."""
    every = config.update_eval_every
    if not every:
        return update_step
    env, env_params = evaluation_env(config, config.eval_episodes)
    run = make_episode_runner(env, env_params, network, config.eval_episodes, episode_limit(config))
    three = jax.vmap(run, in_axes=(None, 0, 0, 0))

    def measure(before: Any, after: Any, update_index: jax.Array) -> dict[str, jax.Array]:
        paired, repeat = update_evaluation_keys(update_index)
        stack = lambda a, b: jnp.stack([a, b, a])  # noqa: E731  (before, after, before again)
        params = jax.tree.map(stack, before.params, after.params)
        stats = jax.tree.map(stack, before.obs_stats, after.obs_stats)
        returns, finished = three(False, params, stats, jnp.stack([paired, paired, repeat]))
        means = jax.vmap(mean_finished)(returns, finished)
        return {name: means[i] for i, name in enumerate(UPDATE_METRICS)}

    def skip(*_: Any) -> dict[str, jax.Array]:
        return {name: jnp.float32(jnp.nan) for name in UPDATE_METRICS}

    def step(state: Any, key: jax.Array, update_index: jax.Array):
        new_state, metrics = update_step(state, key, update_index)
        values = lax.cond(update_index % every == 0, measure, skip, state, new_state, update_index)
        return new_state, {**metrics, **values}

    return step


def with_evaluations(update_step: Callable, config: Any, network: Any) -> Callable:
    """`update_step` with the evaluations `config` asks for: the update evaluation
    (`update_eval_every`) and the periodic one (`eval_every`); neither: `update_step` itself."""
    return with_periodic_evaluation(with_update_evaluation(update_step, config, network), config, network)


# ---------------------------------------------------------------- saved policies
MODES = ("deterministic", "stochastic")


def check_episode_counts(episodes: Any, max_steps: Any) -> None:
    """ValueError naming the field unless both are positive integers."""
    for name, value in (("episodes", episodes), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: got {value!r}; allowed: a positive integer")


@functools.lru_cache(maxsize=8)
def _saved_policies_program(config: Any, episodes: int, max_steps: int) -> Any:
    """jit(program(deterministic [M], params [P, ...], obs_stats [P, ...], key)) ->
    (returns, finished) [M, P, episodes]; cached per Config, so jobs alike share it."""
    from purerl.rl.agent import build_env_and_network

    env, env_params = evaluation_env(config, episodes)
    network = build_env_and_network(config)[2]
    run_episodes = make_episode_runner(env, env_params, network, episodes, max_steps)
    over_policies = jax.vmap(run_episodes, in_axes=(None, 0, 0, None))
    return jax.jit(jax.vmap(over_policies, in_axes=(0, None, None, None)))


def evaluate(
    saved: Any, episodes: int, key: Any, max_steps: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns of the first episode of `episodes` envs, for every saved policy of a job
    (`purerl.policies.SavedPolicies`), acting deterministically and stochastically.

    One compiled program, vmapped over mode × policy × `episodes` envs, with `lax.scan`
    over `max_steps` (default: the env's time limit, by which every episode has ended).
    Every policy and both modes meet the same env randomness (same key), so differences
    are the policies'. Returns {mode: (returns [S, K, episodes], finished [S, K, episodes])}."""
    max_steps = episode_limit(saved.config) if max_steps is None else max_steps
    check_episode_counts(episodes, max_steps)
    num_settings, num_seeds = len(saved.settings), len(saved.seeds)
    flat = lambda x: x.reshape((num_settings * num_seeds,) + x.shape[2:])  # noqa: E731
    params = jax.tree.map(flat, saved.params)
    stats = None if saved.obs_stats is None else jax.tree.map(flat, saved.obs_stats)
    deterministic = jnp.asarray([mode == "deterministic" for mode in MODES])
    program = _saved_policies_program(saved.config, int(episodes), int(max_steps))
    returns, finished = jax.device_get(program(deterministic, params, stats, key))
    shape = (num_settings, num_seeds, episodes)
    return {
        mode: (np.asarray(returns[m]).reshape(shape), np.asarray(finished[m]).reshape(shape))
        for m, mode in enumerate(MODES)
    }


def evaluation_table(saved: Any, episodes: int = 10, seed: int = 0, max_steps: int | None = None) -> Any:
    """pandas DataFrame of `evaluate(saved, ...)`, one row per setting × seed × mode
    (deterministic, stochastic): setting, seed, mode, mean_return, std_return (over
    episodes), episodes (finished within max_steps), then the env, the algorithm and the
    setting's grid values."""
    import pandas as pd

    outcomes = evaluate(saved, episodes, jax.random.PRNGKey(seed), max_steps)
    rows = []
    for s, setting in enumerate(saved.settings):
        for k, run_seed in enumerate(saved.seeds):
            for mode in MODES:
                returns, finished = outcomes[mode]
                done = returns[s, k][finished[s, k]].astype(np.float64)
                rows.append(
                    {
                        "setting": s,
                        "seed": run_seed,
                        "mode": mode,
                        "mean_return": float(done.mean()) if done.size else float("nan"),
                        "std_return": float(done.std()) if done.size else float("nan"),
                        "episodes": int(done.size),
                        "env": saved.config.env,
                        "algo": saved.algo,
                        **setting,
                    }
                )
    return pd.DataFrame(rows)


__all__ = [
    "EVAL_KEY",
    "MODES",
    "UPDATE_EVAL_KEY",
    "UPDATE_METRICS",
    "act",
    "check_episode_counts",
    "episode_limit",
    "evaluate",
    "evaluation_env",
    "evaluation_key",
    "evaluation_table",
    "actor_critic_greedy",
    "make_episode_runner",
    "make_policy_episode_runner",
    "mean_finished",
    "update_evaluation_keys",
    "with_evaluations",
    "with_periodic_evaluation",
    "with_update_evaluation",
]
