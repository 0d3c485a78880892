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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from purerl.config import (
    OnPolicyConfig,
    check_choice,
    check_positive_int,
    hyper_field,
    validate_hyper,
)
from purerl.rl import advantages as adv
from purerl.rl import losses
from purerl.rl.agent import build_env_and_network, init_params, make_policy_sampler, make_value_fn
from purerl.rl.rollout import EnvRunner, collect, evaluate_values, flatten_time, init_runner
from purerl.rl.training import adam_clipped, linear_decay


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
class Hyper:
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(1e-3, "(0, inf)", "Adam learning rate (initial, if annealed)")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    gae_lambda: float = hyper_field(0.95, "[0, 1]", "GAE λ (advantage='gae')")
    ent_coef: float = hyper_field(0.01, "[0, inf)", "entropy bonus weight")
    vf_coef: float = hyper_field(0.5, "[0, inf)", "value loss weight")
    max_grad_norm: float = hyper_field(0.5, "(0, inf]", "global gradient-norm clip")


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    runner: EnvRunner


@struct.dataclass
class Batch:
    obs: jax.Array
    action: jax.Array
    advantage: jax.Array
    target: jax.Array


def make_train(
    config: Config, on_update: Callable[[jax.Array], None] | None = None
) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    """Build `train(key, hyper) -> (final_state, metrics)`; metrics have a leading
    update axis. `on_update(update_index)` is called on the host after each update."""
    env, env_params, network = build_env_and_network(config)

    def loss_fn(params, batch: Batch, hyper: Hyper):
        dist, values = network.apply(params, batch.obs)
        advantages = losses.normalize(batch.advantage) if config.normalize_advantages else batch.advantage
        policy_loss = losses.policy_gradient_loss(dist.log_prob(batch.action), advantages)
        value_loss = losses.value_loss(values, batch.target)
        entropy = jnp.mean(dist.entropy())
        total = policy_loss + hyper.vf_coef * value_loss - hyper.ent_coef * entropy
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}

    def estimate_advantages(batch, values, next_values, hyper: Hyper):
        """(advantages, value targets), both [T, N]."""
        if config.advantage == "gae":
            return adv.gae(
                batch.reward, values, next_values, batch.terminated, batch.truncated,
                hyper.gamma, hyper.gae_lambda,
            )
        targets = adv.n_step_targets(
            batch.reward, values, next_values, batch.terminated, batch.truncated,
            hyper.gamma, config.n_step,
        )
        return targets - values, targets

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        validate_hyper(hyper)
        init_key, env_key, key = jax.random.split(key, 3)
        params = init_params(network, env, env_params, init_key)
        lr_schedule = (
            linear_decay(hyper.lr, 1, config.num_updates)
            if config.anneal_lr
            else (lambda count: hyper.lr * jnp.ones_like(count, jnp.float32))
        )
        optimizer = adam_clipped(lr_schedule, hyper.max_grad_norm)
        state = TrainState(params, optimizer.init(params), init_runner(env, env_params, env_key))

        def update(carry, update_index):
            state, key = carry
            key, rollout_key = jax.random.split(key)
            runner, batch, episodes = collect(
                env, env_params, make_policy_sampler(network, state.params), state.runner,
                rollout_key, config.num_steps,
            )
            values, next_values = evaluate_values(make_value_fn(network, state.params), batch)
            advantages, targets = estimate_advantages(batch, values, next_values, hyper)

            # One gradient step on the whole rollout: that is what makes it A2C, not PPO.
            grads, loss_stats = jax.grad(loss_fn, has_aux=True)(
                state.params, flatten_time(Batch(batch.obs, batch.action, advantages, targets)), hyper
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)

            metrics = {
                "env_steps": (update_index + 1) * config.batch_size,
                **episodes.metrics(),
                **loss_stats,
                "grad_norm": optax.global_norm(grads),
                "explained_variance": losses.explained_variance(values, targets),
            }
            if on_update is not None:
                jax.debug.callback(on_update, update_index)
            return (TrainState(params, opt_state, runner), key), metrics

        (state, _), metrics = lax.scan(update, (state, key), jnp.arange(config.num_updates))
        return state, metrics

    return train
