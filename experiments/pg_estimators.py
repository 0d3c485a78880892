"""Policy-gradient estimators at fixed parameters, for measuring their variance.

Each estimator is ĝ = ∇_θ (1/|valid steps|) Σ_t log π_θ(a_t|s_t) · w_t over a batch of
`num_envs` complete episodes (each env's first episode, horizon `horizon`), with the
weight w_t of:

- `none`:         G_t, the discounted return-to-go (REINFORCE without a baseline);
- `standardised`: G_t standardised over the batch's steps (REINFORCE's default
                  `normalize_returns`: a batch-mean baseline and a batch-dependent scale);
- `value`:        G_t − V(s_t) with the checkpoint's critic (REINFORCE, baseline="value");
- `gae`:          GAE(γ, λ) from the same critic, standardised (PPO's advantage at ratio 1);
- `group`:        the group-relative return (R_i − mean) / std over groups of `group_size`
                  episodes that share a start state (REINFORCE / PPO with group advantages;
                  purerl.rl.group), from its own grouped batch.

The first four share one batch; `group` needs grouped resets, so it gets its own batch of
the same size. Weights come from the same purerl pieces the algorithms use
(purerl.rl.advantages, .group, .losses); the gradient is of the actor's parameters only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from purerl.nets import ActorCritic
from purerl.rl import advantages as adv
from purerl.rl import group, losses
from purerl.rl.agent import build_env_and_network
from purerl.rl.rollout import (
    collect_first_episodes,
    evaluate_values,
    flatten_time,
    make_policy_sampler,
    make_value_fn,
)

ESTIMATORS = ("none", "standardised", "value", "gae", "group")


def make_sampler(config: Any, horizon: int, group_size: int):
    """`sample(params, key, gamma, gae_lambda) -> ({estimator: flat gradient}, mean episode
    return)` for the env and network of `config` (an on-policy Config; its num_envs is the
    batch of episodes per estimate)."""
    env, env_params, network = build_env_and_network(config)
    grouped_env = group.make_grouped_env(env, group_size)

    def gradient(params: Any, batch: Any, weights: jax.Array, mask: jax.Array) -> jax.Array:
        def objective(actor: Any) -> jax.Array:
            merged = {**params, "params": {**params["params"], "actor": actor}}
            dist = network.apply(merged, batch.obs, method=ActorCritic.policy)
            return -losses.policy_gradient_loss(dist.log_prob(batch.action), weights, mask)

        return ravel_pytree(jax.grad(objective)(params["params"]["actor"]))[0]

    def sample(params: Any, key: jax.Array, gamma: jax.Array, gae_lambda: jax.Array):
        batch_key, group_key = jax.random.split(key)
        policy_fn = make_policy_sampler(network, params)
        batch, mask, totals = collect_first_episodes(env, env_params, policy_fn, batch_key, horizon)
        returns = adv.discounted_returns(batch.reward, batch.terminated, batch.truncated, gamma)
        values, next_values = evaluate_values(make_value_fn(network, params), batch)
        gae, _ = adv.gae(batch.reward, values, next_values, batch.terminated, batch.truncated, gamma, gae_lambda)
        weights = {
            "none": returns * mask,
            "standardised": losses.masked_normalize(returns, mask),
            "value": (returns - values) * mask,
            "gae": losses.masked_normalize(gae, mask),
        }
        flat_batch, flat_mask = flatten_time(batch), flatten_time(mask)
        grads = {name: gradient(params, flat_batch, flatten_time(w), flat_mask) for name, w in weights.items()}
        group_batch, group_mask, _ = collect_first_episodes(grouped_env, env_params, policy_fn, group_key, horizon)
        group_weights = group.group_step_advantages(group_batch.reward, group_mask, group_size)
        grads["group"] = gradient(params, flatten_time(group_batch), flatten_time(group_weights),
                                  flatten_time(group_mask))
        return grads, totals.return_sum / totals.count

    return sample


def gradient_statistics(grads: jax.Array) -> dict[str, jax.Array]:
    """Spread of B independent estimates [B, P] of one gradient.

    - `snr`: ‖E ĝ‖² / E‖ĝ − E ĝ‖² (one estimate's signal-to-noise ratio), with ‖E ĝ‖²
      estimated without bias as ‖ḡ‖² − tr Ĉ / B (so it can be ≤ 0 when noise dominates);
    - `cosine`: mean cosine similarity between two different estimates (1: they always
      agree in direction; 0: unrelated);
    - `relative_sd`: sqrt(tr Ĉ) / ‖ḡ‖ (scale-free noise of one estimate)."""
    num = grads.shape[0]
    mean = jnp.mean(grads, axis=0)
    noise = jnp.sum(jnp.var(grads, axis=0, ddof=1))  # tr Ĉ, unbiased
    signal = jnp.sum(mean**2) - noise / num
    unit = grads / jnp.maximum(jnp.linalg.norm(grads, axis=1, keepdims=True), 1e-30)
    gram = unit @ unit.T
    cosine = (jnp.sum(gram) - jnp.trace(gram)) / (num * (num - 1))
    return {"snr": signal / noise, "cosine": cosine, "relative_sd": jnp.sqrt(noise) / jnp.linalg.norm(mean)}


def reference_statistics(grads: jax.Array, reference: jax.Array) -> dict[str, jax.Array]:
    """Bias and spread of B independent estimates [B, P] against a reference gradient [P]
    (the mean of an unbiased estimator over many other batches).

    - `ref_cosine`: mean over the B estimates of cos(ĝ_b, reference) (what one batch's step
      has in common with the true direction: bias and noise together);
    - `mean_ref_cosine`: cos(mean_b ĝ_b, reference) (the estimator's expectation against
      the true direction: below the unbiased estimators' value only through bias, up to the
      noise left in a mean of B)."""

    def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(a * b, axis=-1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b), 1e-30)

    return {"ref_cosine": jnp.mean(cosine(grads, reference)), "mean_ref_cosine": cosine(jnp.mean(grads, axis=0),
                                                                                          reference)}
