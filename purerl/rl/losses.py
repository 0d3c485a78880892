"""Policy and value losses shared by the policy-gradient algorithms.

All return a scalar loss (to minimise) and, where useful, diagnostics. Inputs are flat
batches [B] of per-sample quantities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return jnp.mean(x) if mask is None else masked_mean(x, mask)


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Zero mean, unit standard deviation over the batch (PPO's per-minibatch advantage
    normalisation)."""
    return (x - jnp.mean(x)) / (jnp.std(x) + eps)


def policy_gradient_loss(
    log_prob: jax.Array, advantages: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Vanilla score-function loss −E[log π(a|s) · Â] (REINFORCE, A2C); with `mask`, the
    mean runs over the valid samples only."""
    return -_mean(log_prob * jax.lax.stop_gradient(advantages), mask)


def clipped_surrogate(
    log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantages: jax.Array,
    clip_eps: float | jax.Array,
    mask: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's pessimistic clipped objective, negated.

    L = −E[min(r Â, clip(r, 1 − ε, 1 + ε) Â)] with r = π/π_old. The min makes the bound
    pessimistic: once r leaves the band in the direction Â favours, the gradient is zero.
    Diagnostics: approx_kl uses the low-variance estimator (r − 1) − log r of KL(old‖new);
    clip_frac is the fraction of samples with |r − 1| > ε. With `mask`, the loss and both
    diagnostics average over the valid samples only (padding would dilute them). `weights`
    (no gradient) multiply each sample's term: −E[w min(...)], e.g. the truncated behaviour
    ratio of the decoupled objective (purerl.rl.off_policy_corrections).
    """
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    objective = jnp.minimum(unclipped, clipped)
    if weights is not None:
        objective = jax.lax.stop_gradient(weights) * objective
    loss = -_mean(objective, mask)
    stats = {
        "approx_kl": _mean((ratio - 1.0) - log_ratio, mask),
        "clip_frac": _mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
    }
    return loss, stats


def value_loss(
    values: jax.Array,
    targets: jax.Array,
    old_values: jax.Array | None = None,
    clip_eps: float | jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """½ E[(V − target)²]; with `old_values` and `clip_eps`, PPO's clipped variant
    ½ E[max((V − G)², (V_old + clip(V − V_old, ±ε) − G)²)]; `mask` as in the others."""
    squared = jnp.square(values - targets)
    if old_values is not None and clip_eps is not None:
        clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        squared = jnp.maximum(squared, jnp.square(clipped_values - targets))
    return 0.5 * _mean(squared, mask)


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """1 − Var(target − prediction) / Var(target): 1 is perfect, ≤ 0 is no better than a constant."""
    return 1.0 - jnp.var(targets - predictions) / (jnp.var(targets) + 1e-8)


def masked_explained_variance(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """`explained_variance` over the entries where `mask` is 1 (the valid steps or tokens)."""

    def variance(x: jax.Array) -> jax.Array:
        mean = masked_mean(x, mask)
        return masked_mean(jnp.square(x - mean), mask)

    return 1.0 - variance(targets - predictions) / (variance(targets) + 1e-8)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over the entries where `mask` is 1 (0 when the mask is empty). Entries outside
    the mask are replaced before any arithmetic, so inf/NaN there (e.g. log-probs of padding)
    reach neither the value nor the gradient."""
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.where(mask > 0, x, 0.0) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_normalize(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """`normalize` restricted to the masked entries; entries outside the mask become 0."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
    return mask * (x - mean) / (std + eps)
