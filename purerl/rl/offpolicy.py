"""The training loop shared by the replay-based agents (DQN, SAC).

One iteration = `train_frequency` steps of the `num_envs` vectorised envs with the
agent's behaviour policy (all transitions go into the replay buffer), then
`gradient_steps` gradient steps on minibatches sampled uniformly from the buffer. An
update (one row of metrics) = `num_steps // train_frequency` iterations. The first
`ceil(learning_starts / steps per update)` updates only collect: a branch on the update
index (`lax.cond`, a real branch even under vmap) skips the gradient computation, so
nothing is computed and thrown away, and one `run_updates` loop drives the whole run.

Observations are stored raw. With `normalize_obs`, the agent's running statistics
(`purerl.rl.normalization`, held in the state as `obs_stats`) are applied when acting
and when sampling, so a transition collected early is normalised with today's statistics
(stale normalised observations in a replay buffer would drift away from what the
networks now expect).

Counters follow `purerl.rl.loop`: `env_steps_in_update` and `gradient_steps_in_update`
are exact int32 counts per update; `purerl.sweep.run` adds the cumulative `env_steps`
and `gradient_steps` on the host.

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
from purerl.config import EnvConfig, _integral, check_divides, check_positive_int
from purerl.nets import check_activation
from purerl.rl import normalization, replay
from purerl.rl.loop import OnUpdate, run_updates
from purerl.rl.normalization import RunningStats
from purerl.rl.rollout import (
    EnvRunner,
    EpisodeTotals,
    KeyedPolicy,
    collect,
    flatten_time,
    init_runner,
    normalize_observations,
)


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig(EnvConfig):
    """Static settings shared by the replay-based agents (env fields from EnvConfig)."""

    num_steps: int = 64  # env steps of each env per update (one row of metrics)
    total_timesteps: int = 100_000
    activation: str = "relu"
    buffer_size: int = 10_000
    batch_size: int = 128  # transitions per gradient step
    learning_starts: int = 1_000  # env steps collected before the first gradient step
    train_frequency: int = 1  # env steps (of each env) between gradient phases
    gradient_steps: int = 1  # gradient steps per phase

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "buffer_size", "learning_starts"):
            object.__setattr__(self, name, _integral(getattr(self, name)))
        super().__post_init__()
        owner = self._owner
        for name in ("num_steps", "total_timesteps", "buffer_size", "batch_size", "train_frequency",
                     "gradient_steps"):
            check_positive_int(owner, name, getattr(self, name))
        if isinstance(self.learning_starts, bool) or not isinstance(self.learning_starts, int) \
                or self.learning_starts < 0:
            raise ValueError(f"{owner}.learning_starts: got {self.learning_starts!r}; allowed: an integer ≥ 0")
        check_activation(self.activation, f"{owner}.activation")
        check_divides(owner, "train_frequency", self.train_frequency, self.num_steps, "num_steps")
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

    @property
    def total_gradient_steps(self) -> int:
        learning_updates = self.num_updates - self.collect_only_updates
        return learning_updates * (self.num_steps // self.train_frequency) * self.gradient_steps


def check_action_space(owner: str, config: EnvConfig, field: str, want_discrete: bool, why: str) -> None:
    """ValueError naming `field` when the env's action space is not the kind the agent needs."""
    env, env_params = config.make_env()
    if config.discrete_actions != want_discrete:
        kind = "a discrete" if want_discrete else "a continuous (Box)"
        raise ValueError(
            f"{owner}.{field}: {why} needs {kind} action space, but {config.env} has "
            f"{env.action_space(env_params)}"
        )


def make_vec_env(config: EnvConfig) -> tuple[Any, Any]:
    """The standard env stack (purerl.envs); observation statistics belong to the agent."""
    return envs.make_vec_env(
        config.env, config.num_envs, env_kwargs=dict(config.env_kwargs), action_transform=config.action_transform
    )


@struct.dataclass
class OffPolicyState:
    agent: Any  # the algorithm's networks, targets and optimiser states
    buffer: replay.ReplayBuffer
    runner: EnvRunner
    obs_stats: RunningStats | None  # None when the config does not normalise observations
    env_steps: jax.Array  # int32 within the run (drives ε schedules); exact totals come from the host


ActFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
LearnFn = Callable[[Any, replay.Transition, jax.Array], tuple[Any, dict[str, jax.Array]]]
ReportFn = Callable[[Any, jax.Array], dict[str, jax.Array]]




def make_loop(
    config: OffPolicyConfig,
    env: Any,
    env_params: Any,
    act: ActFn,
    learn: LearnFn,
    report: ReportFn,
    hyper: Any,
    on_update: OnUpdate = None,
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

    def sample(state: OffPolicyState, key: jax.Array) -> replay.Transition:
        batch = replay.sample(state.buffer, key, config.batch_size)
        return normalize_observations(state.obs_stats, batch)

    def iteration(state: OffPolicyState, key: jax.Array, learning: bool):
        collect_key, learn_key = jax.random.split(key)

        def policy_fn(obs, policy_key):
            action = act(state.agent, normalization.normalize(state.obs_stats, obs), policy_key, state.env_steps)
            return action, jnp.zeros(obs.shape[:1])

        runner, batch, totals = collect(
            env, env_params, KeyedPolicy(policy_fn), state.runner, collect_key, config.train_frequency
        )
        stored = replay.Transition(
            batch.obs, batch.action, batch.reward, batch.terminated, batch.truncated, batch.next_obs
        )
        state = state.replace(
            runner=runner,
            buffer=replay.add(state.buffer, flatten_time(stored)),
            obs_stats=normalization.update(state.obs_stats, batch.obs),
            env_steps=state.env_steps + config.train_frequency * config.num_envs,
        )
        if not learning:
            return state, totals

        def gradient_step(agent, step_key):
            sample_key, update_key = jax.random.split(step_key)
            return learn(agent, sample(state, sample_key), update_key)

        agent, stats = lax.scan(gradient_step, state.agent, jax.random.split(learn_key, config.gradient_steps))
        return state.replace(agent=agent), (totals, jax.tree.map(jnp.mean, stats))

    def make_update_step(stats_zeros: Any):
        def phase(state: OffPolicyState, key: jax.Array, learning: bool):
            state, out = lax.scan(lambda s, k: iteration(s, k, learning), state, jax.random.split(key, iterations))
            totals, stats = out if learning else (out, stats_zeros)
            return state, (totals, jax.tree.map(jnp.mean, stats))

        def update_step(state: OffPolicyState, key: jax.Array, update_index: jax.Array):
            # The update index is the loop counter, never batched, so under vmap this stays
            # a real branch: collect-only updates run no gradient computation at all.
            learning = update_index >= config.collect_only_updates
            state, (totals, stats) = lax.cond(
                learning, lambda: phase(state, key, True), lambda: phase(state, key, False)
            )
            episodes = EpisodeTotals(jnp.sum(totals.return_sum), jnp.sum(totals.length_sum), jnp.sum(totals.count))
            gradient_steps = jnp.where(learning, iterations * config.gradient_steps, 0).astype(jnp.int32)
            metrics = {
                "env_steps_in_update": jnp.int32(config.steps_per_update),
                "gradient_steps_in_update": gradient_steps,
                **episodes.metrics(),
                **stats,
                **report(state.agent, state.env_steps),
                "buffer_fill": state.buffer.fill_fraction(),
            }
            return state, metrics

        return update_step

    def run(key: jax.Array, agent: Any) -> tuple[OffPolicyState, dict[str, jax.Array]]:
        env_key, key = jax.random.split(key)
        runner = init_runner(env, env_params, env_key)
        obs_stats = normalization.init(config.normalize_obs, (obs_dim,))
        state = OffPolicyState(agent, replay.init(example, config.buffer_size), runner, obs_stats, jnp.int32(0))
        # One gradient step's statistics have these shapes; collect-only updates report zeros.
        stats_shape = jax.eval_shape(lambda: learn(agent, sample(state, key), key)[1])
        stats_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape)
        return run_updates(make_update_step(stats_zeros), state, key, config.num_updates, hyper, on_update)

    return run
