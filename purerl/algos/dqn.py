"""Deep Q-Network (Mnih et al. 2015), with the double-DQN target (van Hasselt et al. 2016) as an option.

The whole run — acting, replay, every gradient step — is one pure `train(key, hyper)`
(the loop is `purerl.rl.offpolicy`), so seeds × settings vmap into one program.

- Behaviour: ε-greedy on Q(s, ·), ε decaying linearly from `epsilon_start` to
  `epsilon_end` over the first `exploration_fraction` of `total_timesteps` env steps.
- Target: y = r + γ (1 − terminated) Q_target(s', a*), a* = argmax_a Q_target(s', a), or
  with `double_dqn` a* = argmax_a Q_online(s', a). s' is the TRUE next observation (the
  final one when the episode ended), so time-limit truncation bootstraps and only
  termination cuts the return.
- Loss on Q(s, a) − y: ½ squared (default) or Huber (δ = 1, the DQN paper's error clipping).
- Target network: every `target_update_period` gradient steps,
  θ⁻ ← τ θ + (1 − τ) θ⁻: τ = 1 is the classic hard copy, period 1 with small τ is Polyak.
- Adam with global-norm clipping; with `anneal_lr` the rate decays linearly to 0 over all
  gradient steps (DQN's returns on CartPole oscillate at a constant rate; annealing
  settles the final policy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from purerl import envs
from purerl.config import (
    ValidatedHyper,
    _freeze,
    check_choice,
    check_positive_int,
    check_positive_int_tuple,
    hyper_field,
)
from purerl.nets import QHead
from purerl.rl import normalization, offpolicy, replay
from purerl.rl.loop import OnUpdate, TrainFn
from purerl.rl.training import adam_clipped, gradient_step

# The headline per-update metric (purerl.algos.return_metric).
RETURN_METRIC = "episode_return"

@dataclasses.dataclass(frozen=True)
class Config(offpolicy.OffPolicyConfig):
    """Static settings: changing one recompiles. Defaults: PureJaxRL's CartPole DQN
    (10 envs, one gradient step of 128 per 10 env steps, 10k buffer, target copied every
    50 gradient steps = 500 env steps) at half its budget, with lr 5e-4 annealed."""

    num_envs: int = 10
    num_steps: int = 100
    total_timesteps: int = 250_000
    learning_starts: int = 10_000
    q_hidden: tuple[int, ...] = (64, 64)
    double_dqn: bool = True
    # ½ squared error: with Huber, Q diverged on CartPole at these settings (terminal
    # transitions, whose large errors keep Q bounded, get clipped gradients).
    loss: str = "mse"  # mse | huber
    target_update_period: int = 50  # gradient steps between target updates
    anneal_lr: bool = True  # learning rate decays linearly to 0 over the gradient steps

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "q_hidden", _freeze(self.q_hidden))
        check_positive_int_tuple("Config", "q_hidden", self.q_hidden)
        check_choice("Config", "loss", self.loss, ("mse", "huber"))
        check_positive_int("Config", "target_update_period", self.target_update_period)
        offpolicy.check_action_space("Config", self, "env", want_discrete=True, why="DQN (argmax over Q(s, ·))")


@struct.dataclass
class Hyper(ValidatedHyper):
    """Traced hyperparameters: a batch of these is just data to `vmap` over."""

    lr: float = hyper_field(5e-4, "(0, inf)", "Adam learning rate (initial, if annealed)")
    gamma: float = hyper_field(0.99, "[0, 1]", "discount")
    tau: float = hyper_field(1.0, "(0, 1]", "target update θ⁻ ← τθ + (1−τ)θ⁻ (1 = hard copy)")
    epsilon_start: float = hyper_field(1.0, "[0, 1]", "ε at the first env step")
    epsilon_end: float = hyper_field(0.05, "[0, 1]", "ε after the decay")
    exploration_fraction: float = hyper_field(0.2, "(0, 1]", "fraction of total_timesteps over which ε decays")
    max_grad_norm: float = hyper_field(10.0, "(0, inf]", "global gradient-norm clip")
    adam_eps: float = hyper_field(1e-8, "(0, inf)", "Adam ε")


@struct.dataclass
class Agent:
    params: Any
    target_params: Any
    opt_state: Any
    updates: jax.Array  # gradient steps taken


def epsilon_schedule(hyper: Hyper, env_steps: jax.Array, total_timesteps: int) -> jax.Array:
    """Linear decay from epsilon_start to epsilon_end over exploration_fraction · total steps."""
    progress = env_steps.astype(jnp.float32) / (hyper.exploration_fraction * total_timesteps)
    return hyper.epsilon_end + (hyper.epsilon_start - hyper.epsilon_end) * jnp.maximum(1.0 - progress, 0.0)


def q_targets(
    reward: jax.Array,
    terminated: jax.Array,
    next_q_target: jax.Array,
    next_q_online: jax.Array,
    gamma: float | jax.Array,
    double_dqn: bool,
) -> jax.Array:
    """[B] targets r + γ (1 − terminated) Q_target(s', a*) from next-state Q values [B, A].
    Truncation is not an argument: a truncated step bootstraps like any other."""
    if double_dqn:
        best = jnp.argmax(next_q_online, axis=-1)
        next_value = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    else:
        next_value = jnp.max(next_q_target, axis=-1)
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * next_value


def td_loss(q_taken: jax.Array, targets: jax.Array, kind: str) -> jax.Array:
    error = q_taken - jax.lax.stop_gradient(targets)
    if kind == "huber":
        return jnp.mean(optax.huber_loss(error, delta=1.0))
    return 0.5 * jnp.mean(jnp.square(error))


def greedy_action(config: Config) -> Callable[[offpolicy.OffPolicyState, jax.Array], jax.Array]:
    """`greedy(state, raw_obs) -> argmax_a Q(s, a)` of a training state: the policy with ε = 0."""
    env, env_params = offpolicy.make_vec_env(config)
    network = QHead(envs.action_dim(env, env_params), config.q_hidden, config.activation)

    def greedy(state: offpolicy.OffPolicyState, obs: jax.Array) -> jax.Array:
        return jnp.argmax(network.apply(state.agent.params, normalization.normalize(state.obs_stats, obs)), axis=-1)

    return greedy


def make_train(config: Config, on_update: OnUpdate = None) -> TrainFn:
    """Build `train(key, hyper) -> (final_state, metrics)`; metrics have a leading update axis."""
    env, env_params = offpolicy.make_vec_env(config)
    num_actions = envs.action_dim(env, env_params)
    network = QHead(num_actions, config.q_hidden, config.activation)
    obs_shape = env.observation_space(env_params).shape

    def train(key: jax.Array, hyper: Hyper) -> tuple[offpolicy.OffPolicyState, dict[str, jax.Array]]:
        init_key, key = jax.random.split(key)
        lr = optax.linear_schedule(hyper.lr, 0.0, max(config.total_gradient_steps, 1)) if config.anneal_lr else hyper.lr
        optimizer = adam_clipped(lr, hyper.max_grad_norm, eps=hyper.adam_eps)
        params = network.init(init_key, jnp.zeros((1,) + tuple(obs_shape)))
        agent = Agent(params, params, optimizer.init(params), jnp.int32(0))

        def act(agent: Agent, obs: jax.Array, key: jax.Array, env_steps: jax.Array) -> jax.Array:
            explore_key, random_key = jax.random.split(key)
            greedy = jnp.argmax(network.apply(agent.params, obs), axis=-1)
            random_actions = jax.random.randint(random_key, greedy.shape, 0, num_actions)
            explore = jax.random.uniform(explore_key, greedy.shape) < epsilon_schedule(
                hyper, env_steps, config.total_timesteps
            )
            return jnp.where(explore, random_actions, greedy)

        def loss_fn(params, batch: replay.Transition, targets: jax.Array):
            q_values = network.apply(params, batch.obs)
            q_taken = jnp.take_along_axis(q_values, batch.action[:, None], axis=-1)[:, 0]
            return td_loss(q_taken, targets, config.loss), q_taken

        def learn(agent: Agent, batch: replay.Transition, key: jax.Array):
            # One forward pass of each network over s' (online only for the double-DQN argmax).
            next_q_target = network.apply(agent.target_params, batch.next_obs)
            next_q_online = network.apply(agent.params, batch.next_obs) if config.double_dqn else next_q_target
            targets = q_targets(batch.reward, batch.terminated, next_q_target, next_q_online,
                                hyper.gamma, config.double_dqn)
            params, opt_state, step = gradient_step(optimizer, loss_fn, agent.params, agent.opt_state, batch, targets)
            count = agent.updates + 1
            refresh = (count % config.target_update_period) == 0
            target_params = jax.tree.map(
                lambda online, target: jnp.where(refresh, hyper.tau * online + (1.0 - hyper.tau) * target, target),
                params,
                agent.target_params,
            )
            stats = {"loss": step.loss, "q_mean": jnp.mean(step.aux), "grad_norm": step.grad_norm}
            return Agent(params, target_params, opt_state, count), stats

        def report(agent: Agent, env_steps: jax.Array) -> dict[str, jax.Array]:
            return {"epsilon": epsilon_schedule(hyper, env_steps, config.total_timesteps)}

        run = offpolicy.make_loop(config, env, env_params, act, learn, report, hyper, on_update)
        return run(key, agent)

    return train
