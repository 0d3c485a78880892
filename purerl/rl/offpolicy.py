"""The training loop shared by the replay-based agents (DQN, SAC).

One iteration = `train_frequency` steps of the `num_envs` vectorised envs with the
agent's behaviour policy (all transitions go into the replay buffer), then
`gradient_steps` gradient steps on minibatches sampled uniformly from the buffer. An
update (one row of metrics) = `num_steps // train_frequency` iterations. The first
`ceil(learning_starts / steps per update)` updates only collect: they are a separate
scan without any gradient computation, so nothing is computed and thrown away.

Observations are stored raw. With `normalize_obs`, running mean/variance statistics of
every observation seen live in the state and are applied when acting and when sampling,
so a transition collected early is normalised with today's statistics (stale normalised
observations in a replay buffer would drift away from what the networks now expect).

The algorithm supplies three pure functions:
- `act(agent, obs, key, env_steps) -> action` (obs already normalised);
- `learn(agent, batch: replay.Transition, key) -> (agent, stats)` — one gradient step;
- `report(agent, env_steps) -> dict` — per-update scalars such as ε or α.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from purerl import envs
from purerl.config import _freeze, check_positive_int
from purerl.nets import check_activation
from purerl.rl import replay
from purerl.rl.rollout import EnvRunner, EpisodeTotals, collect, flatten_time, init_runner


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig:
    """Static settings shared by the replay-based agents."""

    env: str = "CartPole-v1"
    env_kwargs: tuple = ()
    num_envs: int = 4
    num_steps: int = 64  # env steps of each env per update (one row of metrics)
    total_timesteps: int = 100_000
    normalize_obs: bool = False
    activation: str = "relu"
    buffer_size: int = 10_000
    batch_size: int = 128  # transitions per gradient step
    learning_starts: int = 1_000  # env steps collected before the first gradient step
    train_frequency: int = 1  # env steps (of each env) between gradient phases
    gradient_steps: int = 1  # gradient steps per phase

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "env_kwargs", _freeze(self.env_kwargs))
        for name in ("total_timesteps", "buffer_size", "learning_starts"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
        for name in ("num_envs", "num_steps", "total_timesteps", "buffer_size", "batch_size",
                     "train_frequency", "gradient_steps"):
            check_positive_int(owner, name, getattr(self, name))
        if isinstance(self.learning_starts, bool) or not isinstance(self.learning_starts, int) \
                or self.learning_starts < 0:
            raise ValueError(f"{owner}.learning_starts: got {self.learning_starts!r}; allowed: an integer ≥ 0")
        check_activation(self.activation, f"{owner}.activation")
        if self.num_steps % self.train_frequency:
            raise ValueError(
                f"{owner}.train_frequency: {self.train_frequency} does not divide num_steps = {self.num_steps}; "
                "allowed: a divisor of num_steps"
            )
        if self.num_envs * self.train_frequency > self.buffer_size:
            raise ValueError(
                f"{owner}.buffer_size: got {self.buffer_size}; allowed: at least num_envs * train_frequency = "
                f"{self.num_envs * self.train_frequency} (the transitions added at once)"
            )
        if self.total_timesteps < self.steps_per_update:
            raise ValueError(
                f"{owner}.total_timesteps: got {self.total_timesteps}; allowed: at least num_envs * num_steps = "
                f"{self.steps_per_update} (one update)"
            )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def collect_only_updates(self) -> int:
        """Updates before `learning_starts` env steps have been collected."""
        return min(self.num_updates, math.ceil(self.learning_starts / self.steps_per_update))


def check_action_space(owner: str, config: OffPolicyConfig, field: str, want_discrete: bool, why: str) -> None:
    """ValueError naming `field` when the env's action space is not the kind the agent needs."""
    env, env_params = envs.make_env(config.env, **dict(config.env_kwargs))
    discrete = envs.is_discrete(env, env_params)
    if discrete != want_discrete:
        kind = "a discrete" if want_discrete else "a continuous (Box)"
        raise ValueError(
            f"{owner}.{field}: {why} needs {kind} action space, but {config.env} has "
            f"{env.action_space(env_params)}"
        )


