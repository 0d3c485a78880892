"""Sequence packing: several short sequences per row, so a training pass spends no compute on
padding.

    packed = pack(sequences, row_len=256)    # host-side NumPy, part of the data pipeline
    logits = TinyLM(cfg).apply(params, packed.tokens, segment_ids=packed.segment_ids)
    loss = next_token_loss(logits, packed.tokens, packed.segment_ids)

Every sequence keeps its tokens contiguous in one row; `segment_ids` number the sequences of a
row 1, 2, ... (0 = padding at the row's end). With `segment_ids` TinyLM attends within each
sequence only (a block-diagonal causal mask) and restarts positions per sequence, so a packed
sequence gets exactly the logits it gets alone, and the token-weighted loss over a packed batch
equals the loss over the same sequences unpadded. Rows are filled first-fit decreasing (longest
sequence first, into the first row with room), which for long-tailed lengths leaves little
padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


@struct.dataclass
class Packed:
    tokens: np.ndarray  # [R, row_len] int32, `pad_id` after each row's last sequence
    segment_ids: np.ndarray  # [R, row_len] int32: 1, 2, ... per sequence of the row, 0 = padding
    positions: np.ndarray  # [R, row_len] int32: restarting at 0 for every sequence
    row: np.ndarray  # [N] int32: the row of input sequence i
    offset: np.ndarray  # [N] int32: where sequence i starts in its row
    length: np.ndarray  # [N] int32: its length

    def unpack(self, values: np.ndarray | jax.Array, i: int) -> np.ndarray | jax.Array:
        """Sequence i's slice [length, ...] of a per-token array [R, row_len, ...]."""
        row, start = int(self.row[i]), int(self.offset[i])
        return values[row, start:start + int(self.length[i])]


def pack(sequences: Sequence[Sequence[int]] | Sequence[np.ndarray], row_len: int,
         pad_id: int = 0) -> Packed:
    """Pack token sequences (each of length 1..row_len) into as few rows as first-fit
    decreasing finds."""
    if isinstance(row_len, bool) or not isinstance(row_len, (int, np.integer)) or row_len < 1:
        raise ValueError(f"pack.row_len: got {row_len!r}; allowed: a positive integer")
    lengths = np.array([len(s) for s in sequences], np.int32)
    bad = np.flatnonzero((lengths < 1) | (lengths > row_len))
    if bad.size:
        raise ValueError(f"pack.sequences: sequence {bad[0]} has length {lengths[bad[0]]}; "
                         f"allowed: 1..row_len={row_len}")
    order = np.argsort(-lengths, kind="stable")
    free: list[int] = []  # room left per row
    row = np.zeros(len(lengths), np.int32)
    offset = np.zeros(len(lengths), np.int32)
    for i in order:
        n = int(lengths[i])
        r = next((r for r, room in enumerate(free) if room >= n), len(free))
        if r == len(free):
            free.append(row_len)
        row[i], offset[i] = r, row_len - free[r]
        free[r] -= n
    tokens = np.full((len(free), row_len), pad_id, np.int32)
    segment_ids = np.zeros((len(free), row_len), np.int32)
    positions = np.zeros((len(free), row_len), np.int32)
    for i in order:  # within a row, segment ids follow placement order
        r, start, n = row[i], offset[i], lengths[i]
        tokens[r, start:start + n] = np.asarray(sequences[i], np.int32)
        segment_ids[r, start:start + n] = segment_ids[r].max() + 1
        positions[r, start:start + n] = np.arange(n)
    return Packed(tokens=tokens, segment_ids=segment_ids, positions=positions, row=row,
                  offset=offset, length=lengths)


def pad(sequences: Sequence[Sequence[int]] | Sequence[np.ndarray], row_len: int,
        pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One sequence per row, right-padded: tokens [N, row_len] and padding_mask [N, row_len]."""
    tokens = np.full((len(sequences), row_len), pad_id, np.int32)
    mask = np.zeros((len(sequences), row_len), bool)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = np.asarray(s, np.int32)
        mask[i, :len(s)] = True
    return tokens, mask


def next_token_weights(segment_ids: jax.Array) -> jax.Array:
    """[B, T] float32: 1 where token t + 1 continues token t's sequence (the targets counted),
    0 at each sequence's last token, at padding and at the last column. A padding mask works as
    segment ids too (one sequence per row)."""
    ids = jnp.asarray(segment_ids).astype(jnp.int32)
    follows = (ids[:, 1:] == ids[:, :-1]) & (ids[:, :-1] != 0)
    return jnp.concatenate([follows, jnp.zeros_like(follows[:, :1])], axis=1).astype(jnp.float32)


def next_token_loss(logits: jax.Array, tokens: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Token-weighted mean cross-entropy of predicting token t + 1 from position t, over the
    targets inside each sequence (`next_token_weights`): PAD never enters the loss."""
    weights = next_token_weights(segment_ids)
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)  # last column: weight 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)
