"""The models of RLHF on the tiny LM: the policy (and its frozen reference) is `TinyLM`; the critic
and the reward model are the same decoder with a scalar head (`ScalarLM`) in place of the
vocabulary projection, so they can start from the policy's weights.

Per-token quantities are aligned on next-token positions: entry j of a [B, L-1] array belongs to
token j+1 of the [B, L] sequence (predicted from tokens 0..j).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from purerl.attention.lm import LMConfig, TinyLM


class ScalarLM(TinyLM):
    """tokens [B, T] -> one scalar per position [B, T] (value V(x_≤t) or reward r(x_≤t)).

    Same parameter names as `TinyLM` plus `scalar_head`, so a policy's weights initialise it.
    """

    def setup(self) -> None:
        super().setup()
        # Zero init: a fresh head predicts 0 everywhere, so early critic/RM errors are bounded.
        self.scalar_head = nn.Dense(1, kernel_init=nn.initializers.zeros)

    def _logits(self, h: jax.Array) -> jax.Array:
        return self.scalar_head(self.final_norm(h))[..., 0]


def init_lm(model: nn.Module, key: jax.Array, seq_len: int) -> Any:
    return model.init(key, jnp.zeros((1, seq_len), jnp.int32))


def scalar_from_policy(policy_params: Any, scalar_params: Any) -> Any:
    """Scalar-head parameters whose decoder body is copied from the policy (head kept)."""
    body = dict(policy_params["params"])
    return {"params": {**body, "scalar_head": scalar_params["params"]["scalar_head"]}}


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def next_token_log_probs(logits: jax.Array, tokens: jax.Array, temperature: float | jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """log π_T(x_{j+1} | x_≤j) and the entropy of π_T(· | x_≤j), both [B, L-1], where
    π_T = softmax(logits / T): the distribution the rollout sampled from."""
    log_probs = jax.nn.log_softmax(logits[:, :-1] / temperature, axis=-1)
    chosen = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return chosen, entropy


def make_lm_config(vocab_size: int, seq_len: int, d_model: int, num_layers: int, num_heads: int,
                   num_kv_heads: int, mlp_ratio: int) -> LMConfig:
    return LMConfig(vocab_size=vocab_size, max_len=seq_len, d_model=d_model, num_layers=num_layers,
                    num_heads=num_heads, num_kv_heads=num_kv_heads, mlp_ratio=mlp_ratio)
