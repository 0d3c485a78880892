"""Exact bias and variance of GAE(γ, λ) advantage estimates on small tabular MDPs.

Continuing MDPs, ergodic under a fixed stochastic policy π: transitions P[s, a, s'],
deterministic rewards r[s, a]. Every quantity is a linear solve (float64):

- V_γ = (I − γ P_π)⁻¹ r_π and A_γ(s, a) = r(s, a) + γ Σ_s' P(s'|s, a) V_γ(s') − V_γ(s);
- the long-horizon (average-reward) advantage, the limit of A_γ as γ → 1:
  ρ = d_π · r_π, h = (I − P_π + 1 d_πᵀ)⁻¹ (r_π − ρ), A(s, a) = r(s, a) − ρ + Σ_s' P h − h(s);
- GAE with a critic V̂ from (s_0, a_0): Â = Σ_l κ^l δ_l, κ = γλ,
  δ_l = r(s_l, a_l) + γ V̂(s_{l+1}) − V̂(s_l). Given (s_0, a_0) its mean m and second
  moment M solve
      m = c₁ + κ P̃ m,    c₁(s, a) = Σ_s' P(s'|s, a) δ(s, a, s'),
      M = c₂ + κ² P̃ M,   c₂(s, a) = Σ_s' P(s'|s, a) [δ(s, a, s')² + 2κ δ(s, a, s') m̄(s')],
  with P̃[(s, a), (s', a')] = P(s'|s, a) π(a'|s') and m̄(s') = Σ_a' π(a'|s') m(s', a'):
  the sum from step 1 on depends on the past only through s_1. A rollout of T steps that
  bootstraps from V̂(s_T) (what PPO's GAE does at the end of a rollout) runs the same
  recursions T times from m = M = 0 instead of solving them.

Errors are averaged over (s, a) ~ d_π(s) π(a|s). The policy gradient sees an advantage
estimate only through its action-dependent part: adding any function of the state alone
is a baseline (Σ_a π(a|s) ∇log π(a|s) = 0). So the bias that matters for the gradient is
b(s, a) − Σ_a' π(a'|s) b(s, a'), b = m − A ("centred"); the raw bias also counts the
state-only part (at λ = 1, Â = Σ γ^l r_l − V̂(s_0): biased by the critic's error at s_0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purerl.rl import advantages as adv


class MDP(NamedTuple):
    transitions: jax.Array  # P[s, a, s']
    rewards: jax.Array  # r[s, a]
    policy: jax.Array  # π[s, a]


def random_mdp(key: jax.Array, num_states: int, num_actions: int, concentration: float) -> MDP:
    """Dirichlet(concentration) transitions (small = sparse), N(0, 1) rewards, Dirichlet(1) policy."""
    k_p, k_r, k_pi = jax.random.split(key, 3)
    alpha = jnp.full((num_states,), concentration)
    transitions = jax.random.dirichlet(k_p, alpha, (num_states, num_actions))
    rewards = jax.random.normal(k_r, (num_states, num_actions))
    policy = jax.random.dirichlet(k_pi, jnp.ones(num_actions), (num_states,))
    return MDP(transitions, rewards, policy)


def chain_mdp(num_states: int, p_right: float) -> MDP:
    """A chain 0 … n−1: action 1 moves right, action 0 left (state 0 stays). Moving right
    from the last state pays 1 and restarts at 0; no other reward. π(right) = p_right, so
    the reward is about (n − 1) / (2 p_right − 1) steps away from the start."""
    s = np.arange(num_states)
    transitions = np.zeros((num_states, 2, num_states))
    transitions[s, 0, np.maximum(s - 1, 0)] = 1.0
    transitions[s, 1, (s + 1) % num_states] = 1.0
    rewards = np.zeros((num_states, 2))
    rewards[-1, 1] = 1.0
    policy = np.tile([1.0 - p_right, p_right], (num_states, 1))
    return MDP(*(jnp.asarray(x) for x in (transitions, rewards, policy)))


def as_float64(mdp: MDP) -> MDP:
    """The MDP in float64 with rows that sum to 1 at that precision (call under
    `jax.enable_x64(True)`)."""
    transitions, rewards, policy = (jnp.asarray(x, jnp.float64) for x in mdp)
    return MDP(transitions / transitions.sum(-1, keepdims=True), rewards, policy / policy.sum(-1, keepdims=True))


def _policy_chain(mdp: MDP) -> tuple[jax.Array, jax.Array]:
    """(P_π [S, S], r_π [S])."""
    return jnp.einsum("sa,sat->st", mdp.policy, mdp.transitions), jnp.sum(mdp.policy * mdp.rewards, -1)


def stationary(p_pi: jax.Array) -> jax.Array:
    """d with dᵀ P_π = dᵀ, Σ d = 1 (unique for an ergodic chain)."""
    n = p_pi.shape[0]
    return jnp.linalg.solve((jnp.eye(n) - p_pi).T + jnp.ones((n, n)), jnp.ones(n))


class Truth(NamedTuple):
    weights: jax.Array  # d_π(s) π(a|s) [S, A]
    values: jax.Array  # V_γ of the reward centred at ρ [S]
    advantage: jax.Array  # A_γ [S, A]
    long_horizon: jax.Array  # average-reward advantage [S, A]
    rewards: jax.Array  # r − ρ [S, A]


def truth(mdp: MDP, gamma: jax.Array) -> Truth:
    """Exact V_γ, A_γ and the long-horizon advantage. Rewards are centred at the average
    reward ρ: advantages and GAE estimates do not change, and values stay O(mixing time)
    instead of O(1 / (1 − γ))."""
    p_pi, r_pi = _policy_chain(mdp)
    n = p_pi.shape[0]
    d = stationary(p_pi)
    rho = d @ r_pi
    rewards = mdp.rewards - rho
    values = jnp.linalg.solve(jnp.eye(n) - gamma * p_pi, r_pi - rho)
    advantage = rewards + gamma * mdp.transitions @ values - values[:, None]
    h = jnp.linalg.solve(jnp.eye(n) - p_pi + jnp.outer(jnp.ones(n), d), r_pi - rho)
    long_horizon = rewards + mdp.transitions @ h - h[:, None]
    return Truth(d[:, None] * mdp.policy, values, advantage, long_horizon, rewards)


def gae_moments(
    mdp: MDP, rewards: jax.Array, critic: jax.Array, gamma: jax.Array, lam: jax.Array, horizon: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """(mean, variance) [S, A] of the GAE(γ, λ) estimate at (s_0, a_0) with critic V̂ =
    `critic`; infinite horizon (`None`) or a rollout of `horizon` steps."""
    num_states, num_actions = rewards.shape
    kappa = gamma * lam
    delta = rewards[:, :, None] + gamma * critic[None, None, :] - critic[:, None, None]  # [S, A, S']
    p_tilde = jnp.einsum("sat,tb->satb", mdp.transitions, mdp.policy).reshape(num_states * num_actions, -1)
    c1 = jnp.sum(mdp.transitions * delta, -1).reshape(-1)

    def c2(mean: jax.Array) -> jax.Array:
        mean_next = jnp.sum(mdp.policy * mean.reshape(num_states, num_actions), -1)  # m̄(s')
        terms = delta**2 + 2 * kappa * delta * mean_next[None, None, :]
        return jnp.sum(mdp.transitions * terms, -1).reshape(-1)

    if horizon is None:
        eye = jnp.eye(num_states * num_actions)
        mean = jnp.linalg.solve(eye - kappa * p_tilde, c1)
        second = jnp.linalg.solve(eye - kappa**2 * p_tilde, c2(mean))
    else:
        def step(carry, _):
            mean, second = carry  # moments of the sum over the remaining k − 1 steps
            return (c1 + kappa * p_tilde @ mean, c2(mean) + kappa**2 * p_tilde @ second), None

        zeros = jnp.zeros_like(c1)
        (mean, second), _ = jax.lax.scan(step, (zeros, zeros), None, length=horizon)
    mean = mean.reshape(num_states, num_actions)
    # E[X²] − E[X]² can round to a tiny negative number where X is (nearly) deterministic.
    return mean, jnp.maximum(second.reshape(num_states, num_actions) - mean**2, 0.0)


def _weighted(weights: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.sum(weights * x)


def _centred(policy: jax.Array, x: jax.Array) -> jax.Array:
    return x - jnp.sum(policy * x, -1, keepdims=True)


def errors(mdp: MDP, gamma: jax.Array, lam: jax.Array, noise: jax.Array, z: jax.Array) -> dict[str, jax.Array]:
    """Scalar errors of GAE(γ, λ) with critic V̂ = V_γ + noise · sd_d(V_γ) · z.

    All are divided by the d_π π-weighted mean square of the long-horizon advantage, so
    that MDPs of different scales average: `bias2_*` (centred, what the gradient sees),
    `raw_bias2_*`, `variance`, `mse_*` = centred bias² + variance, for the targets
    `gamma` (A_γ) and `long` (the long-horizon advantage); `horizon_bias2` = the centred
    squared distance between the two targets themselves."""
    t = truth(mdp, gamma)
    sd = jnp.sqrt(_weighted(t.weights.sum(-1), (t.values - _weighted(t.weights.sum(-1), t.values)) ** 2))
    critic = t.values + noise * sd * z
    mean, variance = gae_moments(mdp, t.rewards, critic, gamma, lam)
    scale = _weighted(t.weights, t.long_horizon**2)
    out = {"variance": _weighted(t.weights, variance) / scale}
    for name, target in (("gamma", t.advantage), ("long", t.long_horizon)):
        bias = mean - target
        out[f"bias2_{name}"] = _weighted(t.weights, _centred(mdp.policy, bias) ** 2) / scale
        out[f"raw_bias2_{name}"] = _weighted(t.weights, bias**2) / scale
        out[f"mse_{name}"] = out[f"bias2_{name}"] + out["variance"]
    out["horizon_bias2"] = _weighted(t.weights, _centred(mdp.policy, t.advantage - t.long_horizon) ** 2) / scale
    out["critic_unexplained"] = critic_unexplained(mdp, t, critic, gamma)
    return out


def critic_unexplained(mdp: MDP, t: Truth, critic: jax.Array, gamma: jax.Array) -> jax.Array:
    """E[(G − V̂(s))²] / Var(G) over (s, a) ~ d_π π, G = Σ_l γ^l r_l the return from (s, a):
    what PPO's `value_error_ratio` measures against the realised return of its rollouts, so
    that a PPO critic can be placed on this part's critic-noise scale. 0 needs a perfect
    critic AND a deterministic return; the return's own noise alone gives E Var(G | s) / Var(G)."""
    # GAE at λ = 1 from (s, a) is G − V̂(s): its mean and variance; with V̂ = 0, the mean is Q(s, a).
    mean, variance = gae_moments(mdp, t.rewards, critic, gamma, 1.0)
    q, _ = gae_moments(mdp, t.rewards, jnp.zeros_like(critic), gamma, 1.0)
    total = _weighted(t.weights, variance + q**2) - _weighted(t.weights, q) ** 2
    return _weighted(t.weights, variance + mean**2) / total


