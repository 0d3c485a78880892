"""gymnax environments and the wrappers every algorithm uses.

gymnax 1.x `step` returns `(obs, state, reward, terminated, truncated, info)` and
auto-resets: the returned `obs` is already the first observation of the next episode
when the episode ended, and `info["final_observation"]` holds the real last
observation. Every wrapper here keeps both flags and that final observation, because
advantage estimation bootstraps from V(final observation) on truncation.

Stack built by `make_vec_env` (innermost first):
    gymnax env -> AutoReset -> VectorObservation (non-vector obs) -> ClipAction /
    RescaleAction (continuous) -> EpisodeStatistics -> VecEnv (num_envs copies, vmapped)

Two ways to step, each taking exactly one kind of randomness:
- `step(key, state, action, params)`: gymnax's own signature, drawing from `key`
  (evaluation, tests, anything stepping an env by hand).
- `step_presampled(sample, state, action, params)`: the same transition from a
  `PresampledStep` drawn ahead by `presample` (the rollout, `rollout.collect`). Every
  `step(key)` of gymnax draws random numbers (split the key, sample a reset state), and
  on XLA:CPU every draw is a small loop of its own; inside a rollout scan those draws
  cost about as much as the rest of the env step. `VecEnv.presample(keys)` draws the
  randomness of a whole rollout in one batched call instead.
Each wrapper writes what it does around the inner step once (`Wrapper.wrap_step`), and
both entry points run it, handing the randomness to the inner env untouched.

Observation normalisation is not an env wrapper: its running statistics belong to the
agent (purerl.rl.normalization), so episodic collectors that reset the envs every update,
evaluation and saved policies all see the same statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

ENV_NAMES: tuple[str, ...] = tuple(gymnax.registered_envs)

# (obs, state, reward, terminated, truncated, info): gymnax 1.x's step result.
StepResult = tuple[Any, Any, jax.Array, jax.Array, jax.Array, dict[str, Any]]


def make_env(name: str, **env_kwargs: Any) -> tuple[Any, Any]:
    """Create a registered gymnax environment and its default parameters.

    `env_kwargs` are passed to the environment constructor (e.g. `use_minimal_action_set`
    for MinAtar). Unknown names raise a ValueError that lists every valid name.
    """
    if name not in ENV_NAMES:
        raise ValueError(
            f"env: unknown gymnax environment {name!r}; allowed: {', '.join(ENV_NAMES)}"
        )
    try:
        return gymnax.make(name, **env_kwargs)
    except TypeError as error:
        raise ValueError(f"env_kwargs: {name} rejected {env_kwargs}: {error}") from error


def is_discrete(env: Any, params: Any) -> bool:
    return isinstance(env.action_space(params), spaces.Discrete)


def action_dim(env: Any, params: Any) -> int:
    """Number of logits (discrete) or action components (continuous)."""
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"unsupported action space {space!r}: only Discrete and Box are handled")


@struct.dataclass
class PresampledStep:
    """Everything random in one step of one env, drawn ahead of time from the step's key.

    For a gymnax env with the standard auto-reset step: `step_key` is the key of the
    transition itself and `reset_obs` / `reset_state` the episode start an auto-reset
    would use. For an env with its own `step`, `step_key` is the step's key itself and
    the reset fields are None (nothing is presampled; `step_presampled` runs the env's own
    `step` from that key).
    """

    step_key: jax.Array
    reset_obs: Any = None
    reset_state: Any = None


class Wrapper:
    """Forwards everything it does not override to the wrapped environment."""

    def __init__(self, env: Any):
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any = None) -> StepResult:
        """gymnax's step, its randomness drawn from `key`."""
        return self.wrap_step(self._env.step, key, state, action, params)

    def step_presampled(self, sample: PresampledStep, state: Any, action: jax.Array, params: Any = None) -> StepResult:
        """The transition `step(key)` gives, its randomness taken from `sample` (`presample(key)`)."""
        return self.wrap_step(self._env.step_presampled, sample, state, action, params)

    def wrap_step(self, inner_step: Callable[..., StepResult], randomness: Any, state: Any, action: jax.Array,
                  params: Any) -> StepResult:
        """What this wrapper does around the inner env's step (`inner_step` is its `step` or
        its `step_presampled`, `randomness` that step's key or sample, passed on as it is)."""
        return inner_step(randomness, state, action, params)


