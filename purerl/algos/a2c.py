"""Advantage Actor-Critic, synchronous (A2C; Mnih et al. 2016, the synchronous variant).

Each update collects a short rollout from `num_envs` parallel envs and takes exactly ONE
gradient step on the whole batch: policy gradient −E[log π(a|s) Â] + value loss −
entropy bonus. Advantages are GAE(λ) (default; λ = 1 with a short rollout is the
classic A2C estimator) or n-step returns minus V(s), both truncation-correct.
Actor and critic are separate networks; one Adam step updates both (global-norm clipped).
Defaults are tuned for CartPole-v1 (see docs/algorithms.md); the original uses RMSprop,
Adam with the same lr is the common substitute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import OnPolicyConfig, check_choice, check_positive_int
from purerl.rl import advantages as adv
from purerl.rl import evaluation, losses, on_policy
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import flatten_time
from purerl.rl.training import adam_clipped, gradient_step

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """Static settings: changing one recompiles."""

    num_envs: int = 16
    num_steps: int = 8
    total_timesteps: int = 300_000
    # "gae": GAE(λ) with Hyper.gae_lambda; "n_step": Σ_{k<n} γ^k r + γ^n V − V(s), n = n_step.
    advantage: str = "gae"
    n_step: int = 5
    normalize_advantages: bool = False
    anneal_lr: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "advantage", self.advantage, ("gae", "n_step"))
        check_positive_int("Config", "n_step", self.n_step)


@struct.dataclass
class Hyper(on_policy.ActorCriticHyper):
    """Traced hyperparameters (lr, γ, λ, entropy and value weights, gradient clip): a
    batch of these is just data to `vmap` over."""


@struct.dataclass
class Batch:
    obs: jax.Array
    action: jax.Array
    advantage: jax.Array
    target: jax.Array


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """`train(key, hyper) -> (final_state, per-update metrics)` (purerl.rl.loop)."""
    env, env_params, network = build_env_and_network(config)

    def estimate_advantages(rollout: on_policy.Rollout, hyper: Hyper) -> tuple[jax.Array, jax.Array]:
        """(advantages, value targets), both [T, N]."""
        if config.advantage == "gae":
            return on_policy.gae(rollout, hyper.gamma, hyper.gae_lambda)
        batch = rollout.batch
        targets = adv.n_step_targets(
            batch.reward, rollout.values, rollout.next_values, batch.terminated, batch.truncated,
            hyper.gamma, config.n_step,
        )
        return targets - rollout.values, targets

    def loss_fn(params: Any, batch: Batch, hyper: Hyper):
        dist, values = network.apply(params, batch.obs)
        advantages = losses.normalize(batch.advantage) if config.normalize_advantages else batch.advantage
        policy_loss = losses.policy_gradient_loss(dist.log_prob(batch.action), advantages)
        value_loss = losses.value_loss(values, batch.target)
        entropy = jnp.mean(dist.entropy())
        total = policy_loss + hyper.vf_coef * value_loss - hyper.ent_coef * entropy
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}

    def train(key: jax.Array, hyper: Hyper) -> tuple[on_policy.TrainState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        lr_schedule = on_policy.learning_rate(hyper.lr, config.anneal_lr, 1, config.num_updates)
        optimizer = adam_clipped(lr_schedule, hyper.max_grad_norm)
        state = on_policy.init_state(config, env, env_params, network, optimizer.init, init_key)

        def update_step(state: on_policy.TrainState, key: jax.Array, update_index: jax.Array):
            state, rollout = on_policy.collect_rollout(env, env_params, network, state, key, config.num_steps)
            advantages, targets = estimate_advantages(rollout, hyper)
            # One gradient step on the whole rollout: that is what makes it A2C, not PPO.
            batch = flatten_time(Batch(rollout.batch.obs, rollout.batch.action, advantages, targets))
            params, opt_state, step = gradient_step(optimizer, loss_fn, state.params, state.opt_state, batch, hyper)
            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                **rollout.episodes.metrics(),
                **step.aux,
                "grad_norm": step.grad_norm,
                "update_kl": on_policy.policy_kl(network, state.params, params, batch.obs),
                "explained_variance": losses.explained_variance(rollout.values, targets),
                "lr": lr_schedule(update_index),
            }
            return state.replace(params=params, opt_state=opt_state), metrics

        update_step = evaluation.with_evaluations(update_step, config, network)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
