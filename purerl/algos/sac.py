"""Soft Actor-Critic (Haarnoja et al. 2018) for continuous actions, and its discrete variant
(Christodoulou 2019) for Discrete action spaces (CartPole, Acrobot).

The whole run is one pure `train(key, hyper)` (the loop is `purerl.rl.offpolicy`), so
seeds × settings vmap into one program. Every gradient step:

1. critics: twin Q's regress on y = r + γ (1 − terminated) V̄(s'), where
   V̄(s') = E_{a'~π(s')}[min_i Q̄_i(s', a') − α log π(a'|s')] from the Polyak-averaged
   target critics; s' is the TRUE next observation, so truncated steps bootstrap.
   Continuous: one reparameterised sample a'; discrete: the exact expectation over actions.
2. actor: minimise E_s[α log π(a|s) − min_i Q_i(s, a)] with the updated critics
   (continuous: a = tanh(μ + σε), reparameterised; discrete: the expectation over a).
3. temperature (with `autotune_alpha`): log α descends log α · (H(π(·|s)) − H̄), so α
   grows when the policy's entropy is below the target H̄ and shrinks when above it.
   H̄ = −target_entropy_scale · |A| (continuous; −|A| by default) or
   target_entropy_ratio · log |A| (discrete: a fraction of the uniform policy's entropy).
4. targets: θ̄ ← τ θ + (1 − τ) θ̄.

Continuous actions: the actor's tanh output in [-1, 1]^A is mapped onto the Box bounds by
the env's `RescaleAction` wrapper, so log-probabilities and H̄ are in that unit box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import distrax
import jax
import jax.numpy as jnp
import optax
from flax import struct

from purerl import envs
from purerl.config import NetworkConfig, ValidatedHyper, hyper_field
from purerl.nets import PolicyHead, SquashedGaussianActor, TwinQ, squashed_gaussian_sample
from purerl.rl import normalization, offpolicy, replay
from purerl.rl.loop import OnUpdate, TrainFn
from purerl.rl.training import gradient_step

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

@dataclasses.dataclass(frozen=True)
class Config(NetworkConfig, offpolicy.OffPolicyConfig):
    """Static settings: changing one recompiles. `distribution`: "auto" (squashed
    Gaussian for Box actions, categorical for Discrete), "gaussian" (the tanh-squashed
    one) or "categorical"; a mismatch with the env fails naming the field."""

    env: str = "Pendulum-v1"
    total_timesteps: int = 20_000
    num_envs: int = 1
    num_steps: int = 200
    action_transform: str = "rescale"  # the actor's tanh output in [-1, 1] -> Box bounds
    buffer_size: int = 100_000
    batch_size: int = 256
    learning_starts: int = 1_000
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    autotune_alpha: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.discrete_actions and self.action_transform != "rescale":
            raise ValueError(
                f"Config.action_transform: got {self.action_transform!r}; allowed for continuous SAC: 'rescale' "
                "(the squashed policy's [-1, 1] actions map onto the Box bounds)"
            )


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    actor_lr: float = hyper_field(3e-4, "(0, inf)", "actor Adam learning rate")
    critic_lr: float = hyper_field(1e-3, "(0, inf)", "critic Adam learning rate")
    alpha_lr: float = hyper_field(1e-3, "(0, inf)", "temperature Adam learning rate")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    tau: float = hyper_field(0.005, "(0, 1]", "Polyak rate of the target critics")
    alpha: float = hyper_field(1.0, "(0, inf)", "initial temperature α (autotune) or the fixed α")
    target_entropy_scale: float = hyper_field(
        1.0, "(-inf, inf)", "continuous: target entropy −scale·|A| (< 0 asks for more than 0 nats)"
    )
    target_entropy_ratio: float = hyper_field(0.5, "[0, 1]", "discrete: target entropy ratio·log|A|")


@struct.dataclass
class Agent:
    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_alpha: jax.Array
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any


def target_entropy(config: Config, hyper: Hyper, action_dim: int) -> jax.Array:
    if config.discrete_actions:
        return hyper.target_entropy_ratio * jnp.log(float(action_dim))
    return -hyper.target_entropy_scale * action_dim


def greedy_action(config: Config) -> Callable[[offpolicy.OffPolicyState, jax.Array], jax.Array]:
    """`greedy(state, raw_obs) -> actions` of a training state, sampling off: the most likely
    action (discrete) or tanh of the Gaussian's mean (continuous)."""
    env, env_params = offpolicy.make_vec_env(config)
    action_dim = envs.action_dim(env, env_params)
    if config.discrete_actions:
        actor = PolicyHead(action_dim, True, config.actor_hidden, config.activation)
    else:
        actor = SquashedGaussianActor(action_dim, config.actor_hidden, config.activation)

    def greedy(state: offpolicy.OffPolicyState, obs: jax.Array) -> jax.Array:
        obs = normalization.normalize(state.obs_stats, obs)
        if config.discrete_actions:
            return jnp.argmax(actor.apply(state.agent.actor_params, obs).logits, axis=-1)
        mean, _ = actor.apply(state.agent.actor_params, obs)
        return jnp.tanh(mean)

    return greedy


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """Build `train(key, hyper) -> (final_state, metrics)`; metrics have a leading update axis."""
    discrete = config.discrete_actions
    env, env_params = offpolicy.make_vec_env(config)
    action_dim = envs.action_dim(env, env_params)
    obs_dim = env.observation_space(env_params).shape[0]
    if discrete:
        actor = PolicyHead(action_dim, True, config.actor_hidden, config.activation)
        critic = TwinQ(action_dim, config.critic_hidden, config.activation)
    else:
        actor = SquashedGaussianActor(action_dim, config.actor_hidden, config.activation)
        critic = TwinQ(0, config.critic_hidden, config.activation)

    def policy(actor_params, obs: jax.Array, key: jax.Array):
        """(action, log π(action|s), probabilities or None, log-probabilities or None)."""
        if discrete:
            logits = actor.apply(actor_params, obs).logits
            log_probs = jax.nn.log_softmax(logits)
            action = distrax.Categorical(logits=logits).sample(seed=key)
            return action, None, jnp.exp(log_probs), log_probs
        mean, log_std = actor.apply(actor_params, obs)
        action, log_prob = squashed_gaussian_sample(mean, log_std, key)
        return action, log_prob, None, None

    def train(key: jax.Array, hyper: Hyper) -> tuple[offpolicy.OffPolicyState, dict[str, jax.Array]]:
        actor_key, critic_key, key = jax.random.split(key, 3)
        dummy_obs = jnp.zeros((1, obs_dim))
        actor_params = actor.init(actor_key, dummy_obs)
        critic_params = (
            critic.init(critic_key, dummy_obs)
            if discrete
            else critic.init(critic_key, dummy_obs, jnp.zeros((1, action_dim)))
        )
        actor_optimizer = optax.adam(hyper.actor_lr)
        critic_optimizer = optax.adam(hyper.critic_lr)
        alpha_optimizer = optax.adam(hyper.alpha_lr)
        log_alpha = jnp.log(jnp.asarray(hyper.alpha, jnp.float32))
        agent = Agent(
            actor_params, critic_params, critic_params, log_alpha,
            actor_optimizer.init(actor_params), critic_optimizer.init(critic_params), alpha_optimizer.init(log_alpha),
        )
        entropy_target = target_entropy(config, hyper, action_dim)

        def act(agent: Agent, obs: jax.Array, key: jax.Array, env_steps: jax.Array) -> jax.Array:
            return policy(agent.actor_params, obs, key)[0]

        def q_values(critic_params, obs, action=None):
            """[2, B] (continuous, at `action`) or [2, B, A] (discrete, every action)."""
            return critic.apply(critic_params, obs) if discrete else critic.apply(critic_params, obs, action)

        def critic_loss_fn(critic_params, batch: replay.Transition, targets: jax.Array):
            q = q_values(critic_params, batch.obs, batch.action)
            if discrete:
                q = jnp.take_along_axis(q, batch.action[None, :, None], axis=-1)[..., 0]
            return 0.5 * jnp.sum(jnp.mean(jnp.square(q - targets), axis=-1)), q

        def actor_loss_fn(actor_params, critic_params, obs, alpha, key):
            action, log_prob, probs, log_probs = policy(actor_params, obs, key)
            if discrete:
                min_q = jnp.min(q_values(critic_params, obs), axis=0)  # [B, A]
                entropy = -jnp.sum(probs * log_probs, axis=-1)
                loss = jnp.mean(jnp.sum(probs * (alpha * log_probs - min_q), axis=-1))
            else:
                min_q = jnp.min(q_values(critic_params, obs, action), axis=0)
                entropy = -log_prob
                loss = jnp.mean(alpha * log_prob - min_q)
            return loss, jnp.mean(entropy)

        def learn(agent: Agent, batch: replay.Transition, key: jax.Array):
            next_key, actor_key = jax.random.split(key)
            alpha = jnp.exp(agent.log_alpha)

            # 1. Critics toward the soft Bellman target.
            next_action, next_log_prob, next_probs, next_log_probs = policy(
                agent.actor_params, batch.next_obs, next_key
            )
            next_q = jnp.min(q_values(agent.target_critic_params, batch.next_obs, next_action), axis=0)
            if discrete:
                next_value = jnp.sum(next_probs * (next_q - alpha * next_log_probs), axis=-1)
            else:
                next_value = next_q - alpha * next_log_prob
            targets = batch.reward + hyper.gamma * (1.0 - batch.terminated.astype(jnp.float32)) * next_value
            critic_params, critic_opt_state, critic_step = gradient_step(
                critic_optimizer, critic_loss_fn, agent.critic_params, agent.critic_opt_state,
                batch, jax.lax.stop_gradient(targets),
            )

            # 2. Actor against the updated critics.
            actor_params, actor_opt_state, actor_step = gradient_step(
                actor_optimizer, actor_loss_fn, agent.actor_params, agent.actor_opt_state,
                critic_params, batch.obs, alpha, actor_key,
            )
            entropy = actor_step.aux

            # 3. Temperature toward the target entropy.
            def alpha_loss_fn(log_alpha):
                return log_alpha * (jax.lax.stop_gradient(entropy) - entropy_target), ()

            log_alpha, alpha_opt_state = agent.log_alpha, agent.alpha_opt_state
            if config.autotune_alpha:
                log_alpha, alpha_opt_state, alpha_step = gradient_step(
                    alpha_optimizer, alpha_loss_fn, agent.log_alpha, agent.alpha_opt_state
                )
                alpha_loss = alpha_step.loss
            else:
                alpha_loss = alpha_loss_fn(agent.log_alpha)[0]

            # 4. Polyak-averaged target critics.
            target_critic_params = optax.incremental_update(critic_params, agent.target_critic_params, hyper.tau)
            stats = {
                "critic_loss": critic_step.loss,
                "actor_loss": actor_step.loss,
                "alpha_loss": alpha_loss,
                "q_mean": jnp.mean(critic_step.aux),
                "entropy": entropy,
            }
            agent = Agent(
                actor_params, critic_params, target_critic_params, log_alpha,
                actor_opt_state, critic_opt_state, alpha_opt_state,
            )
            return agent, stats

        def report(agent: Agent, env_steps: jax.Array) -> dict[str, jax.Array]:
            return {"alpha": jnp.exp(agent.log_alpha), "target_entropy": jnp.float32(entropy_target)}

        run = offpolicy.make_loop(config, env, env_params, act, learn, report, hyper, on_update)
        return run(key, agent)

    return train
