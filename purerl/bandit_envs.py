"""Bandit environments for `purerl.algos.bandits`, and the true arm means regret is measured against.

- gymnax's `BernoulliBandit-misc` (2 arms with success probabilities p and 1 − p in a
  random order; p = `reward_prob`, 0.1 by default) and `GaussianBandit-misc` (arm 0 pays
  exactly 0, arm 1 pays N(μ, σ_l²) with μ ~ N(mean_mu, σ_p²) drawn at reset).
- `LinearContextualBandit` (here): K arms with parameter vectors θ_a drawn uniformly on
  the unit sphere at reset; every step shows a context x uniform on the unit sphere, and
  pulling arm a pays θ_a·x + N(0, noise_std²). The observation is the context.
- `KArmedBernoulliBandit` / `KArmedGaussianBandit` (here): K arms (`num_arms`), one best arm
  with mean `best_mean` and K − 1 arms at `best_mean − gap`, in an order drawn at reset.
  Rewards are Bernoulli(μ_a), or N(μ_a, noise_std²). A fixed instance (not one drawn at
  random) keeps the Lai–Robbins constant Σ_a Δ_a / KL(μ_a, μ*) known in closed form.

A bandit run is ONE instance drawn at reset and pulled T times: agents call the env's
`step_env` (no auto-reset, no time limit), so the instance never changes mid-run.
`arm_means(env, state)` reads the expected reward of every arm in the current state from
the env's own parameters, so regret is exact (pseudo-regret), not estimated from rewards.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from purerl import envs

GYMNAX_BANDITS = ("BernoulliBandit-misc", "GaussianBandit-misc")
CONTEXTUAL_BANDITS = ("LinearContextualBandit",)
K_ARMED_BANDITS = ("KArmedBernoulliBandit", "KArmedGaussianBandit")
BANDIT_ENVS = GYMNAX_BANDITS + CONTEXTUAL_BANDITS + K_ARMED_BANDITS
BERNOULLI_BANDITS = ("BernoulliBandit-misc", "KArmedBernoulliBandit")  # 0/1 rewards


@struct.dataclass
class LinearBanditState(environment.EnvState):
    theta: jax.Array  # [num_arms, context_dim]
    context: jax.Array  # [context_dim], shown before the next pull


@struct.dataclass
class LinearBanditParams(environment.EnvParams):
    noise_std: float = 0.1
    max_steps_in_episode: int = 2**30  # a bandit run is one long "episode"


def _unit_vectors(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    x = jax.random.normal(key, shape)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class LinearContextualBandit(environment.Environment[LinearBanditState, LinearBanditParams]):
    """Linear contextual bandit: reward θ_a·x + N(0, noise_std²) (see the module docstring)."""

    def __init__(self, num_arms: int = 5, context_dim: int = 5):
        for name, value in (("num_arms", num_arms), ("context_dim", context_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"env_kwargs.{name}: got {value!r}; allowed: a positive integer")
        if num_arms < 2:
            raise ValueError(f"env_kwargs.num_arms: got {num_arms}; allowed: an integer ≥ 2")
        self.num_arms = num_arms
        self.context_dim = context_dim

    @property
    def default_params(self) -> LinearBanditParams:
        return LinearBanditParams()

    def reset_env(self, key, params):
        theta_key, context_key = jax.random.split(key)
        theta = _unit_vectors(theta_key, (self.num_arms, self.context_dim))
        state = LinearBanditState(
            time=jnp.int32(0), theta=theta, context=_unit_vectors(context_key, (self.context_dim,))
        )
        return state.context, state

    def step_env(self, key, state, action, params):
        noise_key, context_key = jax.random.split(key)
        mean = state.theta[action] @ state.context
        reward = mean + params.noise_std * jax.random.normal(noise_key)
        state = state.replace(
            time=state.time + 1, context=_unit_vectors(context_key, (self.context_dim,))
        )
        return state.context, state, reward, jnp.array(False), {}

    def is_terminated(self, state, params):
        return jnp.array(False)

    @property
    def name(self) -> str:
        return "LinearContextualBandit"

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_arms)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.context_dim,), jnp.float32)


@struct.dataclass
class KArmedBanditState(environment.EnvState):
    means: jax.Array  # [num_arms], the instance (fixed values, order drawn at reset)


@struct.dataclass
class KArmedBanditParams(environment.EnvParams):
    best_mean: float = 0.5
    gap: float = 0.1  # every other arm's mean is best_mean − gap
    noise_std: float = 1.0  # Gaussian rewards only
    max_steps_in_episode: int = 2**30


class KArmedBandit(environment.Environment[KArmedBanditState, KArmedBanditParams]):
    """K arms, one at `best_mean` and K − 1 at `best_mean − gap`; Bernoulli or Gaussian rewards
    (see the module docstring). The observation is a constant 0 (no context)."""

    def __init__(self, num_arms: int = 10, rewards: str = "bernoulli"):
        if isinstance(num_arms, bool) or not isinstance(num_arms, int) or num_arms < 2:
            raise ValueError(f"env_kwargs.num_arms: got {num_arms!r}; allowed: an integer ≥ 2")
        self.num_arms = num_arms
        self.rewards = rewards

    @property
    def default_params(self) -> KArmedBanditParams:
        return KArmedBanditParams()

    def reset_env(self, key, params):
        means = jnp.full(self.num_arms, params.best_mean - params.gap, jnp.float32).at[0].set(params.best_mean)
        state = KArmedBanditState(time=jnp.int32(0), means=jax.random.permutation(key, means))
        return jnp.zeros(1, jnp.float32), state

    def step_env(self, key, state, action, params):
        mean = state.means[action]
        if self.rewards == "bernoulli":
            reward = jax.random.bernoulli(key, mean).astype(jnp.float32)
        else:
            reward = mean + params.noise_std * jax.random.normal(key)
        return jnp.zeros(1, jnp.float32), state.replace(time=state.time + 1), reward, jnp.array(False), {}

    def is_terminated(self, state, params):
        return jnp.array(False)

    @property
    def name(self) -> str:
        return "KArmedBernoulliBandit" if self.rewards == "bernoulli" else "KArmedGaussianBandit"

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_arms)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(0.0, 0.0, (1,), jnp.float32)


def make(name: str, env_kwargs: dict[str, Any] | None = None, env_params: dict[str, Any] | None = None):
    """(env, env_params) for a bandit env; `env_params` overrides fields of its EnvParams."""
    env_kwargs, overrides = dict(env_kwargs or {}), dict(env_params or {})
    if name not in BANDIT_ENVS:
        raise ValueError(f"env: {name!r} is not a bandit environment; allowed: {', '.join(BANDIT_ENVS)}")
    if name == "LinearContextualBandit":
        try:
            env = LinearContextualBandit(**env_kwargs)
        except TypeError as error:
            raise ValueError(f"env_kwargs: {name} rejected {env_kwargs}: {error}") from error
        params = env.default_params
    elif name in K_ARMED_BANDITS:
        unknown_kwargs = sorted(set(env_kwargs) - {"num_arms"})
        if unknown_kwargs:
            raise ValueError(f"env_kwargs: {name} has no argument {unknown_kwargs[0]!r}; allowed: num_arms")
        env = KArmedBandit(**env_kwargs, rewards="bernoulli" if name == "KArmedBernoulliBandit" else "gaussian")
        params = env.default_params
    else:
        env, params = envs.make_env(name, **env_kwargs)
    fields = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"env_params: {name} has no parameter {unknown[0]!r}; allowed: {', '.join(fields)}")
    params = params.replace(**overrides)
    if name == "KArmedBernoulliBandit" and not 0 <= params.best_mean - params.gap < params.best_mean <= 1:
        raise ValueError(
            f"env_params: best_mean {params.best_mean} and gap {params.gap} give arm means outside [0, 1] or no "
            "gap; allowed: 0 < gap ≤ best_mean ≤ 1"
        )
    if name == "KArmedGaussianBandit" and not (params.gap > 0 and params.noise_std > 0):
        raise ValueError(f"env_params: gap {params.gap}, noise_std {params.noise_std}; allowed: both > 0")
    return env, params


def is_contextual(name: str) -> bool:
    return name in CONTEXTUAL_BANDITS


def num_arms(env: Any, params: Any) -> int:
    return int(env.action_space(params).n)


def arm_means(env: Any, state: Any) -> jax.Array:
    """[num_arms] expected reward of each arm in `state` (for contextual bandits: given the
    context the agent is about to act on)."""
    if env.name == "BernoulliBandit-misc":
        return state.reward_probs.astype(jnp.float32)
    if env.name == "GaussianBandit-misc":
        return jnp.stack([jnp.float32(0.0), state.mu.astype(jnp.float32)])
    if env.name == "LinearContextualBandit":
        return state.theta @ state.context
    if env.name in K_ARMED_BANDITS:
        return state.means
    raise ValueError(f"arm_means: unknown bandit {env.name!r}; allowed: {', '.join(BANDIT_ENVS)}")