def error_grid(
    mdps: MDP, gammas: np.ndarray, lams: np.ndarray, noises: np.ndarray, z: jax.Array
) -> dict[str, np.ndarray]:
    """`errors` for every MDP (leading axis of `mdps`) × γ × λ × noise level × critic-noise
    draw (z: [num_mdps, draws, S]); arrays [mdp, γ, λ, noise, draw], in float64."""
    with jax.enable_x64(True):
        mdps = as_float64(mdps)
        z = jnp.asarray(z, jnp.float64)
        fn = errors
        fn = jax.vmap(fn, (None, None, None, None, 0))  # draws
        fn = jax.vmap(fn, (None, None, None, 0, None))  # noise levels
        fn = jax.vmap(fn, (None, None, 0, None, None))  # λ
        fn = jax.vmap(fn, (None, 0, None, None, None))  # γ
        grid = [jnp.asarray(x, jnp.float64) for x in (gammas, lams, noises)]
        # One MDP per call of one compiled program: vmapping MDPs too would hold every MDP's
        # matrices at once, and a lax.map over MDPs has been seen to stall XLA's CPU runtime.
        one = jax.jit(lambda mdp, z: fn(mdp, *grid, z))
        outs = [one(jax.tree.map(lambda x, i=i: x[i], mdps), z[i]) for i in range(z.shape[0])]
        return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}


