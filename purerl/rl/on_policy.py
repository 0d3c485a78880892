"""The on-policy skeleton: what PPO, A2C, TRPO and REINFORCE share.

One update of an on-policy actor-critic is: collect experience with the current policy
(`collect_rollout`, or `collect_episodes` for episodic methods), evaluate the critic on
it, estimate advantages, then the algorithm's own update. Everything here is the part
that is NOT algorithm-specific; each algorithm file keeps only its loss and update rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import OnPolicyConfig, ValidatedHyper, hyper_field
from purerl.nets import ActorCritic
from purerl.rl import advantages as adv
from purerl.rl import losses, normalization
from purerl.rl.agent import init_obs_stats, init_params
from purerl.rl.normalization import RunningStats
from purerl.rl.rollout import (
    EnvRunner,
    EpisodeTotals,
    Transition,
    collect,
    collect_first_episodes,
    evaluate_values,
    init_runner,
    make_policy_sampler,
    make_value_fn,
    normalize_observations,
)
from purerl.rl.training import linear_decay


@struct.dataclass
class ActorCriticHyper(ValidatedHyper):
    """Traced hyperparameters every actor-critic loss has (PPO and A2C extend it)."""

    lr: float = hyper_field(1e-3, "(0, inf)", "Adam learning rate (initial, if annealed)")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    gae_lambda: float = hyper_field(0.95, "[0, 1]", "GAE λ")
    ent_coef: float = hyper_field(0.01, "[0, inf)", "entropy bonus weight")
    vf_coef: float = hyper_field(0.5, "[0, inf)", "value loss weight")
    max_grad_norm: float = hyper_field(0.5, "(0, inf]", "global gradient-norm clip")


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any  # the optimiser of whatever the algorithm trains by gradient
    obs_stats: RunningStats | None  # None when the config does not normalise observations
    runner: EnvRunner | None  # None for episodic collectors, which reset every update


def init_state(
    config: OnPolicyConfig,
    env: Any,
    env_params: Any,
    network: nn.Module,
    init_opt_state: Callable[[Any], Any],
    key: jax.Array,
    continuing: bool = True,
) -> TrainState:
    """Fresh parameters, optimiser state, observation statistics and (for continuing
    collectors) running envs."""
    params_key, env_key = jax.random.split(key)
    params = init_params(network, env, env_params, params_key)
    runner = init_runner(env, env_params, env_key) if continuing else None
    return TrainState(params, init_opt_state(params), init_obs_stats(config, env, env_params), runner)


def learning_rate(
    lr: jax.Array, anneal: bool, steps_per_update: int, num_updates: int
) -> Callable[[jax.Array], jax.Array]:
    """Optimiser-step count -> learning rate: constant, or decaying linearly to 0 over the
    run and constant within an update."""
    if not anneal:
        return lambda count: lr * jnp.ones_like(count, jnp.float32)
    return linear_decay(lr, steps_per_update, num_updates)


@struct.dataclass
class Rollout:
    """One rollout as the networks see it (observations normalised), with critic values."""

    batch: Transition  # [T, N]
    values: jax.Array  # V(s_t) [T, N]
    next_values: jax.Array  # V(s'_t), s' the true next (or final) observation [T, N]
    episodes: EpisodeTotals


def collect_rollout(
    env: Any, env_params: Any, network: nn.Module, state: TrainState, key: jax.Array, num_steps: int,
    behaviour_params: Any = None,
) -> tuple[TrainState, Rollout]:
    """`num_steps` steps of every env from where they are, then one critic pass.

    The actions come from `behaviour_params` when given (an older policy: an actor that lags
    the learner), else from `state.params`; the critic pass always uses `state.params`, the
    learner's own critic. Returns the state with the envs advanced and the observation
    statistics merged with this rollout's raw observations (used from the next update on)."""
    acting = state.params if behaviour_params is None else behaviour_params
    policy_fn = make_policy_sampler(network, acting, state.obs_stats)
    runner, raw, episodes = collect(env, env_params, policy_fn, state.runner, key, num_steps)
    rollout = critic_pass(network, state.params, state.obs_stats, raw, runner.obs, episodes)
    state = state.replace(runner=runner, obs_stats=normalization.update(state.obs_stats, raw.obs))
    return state, rollout


