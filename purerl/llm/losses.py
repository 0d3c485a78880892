"""Losses of RL for language models, over next-token-aligned [B, L-1] arrays with a completion mask.

Entries outside the mask (prompt positions, padding after EOS) never reach a loss value or a
gradient: they are replaced before any arithmetic, so even inf/NaN there changes nothing.

- KL estimators of KL(π ‖ π_ref) from samples y ~ π, with r = π_ref(y) / π(y) (Schulman 2020):
  k1 = −log r (unbiased, can be negative), k2 = ½ (log r)² (biased, low variance),
  k3 = (r − 1) − log r (unbiased, ≥ 0; GRPO's choice).
- `clipped_token_loss`: PPO's clipped surrogate (purerl.rl.losses) over completion tokens, each
  token weighted 1/(all tokens) ("token") or 1/(its sequence's length · sequences) ("sequence",
  the GRPO paper's per-sample mean).
- `clipped_sequence_loss`: GSPO's sequence-level ratio (π/π_old of the whole completion,
  length-normalised: exp of the mean token log-ratio), clipped per sequence.
- `dpo_loss`, `bradley_terry_loss`: the pairwise logistic losses of DPO and of reward modelling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from purerl.config import check_choice
from purerl.rl import losses as rl_losses
from purerl.rl.losses import masked_mean  # noqa: F401 - the one masked mean, used as losses.masked_mean

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence")


def kl_estimate(log_prob: jax.Array, ref_log_prob: jax.Array, estimator: str) -> jax.Array:
    """Per-sample estimate of KL(π ‖ π_ref) from log π(y) and log π_ref(y), y ~ π."""
    check_choice("kl", "estimator", estimator, KL_ESTIMATORS)
    log_ratio = ref_log_prob - log_prob  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    return jnp.expm1(log_ratio) - log_ratio


def masked_kl(log_prob: jax.Array, ref_log_prob: jax.Array, mask: jax.Array, estimator: str) -> jax.Array:
    """`kl_estimate` on completion tokens, 0 elsewhere; inputs outside the mask are replaced
    first, so not even the gradient sees them (an inf there would otherwise give 0·inf = NaN)."""
    valid = mask > 0
    return jnp.where(valid, kl_estimate(jnp.where(valid, log_prob, 0.0), jnp.where(valid, ref_log_prob, 0.0),
                                        estimator), 0.0)


def token_weights(mask: jax.Array, aggregation: str) -> jax.Array:
    """[B, T] non-negative weights summing to 1 over the masked tokens."""
    check_choice("loss", "aggregation", aggregation, AGGREGATIONS)
    mask = mask.astype(jnp.float32)
    if aggregation == "token":
        return mask / jnp.maximum(jnp.sum(mask), 1.0)
    lengths = jnp.sum(mask, axis=1, keepdims=True)
    sequences = jnp.maximum(jnp.sum(lengths > 0), 1.0)
    return mask / jnp.maximum(lengths, 1.0) / sequences


def weighted_sum(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ w·x, with x replaced by 0 wherever the weight is 0 (inf/NaN there cannot leak)."""
    return jnp.sum(weights * jnp.where(weights > 0, x, 0.0))


def clipped_token_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                       mask: jax.Array, clip_eps: float | jax.Array, aggregation: str = "token"
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−Σ_t w_t min(r_t A_t, clip(r_t, 1±ε) A_t) over completion tokens, r_t = π/π_old per token.

    Reuses `purerl.rl.losses.clipped_surrogate`: masked tokens get ratio 1 and advantage 0, so
    they add exactly 0; scaling the advantages by size·w_t > 0 turns its mean into the weighted
    sum (min(c·a, c·b) = c·min(a, b) for c > 0). Diagnostics are means over masked tokens.
    """
    valid = mask > 0
    weights = token_weights(mask, aggregation)
    size = mask.size
    log_prob = jnp.where(valid, log_prob, 0.0)
    old_log_prob = jnp.where(valid, old_log_prob, 0.0)
    scaled_advantages = jnp.where(valid, advantages, 0.0) * weights * size
    loss, stats = rl_losses.clipped_surrogate(
        log_prob.ravel(), old_log_prob.ravel(), scaled_advantages.ravel(), clip_eps)
    per_valid = size / jnp.maximum(jnp.sum(valid), 1.0)
    return loss, {name: value * per_valid for name, value in stats.items()}


def sequence_log_ratio(log_prob: jax.Array, old_log_prob: jax.Array, mask: jax.Array) -> jax.Array:
    """[B]: mean over each completion's tokens of log π − log π_old (GSPO's log s_i)."""
    valid = mask > 0
    diff = jnp.where(valid, log_prob - jnp.where(valid, old_log_prob, 0.0), 0.0)
    return jnp.sum(diff, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


def clipped_sequence_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                          mask: jax.Array, clip_eps: float | jax.Array
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GSPO: −mean_i min(s_i A_i, clip(s_i, 1±ε) A_i), s_i = exp(mean_t log π/π_old), A [B]."""
    log_ratio = sequence_log_ratio(log_prob, old_log_prob, mask)
    return rl_losses.clipped_surrogate(log_ratio, jnp.zeros_like(log_ratio), advantages, clip_eps)


def masked_value_loss(values: jax.Array, targets: jax.Array, old_values: jax.Array | None,
                      clip_eps: float | jax.Array | None, mask: jax.Array) -> jax.Array:
    """½ mean over masked tokens of the (optionally clipped) squared value error."""
    valid = mask > 0
    targets = jnp.where(valid, targets, 0.0)
    values = jnp.where(valid, values, targets)
    if old_values is not None:
        old_values = jnp.where(valid, old_values, targets)
    loss = rl_losses.value_loss(values.ravel(), targets.ravel(),
                                None if old_values is None else old_values.ravel(), clip_eps)
    return loss * mask.size / jnp.maximum(jnp.sum(valid), 1.0)


def sequence_log_prob(log_prob: jax.Array, mask: jax.Array) -> jax.Array:
    """[B]: log π(completion) = Σ over its tokens."""
    return jnp.sum(jnp.where(mask > 0, log_prob, 0.0), axis=1)


def pair_mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Mean over pairs, or the weighted mean Σ w·x / Σ w (0 when no pair has weight)."""
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(weights * x) / jnp.maximum(jnp.sum(weights), 1e-8)


def dpo_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float | jax.Array, weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−mean log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]) over pairs
    of sequence log-probs [n] (weighted by `weights`, e.g. 0 for ties). Diagnostics: the implicit
    rewards' accuracy and margin."""
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    return -pair_mean(jax.nn.log_sigmoid(margin), weights), {
        "reward_accuracy": pair_mean((margin > 0).astype(jnp.float32), weights),
        "reward_margin": pair_mean(margin, weights),
    }


def bradley_terry_loss(chosen_reward: jax.Array, rejected_reward: jax.Array, weights: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−mean log σ(r(y_w) − r(y_l)): the logistic loss of P(y_w ≻ y_l) = σ(r_w − r_l)."""
    margin = chosen_reward - rejected_reward
    return -pair_mean(jax.nn.log_sigmoid(margin), weights), {
        "pair_accuracy": pair_mean((margin > 0).astype(jnp.float32), weights),
        "reward_margin": pair_mean(margin, weights),
    }
