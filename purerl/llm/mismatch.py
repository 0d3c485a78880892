"""Rollout-vs-training numerics mismatch: routing flips and the variance of importance ratios.

The rollout engine and the training pass compute the same policy with different numerics
(precision, kernels, batch composition). With a mixture-of-experts FFN a tiny difference in the
router logits can change a token's top-k expert set, a discrete jump in that token's
log-prob; the ratio π_train/π_rollout of an unchanged policy is then not 1. Here the rollout's
numerics are its parameters rounded to a lower precision (`rollout_params`: bfloat16 weights,
as a bf16 inference engine holds them) and the forward run in float32 either way.

    diagnostics = mismatch_diagnostics(params, config, tokens, mask, "bfloat16")

gives, over the tokens where `mask` is 1 (completion targets, [B, L-1]):
- flip_share: share of (token, MoE layer) pairs whose top-k expert set differs between the two
  passes (0 for a dense FFN); token_flip_share: share of tokens with a flip in any layer;
- token_ratio_var: variance over tokens of r_t = exp(log π_train − log π_rollout);
- sequence_ratio_var: variance over sequences of GSPO's s_i = exp(mean_t (log π_train −
  log π_rollout)) (length-normalised);
- mean_abs_log_ratio: mean |log r_t| over tokens;
- flipped_abs_log_ratio / unflipped_abs_log_ratio: mean |log r_t| over the tokens with / without
  a flip in any MoE layer (NaN where there is no such token, e.g. flipped ones with a dense FFN):
  how much of the ratio noise the routing flips carry, against the rounding alone.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from purerl.attention.lm import LMConfig, TinyLM
from purerl.attention.moe import collected
from purerl.llm import losses
from purerl.llm.models import next_token_log_probs

ROLLOUT_DTYPES = ("float32", "bfloat16", "float16")


def rollout_params(params: Any, dtype: str) -> Any:
    """Parameters rounded to `dtype` and back to float32 (float32: unchanged)."""
    if dtype == "float32":
        return params
    return jax.tree.map(lambda a: a.astype(dtype).astype(a.dtype), params)


def ratio_statistics(new_log_prob: jax.Array, old_log_prob: jax.Array, mask: jax.Array
                     ) -> dict[str, jax.Array]:
    """Token-level vs sequence-level (GSPO) ratio variances over masked tokens ([B, T] each)."""
    mask = mask.astype(jnp.float32)
    log_ratio = (new_log_prob - old_log_prob) * mask
    token_ratio = jnp.exp(log_ratio)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    token_mean = jnp.sum(token_ratio * mask) / count
    token_var = jnp.sum((token_ratio - token_mean) ** 2 * mask) / count
    lengths = jnp.sum(mask, axis=-1)
    has_tokens = (lengths > 0).astype(jnp.float32)
    sequence_ratio = jnp.exp(jnp.sum(log_ratio, axis=-1) / jnp.maximum(lengths, 1.0))
    sequences = jnp.maximum(jnp.sum(has_tokens), 1.0)
    sequence_mean = jnp.sum(sequence_ratio * has_tokens) / sequences
    sequence_var = jnp.sum((sequence_ratio - sequence_mean) ** 2 * has_tokens) / sequences
    return {"token_ratio_var": token_var, "sequence_ratio_var": sequence_var,
            "mean_abs_log_ratio": losses.masked_mean(jnp.abs(log_ratio), mask)}


def routing_flips(ids_a: jax.Array, ids_b: jax.Array) -> jax.Array:
    """[...] bool: the top-k expert *sets* differ (order within the set ignored); ids [..., k]."""
    same = jnp.all(jnp.sort(ids_a, axis=-1) == jnp.sort(ids_b, axis=-1), axis=-1)
    return ~same


def _forward(config: LMConfig, params: Any, tokens: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    logits, state = TinyLM(config).apply(params, tokens, mutable=["intermediates"])
    return logits, collected(state, "expert_ids")


@partial(jax.jit, static_argnames=("config", "rollout_dtype"))
def mismatch_diagnostics(params: Any, config: LMConfig, tokens: jax.Array, mask: jax.Array,
                         rollout_dtype: str = "bfloat16", temperature: float = 1.0) -> dict[str, jax.Array]:
    """Module doc: the training pass (float32 `params`) against the rollout pass
    (`rollout_params(params, rollout_dtype)`) on the same tokens [B, L]; mask [B, L-1]."""
    if rollout_dtype not in ROLLOUT_DTYPES:
        raise ValueError(f"mismatch_diagnostics.rollout_dtype: got {rollout_dtype!r}; allowed: "
                         f"{ROLLOUT_DTYPES}")
    train_logits, train_ids = _forward(config, params, tokens)
    roll_logits, roll_ids = _forward(config, rollout_params(params, rollout_dtype), tokens)
    new, _ = next_token_log_probs(train_logits, tokens, temperature)
    old, _ = next_token_log_probs(roll_logits, tokens, temperature)
    stats = ratio_statistics(new, old, mask)
    mask = mask.astype(jnp.float32)
    if train_ids:
        # Routing of the token that predicts target j: position j ([B, L] -> [B, L-1]).
        flips = jnp.stack([routing_flips(a, b)[:, :-1] for a, b in zip(train_ids, roll_ids, strict=True)])
        flips = flips.astype(jnp.float32)
        stats["flip_share"] = losses.masked_mean(jnp.mean(flips, axis=0), mask)
        flipped = jnp.max(flips, axis=0)
        stats["token_flip_share"] = losses.masked_mean(flipped, mask)
    else:
        stats["flip_share"] = stats["token_flip_share"] = jnp.zeros(())
        flipped = jnp.zeros_like(mask)
    abs_log_ratio = jnp.abs(new - old)
    for name, part in (("flipped", flipped), ("unflipped", 1.0 - flipped)):
        part = mask * part
        stats[f"{name}_abs_log_ratio"] = jnp.where(jnp.sum(part) > 0, losses.masked_mean(abs_log_ratio, part),
                                                   jnp.nan)
    return stats
