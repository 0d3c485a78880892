"""Flax networks: MLP torso, policy heads, value and Q networks.

Actor and critic never share parameters: `ActorCritic` holds two sub-trees,
`params["actor"]` and `params["critic"]`, so trust-region methods can differentiate
the policy alone, while PPO/A2C can still evaluate both in one `apply`.
Initialisation follows the usual PPO details (Huang et al. 2022): orthogonal weights,
gain √2 in hidden layers, 0.01 on the policy output, 1.0 on the value output, zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
}


def check_activation(name: str, field: str = "activation") -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"{field}: unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}")


def householder_qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Thin QR of a tall matrix [m, n] (m >= n) by Householder reflections in plain jnp.

    `jnp.linalg.qr` calls LAPACK through an FFI kernel that, batched under `vmap` on the
    CPU, waits on the same thread pool that runs the calling program: with 2 devices (or
    an otherwise busy pool) both programs block forever (jaxlib 0.10.2; see
    docs/algorithms.md, "XLA:CPU deadlock"). Orthogonal initialisation runs inside every
    vmapped `train`, so it must not call LAPACK. n reflections of O(mn) each: trivial
    for layer-sized matrices.
    """
    m, n = a.shape
    rows = jnp.arange(m)

    def reflect(carry, k):
        r, q = carry
        x = jnp.where(rows >= k, r[:, k], 0.0)
        alpha = -jnp.where(x[k] >= 0, 1.0, -1.0) * jnp.linalg.norm(x)
        v = x.at[k].add(-alpha)
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(a.dtype).tiny)
        r = r - 2.0 * jnp.outer(v, v @ r)
        q = q - 2.0 * jnp.outer(q @ v, v)
        return (r, q), None

    (r, q), _ = jax.lax.scan(reflect, (a, jnp.eye(m, dtype=a.dtype)), jnp.arange(n))
    return q[:, :n], r[:n]


def orthogonal_init(gain: float = 1.0):
    """Orthogonal initialiser (Saxe et al. 2014) with the usual sign correction, so the
    matrices are Haar-distributed; like `nn.initializers.orthogonal` but LAPACK-free."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        rows, cols = int(np.prod(shape[:-1])), int(shape[-1])
        tall = (max(rows, cols), min(rows, cols))
        q, r = householder_qr(jax.random.normal(key, tall, jnp.float32))
        q = q * jnp.sign(jnp.diag(r))[None, :]
        q = q if rows >= cols else q.T
        return (gain * q).reshape(shape).astype(dtype)

    return init


def _dense(features: int, gain: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=orthogonal_init(gain), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    """Hidden layers only (no output layer)."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(_dense(size, np.sqrt(2.0))(x))
        return x


class PolicyHead(nn.Module):
    """MLP policy: categorical over `action_dim` logits, or a diagonal Gaussian whose
    log-std is a state-independent parameter."""

    action_dim: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> distrax.Distribution:
        h = MLP(self.hidden_sizes, self.activation)(obs)
        out = _dense(self.action_dim, 0.01)(h)
        if self.discrete:
            return distrax.Categorical(logits=out)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
        )
        return distrax.MultivariateNormalDiag(out, jnp.exp(log_std))


class ValueHead(nn.Module):
    """MLP state-value function V(s); returns shape obs.shape[:-1]."""

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        h = MLP(self.hidden_sizes, self.activation)(obs)
        return jnp.squeeze(_dense(1, 1.0)(h), axis=-1)


class QHead(nn.Module):
    """MLP action-value function Q(s, ·) for discrete actions; returns [..., num_actions]."""

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        h = MLP(self.hidden_sizes, self.activation)(obs)
        return _dense(self.num_actions, 1.0)(h)


class ActorCritic(nn.Module):
    """Separate policy and value networks evaluated together."""

    action_dim: int
    discrete: bool
    actor_hidden: Sequence[int] = (64, 64)
    critic_hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"

    def setup(self) -> None:
        self.actor = PolicyHead(self.action_dim, self.discrete, self.actor_hidden, self.activation)
        self.critic = ValueHead(self.critic_hidden, self.activation)

    def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
        return self.actor(obs), self.critic(obs)

    def policy(self, obs: jax.Array) -> distrax.Distribution:
        return self.actor(obs)

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)


def with_subtree(params: Any, name: str, subtree: Any) -> Any:
    """ActorCritic variables with the parameters of one network ("actor" or "critic") replaced,
    for a loss or an optimiser over that network alone."""
    return {**params, "params": {**params["params"], name: subtree}}


# ---------------------------------------------------------------- off-policy agents (DQN, SAC)
class SquashedGaussianActor(nn.Module):
    """SAC's policy: u ~ N(μ(s), σ(s)²), action a = tanh(u) in [-1, 1]^A (the env wrapper
    rescales it onto the Box bounds). log σ is squashed into [log_std_min, log_std_max]."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, log_std) of the pre-squash Gaussian, each [..., A]."""
        h = MLP(self.hidden_sizes, self.activation)(obs)
        mean = _dense(self.action_dim, 0.01)(h)
        log_std = jnp.tanh(_dense(self.action_dim, 0.01)(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return mean, log_std


def squashed_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised a = tanh(μ + σ ε) and log π(a|s) summed over action components.

    Change of variables: log π(a) = log N(u; μ, σ) − Σ log(1 − tanh(u)²), with the
    stable identity log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)) (no ε fudge)."""
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    pre_squash = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * jnp.square(noise) - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_det_jacobian = 2.0 * (jnp.log(2.0) - pre_squash - jax.nn.softplus(-2.0 * pre_squash))
    return jnp.tanh(pre_squash), jnp.sum(gaussian_log_prob - log_det_jacobian, axis=-1)


class StateActionQ(nn.Module):
    """Q(s, a) for continuous actions: an MLP on the concatenation [s, a]; returns [...]."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        h = MLP(self.hidden_sizes, self.activation)(jnp.concatenate([obs, action], axis=-1))
        return jnp.squeeze(_dense(1, 1.0)(h), axis=-1)


class TwinQ(nn.Module):
    """Two independently initialised critics evaluated as one batched network (nn.vmap):
    Q(s, a) -> [2, ...] for continuous actions (`num_actions` = 0), Q(s, ·) -> [2, ..., A]
    for discrete ones."""

    num_actions: int = 0
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array | None = None) -> jax.Array:
        ensemble = nn.vmap(
            StateActionQ if self.num_actions == 0 else QHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        if self.num_actions == 0:
            return ensemble(self.hidden_sizes, self.activation)(obs, action)
        return ensemble(self.num_actions, self.hidden_sizes, self.activation)(obs)
