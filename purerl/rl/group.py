"""Group-relative advantages (critic-free, GRPO-style; Shao et al. 2024).

Instead of learning V(s) as a baseline, roll out a GROUP of G episodes from the same
start state and compare each episode's return with its group:

    A_i = (R_i − mean_j R_j) / (std_j R_j + ε)      for every step of episode i.

The group mean is the baseline (an unbiased Monte-Carlo estimate of V(s₀)), so no
critic is needed: this is what "dropping the critic" means. Groups share a reset key
(hence the start state); actions and env noise differ per member.

Episodic collection: each update resets all envs and steps them `num_steps` times with
the ordinary `rollout.collect`; only the FIRST episode of every env counts (a mask
zeroes the steps after it ends, which belong to auto-reset episodes). Episodes still
running after `num_steps` steps are cut there, so `num_steps` is the horizon: set it to
the env's time limit (500 for CartPole-v1) for complete episodes. Shapes are static, so
everything vmaps over seeds and settings.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from purerl import envs
from purerl.config import check_divides


def check_group_size(owner: str, group_size: Any, total: int, total_name: str = "num_envs") -> None:
    """The one check of a group size: an integer ≥ 2 dividing `total`."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"{owner}.group_size: got {group_size!r}; allowed: an integer ≥ 2 (a group of one has no baseline)"
        )
    check_divides(owner, "group_size", group_size, total, total_name)


class GroupedVecEnv(envs.VecEnv):
    """A `VecEnv` whose reset gives each block of `group_size` consecutive copies the
    same reset key, so each group starts from one state. Stepping is unchanged (a key
    per copy), so members diverge through their actions and the env's own noise."""

    def __init__(self, env: Any, num_envs: int, group_size: int):
        check_group_size(type(self).__name__, group_size, num_envs)
        super().__init__(env, num_envs)
        self.group_size = group_size

    def reset(self, key, params=None):
        group_keys = jax.random.split(key, self.num_envs // self.group_size)
        keys = jnp.repeat(group_keys, self.group_size, axis=0)
        return jax.vmap(self._env.reset, in_axes=(0, None))(keys, params)


def make_grouped_env(vec_env: Any, group_size: int) -> GroupedVecEnv:
    """Rebuild `envs.make_vec_env`'s output with grouped resets."""
    if not isinstance(vec_env, envs.VecEnv):
        raise ValueError(f"group advantages need the VecEnv of envs.make_vec_env, got {type(vec_env).__name__}")
    return GroupedVecEnv(vec_env._env, vec_env.num_envs, group_size)


def group_relative_advantages(
    returns: jax.Array, group_size: int, eps: float = 1e-8
) -> jax.Array:
    """(R_i − mean_group) / (std_group + ε) for returns [N] laid out as consecutive
    groups of `group_size`. A group whose returns are all equal gets zero advantages."""
    chex.assert_rank(returns, 1)
    num_envs = returns.shape[0]
    check_group_size("group_relative_advantages", group_size, num_envs, "the number of returns")
    grouped = returns.reshape(num_envs // group_size, group_size)
    mean = jnp.mean(grouped, axis=1, keepdims=True)
    std = jnp.std(grouped, axis=1, keepdims=True)
    return ((grouped - mean) / (std + eps)).reshape(num_envs)


def group_step_advantages(
    rewards: jax.Array, mask: jax.Array, group_size: int, eps: float = 1e-8
) -> jax.Array:
    """[T, N] per-step advantages: episode i's group-relative advantage (undiscounted
    first-episode return R_i) on each of its steps, 0 outside the first episode."""
    chex.assert_equal_shape((rewards, mask))
    episode_returns = jnp.sum(rewards * mask, axis=0)
    return mask * group_relative_advantages(episode_returns, group_size, eps)[None, :]
