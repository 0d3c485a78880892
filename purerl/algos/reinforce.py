"""REINFORCE (Williams 1992): Monte-Carlo policy gradient over complete episodes.

Each update resets all `num_envs` envs, plays one episode in each (up to `num_steps`
steps: the horizon, = CartPole's time limit by default) and takes one gradient step on
−E[log π(a_t|s_t) · w_t] over the steps of those episodes. The weight w_t is:

- baseline="none":  the discounted return-to-go G_t;
- baseline="value": G_t − V(s_t), with a critic (separate network) regressed onto G_t
  by its own Adam (`critic_lr`), `critic_epochs` × `critic_minibatches` steps per update
  on the update's steps, after the actor's step: the weights use the critic from before it
  has seen the batch, and `explained_variance` reports how much of G_t's variance that
  critic explains (1 − Var(G − V) / Var(G) over the valid steps);
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
import optax
from flax import struct

from purerl.config import (
    OnPolicyConfig,
    ValidatedHyper,
    check_choice,
    check_minibatches,
    check_positive_int,
    hyper_field,
)
from purerl.nets import ActorCritic, with_subtree
from purerl.rl import advantages as adv
from purerl.rl import evaluation, group, losses, on_policy
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import Transition, flatten_time
from purerl.rl.training import adam_clipped, gradient_step, shuffled_minibatch_epochs

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
    # baseline="value": the critic's Adam steps per update (epochs over the update's steps, each
    # in `critic_minibatches` shuffled minibatches). The default, one full-batch step, is the
    # classic single joint step; a critic that explains little of G_t needs more.
    critic_epochs: int = 1
    critic_minibatches: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("Config", "baseline", self.baseline, ("none", "value", "group"))
        for name in ("critic_epochs", "critic_minibatches"):
            check_positive_int("Config", name, getattr(self, name))
        check_minibatches("Config", "critic_minibatches", self.critic_minibatches, self.batch_size)
        if self.baseline == "group":
            group.check_group_size("Config", self.group_size, self.num_envs)


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(2e-3, "(0, inf)", "the actor's Adam learning rate")
    critic_lr: float = hyper_field(2e-3, "(0, inf)", "the critic's Adam learning rate (baseline='value')")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount of the return-to-go G_t")
    ent_coef: float = hyper_field(0.0, "[0, inf)", "entropy bonus weight")
    # No clipping by default, as in Williams' REINFORCE; the clip applies to the actor's step
    # only (the critic has its own optimiser).
    max_grad_norm: float = hyper_field(float("inf"), "(0, inf]", "global gradient-norm clip of the actor")


@struct.dataclass
class Batch:
    obs: jax.Array
    action: jax.Array
    weight: jax.Array  # policy-gradient weight w_t (0 outside the first episode)
    mask: jax.Array


@struct.dataclass
class CriticSample:
    obs: jax.Array
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

    def loss_fn(actor: Any, params: Any, batch: Batch, hyper: Hyper):
        dist = network.apply(with_subtree(params, "actor", actor), batch.obs, method=ActorCritic.policy)
        policy_loss = losses.policy_gradient_loss(dist.log_prob(batch.action), batch.weight, batch.mask)
        entropy = losses.masked_mean(dist.entropy(), batch.mask)
        return policy_loss - hyper.ent_coef * entropy, {"policy_loss": policy_loss, "entropy": entropy}

    def critic_loss(critic: Any, params: Any, sample: CriticSample):
        values = network.apply(with_subtree(params, "critic", critic), sample.obs, method=ActorCritic.value)
        return losses.value_loss(values, sample.target, mask=sample.mask), ()

    def train(key: jax.Array, hyper: Hyper) -> tuple[on_policy.TrainState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        optimizer = adam_clipped(hyper.lr, hyper.max_grad_norm)
        critic_optimizer = optax.adam(hyper.critic_lr, eps=1e-5)
        # opt_state: (the actor's Adam state, the critic's Adam state).
        state = on_policy.init_state(
            config, env, env_params, network,
            lambda params: (optimizer.init(params["params"]["actor"]),
                            critic_optimizer.init(params["params"]["critic"])),
            init_key, continuing=False,
        )

        def critic_step(carry, sample: CriticSample):
            critic, opt_state, params = carry
            critic, opt_state, step = gradient_step(critic_optimizer, critic_loss, critic, opt_state, params, sample)
            return (critic, opt_state, params), {"critic_loss": step.loss}

        def update_step(state: on_policy.TrainState, key: jax.Array, update_index: jax.Array):
            collect_key, critic_key = jax.random.split(key)
            state, batch, mask, episodes = on_policy.collect_episodes(
                env, env_params, network, state, collect_key, config.num_steps
            )
            # Monte-Carlo return-to-go inside each episode; no bootstrapping anywhere.
            returns = adv.discounted_returns(batch.reward, batch.terminated, batch.truncated, hyper.gamma)
            weights = policy_weights(state.params, batch, returns, mask)
            actor_state, critic_state = state.opt_state
            actor, actor_state, step = gradient_step(
                optimizer, loss_fn, state.params["params"]["actor"], actor_state, state.params,
                flatten_time(Batch(batch.obs, batch.action, weights, mask)), hyper,
            )
            params = with_subtree(state.params, "actor", actor)
            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                "episode_steps_in_update": jnp.sum(mask, dtype=jnp.int32),
                **episodes.metrics(),
                **step.aux,
                "grad_norm": step.grad_norm,
            }
            if config.baseline == "value":
                # The critic that made this update's weights, on returns it has not been fitted to.
                values = network.apply(state.params, batch.obs, method=ActorCritic.value)
                metrics["value_loss"] = losses.value_loss(values, returns, mask=mask)
                metrics["explained_variance"] = losses.masked_explained_variance(values, returns, mask)
                (critic, critic_state, _), critic_stats = shuffled_minibatch_epochs(
                    critic_key, (params["params"]["critic"], critic_state, params),
                    flatten_time(CriticSample(batch.obs, returns, mask)),
                    config.critic_epochs, config.critic_minibatches, critic_step,
                )
                params = with_subtree(params, "critic", critic)
                metrics["critic_loss"] = critic_stats["critic_loss"][-1]
            return state.replace(params=params, opt_state=(actor_state, critic_state)), metrics

        update_step = evaluation.with_evaluations(update_step, config, network)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
