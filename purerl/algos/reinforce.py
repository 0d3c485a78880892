"""REINFORCE (Williams 1992): Monte-Carlo policy gradient over complete episodes.

Each update resets all `num_envs` envs, plays one episode in each (up to `num_steps`
steps: the horizon, = CartPole's time limit by default) and takes one gradient step on
−E[log π(a_t|s_t) · w_t] over the steps of those episodes. The weight w_t is:

- baseline="none":  the discounted return-to-go G_t;
- baseline="value": G_t − V(s_t), with a critic (separate network) regressed onto G_t;
- baseline="group": the critic-free group-relative advantage (purerl.rl.group): envs
  come in groups of `group_size` that share a start state, and every step of episode i
  gets (R_i − mean_group) / (std_group + ε).

`normalize_returns` standardises w over the batch's valid steps ("none"/"value"; the
group weights are standardised by construction). Steps after an env's first episode
ended are masked out of every loss. `env_steps` counts simulated steps (num_envs ×
num_steps per update); `episode_steps` counts the steps inside the episodes (both exact
int64 on the host, from the per-update `*_in_update` counts; purerl.rl.loop).
Observation statistics (normalize_obs) live in the on_policy.TrainState, so they accumulate over
the whole run although every update resets the envs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.config import OnPolicyConfig, ValidatedHyper, check_choice, hyper_field
from purerl.nets import ActorCritic
from purerl.rl import advantages as adv
from purerl.rl import evaluation, group, losses, on_policy
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import Transition, flatten_time
from purerl.rl.training import adam_clipped, gradient_step

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """Static settings: changing one recompiles."""

    num_envs: int = 16  # episodes per update
    num_steps: int = 500  # horizon: episodes are cut after this many steps
    total_timesteps: int = 800_000  # simulated steps: 100 updates of 16 × 500
    baseline: str = "value"
    group_size: int = 8
    normalize_returns: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "baseline", self.baseline, ("none", "value", "group"))
        if self.baseline == "group":
            group.check_group_size("Config", self.group_size, self.num_envs)


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(2e-3, "(0, inf)", "Adam learning rate")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount of the return-to-go G_t")
    ent_coef: float = hyper_field(0.0, "[0, inf)", "entropy bonus weight")
    vf_coef: float = hyper_field(0.5, "[0, inf)", "value loss weight (baseline='value')")
    # No clipping by default: the critic regresses raw returns (tens to hundreds), whose
    # gradient would dominate a global norm and shrink the actor's step with it.
    max_grad_norm: float = hyper_field(float("inf"), "(0, inf]", "global gradient-norm clip")


@struct.dataclass
class Batch:
    obs: jax.Array
    action: jax.Array
    weight: jax.Array  # policy-gradient weight w_t (0 outside the first episode)
    target: jax.Array  # G_t, the critic's regression target
    mask: jax.Array


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """`train(key, hyper) -> (final_state, per-update metrics)` (purerl.rl.loop)."""
    env, env_params, network = build_env_and_network(config)
    if config.baseline == "group":
        env = group.make_grouped_env(env, config.group_size)

    def policy_weights(params: Any, batch: Transition, returns: jax.Array, mask: jax.Array) -> jax.Array:
        """w_t for the configured baseline, [T, N], zero outside the first episodes."""
        if config.baseline == "group":
            return group.group_step_advantages(batch.reward, mask, config.group_size)
        weights = returns
        if config.baseline == "value":
            weights = returns - network.apply(params, batch.obs, method=ActorCritic.value)
        if config.normalize_returns:
            return losses.masked_normalize(weights, mask)
        return weights * mask

    def loss_fn(params: Any, batch: Batch, hyper: Hyper):
        dist = network.apply(params, batch.obs, method=ActorCritic.policy)
        policy_loss = losses.policy_gradient_loss(dist.log_prob(batch.action), batch.weight, batch.mask)
        entropy = losses.masked_mean(dist.entropy(), batch.mask)
        total = policy_loss - hyper.ent_coef * entropy
        stats = {"policy_loss": policy_loss, "entropy": entropy}
        if config.baseline == "value":
            values = network.apply(params, batch.obs, method=ActorCritic.value)
            value_loss = losses.value_loss(values, batch.target, mask=batch.mask)
            total = total + hyper.vf_coef * value_loss
            stats["value_loss"] = value_loss
        return total, stats

    def train(key: jax.Array, hyper: Hyper) -> tuple[on_policy.TrainState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)
        state = on_policy.init_state(config, env, env_params, network, optimizer.init, init_key, continuing=False)

        def update_step(state: on_policy.TrainState, key: jax.Array, update_index: jax.Array):
            state, batch, mask, episodes = on_policy.collect_episodes(
                env, env_params, network, state, key, config.num_steps
            )
            # Monte-Carlo return-to-go inside each episode; no bootstrapping anywhere.
            returns = adv.discounted_returns(batch.reward, batch.terminated, batch.truncated, hyper.gamma)
            weights = policy_weights(state.params, batch, returns, mask)
            params, opt_state, step = gradient_step(
                optimizer, loss_fn, state.params, state.opt_state,
                flatten_time(Batch(batch.obs, batch.action, weights, returns, mask)), hyper,
            )
            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                "episode_steps_in_update": jnp.sum(mask, dtype=jnp.int32),
                **episodes.metrics(),
                **step.aux,
                "grad_norm": step.grad_norm,
            }
            return state.replace(params=params, opt_state=opt_state), metrics

        update_step = evaluation.with_evaluations(update_step, config, network)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
