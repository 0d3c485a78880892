"""Building the environment stack and the actor-critic network from an OnPolicyConfig."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from purerl import envs
from purerl.config import OnPolicyConfig
from purerl.nets import ActorCritic


def build_env_and_network(config: OnPolicyConfig) -> tuple[Any, Any, ActorCritic]:
    env, env_params = envs.make_vec_env(
        config.env,
        config.num_envs,
        env_kwargs=dict(config.env_kwargs),
        normalize_obs=config.normalize_obs,
        action_transform=config.action_transform,
    )
    network = ActorCritic(
        action_dim=envs.action_dim(env, env_params),
        discrete=envs.is_discrete(env, env_params),
        actor_hidden=config.actor_hidden,
        critic_hidden=config.critic_hidden,
        activation=config.activation,
    )
    return env, env_params, network


def init_params(network: ActorCritic, env: Any, env_params: Any, key: jax.Array) -> Any:
    obs_shape = env.observation_space(env_params).shape
    return network.init(key, jnp.zeros((1,) + tuple(obs_shape), jnp.float32))


def make_policy_sampler(network: ActorCritic, params: Any):
    """policy_fn(obs, key) -> (action, log_prob) for `rollout.collect`; actor only."""

    def policy_fn(obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        dist = network.apply(params, obs, method=ActorCritic.policy)
        action, log_prob = dist.sample_and_log_prob(seed=key)
        return action, log_prob

    return policy_fn


def make_value_fn(network: ActorCritic, params: Any):
    return lambda obs: network.apply(params, obs, method=ActorCritic.value)
