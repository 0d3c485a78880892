"""Off-policy corrections for rollouts that an older policy μ (the behaviour policy) collected
while the learner's policy π has moved on: truncated importance weights, V-trace (Espeholt et
al. 2018) and the weights of the decoupled PPO objective (Hilton et al. 2021).

Everything here is a function of per-step arrays only — the log-ratios log ρ_t = log π(a_t|s_t)
− log μ(a_t|s_t), rewards, critic values and the episode flags — with the conventions of
`purerl.rl.advantages` ([T, ...] arrays; `next_values[t]` = V of the TRUE next observation,
the final one when step t ended the episode; `terminated` masks that bootstrap, `truncated`
keeps it; either one cuts every trace). It knows nothing about where a rollout came from (a
lagging actor in the same program, a queue from another device, a replay buffer).

`correct` selects one of `CORRECTIONS` by a code that may be traced, so the choice can be a
vmapped sweep axis; every correction returns the same four arrays (`Corrected`) for a
clipped-surrogate loss −E[w · min(r Â, clip(r, 1 ± ε) Â)], r = π_θ / π_ref:

- `none`: GAE(λ) advantages and λ-returns as if the data were on-policy; w = 1, π_ref = μ.
- `truncated_is`: IMPALA's "1-step importance sampling": each advantage is multiplied by its
  truncated weight min(ρ̄, ρ_t); critic targets uncorrected (λ-returns); π_ref = π.
- `vtrace`: V-trace targets v_t for the critic and policy-gradient advantages
  min(ρ̄, ρ_t) (r_t + γ q_{t+1} − V(s_t)) with q_{t+1} = λ v_{t+1} + (1 − λ) V(s_{t+1})
  (rlax's `vtrace_td_error_and_advantage`; λ = 1 is the paper's r_t + γ v_{t+1}); π_ref = π.
- `decoupled`: GAE advantages; the clip is taken relative to the proximal policy (π_ref = π,
  the policy the update starts from) and each sample's clipped term is weighted by the
  truncated behaviour ratio w = min(ρ̄, π/μ).

On-policy (ρ = 1) with ρ̄, c̄ ≥ 1 every correction gives `none`'s numbers: the weights are 1
and V-trace's targets are the λ-returns and its advantages GAE(λ).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from purerl.rl import advantages as adv

CORRECTIONS = ("none", "truncated_is", "vtrace", "decoupled")
NONE, TRUNCATED_IS, VTRACE, DECOUPLED = range(len(CORRECTIONS))


def correction_code(name: str) -> int:
    """The numeric code of a correction (the traced `Hyper.correction` of purerl.algos.stale_ppo)."""
    if name not in CORRECTIONS:
        raise ValueError(f"correction: got {name!r}; allowed: {', '.join(map(repr, CORRECTIONS))}")
    return CORRECTIONS.index(name)


def truncated_importance_weights(log_rhos: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """min(threshold, ρ) from log ρ, without overflowing exp for large log ρ."""
    return jnp.exp(jnp.minimum(log_rhos, jnp.log(threshold)))


class VTrace(NamedTuple):
    targets: jax.Array  # v_t, the critic's targets
    advantages: jax.Array  # min(ρ̄, ρ_t) (r_t + γ q_{t+1} − V(s_t)), the policy gradient's
    clipped_rhos: jax.Array  # min(ρ̄, ρ_t)


def vtrace(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    log_rhos: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array = 1.0,
    rho_bar: float | jax.Array = 1.0,
    c_bar: float | jax.Array = 1.0,
) -> VTrace:
    """V-trace (Espeholt et al. 2018, eq. 1 with the λ of its Remark 2: c_t = λ min(c̄, ρ_t)).

    v_t − V(s_t) = δ_t + γ c_t (v_{t+1} − V(s_{t+1})) while the episode goes on, with
    δ_t = min(ρ̄, ρ_t) (r_t + γ (1 − terminated_t) V(s'_t) − V(s_t)); at an episode end or the
    rollout's end the recursion stops and the bootstrap is inside δ_t (V(final observation) on
    truncation, nothing on termination) — the same recursion as `advantages.gae`, which is
    V-trace with every ρ = 1. Outputs carry no gradient (they are targets).
    """
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated, log_rhos])
    rhos = truncated_importance_weights(log_rhos, rho_bar)
    cs = lam * truncated_importance_weights(log_rhos, c_bar)
    td = adv.td_errors(rewards, values, next_values, terminated, gamma)
    continues = adv.episode_continues(terminated, truncated)
    corrections = adv.discounted_sum(rhos * td, gamma * cs * continues)  # v_t − V(s_t)
    # q_{t+1} − V(s'_t) = λ (v_{t+1} − V(s_{t+1})) while the episode goes on inside the rollout;
    # 0 at an episode end or the rollout's last step (q is then the bootstrap alone).
    later = jnp.concatenate([corrections[1:], jnp.zeros_like(corrections[:1])]) * continues
    advantages = rhos * (td + gamma * lam * later)
    return jax.lax.stop_gradient(VTrace(values + corrections, advantages, rhos))


class Corrected(NamedTuple):
    advantages: jax.Array  # Â_t
    targets: jax.Array  # the critic's regression targets
    weights: jax.Array  # w_t on each sample's clipped surrogate term
    reference_log_prob: jax.Array  # log π_ref(a_t|s_t), the ratio's denominator


def correct(
    correction: int | jax.Array,
    log_prob: jax.Array,
    behaviour_log_prob: jax.Array,
    trajectory: adv.Trajectory,
    gamma: float | jax.Array,
    lam: float | jax.Array,
    rho_bar: float | jax.Array = 1.0,
    c_bar: float | jax.Array = 1.0,
) -> Corrected:
    """The correction `CORRECTIONS[correction]` of a [T, ...] rollout (see the module docstring).

    `log_prob` is the learner's current policy (the proximal policy of the update about to
    run), `behaviour_log_prob` the policy that collected the data. `correction` may be traced
    (a float code is rounded); all four are computed and one selected, which costs a few
    reverse scans over T.
    """
    log_rhos = log_prob - behaviour_log_prob
    gae, returns = adv.gae(*trajectory, gamma, lam)
    weights = truncated_importance_weights(log_rhos, rho_bar)
    traced = vtrace(*trajectory, log_rhos, gamma, lam, rho_bar, c_bar)
    code = jnp.round(jnp.asarray(correction, jnp.float32)).astype(jnp.int32)
    ones = jnp.ones_like(weights)

    def pick(none, truncated_is, vtrace_, decoupled):
        return jnp.select([code == NONE, code == TRUNCATED_IS, code == VTRACE], [none, truncated_is, vtrace_],
                          decoupled)

    return jax.lax.stop_gradient(Corrected(
        advantages=pick(gae, weights * gae, traced.advantages, gae),
        targets=pick(returns, returns, traced.targets, returns),
        weights=pick(ones, ones, ones, weights),
        reference_log_prob=pick(behaviour_log_prob, log_prob, log_prob, log_prob),
    ))