# ---------------------------------------------------------------- Monte Carlo check
def sample_rollouts(mdp: MDP, horizon: int, num_samples: int, key: jax.Array) -> tuple[jax.Array, ...]:
    """`num_samples` rollouts of `horizon` steps under π from every (s_0, a_0): states,
    actions and next states, each [horizon, S · A · num_samples] ((s_0, a_0)-major)."""
    num_states, num_actions = mdp.rewards.shape
    states = jnp.repeat(jnp.arange(num_states), num_actions * num_samples)
    actions = jnp.tile(jnp.repeat(jnp.arange(num_actions), num_samples), num_states)
    log_p, log_pi = jnp.log(mdp.transitions), jnp.log(mdp.policy)

    def step(carry, key):
        s, a = carry
        k_s, k_a = jax.random.split(key)
        s_next = jax.random.categorical(k_s, log_p[s, a])
        a_next = jax.random.categorical(k_a, log_pi[s_next])
        return (s_next, a_next), (s, a, s_next)

    _, rollouts = jax.lax.scan(step, (states, actions), jax.random.split(key, horizon))
    return rollouts


def sampled_gae(
    rollouts: tuple[jax.Array, ...], rewards: jax.Array, critic: jax.Array, gamma: float, lam: float
) -> jax.Array:
    """GAE(γ, λ) estimate at t = 0 of each rollout, by purerl.rl.advantages.gae (the last
    step bootstraps from V̂(s_T)): [S, A, num_samples]."""
    s, a, s_next = rollouts
    zeros = jnp.zeros(s.shape, bool)
    estimates, _ = adv.gae(rewards[s, a], critic[s], critic[s_next], zeros, zeros, gamma, lam)
    return estimates[0].reshape(*rewards.shape, -1)
