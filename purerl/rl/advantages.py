"""Advantage and return estimators, truncation-correct, over [T, ...] arrays.

Conventions (all arrays share a leading time axis T and any batch shape after it):
- `values[t]`      = V(s_t)
- `next_values[t]` = V(s'_t), the value of the TRUE next observation: the final
  observation of the episode when step t ended it (gymnax's
  `info["final_observation"]`), otherwise s_{t+1}. Termination masks it out;
  truncation keeps it, which is what makes time limits bootstrap correctly.
- `terminated[t]`, `truncated[t]`: the episode ended at step t by reaching a terminal
  state / by a time limit. Either one stops the backward recursion.

GAE, TD(λ) and Monte Carlo returns are one code path: the TD error δ_t and
`discounted_sum`, a reverse scan of y_t = x_t + c_t · y_{t+1} whose per-step discount c_t
is zero at episode ends. n-step targets use the same episode/bootstrap masks with a
fixed window instead of the scan.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax


def _as_float(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def td_errors(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    gamma: float | jax.Array,
) -> jax.Array:
    """δ_t = r_t + γ (1 − terminated_t) V(s'_t) − V(s_t)."""
    # A [T, N, 1] critic output against [T, N] rewards would broadcast silently.
    chex.assert_equal_shape([rewards, values, next_values, terminated])
    return rewards + gamma * (1.0 - _as_float(terminated)) * next_values - values


def discounted_sum(
    x: jax.Array, discounts: jax.Array, final: jax.Array | None = None
) -> jax.Array:
    """Reverse scan y_t = x_t + discounts_t · y_{t+1}, with y_T = `final` (default 0)."""
    carry0 = jnp.zeros_like(x[0]) if final is None else final

    def step(carry, inputs):
        x_t, c_t = inputs
        y_t = x_t + c_t * carry
        return y_t, y_t

    _, ys = lax.scan(step, carry0, (x, discounts), reverse=True)
    return ys


class Trajectory(NamedTuple):
    """The [T, ...] per-step quantities a return estimator reads; `next_values[t]` is V(s'_t), the
    state after step t (the final observation's value where the episode was truncated)."""

    rewards: jax.Array
    values: jax.Array
    next_values: jax.Array
    terminated: jax.Array
    truncated: jax.Array


def episode_continues(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """1.0 where the episode goes on after step t, 0.0 where it ended (either way)."""
    return 1.0 - _as_float(jnp.logical_or(terminated, truncated))


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    gae_lambda: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016).

    A_t = δ_t + γλ (1 − done_t) A_{t+1}; returns (advantages, λ-returns = A + V).
    The last step of the rollout needs no special case: its bootstrap V(s'_{T-1}) is
    already inside δ_{T-1}.
    """
    chex.assert_equal_shape([rewards, terminated, truncated])
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    advantages = discounted_sum(deltas, gamma * gae_lambda * episode_continues(terminated, truncated))
    return advantages, advantages + values


def lambda_returns(
    rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
    truncated: jax.Array, gamma: float | jax.Array, td_lambda: float | jax.Array,
) -> jax.Array:
    """TD(λ) targets G^λ_t (λ = 0: one-step TD targets, λ = 1: bootstrapped Monte Carlo)."""
    return gae(rewards, values, next_values, terminated, truncated, gamma, td_lambda)[1]


def discounted_returns(
    rewards: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> jax.Array:
    """Episode-aware Monte Carlo returns G_t = r_t + γ (1 − done_t) G_{t+1}.

    No bootstrapping anywhere (the tail of an unfinished episode counts as 0); this is
    the λ = 1 estimator with a zero value function.
    """
    zeros = jnp.zeros_like(_as_float(rewards))
    return lambda_returns(rewards, zeros, zeros, terminated, truncated, gamma, 1.0)


def n_step_targets(
    rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
    truncated: jax.Array, gamma: float | jax.Array, n: int,
) -> jax.Array:
    """n-step targets Σ_{k<m} γ^k r_{t+k} + γ^m V(s'_{t+m-1}), m ≤ n.

    The sum stops early at an episode end (bootstrapping from the final observation on
    truncation, not on termination) and at the end of the rollout, exactly like GAE.
    `values` is unused by the estimator itself; it is accepted so all target functions
    share one signature. `n` is static.
    """
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    del values
    if n < 1:
        raise ValueError(f"n: must be a positive integer, got {n}")
    horizon = rewards.shape[0]
    continues = episode_continues(terminated, truncated)
    bootstrap = gamma * (1.0 - _as_float(terminated)) * next_values
    rollout_last = jnp.zeros((horizon,) + (1,) * (rewards.ndim - 1)).at[-1].set(1.0)
    total = jnp.zeros_like(_as_float(rewards))
    weight = jnp.ones_like(total)  # γ^k while the episode and the rollout go on, else 0
    for k in range(min(n, horizon)):
        # Step t+k ends the sum if the episode ends there, it is the n-th step, or the rollout ends.
        ends = jnp.maximum(1.0 - _shift(continues, k), _shift(rollout_last, k))
        if k == n - 1:
            ends = jnp.ones_like(ends)
        total = total + weight * (_shift(rewards, k) + ends * _shift(bootstrap, k))
        weight = weight * gamma * (1.0 - ends)
    return total


def _shift(x: jax.Array, k: int) -> jax.Array:
    """x_{t+k} along axis 0, zero past the end."""
    if k == 0:
        return x
    pad = jnp.zeros((k,) + x.shape[1:], x.dtype)
    return jnp.concatenate([x[k:], pad], axis=0)