class AutoReset(Wrapper):
    """gymnax's auto-resetting `step`, able to take its randomness presampled.

    `step(key)` is the env's own step. `step_presampled(presample(key))` is the same
    transition computed from presampled randomness: gymnax's `Environment.step` splits the key into
    a step key and a reset key, steps, resets, and selects the reset on done; here the
    split and the reset happen in `presample` (batched over a rollout by VecEnv) and the
    step only selects. Envs that override `step` (e.g. bsuite's DeepSea) keep theirs.
    """

    def __init__(self, env: Any):
        super().__init__(env)
        self._standard_step = type(env).step is gymnax.environments.environment.Environment.step

    def presample(self, key: jax.Array, params: Any = None) -> PresampledStep:
        """The randomness `step(key)` would draw: the split gymnax's step makes, and the reset."""
        if not self._standard_step:
            return PresampledStep(key)
        params = self._env.default_params if params is None else params
        key_step, key_reset = jax.random.split(key)
        reset_obs, reset_state = self._env.reset_env(key_reset, params)
        return PresampledStep(key_step, reset_obs, reset_state)

    def step_presampled(self, sample: PresampledStep, state: Any, action: jax.Array, params: Any = None) -> StepResult:
        if not self._standard_step:  # an env with its own step draws from the step's key
            return self._env.step(sample.step_key, state, action, params)
        # gymnax 1.0.1 Environment.step, with the reset taken from the presample.
        params = self._env.default_params if params is None else params
        obs_st, state_st, reward, terminated, info = self._env.step_env(sample.step_key, state, action, params)
        truncated = self._env.is_truncated(state_st, params)
        done = jnp.logical_or(terminated, truncated)
        state = jax.tree.map(lambda re, st: jax.lax.select(done, re, st), sample.reset_state, state_st)
        obs = jax.tree.map(lambda re, st: jax.lax.select(done, re, st), sample.reset_obs, obs_st)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return obs, state, reward, terminated, truncated, info


class VectorObservation(Wrapper):
    """Turns every observation into a flat float32 vector for MLPs: image-like arrays
    (MinAtar's [10, 10, C], Catch's [10, 5]) are flattened, scalars become length 1, and
    discrete observations (FrozenLake's state index) become one-hot."""

    def __init__(self, env: Any, params: Any):
        super().__init__(env)
        space = env.observation_space(params)
        self._one_hot = int(space.n) if isinstance(space, spaces.Discrete) else None
        self._size = self._one_hot or int(np.prod(space.shape))

    def observation_space(self, params: Any) -> spaces.Box:
        if self._one_hot:
            return spaces.Box(low=0.0, high=1.0, shape=(self._size,), dtype=jnp.float32)
        space = self._env.observation_space(params)
        return spaces.Box(
            low=np.ravel(np.broadcast_to(space.low, space.shape)),
            high=np.ravel(np.broadcast_to(space.high, space.shape)),
            shape=(self._size,),
            dtype=jnp.float32,
        )

    def _vector(self, obs: jax.Array) -> jax.Array:
        if self._one_hot:
            return jax.nn.one_hot(obs, self._one_hot, dtype=jnp.float32).reshape(-1)
        return jnp.reshape(obs, (-1,)).astype(jnp.float32)

    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return self._vector(obs), state

    def wrap_step(self, inner_step, randomness, state, action, params):
        obs, state, reward, terminated, truncated, info = inner_step(randomness, state, action, params)
        info = {**info, "final_observation": self._vector(info["final_observation"])}
        return self._vector(obs), state, reward, terminated, truncated, info


