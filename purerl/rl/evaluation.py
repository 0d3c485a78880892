"""Evaluation episodes of an actor-critic policy: the one episode loop that both the
periodic evaluation during training (`eval_every`, metric `eval_return`) and the
evaluation of saved policies (`purerl.artifacts.evaluate`, purerl-eval) run.

An evaluation plays `episodes` separate envs from fresh resets for `max_steps` steps (by
default the env's time limit, by which every episode has ended) and keeps the return of
each env's first episode. Actions are the distribution's mode (deterministic: argmax for
discrete actions, the mean for Gaussian ones) or samples; observations are normalised
with the agent's own statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
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

    def run(deterministic: Any, params: Any, obs_stats: Any, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def step(carry, step_key):
            obs, state, returns, finished = carry
            act_key, env_key = jax.random.split(step_key)
            action = act(network, params, obs_stats, obs, act_key, deterministic)
            obs, state, _, _, _, info = env.step(env_key, state, action, env_params)
            first_end = info["episode_done"] & ~finished
            returns = jnp.where(first_end, info["episode_return"], returns)
            return (obs, state, returns, finished | info["episode_done"]), None

        init = (obs, state, jnp.zeros(episodes, jnp.float32), jnp.zeros(episodes, bool))
        (_, _, returns, finished), _ = lax.scan(step, init, jax.random.split(steps_key, max_steps))
        return returns, finished

    return run


def mean_finished(returns: jax.Array, finished: jax.Array) -> jax.Array:
    """Mean return over the episodes that ended (NaN if none did)."""
    count = jnp.sum(finished)
    return jnp.where(count > 0, jnp.sum(jnp.where(finished, returns, 0.0)) / jnp.maximum(count, 1), jnp.nan)


# Evaluation during training: the key of the evaluation after update u is
# fold_in(EVAL_KEY, u), the same for every run, so that at a given update all runs meet the
# same start states and env randomness (differences are the policies', as in
# `purerl.artifacts.evaluate`), and the training's own random stream is untouched.
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

    def evaluate(state: Any, update_index: jax.Array) -> jax.Array:
        returns, finished = run(True, state.params, state.obs_stats, evaluation_key(update_index))
        return mean_finished(returns, finished)

    def step(state: Any, key: jax.Array, update_index: jax.Array):
        state, metrics = update_step(state, key, update_index)
        due = (update_index + 1) % config.eval_every == 0
        value = lax.cond(due, evaluate, lambda *_: jnp.float32(jnp.nan), state, update_index)
        return state, {**metrics, "eval_return": value}

    return step


__all__ = [
    "EVAL_KEY",
    "act",
    "episode_limit",
    "evaluation_env",
    "evaluation_key",
    "make_episode_runner",
    "mean_finished",
    "with_periodic_evaluation",
]
