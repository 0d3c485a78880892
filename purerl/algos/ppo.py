"""Proximal Policy Optimization (Schulman et al. 2017), clipped-surrogate variant.

The whole run — env steps, rollout, GAE, every epoch of every update — is one pure
function `train(key, hyper)` that XLA compiles once; `jax.vmap` it over keys and
`Hyper` batches to train many seeds × settings at once (see `purerl.sweep`).

Implementation details, named (Huang et al. 2022): separate actor and critic MLPs with
orthogonal init; Adam with ε = 1e-5; global-norm gradient clipping; linear LR
annealing (optional); GAE with truncation bootstrapping from V(final observation);
per-minibatch advantage normalisation; clipped surrogate; optional clipped value loss;
entropy bonus; E epochs over shuffled minibatches. Defaults = PureJaxRL's CartPole.

`advantage="group"` drops the critic (GRPO-style, `purerl.rl.group`): every update
resets the envs in groups of `group_size` sharing a start state, plays each env's first
episode (horizon `num_steps`), and every step of episode i gets the group-relative
advantage (R_i − mean_group) / (std_group + ε); steps after the episode are masked out.
The group advantages are standardised already, so `normalize_advantages` does not apply.
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
from purerl.nets import ActorCritic
from purerl.rl import advantages as adv
from purerl.rl import group, losses
from purerl.rl.agent import build_env_and_network, init_params, make_policy_sampler, make_value_fn
from purerl.rl.rollout import EnvRunner, collect, evaluate_values, flatten_time, init_runner
from purerl.rl.training import adam_clipped, linear_decay, shuffled_minibatch_epochs


@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """Static settings: changing one recompiles."""

    update_epochs: int = 4
    num_minibatches: int = 4
    anneal_lr: bool = True
    normalize_advantages: bool = True
    # PureJaxRL and CleanRL both clip the value loss by default; with truncation
    # bootstrapping it was the difference between 4/4 and 2/4 seeds reaching 500 on CartPole.
    clip_value_loss: bool = True
    # "gae": the critic's GAE(λ); "group": critic-free group-relative advantages.
    advantage: str = "gae"
    group_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "advantage", self.advantage, ("gae", "group"))
        if self.advantage == "group":
            group.check_group_settings("Config", self)
        check_positive_int("Config", "update_epochs", self.update_epochs)
        check_positive_int("Config", "num_minibatches", self.num_minibatches)
        if self.batch_size % self.num_minibatches:
            divisors = [d for d in range(1, self.batch_size + 1) if self.batch_size % d == 0]
            raise ValueError(
                f"Config.num_minibatches: {self.num_minibatches} does not divide "
                f"num_envs * num_steps = {self.batch_size}; allowed: a divisor of "
                f"{self.batch_size}, e.g. {divisors[:12]}"
            )


@struct.dataclass
class Hyper:
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(2.5e-4, "(0, inf)", "Adam learning rate (initial, if annealed)")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    gae_lambda: float = hyper_field(0.95, "[0, 1]", "GAE λ")
    clip_eps: float = hyper_field(0.2, "(0, inf)", "policy ratio clip ε")
    vf_clip_eps: float = hyper_field(0.2, "(0, inf)", "value clip range (if clip_value_loss)")
    ent_coef: float = hyper_field(0.01, "[0, inf)", "entropy bonus weight")
    vf_coef: float = hyper_field(0.5, "[0, inf)", "value loss weight")
    max_grad_norm: float = hyper_field(0.5, "(0, inf]", "global gradient-norm clip")
    adam_eps: float = hyper_field(1e-5, "(0, inf)", "Adam ε")


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    runner: EnvRunner


@struct.dataclass
class Minibatch:
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


@struct.dataclass
class GroupMinibatch:
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    advantage: jax.Array  # zero outside each env's first episode
    mask: jax.Array


def make_train(
    config: Config, on_update: Callable[[jax.Array], None] | None = None
) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    """Build `train(key, hyper) -> (final_state, metrics)`; metrics have a leading
    update axis. `on_update(update_index)` is called on the host after each update
    (progress bars), via `jax.debug.callback`."""
    env, env_params, network = build_env_and_network(config)
    if config.advantage == "group":
        env = group.make_grouped_env(env, config.group_size)
    steps_per_update = config.update_epochs * config.num_minibatches

    def loss_fn(params, mb: Minibatch, hyper: Hyper):
        dist, values = network.apply(params, mb.obs)
        log_prob = dist.log_prob(mb.action)
        advantages = losses.normalize(mb.advantage) if config.normalize_advantages else mb.advantage
        policy_loss, stats = losses.clipped_surrogate(log_prob, mb.log_prob, advantages, hyper.clip_eps)
        old_values = mb.value if config.clip_value_loss else None
        value_loss = losses.value_loss(values, mb.target, old_values, hyper.vf_clip_eps)
        entropy = jnp.mean(dist.entropy())
        total = policy_loss + hyper.vf_coef * value_loss - hyper.ent_coef * entropy
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, **stats}

    def group_loss_fn(params, mb: GroupMinibatch, hyper: Hyper):
        dist = network.apply(params, mb.obs, method=ActorCritic.policy)
        policy_loss, stats = losses.clipped_surrogate(
            dist.log_prob(mb.action), mb.log_prob, mb.advantage, hyper.clip_eps
        )
        # Masked steps have zero advantage, so they add exactly 0 to the batch mean:
        # rescaling by size / valid count turns it into the mean over valid steps.
        valid = jnp.sum(mb.mask)
        policy_loss = policy_loss * mb.mask.shape[0] / jnp.maximum(valid, 1.0)
        entropy = losses.masked_mean(dist.entropy(), mb.mask)
        total = policy_loss - hyper.ent_coef * entropy
        no_critic = jnp.float32(0.0)
        return total, {"policy_loss": policy_loss, "value_loss": no_critic, "entropy": entropy, **stats}

    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        validate_hyper(hyper)
        init_key, env_key, key = jax.random.split(key, 3)
        params = init_params(network, env, env_params, init_key)
        lr_schedule = (
            linear_decay(hyper.lr, steps_per_update, config.num_updates)
            if config.anneal_lr
            else (lambda count: hyper.lr * jnp.ones_like(count, jnp.float32))
        )
        optimizer = adam_clipped(lr_schedule, hyper.max_grad_norm, eps=hyper.adam_eps)
        state = TrainState(params, optimizer.init(params), init_runner(env, env_params, env_key))

        def sgd_step(carry, mb: Minibatch | GroupMinibatch):
            params, opt_state = carry
            minibatch_loss = group_loss_fn if config.advantage == "group" else loss_fn
            grads, loss_stats = jax.grad(minibatch_loss, has_aux=True)(params, mb, hyper)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), {**loss_stats, "grad_norm": optax.global_norm(grads)}

        def update(carry, update_index):
            state, key = carry
            key, rollout_key, epoch_key = jax.random.split(key, 3)

            # 1. Experience from the current policy.
            policy_fn = make_policy_sampler(network, state.params)
            if config.advantage == "group":
                return group_update(state, key, update_index, policy_fn, rollout_key, epoch_key)
            runner, batch, episodes = collect(
                env, env_params, policy_fn, state.runner, rollout_key, config.num_steps
            )

            # 2. Advantages: GAE, bootstrapping from V(final obs) on truncation.
            values, next_values = evaluate_values(make_value_fn(network, state.params), batch)
            advantages, targets = adv.gae(
                batch.reward, values, next_values, batch.terminated, batch.truncated,
                hyper.gamma, hyper.gae_lambda,
            )

            # 3. E epochs of clipped-surrogate SGD over shuffled minibatches.
            samples = flatten_time(
                Minibatch(batch.obs, batch.action, batch.log_prob, values, advantages, targets)
            )
            (params, opt_state), loss_stats = shuffled_minibatch_epochs(
                epoch_key, (state.params, state.opt_state), samples,
                config.update_epochs, config.num_minibatches, sgd_step,
            )

            metrics = {
                "env_steps": (update_index + 1) * config.batch_size,
                **episodes.metrics(),
                **loss_stats,
                "explained_variance": losses.explained_variance(values, targets),
                "lr": lr_schedule(update_index * steps_per_update),
            }
            if on_update is not None:
                jax.debug.callback(on_update, update_index)
            return (TrainState(params, opt_state, runner), key), metrics

        def group_update(state, key, update_index, policy_fn, rollout_key, epoch_key):
            """The critic-free update: grouped episodes, group-relative advantages."""
            batch, mask, episodes = group.collect_first_episodes(
                env, env_params, policy_fn, rollout_key, config.num_steps
            )
            advantages = group.group_step_advantages(batch.reward, mask, config.group_size)
            samples = flatten_time(
                GroupMinibatch(batch.obs, batch.action, batch.log_prob, advantages, mask)
            )
            (params, opt_state), loss_stats = shuffled_minibatch_epochs(
                epoch_key, (state.params, state.opt_state), samples,
                config.update_epochs, config.num_minibatches, sgd_step,
            )
            metrics = {
                "env_steps": (update_index + 1) * config.batch_size,
                **episodes.metrics(),
                **loss_stats,
                "lr": lr_schedule(update_index * steps_per_update),
            }
            if on_update is not None:
                jax.debug.callback(on_update, update_index)
            return (TrainState(params, opt_state, state.runner), key), metrics

        (state, _), metrics = lax.scan(update, (state, key), jnp.arange(config.num_updates))
        return state, metrics

    return train
