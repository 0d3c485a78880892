"""Multi-query associative recall data (Arora et al. 2023, "Zoology").

A sequence starts with key-value pairs k₁ v₁ … k_m v_m; later, at random non-overlapping
positions, each key is asked again and followed by its value. The model is scored only where
the next token is such an answer. Keys come from [1, V/2), values from [V/2, V); token 0 fills
the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import check_positive_int


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 128
    seq_len: int = 64
    num_pairs: int = 8
    num_queries: int | None = None  # default: every key asked once

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "num_pairs"):
            check_positive_int("MQARConfig", name, getattr(self, name))
        if self.num_queries is not None:
            check_positive_int("MQARConfig", "num_queries", self.num_queries)
        if self.vocab_size // 2 - 1 < self.num_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves {self.vocab_size // 2 - 1} distinct keys in "
                f"[1, vocab_size/2) for num_pairs={self.num_pairs}; need vocab_size >= "
                f"{2 * (self.num_pairs + 1)}"
            )
        if self.queries > self.num_pairs:
            raise ValueError(
                f"num_queries={self.num_queries} must be <= num_pairs={self.num_pairs}"
            )
        if self.query_slots < self.queries:
            raise ValueError(
                f"seq_len={self.seq_len} has room for {self.query_slots} query slots after "
                f"{self.num_pairs} pairs, need {self.queries}; allowed seq_len >= "
                f"{2 * self.num_pairs + 2 * self.queries}"
            )

    @property
    def queries(self) -> int:
        return self.num_queries or self.num_pairs

    @property
    def query_slots(self) -> int:
        """Two-token (key, value) slots after the pairs."""
        return (self.seq_len - 2 * self.num_pairs) // 2


@struct.dataclass
class MQARBatch:
    tokens: jax.Array  # [B, T] int32: model input
    targets: jax.Array  # [B, T] int32: next token
    loss_mask: jax.Array  # [B, T] bool: True where the target answers a query


def _one_sequence(key: jax.Array, config: MQARConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    key_keys, key_values, key_order, key_slots = jax.random.split(key, 4)
    half = config.vocab_size // 2
    pair_keys = jax.random.choice(key_keys, jnp.arange(1, half), (config.num_pairs,),
                                  replace=False)
    pair_values = jax.random.randint(key_values, (config.num_pairs,), half, config.vocab_size)
    asked = jax.random.permutation(key_order, config.num_pairs)[: config.queries]
    slots = jax.random.choice(key_slots, config.query_slots, (config.queries,), replace=False)
    query_pos = 2 * config.num_pairs + 2 * slots
    tokens = jnp.zeros((config.seq_len,), jnp.int32)
    tokens = tokens.at[: 2 * config.num_pairs].set(
        jnp.stack([pair_keys, pair_values], axis=1).reshape(-1))
    tokens = tokens.at[query_pos].set(pair_keys[asked]).at[query_pos + 1].set(pair_values[asked])
    targets = jnp.concatenate([tokens[1:], jnp.zeros((1,), jnp.int32)])
    loss_mask = jnp.zeros((config.seq_len,), bool).at[query_pos].set(True)
    return tokens, targets, loss_mask


def generate_mqar(key: jax.Array, config: MQARConfig, batch_size: int) -> MQARBatch:
    """A batch of MQAR sequences; a pure function of `key` (jit/vmap friendly)."""
    check_positive_int("generate_mqar", "batch_size", batch_size)
    tokens, targets, loss_mask = jax.vmap(lambda k: _one_sequence(k, config))(
        jax.random.split(key, batch_size))
    return MQARBatch(tokens=tokens, targets=targets, loss_mask=loss_mask)


def bound_recall_vocab(num_keys: int, num_values: int) -> int:
    """Vocabulary of bound-pair recall: padding 0, keys, values, then one token per (key, value)."""
    return 1 + num_keys + num_values + num_keys * num_values


def bound_recall_batch(key: jax.Array, num_pairs: jax.Array | int, max_pairs: int, num_keys: int, num_values: int,
                       batch: int) -> MQARBatch:
    """Bound-pair recall: `batch` sequences of 3·max_pairs tokens. First `num_pairs` (traced,
    ≤ max_pairs) pair tokens, each one token that binds a key to a value (vocabulary
    1 + K + V + K·V); then the used keys asked in a random order, each followed by its value
    token. Loss only at the answer positions. MQAR writes a pair as two tokens "k v", so a
    model must first learn to bind each value to the key before it; here key and value arrive
    bound in one token's embedding, so what is left is retrieval — storing m associations and
    reading one back — where a constant-size linear state and a growing KV cache differ."""
    slots = jnp.arange(max_pairs)
    used = slots < num_pairs

    def one(key):
        key_keys, key_values, key_order = jax.random.split(key, 3)
        keys = jax.random.permutation(key_keys, num_keys)[:max_pairs]  # distinct keys
        values = jax.random.randint(key_values, (max_pairs,), 0, num_values)
        # Ask the used pairs in a random order: sort a random score, unused slots last.
        order = jnp.argsort(jnp.where(used, jax.random.uniform(key_order, (max_pairs,)), 2.0))
        pair_tokens = jnp.where(used, 1 + num_keys + num_values + keys * num_values + values, 0)
        queries = jnp.where(used, 1 + keys[order], 0)
        answers = jnp.where(used, 1 + num_keys + values[order], 0)
        tokens = jnp.concatenate([pair_tokens, jnp.stack([queries, answers], 1).reshape(-1)])
        targets = jnp.concatenate([tokens[1:], jnp.zeros((1,), tokens.dtype)])
        mask = jnp.zeros((3 * max_pairs,), bool).at[max_pairs + 2 * slots].set(used)
        return tokens.astype(jnp.int32), targets.astype(jnp.int32), mask

    tokens, targets, mask = jax.vmap(one)(jax.random.split(key, batch))
    return MQARBatch(tokens=tokens, targets=targets, loss_mask=mask)