class ClipAction(Wrapper):
    """Clips continuous actions to the Box bounds (the policy's Gaussian is unbounded)."""

    def wrap_step(self, inner_step, randomness, state, action, params):
        space = self._env.action_space(params if params is not None else self.default_params)
        action = jnp.clip(action, space.low, space.high)
        return inner_step(randomness, state, action, params)


class RescaleAction(Wrapper):
    """Maps actions in [-1, 1] affinely onto the Box bounds (then clips)."""

    def wrap_step(self, inner_step, randomness, state, action, params):
        space = self._env.action_space(params if params is not None else self.default_params)
        low, high = jnp.asarray(space.low), jnp.asarray(space.high)
        action = low + (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        return inner_step(randomness, state, action, params)


@struct.dataclass
class EpisodeStatisticsState:
    env_state: Any
    episode_return: jax.Array
    episode_length: jax.Array


class EpisodeStatistics(Wrapper):
    """Tracks the return and length of the running episode across auto-resets.

    On the step that ends an episode, `info["episode_return"]` / `info["episode_length"]`
    hold that episode's totals and `info["episode_done"]` is True; algorithms reduce these
    to one number per update rather than storing them per step.
    """

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, EpisodeStatisticsState(env_state, jnp.float32(0.0), jnp.int32(0))

    def wrap_step(self, inner_step, randomness, state, action, params):
        obs, env_state, reward, terminated, truncated, info = inner_step(
            randomness, state.env_state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward.astype(jnp.float32)
        episode_length = state.episode_length + 1
        info = {
            **info,
            "episode_done": done,
            "episode_return": episode_return,
            "episode_length": episode_length,
        }
        new_state = EpisodeStatisticsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return obs, new_state, reward, terminated, truncated, info


class VecEnv(Wrapper):
    """`num_envs` independent copies stepped in lock-step with `vmap`."""

    def __init__(self, env: Any, num_envs: int):
        super().__init__(env)
        self.num_envs = num_envs

    def reset(self, key, params=None):
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self._env.reset, in_axes=(0, None))(keys, params)

    def presample(self, keys: jax.Array, params: Any = None) -> PresampledStep:
        """The randomness of `step(keys[t], ...)` for every t, drawn in one batched call:
        `step_presampled(presampled[t], ...)` (leaves [T, num_envs, ...]) == `step(keys[t], ...)`."""
        env_keys = jax.vmap(lambda key: jax.random.split(key, self.num_envs))(keys)
        presample = jax.vmap(self._env.presample, in_axes=(0, None))
        return jax.vmap(presample, in_axes=(0, None))(env_keys, params)

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any = None) -> StepResult:
        """One key for all copies, split into one per copy."""
        return self.wrap_step(self._env.step, jax.random.split(key, self.num_envs), state, action, params)

    def wrap_step(self, inner_step, randomness, state, action, params):
        # `randomness` is per copy already: split keys, or one step of `presample`.
        return jax.vmap(inner_step, in_axes=(0, 0, 0, None))(randomness, state, action, params)


def make_vec_env(
    name: str,
    num_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    action_transform: str = "clip",
) -> tuple[Any, Any]:
    """Build the standard wrapper stack; returns (vec_env, env_params).

    `action_transform` is "clip" (clip Gaussian samples to the bounds) or "rescale"
    (treat the policy's outputs as [-1, 1] and map them onto the bounds); it is ignored
    for discrete action spaces.
    """
    if action_transform not in ("clip", "rescale"):
        raise ValueError(
            f"action_transform: got {action_transform!r}; allowed: 'clip', 'rescale'"
        )
    env, params = make_env(name, **(env_kwargs or {}))
    env = AutoReset(env)
    obs_space = env.observation_space(params)
    if isinstance(obs_space, spaces.Discrete) or len(obs_space.shape) != 1:
        env = VectorObservation(env, params)
    if not is_discrete(env, params):
        env = ClipAction(env) if action_transform == "clip" else RescaleAction(env)
    return VecEnv(EpisodeStatistics(env), num_envs), params
