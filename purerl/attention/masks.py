"""Variable-length sequences: attention masks and position ids from padding and segment ids.

Two per-token inputs describe a batch [B, T] of token rows:

- `padding_mask` [B, T] bool: True at real tokens. PAD tokens are never attended to (as keys);
  their own outputs are unspecified and must not enter a loss.
- `segment_ids` [B, T] int: packed rows, several sequences ("documents") per row. A token
  attends only to tokens with the same id; id 0 marks padding (never attended). The ids of a
  row need not be ordered, but each sequence must be contiguous for `positions`.

Positions count real tokens only and restart at each sequence: a left-padded prompt's first
real token has position 0, and so has the first token of every packed sequence. So a row that
is padded or packed gives every real token the same logits as its sequence alone, unpadded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def token_validity(shape: tuple[int, int], padding_mask: jax.Array | None = None,
                   segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T] bool: real tokens (padding_mask True and segment id != 0)."""
    valid = jnp.ones(shape, bool)
    if padding_mask is not None:
        valid = valid & padding_mask.astype(bool)
    if segment_ids is not None:
        valid = valid & (segment_ids != 0)
    return valid


def positions_from(shape: tuple[int, int], padding_mask: jax.Array | None = None,
                   segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T] int32 position ids: real tokens counted from 0 within their (contiguous) sequence.

    Padding gets the position of the real token before it in its sequence (0 before any), so
    every id stays in [0, T); its value does not matter, the token is never attended.
    """
    valid = token_validity(shape, padding_mask, segment_ids).astype(jnp.int32)
    seen = jnp.cumsum(valid, axis=1) - valid  # real tokens strictly before t
    if segment_ids is not None:
        # `seen` is non-decreasing, so a running max of its value at segment starts gives the
        # count before the current segment's first token.
        previous = jnp.concatenate([segment_ids[:, :1] - 1, segment_ids[:, :-1]], axis=1)
        at_start = jnp.where(segment_ids != previous, seen, 0)
        seen = seen - jax.lax.cummax(at_start, axis=1)
    return jnp.maximum(seen + valid - 1, 0).astype(jnp.int32)


def attention_mask(shape: tuple[int, int], *, causal: bool = True,
                   padding_mask: jax.Array | None = None,
                   segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, 1, T, T] bool (query, key) mask for `jax.nn.dot_product_attention`.

    Keys must be real tokens, of the query's segment, and (causal) not after it. A query that
    would see no key at all (a padding token before any real one) sees itself instead, so its
    unspecified output stays finite and no NaN reaches a gradient.
    """
    batch, steps = shape
    valid = token_validity(shape, padding_mask, segment_ids)
    mask = jnp.broadcast_to(valid[:, None, :], (batch, steps, steps))
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if causal:
        mask = mask & jnp.tril(jnp.ones((steps, steps), bool))[None]
    lonely = ~mask.any(-1, keepdims=True)
    mask = mask | (lonely & jnp.eye(steps, dtype=bool)[None])
    return mask[:, None]


def left_padding_start(padding_mask: jax.Array) -> jax.Array:
    """[B] int32: the number of padding tokens in front of each left-padded row."""
    return (padding_mask.shape[1] - padding_mask.astype(jnp.int32).sum(axis=1)).astype(jnp.int32)


def is_left_padded(padding_mask) -> bool:
    """True if every row of a concrete [B, T] mask is some False, then only True (at least one)."""
    mask = np.asarray(padding_mask, bool)
    ones = mask.sum(axis=1)
    expected = np.arange(mask.shape[1])[None, :] >= (mask.shape[1] - ones)[:, None]
    return bool(np.all(ones >= 1) and np.array_equal(mask, expected))
