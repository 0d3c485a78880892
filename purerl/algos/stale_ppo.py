"""PPO on stale data: each update's batch is the fresh rollout plus the K most recent older
rollouts. A variant of purerl.algos.ppo with the same interface (Config, Hyper,
make_train), so `purerl.sweep` vmaps it and `purerl-train algo=stale_ppo` trains it.

Both knobs of interest are traced, so one compiled program covers the whole grid:

- `Hyper.stale_rollouts` = K ≤ `Config.max_stale`: the buffer always holds `max_stale`
  older rollouts (stored with what was computed when they were collected: behaviour
  log-probs, critic values, GAE advantages and λ-returns); rollouts older than K, and
  slots not filled yet, are masked out of every loss and diagnostic. Each update runs the
  same number of SGD steps (epochs × minibatches over the fresh + buffered batch), so a
  larger K means larger effective minibatches, not more steps.
- `Hyper.naive_ratio` (0 or 1) picks the ratio of the clipped surrogate for every sample:
  0 — π_θ / μ with μ the behaviour policy that collected the sample (stored log-prob);
  1 — π_θ / π_start with π_start the policy at the start of this update (recomputed), the
  naive choice that ignores how stale the sample is. For the fresh rollout both are 1 at
  the start of the update.

Diagnostics per update, over the valid samples at the start of the update (before any
SGD step): `behaviour_kl` — KL(μ ‖ π_start) over the stale samples (k3 estimator
(r − 1) − log r, r = π_start/μ; 0 when there are none); `ratio_p05`, `ratio_p95` — the
5th and 95th percentile of r over the stale samples (1 when there are none);
`zero_gradient_frac` — share of all valid samples whose clipped-surrogate gradient is
zero already (the ratio used by the loss is outside [1 − ε, 1 + ε] on the side the
advantage pushes towards); `clip_frac_first_epoch` — PPO's clip fraction over the first
epoch. With K = 0 and either ratio this is PPO (without value-function changes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.algos import ppo
from purerl.config import check_positive_int, hyper_field
from purerl.nets import ActorCritic
from purerl.rl import losses, on_policy
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import flatten_time
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

RETURN_METRIC = ppo.RETURN_METRIC


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
    """PPO's static settings plus the buffer capacity."""

    max_stale: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("Config", "max_stale", self.max_stale)
        if self.advantage != "gae":
            raise ValueError(f"Config.advantage: got {self.advantage!r}; allowed: 'gae' (stale PPO keeps a critic)")


@struct.dataclass
class Hyper(ppo.Hyper):
    stale_rollouts: float = hyper_field(0.0, "[0, inf)", "K: older rollouts in each batch (≤ Config.max_stale)")
    naive_ratio: float = hyper_field(0.0, "[0, 1]", "1: ratio against π at the update's start; 0: the behaviour π")


