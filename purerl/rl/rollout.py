"""Collecting experience from a vectorised gymnax env: the rollout scan (`collect`), the
policy it steps with, and the critic pass over what it collected (`evaluate_values`).

Randomness is drawn ahead, in named pieces: before the scan, `collect` draws every step's
env randomness (`envs.PresampledStep`, taken by `env.step_presampled`) and the policy's
(`RolloutPolicy.presample`: `GumbelNoise` for a categorical policy, the step keys for any
other), so no step draws or decides what kind of randomness it was given.

The rollout loop runs only the policy. Values are computed afterwards in batched critic
passes over the buffer (`evaluate_values`): cheaper than a critic call per step, and
V(final observation) for truncation bootstrapping comes with them.
Episode statistics are reduced inside the scan to three scalars per rollout, so nothing
per-step is kept beyond the training batch itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from purerl.nets import ActorCritic
from purerl.rl.normalization import RunningStats, normalize


@struct.dataclass
class Transition:
    """One rollout, every leaf shaped [T, num_envs, ...]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    # The true next observation: s_{t+1}, or the episode's last observation if it ended.
    next_obs: jax.Array


@struct.dataclass
class EpisodeTotals:
    """Sums over the episodes that finished during one rollout."""

    return_sum: jax.Array
    length_sum: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> EpisodeTotals:
        return cls(jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0))

    def metrics(self) -> dict[str, jax.Array]:
        """Mean return/length of finished episodes (NaN when none finished) and their count."""
        safe = jnp.maximum(self.count, 1)
        return {
            "episode_return": jnp.where(self.count > 0, self.return_sum / safe, jnp.nan),
            "episode_length": jnp.where(self.count > 0, self.length_sum / safe, jnp.nan),
            "episodes": self.count,
        }


def normalize_observations(stats: Any, batch: Transition) -> Transition:
    """The batch as the networks see it: observations and next observations normalised
    with the statistics the rollout was collected with (identity when stats is None)."""
    return batch.replace(obs=normalize(stats, batch.obs), next_obs=normalize(stats, batch.next_obs))


@struct.dataclass
class EnvRunner:
    """The part of the training state that belongs to the environments."""

    env_state: Any
    obs: jax.Array


def init_runner(env: Any, env_params: Any, key: jax.Array) -> EnvRunner:
    obs, env_state = env.reset(key, env_params)
    return EnvRunner(env_state, obs)


def collect(
    env: Any,
    env_params: Any,
    policy: RolloutPolicy,
    runner: EnvRunner,
    key: jax.Array,
    num_steps: int,
) -> tuple[EnvRunner, Transition, EpisodeTotals]:
    """Step the vectorised env (`envs.make_vec_env`) `num_steps` times with `policy`.

    Step t uses the keys (policy, env) = split(split(key, num_steps)[t]). Everything random
    in the rollout is drawn from them before the scan, in batched calls: the env's
    randomness (`env.presample`, one `envs.PresampledStep` per step, taken by
    `env.step_presampled`) and the policy's (`policy.presample`). On XLA:CPU each random
    draw is a loop of its own (threefry's rounds run rolled), more ops than the rest of a
    CartPole step. The transitions are the ones per-step draws from those keys give (flags
    and actions bit for bit, floats to rounding; tests/test_rollout_speedups.py)."""
    step_keys = jax.vmap(jax.random.split)(jax.random.split(key, num_steps))  # [T, 2]
    policy_keys, env_keys = step_keys[:, 0], step_keys[:, 1]
    env_noise = env.presample(env_keys, env_params)
    policy_noise = policy.presample(policy_keys, runner.obs)

    def step(carry, noise):
        runner, totals = carry
        policy_noise, env_noise = noise
        action, log_prob = policy(runner.obs, policy_noise)
        obs, env_state, reward, terminated, truncated, info = env.step_presampled(
            env_noise, runner.env_state, action, env_params
        )
        done = info["episode_done"]
        # Per-env sums in the carry; the sum over envs happens once, after the scan.
        totals = EpisodeTotals(
            totals.return_sum + jnp.where(done, info["episode_return"], 0.0),
            totals.length_sum + jnp.where(done, info["episode_length"], 0).astype(jnp.float32),
            totals.count + done.astype(jnp.int32),
        )
        transition = Transition(
            obs=runner.obs,
            action=action,
            log_prob=log_prob,
            reward=reward.astype(jnp.float32),
            terminated=terminated,
            truncated=truncated,
            next_obs=info["final_observation"],
        )
        return (EnvRunner(env_state, obs), totals), transition

    per_env = jax.tree.map(lambda x: jnp.zeros(runner.obs.shape[:1], x.dtype), EpisodeTotals.zeros())
    (runner, totals), batch = lax.scan(step, (runner, per_env), (policy_noise, env_noise))
    return runner, batch, jax.tree.map(jnp.sum, totals)