@struct.dataclass
class RunningStats:
    """Mean and variance of every observation seen (parallel Welford merge)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, obs_dim: int) -> RunningStats:
        return cls(jnp.zeros(obs_dim), jnp.ones(obs_dim), jnp.float32(1e-4))

    def update(self, obs: jax.Array) -> RunningStats:
        obs = obs.reshape(-1, obs.shape[-1])
        batch_mean, batch_var, batch_count = jnp.mean(obs, 0), jnp.var(obs, 0), obs.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + jnp.square(delta) * self.count * batch_count / total
        return RunningStats(self.mean + delta * batch_count / total, m2 / total, total)

    def normalize(self, obs: jax.Array, clip: float = 10.0) -> jax.Array:
        return jnp.clip((obs - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


@struct.dataclass
class OffPolicyState:
    agent: Any  # the algorithm's networks, targets and optimiser states
    buffer: replay.ReplayBuffer
    runner: EnvRunner
    obs_stats: RunningStats | None
    env_steps: jax.Array
    gradient_steps: jax.Array


ActFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
LearnFn = Callable[[Any, replay.Transition, jax.Array], tuple[Any, dict[str, jax.Array]]]
ReportFn = Callable[[Any, jax.Array], dict[str, jax.Array]]


def make_env(config: OffPolicyConfig, action_transform: str = "clip") -> tuple[Any, Any]:
    """The vectorised env stack; observation normalisation is done by the loop, not the env."""
    return envs.make_vec_env(
        config.env, config.num_envs, env_kwargs=dict(config.env_kwargs), action_transform=action_transform
    )


def make_loop(
    config: OffPolicyConfig,
    env: Any,
    env_params: Any,
    act: ActFn,
    learn: LearnFn,
    report: ReportFn,
    on_update: Callable[[jax.Array], None] | None = None,
) -> Callable[[jax.Array, Any], tuple[OffPolicyState, dict[str, jax.Array]]]:
    """`run(key, agent) -> (final_state, metrics)`, metrics with a leading update axis."""
    iterations = config.num_steps // config.train_frequency
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    action_space = env.action_space(env_params)
    discrete = envs.is_discrete(env, env_params)
    action_shape = () if discrete else tuple(action_space.shape)
    example = replay.Transition(
        obs=jnp.zeros(obs_dim, jnp.float32),
        action=jnp.zeros(action_shape, jnp.int32 if discrete else jnp.float32),
        reward=jnp.float32(0.0),
        terminated=jnp.bool_(False),
        truncated=jnp.bool_(False),
        next_obs=jnp.zeros(obs_dim, jnp.float32),
    )

    def normalized(stats: RunningStats | None, obs: jax.Array) -> jax.Array:
        return obs if stats is None else stats.normalize(obs)

    def sample(state: OffPolicyState, key: jax.Array) -> replay.Transition:
        batch = replay.sample(state.buffer, key, config.batch_size)
        return batch.replace(
            obs=normalized(state.obs_stats, batch.obs), next_obs=normalized(state.obs_stats, batch.next_obs)
        )

    def iteration(state: OffPolicyState, key: jax.Array, learning: bool):
        collect_key, learn_key = jax.random.split(key)

        def policy_fn(obs, policy_key):
            action = act(state.agent, normalized(state.obs_stats, obs), policy_key, state.env_steps)
            return action, jnp.zeros(obs.shape[:1])

        runner, batch, totals = collect(
            env, env_params, policy_fn, state.runner, collect_key, config.train_frequency
        )
        stored = replay.Transition(
            batch.obs, batch.action, batch.reward, batch.terminated, batch.truncated, batch.next_obs
        )
        state = state.replace(
            runner=runner,
            buffer=replay.add(state.buffer, flatten_time(stored)),
            obs_stats=None if state.obs_stats is None else state.obs_stats.update(batch.obs),
            env_steps=state.env_steps + config.train_frequency * config.num_envs,
        )
        if not learning:
            return state, totals

        def gradient_step(agent, step_key):
            sample_key, update_key = jax.random.split(step_key)
            return learn(agent, sample(state, sample_key), update_key)

        agent, stats = lax.scan(gradient_step, state.agent, jax.random.split(learn_key, config.gradient_steps))
        state = state.replace(agent=agent, gradient_steps=state.gradient_steps + config.gradient_steps)
        return state, (totals, jax.tree.map(jnp.mean, stats))

    def make_update(learning: bool, learn_stats_shape: Any):
        def update(carry, update_index):
            state, key = carry
            key, iteration_key = jax.random.split(key)
            state, out = lax.scan(
                lambda s, k: iteration(s, k, learning), state, jax.random.split(iteration_key, iterations)
            )
            totals, stats = out if learning else (out, jax.tree.map(jnp.zeros_like, learn_stats_shape))
            episodes = EpisodeTotals(
                jnp.sum(totals.return_sum), jnp.sum(totals.length_sum), jnp.sum(totals.count)
            )
            metrics = {
                "env_steps": state.env_steps,
                **episodes.metrics(),
                **jax.tree.map(jnp.mean, stats),
                **report(state.agent, state.env_steps),
                "buffer_fill": state.buffer.fill_fraction(),
                "gradient_steps": state.gradient_steps,
            }
            if on_update is not None:
                jax.debug.callback(on_update, update_index)
            return (state, key), metrics

        return update

    def run(key: jax.Array, agent: Any) -> tuple[OffPolicyState, dict[str, jax.Array]]:
        env_key, key = jax.random.split(key)
        runner = init_runner(env, env_params, env_key)
        stats = RunningStats.create(obs_dim).update(runner.obs) if config.normalize_obs else None
        state = OffPolicyState(
            agent, replay.init(example, config.buffer_size), runner, stats, jnp.int32(0), jnp.int32(0)
        )
        # Shapes of one gradient step's stats, to report zeros while only collecting.
        stats_shape = jax.eval_shape(lambda: learn(agent, sample(state, key), key)[1])
        stats_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape)
        carry = (state, key)
        parts = []
        phases = ((False, 0, config.collect_only_updates), (True, config.collect_only_updates, config.num_updates))
        for learning, first, last in phases:
            if last > first:
                carry, metrics = lax.scan(make_update(learning, stats_zeros), carry, jnp.arange(first, last))
                parts.append(metrics)
        metrics = jax.tree.map(lambda *m: jnp.concatenate(m), *parts) if len(parts) > 1 else parts[0]
        return carry[0], metrics

    return run