@struct.dataclass
class StaleState:
    agent: on_policy.TrainState
    buffer: ppo.Samples  # [max_stale, T, N]: index 0 the most recent older rollout
    filled: jax.Array  # rollouts stored so far (capped at max_stale)


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    env, env_params, network = build_env_and_network(config)
    steps_per_update = config.update_epochs * config.num_minibatches
    rollouts = config.max_stale + 1

    def log_prob(params: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        return network.apply(params, obs, method=ActorCritic.policy).log_prob(action)

    def loss_fn(params: Any, mb: ppo.Samples, reference_log_prob: jax.Array, hyper: Hyper):
        dist = network.apply(params, mb.obs, method=ActorCritic.policy)
        advantages = losses.masked_normalize(mb.advantage, mb.mask) if config.normalize_advantages else mb.advantage
        policy_loss, stats = losses.clipped_surrogate(
            dist.log_prob(mb.action), reference_log_prob, advantages, hyper.clip_eps, mb.mask
        )
        entropy = losses.masked_mean(dist.entropy(), mb.mask)
        values = network.apply(params, mb.obs, method=ActorCritic.value)
        old_values = mb.value if config.clip_value_loss else None
        value_loss = losses.value_loss(values, mb.target, old_values, hyper.vf_clip_eps, mb.mask)
        total = policy_loss - hyper.ent_coef * entropy + hyper.vf_coef * value_loss
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, **stats}

    def train(key: jax.Array, hyper: Hyper) -> tuple[StaleState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        lr_schedule = on_policy.learning_rate(hyper.lr, config.anneal_lr, steps_per_update, config.num_updates)
        optimizer = adam_clipped(lr_schedule, hyper.max_grad_norm, eps=hyper.adam_eps)
        agent = on_policy.init_state(config, env, env_params, network, optimizer.init, init_key)
        shape = (config.max_stale, config.num_steps, config.num_envs)
        obs_shape = env.observation_space(env_params).shape
        action = env.action_space(env_params).sample(jax.random.PRNGKey(0))
        empty = ppo.Samples(
            obs=jnp.zeros(shape + tuple(obs_shape)), action=jnp.zeros(shape + action.shape, action.dtype),
            log_prob=jnp.zeros(shape), value=jnp.zeros(shape), advantage=jnp.zeros(shape), target=jnp.zeros(shape),
            mask=jnp.zeros(shape),
        )

        def sgd_step(carry, minibatch):
            mb, reference = minibatch
            params, opt_state, step = gradient_step(optimizer, loss_fn, *carry, mb, reference, hyper)
            return (params, opt_state), {**step.aux, "grad_norm": step.grad_norm}

        def update_step(state: StaleState, key: jax.Array, update_index: jax.Array):
            rollout_key, epoch_key = jax.random.split(key)
            agent, rollout = on_policy.collect_rollout(env, env_params, network, state.agent, rollout_key,
                                                       config.num_steps)
            advantages, targets = on_policy.gae(rollout, hyper.gamma, hyper.gae_lambda)
            fresh = ppo.Samples(rollout.batch.obs, rollout.batch.action, rollout.batch.log_prob, rollout.values,
                                advantages, targets, jnp.ones_like(advantages))
            # Batch: the fresh rollout (age 0) and the buffer (ages 1..max_stale); ages beyond K or
            # not filled yet are masked out.
            batch = jax.tree.map(lambda f, b: jnp.concatenate([f[None], b]), fresh, state.buffer)
            age = jnp.arange(rollouts)[:, None, None]
            valid = (age <= hyper.stale_rollouts) & (age <= state.filled)
            batch = batch.replace(mask=batch.mask * valid)
            stale = batch.mask * (age > 0)

            # Ratios at the start of the update: against the behaviour policy and against π_start.
            start_log_prob = log_prob(agent.params, batch.obs, batch.action)
            reference = jnp.where(hyper.naive_ratio > 0.5, start_log_prob, batch.log_prob)
            behaviour_ratio = jnp.exp(start_log_prob - batch.log_prob)
            log_r = start_log_prob - batch.log_prob
            any_stale = jnp.sum(stale) > 0
            stale_ratio = jnp.where(stale > 0, behaviour_ratio, jnp.nan)
            loss_ratio = jnp.exp(start_log_prob - reference)
            advantage = losses.masked_normalize(batch.advantage, batch.mask)
            pushed_out = ((advantage > 0) & (loss_ratio > 1 + hyper.clip_eps)) | (
                (advantage < 0) & (loss_ratio < 1 - hyper.clip_eps))
            diagnostics = {
                "behaviour_kl": losses.masked_mean(jnp.expm1(log_r) - log_r, stale),
                "ratio_p05": jnp.where(any_stale, jnp.nanquantile(stale_ratio, 0.05), 1.0),
                "ratio_p95": jnp.where(any_stale, jnp.nanquantile(stale_ratio, 0.95), 1.0),
                "zero_gradient_frac": losses.masked_mean(pushed_out.astype(jnp.float32), batch.mask),
                "stale_samples": jnp.sum(stale),
            }

            (params, opt_state), per_epoch = shuffled_minibatch_epochs(
                epoch_key, (agent.params, agent.opt_state), flatten_time(flatten_time((batch, reference))),
                config.update_epochs, config.num_minibatches, sgd_step,
            )
            buffer = jax.tree.map(lambda f, b: jnp.concatenate([f[None], b[:-1]]), fresh, state.buffer)
            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                **rollout.episodes.metrics(),
                **{name: jnp.mean(values) for name, values in per_epoch.items()},
                "clip_frac_first_epoch": per_epoch["clip_frac"][0],
                "update_kl": on_policy.policy_kl(network, agent.params, params, fresh.obs),
                **diagnostics,
                "lr": lr_schedule(update_index * steps_per_update),
            }
            agent = agent.replace(params=params, opt_state=opt_state)
            return StaleState(agent, buffer, jnp.minimum(state.filled + 1, config.max_stale)), metrics

        state = StaleState(agent, empty, jnp.int32(0))
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
