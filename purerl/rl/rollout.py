"""Collecting on-policy experience from a vectorised gymnax env.

The rollout loop runs only the policy. Values are computed afterwards in one batched
critic pass over the whole [T, N] buffer (`evaluate_values`), which is cheaper than a
critic call per step and gives V(final observation) for truncation bootstrapping for free.
Episode statistics are reduced inside the scan to three scalars per rollout, so nothing
per-step is kept beyond the training batch itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from purerl.rl.normalization import normalize


@struct.dataclass
class Transition:
    """One rollout, every leaf shaped [T, num_envs, ...]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    # The true next observation: s_{t+1}, or the episode's last observation if it ended.
    next_obs: jax.Array


@struct.dataclass
class EpisodeTotals:
    """Sums over the episodes that finished during one rollout."""

    return_sum: jax.Array
    length_sum: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> EpisodeTotals:
        return cls(jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0))

    def metrics(self) -> dict[str, jax.Array]:
        """Mean return/length of finished episodes (NaN when none finished) and their count."""
        safe = jnp.maximum(self.count, 1)
        return {
            "episode_return": jnp.where(self.count > 0, self.return_sum / safe, jnp.nan),
            "episode_length": jnp.where(self.count > 0, self.length_sum / safe, jnp.nan),
            "episodes": self.count,
        }


def normalize_observations(stats: Any, batch: Transition) -> Transition:
    """The batch as the networks see it: observations and next observations normalised
    with the statistics the rollout was collected with (identity when stats is None)."""
    return batch.replace(obs=normalize(stats, batch.obs), next_obs=normalize(stats, batch.next_obs))


@struct.dataclass
class EnvRunner:
    """The part of the training state that belongs to the environments."""

    env_state: Any
    obs: jax.Array


def init_runner(env: Any, env_params: Any, key: jax.Array) -> EnvRunner:
    obs, env_state = env.reset(key, env_params)
    return EnvRunner(env_state, obs)


PolicyFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def collect(
    env: Any,
    env_params: Any,
    policy_fn: PolicyFn,
    runner: EnvRunner,
    key: jax.Array,
    num_steps: int,
) -> tuple[EnvRunner, Transition, EpisodeTotals]:
    """Step the vectorised env `num_steps` times with `policy_fn(obs, key) -> (action, log_prob)`."""

    def step(carry, step_key):
        runner, totals = carry
        policy_key, env_key = jax.random.split(step_key)
        action, log_prob = policy_fn(runner.obs, policy_key)
        obs, env_state, reward, terminated, truncated, info = env.step(
            env_key, runner.env_state, action, env_params
        )
        done = info["episode_done"]
        totals = EpisodeTotals(
            totals.return_sum + jnp.sum(jnp.where(done, info["episode_return"], 0.0)),
            totals.length_sum + jnp.sum(jnp.where(done, info["episode_length"], 0)),
            totals.count + jnp.sum(done, dtype=jnp.int32),
        )
        transition = Transition(
            obs=runner.obs,
            action=action,
            log_prob=log_prob,
            reward=reward.astype(jnp.float32),
            terminated=terminated,
            truncated=truncated,
            next_obs=info["final_observation"],
        )
        return (EnvRunner(env_state, obs), totals), transition

    (runner, totals), batch = lax.scan(
        step, (runner, EpisodeTotals.zeros()), jax.random.split(key, num_steps)
    )
    return runner, batch, totals


def evaluate_values(
    value_fn: Callable[[jax.Array], jax.Array], batch: Transition
) -> tuple[jax.Array, jax.Array]:
    """(V(s_t), V(s'_t)) for the whole rollout in one critic call."""
    both = value_fn(jnp.concatenate([batch.obs, batch.next_obs], axis=0))
    horizon = batch.obs.shape[0]
    return both[:horizon], both[horizon:]


def first_episode_mask(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """[T, N] float: 1.0 for the steps of each env's first episode (up to and including
    the step that ends it), 0.0 afterwards."""
    done = jnp.logical_or(terminated, truncated).astype(jnp.int32)
    ended_before = jnp.cumsum(done, axis=0) - done
    return (ended_before == 0).astype(jnp.float32)


def collect_first_episodes(
    env: Any, env_params: Any, policy_fn: PolicyFn, key: jax.Array, num_steps: int
) -> tuple[Transition, jax.Array, EpisodeTotals]:
    """Episodic collection: reset every env (with `env`'s own reset, grouped or not),
    step `num_steps` times, and keep only each env's FIRST episode. Returns (batch
    [T, N], first-episode mask [T, N], totals over those N episodes).

    `num_steps` is the horizon: an episode still running then is cut there, and the
    totals count it, so the reported return is "return within num_steps steps"."""
    reset_key, rollout_key = jax.random.split(key)
    _, batch, _ = collect(
        env, env_params, policy_fn, init_runner(env, env_params, reset_key), rollout_key, num_steps
    )
    mask = first_episode_mask(batch.terminated, batch.truncated)
    totals = EpisodeTotals(
        return_sum=jnp.sum(batch.reward * mask),
        length_sum=jnp.sum(mask),
        count=jnp.int32(mask.shape[1]),
    )
    return batch, mask, totals


def flatten_time(tree: Any) -> Any:
    """[T, N, ...] -> [T * N, ...] for minibatching."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)