def critic_pass(
    network: nn.Module, params: Any, obs_stats: RunningStats | None, raw: Transition, last_raw_obs: jax.Array,
    episodes: EpisodeTotals,
) -> Rollout:
    """A collected rollout (raw observations; the envs ended at `last_raw_obs`) as the networks see
    it: observations normalised with `obs_stats`, and the critic `params`' values on it. Separate
    from collection so that another program (a learner on another device) can run it."""
    batch = normalize_observations(obs_stats, raw)
    last_obs = normalization.normalize(obs_stats, last_raw_obs)
    values, next_values = evaluate_values(make_value_fn(network, params), batch, last_obs)
    return Rollout(batch, values, next_values, episodes)


def collect_episodes(
    env: Any, env_params: Any, network: nn.Module, state: TrainState, key: jax.Array, num_steps: int
) -> tuple[TrainState, Transition, jax.Array, EpisodeTotals]:
    """Episodic collection (each env's first episode, horizon `num_steps`): returns the
    state with updated observation statistics, the normalised batch, the first-episode
    mask and the episode totals."""
    policy_fn = make_policy_sampler(network, state.params, state.obs_stats)
    raw, mask, episodes = collect_first_episodes(env, env_params, policy_fn, key, num_steps)
    batch = normalize_observations(state.obs_stats, raw)
    # Statistics from the steps of the episodes only, not the auto-reset tail.
    obs_stats = normalization.update(state.obs_stats, raw.obs, mask)
    return state.replace(obs_stats=obs_stats), batch, mask, episodes


def gae(rollout: Rollout, gamma: jax.Array, gae_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(advantages, λ-return targets) [T, N], truncation-correct (purerl.rl.advantages)."""
    batch = rollout.batch
    return adv.gae(
        batch.reward, rollout.values, rollout.next_values, batch.terminated, batch.truncated,
        gamma, gae_lambda,
    )


def critic_diagnostics(rollout: Rollout, advantages: jax.Array, gamma: jax.Array) -> dict[str, jax.Array]:
    """How good the critic is on this rollout, and how noisy the advantages it gives are.

    G_t is the realised λ = 1 return of the rollout: rewards summed within the episode,
    bootstrapped from V(final observation) at a truncation and from V(s_T) at the rollout's
    end (what GAE at λ = 1 sums to, so no critic error enters it except at those ends).
    `value_error_mc` = mean (V(s_t) − G_t)², `return_variance_mc` = Var(G_t) over the batch,
    `value_error_ratio` = their ratio (1 − explained variance against G, with the mean error
    counted: 0 for a perfect critic, about 1 for one no better than the batch's mean return);
    `advantage_variance` = Var over the batch of `advantages` as estimated, before any
    normalisation."""
    batch = rollout.batch
    returns = adv.lambda_returns(
        batch.reward, rollout.values, rollout.next_values, batch.terminated, batch.truncated, gamma, 1.0
    )
    value_error = jnp.mean((rollout.values - returns) ** 2)
    return_variance = jnp.var(returns)
    return {
        "value_error_mc": value_error,
        "return_variance_mc": return_variance,
        "value_error_ratio": value_error / (return_variance + 1e-8),
        "advantage_variance": jnp.var(advantages),
    }


def policy_kl(
    network: nn.Module, old_params: Any, new_params: Any, obs: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Mean KL(π_old(·|s) ‖ π_new(·|s)) over the states of a batch (exact, per state): how
    far one update moved the policy (`mask`: average over the valid samples only)."""
    old = network.apply(old_params, obs, method=ActorCritic.policy)
    new = network.apply(new_params, obs, method=ActorCritic.policy)
    kl = old.kl_divergence(new)
    return jnp.mean(kl) if mask is None else losses.masked_mean(kl, mask)

