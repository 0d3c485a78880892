"""Running observation statistics held by the agent, not by the environment.

The statistics are part of each algorithm's TrainState (`obs_stats`), so they survive
whatever the env does between updates (REINFORCE and group collectors reset every env
each update), and evaluation and saved policies normalise with exactly what training
used. Within one update they are frozen: the rollout's behaviour log-probs, the values
and the loss all see one normalisation; afterwards the rollout's raw observations are
merged in (parallel Welford / Chan et al. update). `None` means "no normalisation".
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

CLIP = 10.0
EPSILON = 1e-8


@struct.dataclass
class RunningStats:
    """Mean and (population) variance of every observation seen, per feature."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array  # float32: only the weight of the old statistics in a merge

    @classmethod
    def create(cls, obs_shape: Sequence[int]) -> RunningStats:
        # Tiny initial count: the first merge replaces the (0, 1) prior almost entirely.
        return cls(jnp.zeros(obs_shape, jnp.float32), jnp.ones(obs_shape, jnp.float32), jnp.float32(1e-4))


def update(stats: RunningStats | None, obs: jax.Array, mask: jax.Array | None = None) -> RunningStats | None:
    """Merge a batch of raw observations [..., *obs_shape] into the statistics; with
    `mask` (shaped like the batch dims, 1 = keep) only the kept observations count."""
    if stats is None:
        return None
    flat = obs.reshape((-1,) + stats.mean.shape)
    weights = jnp.ones(flat.shape[0], jnp.float32) if mask is None else mask.reshape(-1).astype(jnp.float32)
    weights = weights.reshape((-1,) + (1,) * stats.mean.ndim)
    batch_count = jnp.sum(weights)
    safe = jnp.maximum(batch_count, 1e-8)
    batch_mean = jnp.sum(flat * weights, axis=0) / safe
    batch_var = jnp.sum(jnp.square(flat - batch_mean) * weights, axis=0) / safe
    total = stats.count + batch_count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count + jnp.square(delta) * stats.count * batch_count / total
    return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats | None, obs: jax.Array) -> jax.Array:
    """(obs − mean) / √(var + ε), clipped to ±10; the identity when `stats` is None."""
    if stats is None:
        return obs
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + EPSILON), -CLIP, CLIP)


def init(normalize_obs: bool, obs_shape: Sequence[int]) -> RunningStats | None:
    return RunningStats.create(obs_shape) if normalize_obs else None
