"""Rotary position embeddings (Su et al. 2021), "rotate half" convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotate feature pairs (i, i + d/2) of `x` by angle position * base^(-2i/d).

    x: [..., T, heads, d] with even d; positions: broadcastable to [..., T].
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got head_dim={head_dim}")
    half = head_dim // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [..., T, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
