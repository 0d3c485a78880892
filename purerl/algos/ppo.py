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
The group advantages are standardised already, so `normalize_advantages` does not apply,
and every loss and diagnostic averages over the valid (in-episode) steps only.

Reported per update: losses and entropy averaged over all epochs and minibatches;
`approx_kl` is the mean over the LAST epoch (comparable to CleanRL's, which logs the last
minibatch) and `approx_kl_first_epoch` over the first; `update_kl` is the exact mean
KL(π_old ‖ π_new) over the batch's states of the whole update. With the critic:
`explained_variance` against the λ-return targets, and the critic's error against the
realised λ = 1 return and the variance of the raw advantages (`on_policy.critic_diagnostics`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import OnPolicyConfig, check_choice, check_minibatches, check_positive_int, hyper_field
from purerl.nets import ActorCritic
from purerl.rl import evaluation, group, losses, on_policy
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import flatten_time
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

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
            group.check_group_size("Config", self.group_size, self.num_envs)
        check_positive_int("Config", "update_epochs", self.update_epochs)
        check_positive_int("Config", "num_minibatches", self.num_minibatches)
        check_minibatches("Config", "num_minibatches", self.num_minibatches, self.batch_size)


@struct.dataclass
class Hyper(on_policy.ActorCriticHyper):
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(2.5e-4, "(0, inf)", "Adam learning rate (initial, if annealed)")
    clip_eps: float = hyper_field(0.2, "(0, inf)", "policy ratio clip ε")
    vf_clip_eps: float = hyper_field(0.2, "(0, inf)", "value clip range (if clip_value_loss)")
    adam_eps: float = hyper_field(1e-5, "(0, inf)", "Adam ε")


@struct.dataclass
class Samples:
    """Per-step training data [T, N] (flattened to [T·N] for minibatches)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array  # behaviour policy
    value: jax.Array  # critic at collection time (value clipping); 0 without a critic
    advantage: jax.Array
    target: jax.Array  # λ-return; 0 without a critic
    mask: jax.Array  # 1 for steps that count (all of them with GAE)


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """`train(key, hyper) -> (final_state, per-update metrics)` (purerl.rl.loop)."""
    env, env_params, network = build_env_and_network(config)
    uses_critic = config.advantage == "gae"
    if not uses_critic:
        env = group.make_grouped_env(env, config.group_size)
    steps_per_update = config.update_epochs * config.num_minibatches

    def gae_samples(state: on_policy.TrainState, key: jax.Array, hyper: Hyper):
        """Continue every env for num_steps; GAE from the critic."""
        state, rollout = on_policy.collect_rollout(env, env_params, network, state, key, config.num_steps)
        advantages, targets = on_policy.gae(rollout, hyper.gamma, hyper.gae_lambda)
        batch = rollout.batch
        samples = Samples(
            batch.obs, batch.action, batch.log_prob, rollout.values, advantages, targets,
            jnp.ones_like(advantages),
        )
        diagnostics = {"explained_variance": losses.explained_variance(rollout.values, targets),
                       **on_policy.critic_diagnostics(rollout, advantages, hyper.gamma)}
        return state, samples, rollout.episodes, diagnostics

    def group_samples(state: on_policy.TrainState, key: jax.Array, hyper: Hyper):
        """Each env's first episode from grouped start states; group-relative advantages."""
        state, batch, mask, episodes = on_policy.collect_episodes(
            env, env_params, network, state, key, config.num_steps
        )
        advantages = group.group_step_advantages(batch.reward, mask, config.group_size)
        no_critic = jnp.zeros_like(advantages)
        samples = Samples(batch.obs, batch.action, batch.log_prob, no_critic, advantages, no_critic, mask)
        return state, samples, episodes, {}

    experience = gae_samples if uses_critic else group_samples

    def loss_fn(params: Any, mb: Samples, hyper: Hyper):
        dist = network.apply(params, mb.obs, method=ActorCritic.policy)
        advantages = mb.advantage
        if config.normalize_advantages and uses_critic:
            advantages = losses.normalize(advantages)
        policy_loss, stats = losses.clipped_surrogate(
            dist.log_prob(mb.action), mb.log_prob, advantages, hyper.clip_eps, mb.mask
        )
        entropy = losses.masked_mean(dist.entropy(), mb.mask)
        total = policy_loss - hyper.ent_coef * entropy
        stats = {"policy_loss": policy_loss, "entropy": entropy, **stats}
        if uses_critic:
            values = network.apply(params, mb.obs, method=ActorCritic.value)
            old_values = mb.value if config.clip_value_loss else None
            value_loss = losses.value_loss(values, mb.target, old_values, hyper.vf_clip_eps)
            total = total + hyper.vf_coef * value_loss
            stats["value_loss"] = value_loss
        return total, stats

    def train(key: jax.Array, hyper: Hyper) -> tuple[on_policy.TrainState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        lr_schedule = on_policy.learning_rate(hyper.lr, config.anneal_lr, steps_per_update, config.num_updates)
        optimizer = adam_clipped(lr_schedule, hyper.max_grad_norm, eps=hyper.adam_eps)
        state = on_policy.init_state(config, env, env_params, network, optimizer.init, init_key, continuing=uses_critic)

        def sgd_step(carry, mb: Samples):
            params, opt_state, step = gradient_step(optimizer, loss_fn, *carry, mb, hyper)
            return (params, opt_state), {**step.aux, "grad_norm": step.grad_norm}

        def update_step(state: on_policy.TrainState, key: jax.Array, update_index: jax.Array):
            rollout_key, epoch_key = jax.random.split(key)
            # 1. Experience from the current policy, with advantages.
            state, samples, episodes, diagnostics = experience(state, rollout_key, hyper)
            # 2. E epochs of clipped-surrogate SGD over shuffled minibatches.
            flat = flatten_time(samples)
            (params, opt_state), per_epoch = shuffled_minibatch_epochs(
                epoch_key, (state.params, state.opt_state), flat,
                config.update_epochs, config.num_minibatches, sgd_step,
            )
            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                **episodes.metrics(),
                **{name: jnp.mean(values) for name, values in per_epoch.items()},
                "approx_kl": per_epoch["approx_kl"][-1],
                "approx_kl_first_epoch": per_epoch["approx_kl"][0],
                "update_kl": on_policy.policy_kl(network, state.params, params, flat.obs, flat.mask),
                **diagnostics,
                "lr": lr_schedule(update_index * steps_per_update),
            }
            return state.replace(params=params, opt_state=opt_state), metrics

        update_step = evaluation.with_evaluations(update_step, config, network)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
