"""Structured configs (Hydra ConfigStore) derived from each algorithm's dataclasses.

For every algorithm in `purerl.algos.ALGORITHMS` this registers:

- `schema/algo/<name>`: a typed node `{name, config: <Config fields>, hyper: <Hyper fields>}`
  that `conf/algo/<name>.yaml` extends (`defaults: [/schema/algo/<name>@_here_, _self_]`).
  It lives outside the `algo` group so that only real algorithms are choices of `algo=`;
- `algo/<name>` itself, when there is no `conf/algo/<name>.yaml`, so that a newly
  registered algorithm works with `algo=<name>` without any YAML.

The root schema `train_schema` types the top-level keys; its `grid` node has one
optional list per field of any algorithm, so a misspelt grid key fails at composition.
Types come from the dataclass annotations, so `algo.hyper.clip_eps=abc` or
`algo.config.num_envs=4.5` fail at composition naming the key; value ranges and the
algorithm's own cross-field checks run in `purerl.cli.train.build_plan`, before JAX.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from purerl.algos import ALGORITHMS, get_algorithm

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_GROUP = "schema/algo"  # not `algo`: a schema must not be selectable as an algorithm


class GridMode(enum.Enum):
    product = "product"  # Cartesian product of the grid axes
    zip = "zip"  # element-wise (equal lengths)


@dataclasses.dataclass
class CompileCacheConf:
    enabled: bool = True
    # Default set in conf/config.yaml: $PURERL_COMPILE_CACHE or ~/.cache/purerl/jax.
    dir: str = "~/.cache/purerl/jax"


@dataclasses.dataclass
class CheckpointConf:
    # null: on for jobs of at least purerl.cli.train.AUTO_CHECKPOINT_UPDATES updates
    enabled: Optional[bool] = None  # noqa: UP045
    every_minutes: Optional[float] = 10.0  # noqa: UP045
    every_updates: Optional[int] = None  # noqa: UP045
    segment_updates: Optional[int] = None  # noqa: UP045  (null: num_updates / 100)


_SCALARS = (int, float, bool, str)


def _field_type(hint: Any, default: Any) -> Any:
    """An OmegaConf-compatible annotation for a dataclass field's type hint."""
    if hint in _SCALARS:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
        return list[args[0]]
    if origin is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _field_type(rest[0], None)
            return Optional[inner] if inner is not Any else Any  # noqa: UP045 (OmegaConf needs typing.Optional)
    return Any


def _field_default(name: str, default: Any) -> Any:
    if isinstance(default, tuple):
        if default == () and name.endswith("kwargs"):
            return dataclasses.field(default_factory=dict)
        if all(isinstance(d, tuple) and len(d) == 2 for d in default):  # frozen dict
            return dataclasses.field(default_factory=lambda d=default: dict(d))
        return dataclasses.field(default_factory=lambda d=default: list(d))
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d))
    return dataclasses.field(default=default)


def _schema(cls: type, name: str, *, hyper: bool) -> type:
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else MISSING)
        )
        hint = hints.get(f.name, Any)
        kind = (hint if hint in (int, float) else float) if hyper else _field_type(hint, default)
        fields.append((f.name, kind, _field_default(f.name, default)))
    return dataclasses.make_dataclass(name, fields)


def algo_schema(name: str) -> type:
    """The typed `algo` node for a registered algorithm."""
    module = get_algorithm(name)
    config_schema = _schema(module.Config, f"{name}_config", hyper=False)
    hyper_schema = _schema(module.Hyper, f"{name}_hyper", hyper=True)
    return dataclasses.make_dataclass(
        f"{name}_algo",
        [
            ("name", str, dataclasses.field(default=name)),
            ("config", config_schema, dataclasses.field(default_factory=config_schema)),
            ("hyper", hyper_schema, dataclasses.field(default_factory=hyper_schema)),
        ],
    )


def grid_schema(names: list[str]) -> type:
    """One optional list per field of any algorithm (checked per algorithm later)."""
    hyper_fields: dict[str, None] = {}
    static_fields: dict[str, None] = {}
    for name in names:
        module = get_algorithm(name)
        hyper_fields.update(dict.fromkeys(f.name for f in dataclasses.fields(module.Hyper)))
        static_fields.update(dict.fromkeys(f.name for f in dataclasses.fields(module.Config)))
    fields = []
    for field in hyper_fields:
        fields.append((field, Optional[list[float]], dataclasses.field(default=None)))  # noqa: UP045
    for field in static_fields:
        if field not in hyper_fields:  # accepted here so that build_plan can explain
            fields.append((field, Optional[Any], dataclasses.field(default=None)))  # noqa: UP045
    return dataclasses.make_dataclass("grid", fields)


def train_schema(names: list[str]) -> type:
    grid = grid_schema(names)
    return dataclasses.make_dataclass(
        "train",
        [
            ("name", str, dataclasses.field(default="default")),
            ("algo", Any, dataclasses.field(default=MISSING)),
            ("seeds", int, dataclasses.field(default=8)),
            ("first_seed", int, dataclasses.field(default=0)),
            ("grid", grid, dataclasses.field(default_factory=grid)),
            ("grid_mode", GridMode, dataclasses.field(default=GridMode.product)),
            ("max_batch", Optional[int], dataclasses.field(default=None)),  # noqa: UP045
            ("force", bool, dataclasses.field(default=False)),
            # auto | true | false (checked in purerl.cli.train.progress_wanted)
            ("progress", Any, dataclasses.field(default="auto")),
            ("print_table", bool, dataclasses.field(default=True)),
            ("tensorboard", bool, dataclasses.field(default=False)),
            ("save_policies", bool, dataclasses.field(default=True)),
            ("compile_cache", CompileCacheConf, dataclasses.field(default_factory=CompileCacheConf)),
            ("checkpoint", CheckpointConf, dataclasses.field(default_factory=CheckpointConf)),
        ],
    )


_registered: set[str] = set()


def register(conf_dir: Path = CONF_DIR) -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; call before composing)."""
    names = sorted(ALGORITHMS)
    key = ",".join(names)
    if key in _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=train_schema(names))
    for name in names:
        schema = algo_schema(name)
        cs.store(group=SCHEMA_GROUP, name=name, node=schema)
        if not (conf_dir / "algo" / f"{name}.yaml").exists():
            cs.store(group="algo", name=name, node=schema)
    _registered.add(key)
