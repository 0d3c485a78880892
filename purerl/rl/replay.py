"""A uniform replay buffer that is a pure pytree, so it lives in the training state.

Fixed capacity, circular: `add` writes a batch of items at the write position and wraps
around, overwriting the oldest; `sample` draws indices uniformly from the FILLED slots
only (never from the zero-initialised tail of a buffer that has not wrapped yet). Every
field is an array, so a buffer vmaps like any other state: a batch of seeds × settings
holds one independent buffer per run.

Why not flashbax (0.1.3 imports and runs on JAX 0.10.2): its flat buffer forms
(s, s') pairs from consecutive time steps of each env, which is wrong across gymnax's
auto-resets unless the true next observation is stored anyway, and it warns on every
construction and pulls in tensorstore. Storing whole transitions (obs, action, reward,
terminated, truncated, next_obs = info["final_observation"]) in a ring is a few lines.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ReplayBuffer:
    """`data` has leaves shaped [capacity, ...]; `position` is the next write slot and
    `size` the number of filled slots (both int32 scalars)."""

    data: Any
    position: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    def fill_fraction(self) -> jax.Array:
        return self.size.astype(jnp.float32) / self.capacity


@struct.dataclass
class Transition:
    """What off-policy agents store. `next_obs` is the TRUE next observation (the
    episode's last one when it ended), so truncated steps bootstrap from it."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array


def init(example: Any, capacity: int) -> ReplayBuffer:
    """An empty buffer for items shaped like `example` (one item, no batch axis)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
        raise ValueError(f"capacity: got {capacity!r}; allowed: a positive integer")
    data = jax.tree.map(
        lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: ReplayBuffer, batch: Any) -> ReplayBuffer:
    """Write a batch of items (leaves [B, ...], B ≤ capacity), wrapping around."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    capacity = buffer.capacity
    if batch_size > capacity:
        raise ValueError(f"replay add: batch of {batch_size} items exceeds the capacity {capacity}")
    slots = (buffer.position + jnp.arange(batch_size)) % capacity
    data = jax.tree.map(lambda store, new: store.at[slots].set(new.astype(store.dtype)), buffer.data, batch)
    return ReplayBuffer(
        data,
        (buffer.position + batch_size) % capacity,
        jnp.minimum(buffer.size + batch_size, capacity),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Any:
    """`batch_size` items drawn uniformly with replacement from the filled slots.

    On an empty buffer every index is slot 0 (zeros): callers gate learning on a
    minimum fill (`learning_starts`), which is cheaper under vmap than a branch."""
    slots = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda store: jnp.take(store, slots, axis=0), buffer.data)