# The two kinds of randomness a policy's step takes: `GumbelNoise` (a categorical policy
# presampled) or a key (any other policy, drawing inside its step).
PolicyNoise = Any


class RolloutPolicy(Protocol):
    """What `collect` steps with: `presample(keys [T], obs [N, ...])` draws the randomness
    of T steps ahead (leaves [T, ...]), and `policy(obs, noise[t]) -> (action, log_prob)`
    acts with step t's share. Each policy takes one kind of noise, fixed when it is built."""

    def presample(self, keys: jax.Array, obs: jax.Array) -> PolicyNoise: ...

    def __call__(self, obs: jax.Array, noise: PolicyNoise) -> tuple[jax.Array, jax.Array]: ...


class KeyedPolicy:
    """A policy function `fn(obs, key) -> (action, log_prob)` as a `RolloutPolicy`: its
    noise is the step's key, and it draws inside its step."""

    def __init__(self, fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]):
        self.fn = fn

    def presample(self, keys: jax.Array, obs: jax.Array) -> jax.Array:
        return keys

    def __call__(self, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.fn(obs, key)


@struct.dataclass
class GumbelNoise:
    """The randomness of one categorical draw, drawn ahead of time: for a key k and
    logits [..., A], `jax.random.categorical(k, logits)` is argmax(logits + gumbel(k, [..., A]))."""

    noise: jax.Array


def gumbel_noise(dist: distrax.Categorical, key: jax.Array) -> GumbelNoise:
    """The randomness `jax.random.categorical(key, dist.logits)` draws (its own formula)."""
    return GumbelNoise(jax.random.gumbel(key, dist.logits.shape, dist.logits.dtype))


def sample_categorical(dist: distrax.Categorical, noise: GumbelNoise) -> tuple[jax.Array, jax.Array]:
    """`dist.sample_and_log_prob(seed=key)` for the key `noise` was drawn from (`gumbel_noise`).

    distrax's categorical path validates the probabilities (a softmax), draws with an
    extra sample axis, and takes the log-probability through a one-hot product: about
    20 small ops per rollout step. The draw and log-probability here are the same numbers
    (distrax keeps its logits log-softmax-normalised; tests/test_rollout_speedups.py);
    only distrax's -1 for non-finite probabilities is not reproduced."""
    if type(dist) is not distrax.Categorical:
        raise ValueError(f"GumbelNoise is the randomness of a categorical policy, got {type(dist).__name__}")
    log_probs = dist.logits
    action = jnp.argmax(noise.noise + log_probs, axis=-1)  # jax.random.categorical's own formula
    return action, jnp.take_along_axis(log_probs, action[..., None], axis=-1)[..., 0]


class CategoricalPolicy:
    """A categorical `RolloutPolicy` whose noise is `GumbelNoise`, drawn for the whole
    rollout in one batched call (on XLA:CPU each draw is a loop of its own)."""

    def __init__(self, distribution: Callable[[jax.Array], distrax.Categorical]):
        self.distribution = distribution

    def presample(self, keys: jax.Array, obs: jax.Array) -> GumbelNoise:
        # Only the distribution's type and shape are used: XLA drops this forward pass.
        dist = self.distribution(obs)
        return jax.vmap(lambda key: gumbel_noise(dist, key))(keys)

    def __call__(self, obs: jax.Array, noise: GumbelNoise) -> tuple[jax.Array, jax.Array]:
        return sample_categorical(self.distribution(obs), noise)


def make_policy_sampler(network: nn.Module, params: Any, obs_stats: RunningStats | None = None) -> RolloutPolicy:
    """The actor of an `ActorCritic` on raw observations (normalised with the agent's own
    statistics) as a `RolloutPolicy`: `CategoricalPolicy` for a discrete network, a
    `KeyedPolicy` drawing with distrax for a continuous one."""

    def distribution(obs: jax.Array) -> distrax.Distribution:
        return network.apply(params, normalize(obs_stats, obs), method=ActorCritic.policy)

    if network.discrete:
        return CategoricalPolicy(distribution)
    return KeyedPolicy(lambda obs, key: distribution(obs).sample_and_log_prob(seed=key))


def make_value_fn(network: nn.Module, params: Any) -> Callable[[jax.Array], jax.Array]:
    """V(obs) of an `ActorCritic` for observations that are already normalised."""
    return lambda obs: network.apply(params, obs, method=ActorCritic.value)


def evaluate_values(
    value_fn: Callable[[jax.Array], jax.Array], batch: Transition, last_obs: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(V(s_t), V(s'_t)) [T, N] for a rollout whose envs ended at `last_obs` [N, ...].

    Without `last_obs` (a batch that is not one contiguous rollout), one critic call
    evaluates all 2·T·N rows of `obs` and `next_obs`.

    s'_t is s_{t+1} (the next row of the batch, or `last_obs` after the last step) unless
    the episode ended at step t; only there is it a different observation, the final one
    (`batch.next_obs`). So one critic call covers the (T+1)·N observations s_0..s_T, and
    the ended rows, a few percent of the batch, get their own critic call (in chunks of
    T·N/16 rows, as many chunks as needed), instead of evaluating all 2·T·N rows."""
    if last_obs is None:
        both = value_fn(jnp.concatenate([batch.obs, batch.next_obs], axis=0))
        return both[: batch.obs.shape[0]], both[batch.obs.shape[0] :]
    values = value_fn(jnp.concatenate([batch.obs, last_obs[None]], axis=0))
    horizon, num_envs = values.shape[0] - 1, values.shape[1]
    size = horizon * num_envs
    chunk = max(1, size // 16)
    num_chunks = -(-size // chunk)
    ended = jnp.logical_or(batch.terminated, batch.truncated).reshape(size)
    # Flat indices of the ended rows first, then `size` (out of bounds: gathers clip, writes drop).
    (ended_rows,) = jnp.nonzero(ended, size=num_chunks * chunk, fill_value=size)
    final_obs = batch.next_obs.reshape((size,) + batch.next_obs.shape[2:])

    def evaluate_chunk(carry):
        index, next_values = carry
        rows = lax.dynamic_slice_in_dim(ended_rows, index * chunk, chunk)
        chunk_values = value_fn(jnp.take(final_obs, rows, axis=0, mode="clip"))
        return index + 1, next_values.at[rows].set(chunk_values, mode="drop")

    num_ended = jnp.sum(ended, dtype=jnp.int32)
    _, next_values = lax.while_loop(
        lambda carry: carry[0] * chunk < num_ended, evaluate_chunk, (jnp.int32(0), values[1:].reshape(size))
    )
    return values[:horizon], next_values.reshape(horizon, num_envs)


def first_episode_mask(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """[T, N] float: 1.0 for the steps of each env's first episode (up to and including
    the step that ends it), 0.0 afterwards."""
    done = jnp.logical_or(terminated, truncated).astype(jnp.int32)
    ended_before = jnp.cumsum(done, axis=0) - done
    return (ended_before == 0).astype(jnp.float32)


def collect_first_episodes(
    env: Any, env_params: Any, policy: RolloutPolicy, key: jax.Array, num_steps: int
) -> tuple[Transition, jax.Array, EpisodeTotals]:
    """Episodic collection: reset every env (with `env`'s own reset, grouped or not),
    step `num_steps` times, and keep only each env's FIRST episode. Returns (batch
    [T, N], first-episode mask [T, N], totals over those N episodes).

    `num_steps` is the horizon: an episode still running then is cut there, and the
    totals count it, so the reported return is "return within num_steps steps"."""
    reset_key, rollout_key = jax.random.split(key)
    _, batch, _ = collect(
        env, env_params, policy, init_runner(env, env_params, reset_key), rollout_key, num_steps
    )
    mask = first_episode_mask(batch.terminated, batch.truncated)
    totals = EpisodeTotals(
        return_sum=jnp.sum(batch.reward * mask),
        length_sum=jnp.sum(mask),
        count=jnp.int32(mask.shape[1]),
    )
    return batch, mask, totals


def flatten_time(tree: Any) -> Any:
    """[T, N, ...] -> [T * N, ...] for minibatching."""
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)
