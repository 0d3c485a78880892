"""Trust Region Policy Optimization (Schulman et al. 2015), GAE variant (Schulman et al. 2016).

Each update maximises the importance-weighted surrogate L(θ) = E[π_θ(a|s)/π_old(a|s) · Â]
subject to mean KL(π_old ‖ π_θ) ≤ δ:

1. collect a rollout with the current policy; GAE advantages and λ-returns from the critic;
2. natural-gradient direction s ≈ (F + damping·I)⁻¹ g by a fixed number of conjugate-
   gradient iterations, with Fisher-vector products from the Hessian of the mean KL;
3. step β·s with β = √(2δ / sᵀFs), then a backtracking line search over c^k (k < K) that
   accepts the largest step with KL ≤ δ and a strictly improved surrogate — or none;
4. the critic (a separate network: actor and critic never share parameters) is fitted
   with Adam for several epochs of minibatches on the λ-returns.

Defaults follow the standard references (Spinning Up, OpenAI baselines, sb3-contrib):
δ = 0.01, 10 CG iterations, damping 0.1, backtracking 0.8^k for k < 10, critic Adam lr
1e-3; the batch size and λ are tuned for CartPole-v1 (see docs/algorithms.md).
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
from jax.flatten_util import ravel_pytree

from purerl.config import OnPolicyConfig, ValidatedHyper, check_minibatches, check_positive_int, hyper_field
from purerl.nets import ActorCritic, with_subtree
from purerl.rl import evaluation, losses, on_policy
from purerl.rl import trust_region as tr
from purerl.rl.agent import build_env_and_network
from purerl.rl.loop import OnUpdate, TrainFn, run_updates
from purerl.rl.rollout import flatten_time
from purerl.rl.training import gradient_step, shuffled_minibatch_epochs

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """Static settings: changing one recompiles."""

    # 1024 transitions per update: TRPO takes one step per batch, so it wants larger
    # batches than PPO (rl-zoo3 uses 2 × 512 on CartPole; 8 × 128 is the same size with
    # a shorter, cheaper scan).
    num_envs: int = 8
    num_steps: int = 128
    total_timesteps: int = 200_000
    cg_iters: int = 10
    line_search_steps: int = 10
    critic_epochs: int = 10
    critic_minibatches: int = 4
    normalize_advantages: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("cg_iters", "line_search_steps", "critic_epochs", "critic_minibatches"):
            check_positive_int("Config", name, getattr(self, name))
        check_minibatches("Config", "critic_minibatches", self.critic_minibatches, self.batch_size)


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced hyperparameters: vmappable over seeds and over δ."""

    max_kl: float = hyper_field(0.01, "(0, inf)", "trust-region radius δ on mean KL(π_old ‖ π)")
    cg_damping: float = hyper_field(0.1, "[0, inf)", "damping added to the Fisher matrix in CG")
    backtrack_coef: float = hyper_field(0.8, "(0, 1)", "line-search shrink factor c (steps c^k)")
    critic_lr: float = hyper_field(1e-3, "(0, inf)", "critic Adam learning rate")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    gae_lambda: float = hyper_field(0.98, "[0, 1]", "GAE λ (also the critic's λ-return targets)")


@struct.dataclass
class CriticSample:
    obs: jax.Array
    target: jax.Array


