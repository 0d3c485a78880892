"""The static/traced split every algorithm follows, and one validation vocabulary.

- A `Config` is a frozen (hashable) dataclass of everything that changes shapes or
  program structure: env, sizes, counts, booleans. It is validated on construction,
  so bad input fails before anything compiles. Configs are assembled from parts:
  `EnvConfig` (which env, how many copies, observation/action handling) and
  `NetworkConfig` (MLP sizes, activation, policy distribution) are shared by every
  agent; `OnPolicyConfig` adds the rollout (steps per update, total budget).
- A `Hyper` is a `flax.struct` dataclass of scalars: traced, vmappable, sweepable.
  Each field declares its allowed interval with `hyper_field`. Hypers subclass
  `ValidatedHyper`, so concrete values are checked where they enter: on construction
  (and `.replace`), and again by `purerl.sweep.run`. Inside `train` the values may be
  tracers (a user's own `jax.jit`, or a Hyper built from traced values); the contract
  there is explicit: a run whose traced hyperparameters leave their intervals reports
  NaN for every float metric and `hyper_ok = 0` (see `purerl.rl.loop`).

Every error names the owner and field, the bad value and what is allowed:
"Config.num_envs: got 0; allowed: a positive integer".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purerl import envs
from purerl.nets import check_activation

_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


# ---------------------------------------------------------------- checks (one vocabulary)
def check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}.{name}: got {value!r}; allowed: a positive integer")


def check_choice(owner: str, name: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}: got {value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_positive_int_tuple(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in value
    ):
        raise ValueError(f"{owner}.{name}: got {value!r}; allowed: a tuple of positive integers")


def check_divides(owner: str, name: str, value: int, total: int, total_name: str) -> None:
    """`value` must divide `total` (e.g. minibatches into the batch)."""
    if total % value:
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
        raise ValueError(
            f"{owner}.{name}: {value} does not divide {total_name} = {total}; "
            f"allowed: a divisor of {total} ({shown})"
        )


def check_minibatches(
    owner: str, name: str, num_minibatches: Any, batch_size: int, batch_name: str = "num_envs * num_steps"
) -> None:
    """A positive number of minibatches that splits the batch (`batch_name` = `batch_size`) evenly."""
    check_positive_int(owner, name, num_minibatches)
    check_divides(owner, name, num_minibatches, batch_size, batch_name)


# ---------------------------------------------------------------- traced hyperparameters
def hyper_field(default: float, interval: str, doc: str = "") -> Any:
    """A traced hyperparameter with its allowed interval, e.g. "[0, 1]" or "(0, inf)"."""
    if not _INTERVAL.match(interval):
        raise ValueError(f"bad interval spec {interval!r}")
    return struct.field(pytree_node=True, default=default, metadata={"interval": interval, "doc": doc})


def _bounds(interval: str) -> tuple[str, float, float, str]:
    left, low, high, right = _INTERVAL.match(interval).groups()
    return left, float(low), float(high), right


def _in_interval(values: Any, interval: str, xp: Any = np) -> Any:
    left, low, high, right = _bounds(interval)
    above = values >= low if left == "[" else values > low
    below = values <= high if right == "]" else values < high
    return above & below & ~xp.isnan(values)


def _concrete_numbers(owner: str, name: str, value: Any, interval: str) -> np.ndarray | None:
    """The value as a float64 array if it is a concrete number (or array of numbers);
    None for what is not a hyperparameter value at all: tracers, and the placeholders
    JAX puts in pytree slots (None, shape structs, axis specs as bools)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, str):
        raise ValueError(f"{owner}.{name}: got {value!r} (a string); allowed: a number in {interval}")
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return np.asarray(value, np.float64)
    if isinstance(value, (np.ndarray, jax.Array)):
        if value.dtype == bool or not np.issubdtype(value.dtype, np.number):
            return None
        return np.asarray(value, dtype=np.float64)
    return None


def validate_hyper(hyper: Any) -> None:
    """Raise ValueError naming the field, the bad value(s) and the allowed interval.
    Checks every concrete value (scalars or whole sweep batches); skips tracers."""
    owner = type(hyper).__name__
    for field in dataclasses.fields(hyper):
        interval = field.metadata.get("interval")
        if interval is None:
            continue
        values = _concrete_numbers(owner, field.name, getattr(hyper, field.name), interval)
        if values is None:
            continue
        ok = _in_interval(values, interval)
        if not np.all(ok):
            bad = values[~ok] if values.ndim else values
            shown = [f"{v:.6g}" for v in np.unique(np.ravel(bad))[:5]]
            got = shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"
            raise ValueError(f"{owner}.{field.name}: got {got}; allowed: {interval}")


