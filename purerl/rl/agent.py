"""The agent's pieces shared by every algorithm: env stack + network from a config,
parameter initialisation and observation statistics. (The networks as the rollout uses
them are `rollout.make_policy_sampler` and `rollout.make_value_fn`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from purerl import envs
from purerl.config import EnvConfig
from purerl.nets import ActorCritic
from purerl.rl import normalization
from purerl.rl.normalization import RunningStats

# network_factory(config, action_dim, discrete) -> flax module
NetworkFactory = Callable[[Any, int, bool], nn.Module]


def actor_critic(config: Any, action_dim: int, discrete: bool) -> ActorCritic:
    """The on-policy network: separate actor and critic MLPs (NetworkConfig fields)."""
    return ActorCritic(
        action_dim=action_dim,
        discrete=discrete,
        actor_hidden=config.actor_hidden,
        critic_hidden=config.critic_hidden,
        activation=config.activation,
    )


def build_env_and_network(
    config: EnvConfig, network_factory: NetworkFactory = actor_critic, num_envs: int | None = None
) -> tuple[Any, Any, nn.Module]:
    """(vectorised env, env params, network) for any config with the EnvConfig fields;
    `num_envs` overrides the config's (evaluation runs its own number of episodes)."""
    env, env_params = envs.make_vec_env(
        config.env,
        config.num_envs if num_envs is None else num_envs,
        env_kwargs=dict(config.env_kwargs),
        action_transform=config.action_transform,
    )
    network = network_factory(config, envs.action_dim(env, env_params), envs.is_discrete(env, env_params))
    return env, env_params, network


def observation_shape(env: Any, env_params: Any) -> tuple[int, ...]:
    return tuple(env.observation_space(env_params).shape)


def init_params(network: nn.Module, env: Any, env_params: Any, key: jax.Array) -> Any:
    return network.init(key, jnp.zeros((1,) + observation_shape(env, env_params), jnp.float32))


def init_obs_stats(config: EnvConfig, env: Any, env_params: Any) -> RunningStats | None:
    return normalization.init(config.normalize_obs, observation_shape(env, env_params))