def make_policy_update(
    network: ActorCritic, config: Config
) -> Callable[[Any, jax.Array, jax.Array, jax.Array, Hyper], tuple[Any, dict[str, jax.Array]]]:
    """`policy_update(params, obs, actions, advantages, hyper) -> (params, stats)`: one
    trust-region step of the actor on a flat batch [B]; the critic subtree is untouched.

    Exposed on its own so tests can check the constraint on a fixed batch.
    """

    def policy_update(
        params: Any, obs: jax.Array, actions: jax.Array, advantages: jax.Array, hyper: Hyper
    ) -> tuple[Any, dict[str, jax.Array]]:
        old_actor_vector, unravel_actor = ravel_pytree(params["params"]["actor"])

        def policy_at(actor_vector: jax.Array):
            actor = unravel_actor(actor_vector)
            return network.apply(with_subtree(params, "actor", actor), obs, method=ActorCritic.policy)

        # π_old is a constant from here on: the KL and the ratio are functions of θ only.
        old_policy = policy_at(old_actor_vector)
        old_log_prob = lax.stop_gradient(old_policy.log_prob(actions))

        def mean_kl(actor_vector: jax.Array) -> jax.Array:
            return jnp.mean(old_policy.kl_divergence(policy_at(actor_vector)))

        def surrogate_improvement(actor_vector: jax.Array) -> jax.Array:
            # L(θ) − L(θ_old) = E[(π_θ/π_old − 1) Â]; expm1 keeps small changes accurate.
            ratio_minus_one = jnp.expm1(policy_at(actor_vector).log_prob(actions) - old_log_prob)
            return jnp.mean(ratio_minus_one * advantages)

        gradient = jax.grad(surrogate_improvement)(old_actor_vector)
        fisher_product = tr.fisher_vector_product(mean_kl, old_actor_vector, hyper.cg_damping)
        direction, cg_residual_sq = tr.conjugate_gradient(fisher_product, gradient, config.cg_iters)
        curvature = jnp.dot(direction, fisher_product(direction))  # sᵀ(F + damping·I)s
        beta, curvature_ok = tr.step_scale(curvature, hyper.max_kl)
        full_step = jnp.where(curvature_ok, beta * direction, 0.0)

        search = tr.backtracking_line_search(
            lambda v: (surrogate_improvement(v), mean_kl(v)),
            old_actor_vector, full_step, hyper.max_kl, hyper.backtrack_coef, config.line_search_steps,
        )
        new_params = with_subtree(params, "actor", unravel_actor(search.params))
        stats = {
            "kl": search.kl,
            "surrogate_improvement": search.improvement,
            "expected_improvement": jnp.dot(gradient, full_step),
            "step_fraction": search.step_fraction,
            "line_search_success": search.success.astype(jnp.float32),
            "sFs": curvature,
            "cg_residual": jnp.sqrt(cg_residual_sq),
            "policy_grad_norm": jnp.linalg.norm(gradient),
            "entropy": jnp.mean(old_policy.entropy()),
        }
        return new_params, stats

    return policy_update


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """`train(key, hyper) -> (final_state, per-update metrics)` (purerl.rl.loop)."""
    env, env_params, network = build_env_and_network(config)
    policy_update = make_policy_update(network, config)

    def critic_loss(critic: Any, params: Any, sample: CriticSample) -> jax.Array:
        values = network.apply(
            with_subtree(params, "critic", critic), sample.obs, method=ActorCritic.value
        )
        return losses.value_loss(values, sample.target), ()

    def train(key: jax.Array, hyper: Hyper) -> tuple[on_policy.TrainState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        # on_policy.TrainState.opt_state is the CRITIC's Adam state: the actor moves by trust-region steps.
        critic_optimizer = optax.adam(hyper.critic_lr)
        state = on_policy.init_state(
            config, env, env_params, network,
            lambda params: critic_optimizer.init(params["params"]["critic"]), init_key,
        )

        def critic_step(carry, sample: CriticSample):
            critic, opt_state, params = carry
            critic, opt_state, step = gradient_step(critic_optimizer, critic_loss, critic, opt_state, params, sample)
            return (critic, opt_state, params), {"critic_loss": step.loss}

        def update_step(state: on_policy.TrainState, key: jax.Array, update_index: jax.Array):
            rollout_key, critic_key = jax.random.split(key)

            # 1. Experience from the current policy; GAE from the current critic.
            state, rollout = on_policy.collect_rollout(env, env_params, network, state, rollout_key, config.num_steps)
            advantages, targets = on_policy.gae(rollout, hyper.gamma, hyper.gae_lambda)
            flat_advantages = flatten_time(advantages)
            if config.normalize_advantages:
                flat_advantages = losses.normalize(flat_advantages)

            # 2-3. One trust-region step of the actor.
            batch = rollout.batch
            params, policy_stats = policy_update(
                state.params, flatten_time(batch.obs), flatten_time(batch.action), flat_advantages, hyper
            )

            # 4. Critic: several Adam epochs on the λ-returns (pre-update critic's targets).
            (critic, critic_opt_state, _), critic_stats = shuffled_minibatch_epochs(
                critic_key,
                (params["params"]["critic"], state.opt_state, params),
                flatten_time(CriticSample(batch.obs, targets)),
                config.critic_epochs, config.critic_minibatches, critic_step,
            )
            params = with_subtree(params, "critic", critic)

            metrics = {
                "env_steps_in_update": jnp.int32(config.batch_size),
                **rollout.episodes.metrics(),
                **policy_stats,
                # Value loss of the critic that produced this update's advantages.
                "value_loss": losses.value_loss(rollout.values, targets),
                "critic_loss": jnp.mean(critic_stats["critic_loss"]),
                "explained_variance": losses.explained_variance(rollout.values, targets),
            }
            return state.replace(params=params, opt_state=critic_opt_state), metrics

        update_step = evaluation.with_evaluations(update_step, config, network)
        return run_updates(update_step, state, key, config.num_updates, hyper, on_update)

    return train