def traced_hyper_ok(hyper: Any) -> jax.Array:
    """In-graph check of the same intervals: a scalar bool (per run under vmap)."""
    ok = jnp.bool_(True)
    for field in dataclasses.fields(hyper):
        interval = field.metadata.get("interval")
        if interval is not None:
            value = jnp.asarray(getattr(hyper, field.name), jnp.float32)
            ok = ok & jnp.all(_in_interval(value, interval, jnp))
    return ok


class ValidatedHyper:
    """Base of every `Hyper`: concrete values are validated on construction."""

    def __post_init__(self) -> None:
        validate_hyper(self)




# ---------------------------------------------------------------- static configuration parts
def _freeze(value: Any) -> Any:
    """Make dicts/lists hashable so a Config can be a static jit argument."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class _ConfigPart:
    """Cooperative `__post_init__`: each part validates its own fields, then the next."""

    def __post_init__(self) -> None:
        pass

    @property
    def _owner(self) -> str:
        return type(self).__name__


@dataclasses.dataclass(frozen=True)
class EnvConfig(_ConfigPart):
    """Which environment, how many copies, and how observations/actions are handled."""

    env: str = "CartPole-v1"
    env_kwargs: tuple = ()
    num_envs: int = 4
    # Running mean/variance normalisation; the statistics live in the agent's TrainState.
    normalize_obs: bool = False
    action_transform: str = "clip"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "env_kwargs", _freeze(self.env_kwargs))
        check_positive_int(self._owner, "num_envs", self.num_envs)
        check_choice(self._owner, "action_transform", self.action_transform, ("clip", "rescale"))
        envs.make_env(self.env, **dict(self.env_kwargs))  # unknown names fail here

    def make_env(self) -> tuple[Any, Any]:
        """The unwrapped gymnax env and its parameters."""
        return envs.make_env(self.env, **dict(self.env_kwargs))

    @property
    def discrete_actions(self) -> bool:
        return envs.is_discrete(*self.make_env())


@dataclasses.dataclass(frozen=True)
class NetworkConfig(_ConfigPart):
    """MLP sizes and the policy distribution ("auto": categorical for Discrete, Gaussian for Box)."""

    actor_hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    distribution: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("actor_hidden", "critic_hidden"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
            check_positive_int_tuple(self._owner, name, getattr(self, name))
        check_activation(self.activation, f"{self._owner}.activation")
        check_choice(self._owner, "distribution", self.distribution, ("auto", "categorical", "gaussian"))
        env = getattr(self, "env", None)
        if env is not None and self.distribution != "auto":
            discrete = self.discrete_actions
            wanted = "categorical" if discrete else "gaussian"
            if self.distribution != wanted:
                kind = "a discrete" if self.distribution == "categorical" else "a continuous (Box)"
                space = self.make_env()[0].action_space(self.make_env()[1])
                raise ValueError(
                    f"{self._owner}.distribution: {self.distribution!r} needs {kind} action space, but "
                    f"{env} has {space}; allowed here: 'auto', {wanted!r}"
                )


def _integral(value: Any) -> Any:
    """1e6 from YAML/CLI arrives as a float: accept it when it is a whole number."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig(NetworkConfig, EnvConfig):
    """Static settings shared by the on-policy actor-critic algorithms."""

    num_steps: int = 128
    total_timesteps: int = 500_000
    # Periodic greedy evaluation (purerl.rl.evaluation): after every eval_every-th update,
    # eval_episodes separate deterministic episodes -> metric eval_return. 0 = off.
    eval_every: int = 0
    eval_episodes: int = 10
    # What one update does to J (purerl.rl.evaluation.with_update_evaluation): on every
    # update_eval_every-th update, eval_episodes episodes (sampled actions) of the policy before
    # and after it on the same episodes, and before again on independent ones -> metrics
    # eval_before, eval_after, eval_before_repeat. 0 = off.
    update_eval_every: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_timesteps", _integral(self.total_timesteps))
        super().__post_init__()
        check_positive_int(self._owner, "num_steps", self.num_steps)
        check_positive_int(self._owner, "total_timesteps", self.total_timesteps)
        for name in ("eval_every", "update_eval_every"):
            every = getattr(self, name)
            if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
                raise ValueError(
                    f"{self._owner}.{name}: got {every!r}; allowed: a non-negative integer "
                    "(updates between evaluations; 0 = no evaluation)"
                )
        check_positive_int(self._owner, "eval_episodes", self.eval_episodes)
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"{self._owner}.total_timesteps: got {self.total_timesteps}; allowed: at least "
                f"num_envs * num_steps = {self.batch_size} (one update)"
            )

    @property
    def batch_size(self) -> int:
        """Transitions collected per update."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size
