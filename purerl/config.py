"""The static/traced split every algorithm follows, and its validation.

- A `Config` is a frozen (hashable) dataclass of everything that changes shapes or
  program structure: env, sizes, counts, booleans. It is validated on construction,
  so bad input fails before anything compiles.
- A `Hyper` is a `flax.struct` dataclass of scalars: traced, vmappable, sweepable.
  Each field declares its allowed interval with `hyper_field`; `validate_hyper`
  checks concrete values (scalars or whole sweep batches) against it. Values that are
  tracers (inside `jit`) are skipped: `purerl.sweep.run` validates before tracing.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np
from flax import struct

from purerl import envs
from purerl.nets import check_activation

_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


def hyper_field(default: float, interval: str, doc: str = "") -> Any:
    """A traced hyperparameter with its allowed interval, e.g. "[0, 1]" or "(0, inf)"."""
    if not _INTERVAL.match(interval):
        raise ValueError(f"bad interval spec {interval!r}")
    return struct.field(
        pytree_node=True, default=default, metadata={"interval": interval, "doc": doc}
    )


def _in_interval(values: np.ndarray, interval: str) -> np.ndarray:
    left, low, high, right = _INTERVAL.match(interval).groups()
    low, high = float(low), float(high)
    above = values >= low if left == "[" else values > low
    below = values <= high if right == "]" else values < high
    return above & below & ~np.isnan(values)


def validate_hyper(hyper: Any) -> None:
    """Raise ValueError naming the field, the bad value and the allowed interval."""
    for field in dataclasses.fields(hyper):
        interval = field.metadata.get("interval")
        value = getattr(hyper, field.name)
        if interval is None or isinstance(value, jax.core.Tracer):
            continue
        values = np.asarray(value, dtype=np.float64)
        ok = _in_interval(values, interval)
        if not np.all(ok):
            bad = values[~ok] if values.ndim else values
            shown = [f"{v:.6g}" for v in np.unique(bad.ravel())[:5]]
            got = shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"
            raise ValueError(f"{type(hyper).__name__}.{field.name}: got {got}; allowed: {interval}")


def hyper_names(hyper_cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(hyper_cls))


def check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}.{name}: got {value!r}; allowed: a positive integer")


def check_choice(owner: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}: got {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _freeze(value: Any) -> Any:
    """Make dicts/lists hashable so a Config can be a static jit argument."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
    """Static settings shared by the on-policy actor-critic algorithms."""

    env: str = "CartPole-v1"
    env_kwargs: tuple = ()
    num_envs: int = 4
    num_steps: int = 128
    total_timesteps: int = 500_000
    actor_hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    # "auto" picks categorical for Discrete and Gaussian for Box action spaces.
    distribution: str = "auto"
    normalize_obs: bool = False
    action_transform: str = "clip"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("env_kwargs", "actor_hidden", "critic_hidden"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        if isinstance(self.total_timesteps, float) and self.total_timesteps.is_integer():
            object.__setattr__(self, "total_timesteps", int(self.total_timesteps))
        for name in ("num_envs", "num_steps", "total_timesteps"):
            check_positive_int(owner, name, getattr(self, name))
        for name in ("actor_hidden", "critic_hidden"):
            sizes = getattr(self, name)
            if not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
                raise ValueError(
                    f"{owner}.{name}: got {sizes!r}; allowed: a tuple of positive integers"
                )
        check_activation(self.activation, f"{owner}.activation")
        check_choice(owner, "distribution", self.distribution, ("auto", "categorical", "gaussian"))
        check_choice(owner, "action_transform", self.action_transform, ("clip", "rescale"))
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"{owner}.total_timesteps: got {self.total_timesteps}; allowed: at least "
                f"num_envs * num_steps = {self.batch_size} (one update)"
            )
        env, env_params = envs.make_env(self.env, **dict(self.env_kwargs))
        discrete = envs.is_discrete(env, env_params)
        if self.distribution == "categorical" and not discrete:
            raise ValueError(
                f"{owner}.distribution: 'categorical' needs a discrete action space, but "
                f"{self.env} has {env.action_space(env_params)}; allowed here: 'auto', 'gaussian'"
            )
        if self.distribution == "gaussian" and discrete:
            raise ValueError(
                f"{owner}.distribution: 'gaussian' needs a continuous (Box) action space, but "
                f"{self.env} has {env.action_space(env_params)}; allowed here: 'auto', 'categorical'"
            )

    @property
    def batch_size(self) -> int:
        """Transitions collected per update."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size
