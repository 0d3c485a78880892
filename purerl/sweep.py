"""Hyperparameter grids -> one batched, chunked, sharded `jit(vmap(train))`.

Every field of an algorithm's `Hyper` is data, so S settings × K seeds are a batch of
B = S·K independent runs of the same compiled program:

    sweep = grid(ppo.Hyper(), clip_eps=[0.1, 0.2, 0.3])
    result = run(ppo.make_train(ppo.Config()), sweep, seeds=8)
    result.metrics["episode_return"].shape  # [setting, seed, update]

Run (s, k) uses key `PRNGKey(seeds[k])` and setting s, so it equals
`train(PRNGKey(seeds[k]), setting_s)` trained alone. `max_batch` bounds memory by
splitting B into equal chunks (padded) that reuse one compiled executable; with several
visible devices each chunk is sharded over all of them along the batch axis.

Under `jax.distributed` (several processes, e.g. one per node or GPU; see
`purerl.distributed`), one sweep spans every device of every process: each process puts
only its own devices' share of the runs, every chunk is one global array, and every
process gets the full `[setting, seed, update]` metrics back. The caller writes results
once (e.g. on `jax.process_index() == 0`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purerl import provenance
from purerl.config import validate_hyper
from purerl.programs import BoundedCache
from purerl.rl.loop import host_metrics

log = logging.getLogger("purerl.sweep")


# ---------------------------------------------------------------- building batches
@dataclasses.dataclass(frozen=True)
class Sweep:
    """A batch of S settings: `hypers` has leading axis S; `settings[s]` names the swept values."""

    hypers: Any
    settings: tuple[dict[str, float], ...]

    def __len__(self) -> int:
        return len(self.settings)


def _check_axes(base: Any, axes: dict[str, Any]) -> None:
    names = [f.name for f in dataclasses.fields(base)]
    for name, values in axes.items():
        if name not in names:
            raise ValueError(
                f"sweep axis {name!r} is not a field of {type(base).__name__}; "
                f"allowed: {', '.join(names)}"
            )
        if np.ndim(values) != 1 or len(values) == 0:
            raise ValueError(f"sweep axis {name!r}: expected a non-empty list of values")


def from_settings(base: Any, settings: Sequence[dict[str, float]]) -> Sweep:
    """Stack `base.replace(**setting)` for every setting into one batched Hyper."""
    settings = tuple(dict(s) for s in settings)
    if not settings:
        raise ValueError("a sweep needs at least one setting")
    _check_axes(base, {k: [v] for s in settings for k, v in s.items()})
    columns = {}
    for f in dataclasses.fields(base):
        values = [s.get(f.name, getattr(base, f.name)) for s in settings]
        try:
            columns[f.name] = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(v for v in values if not isinstance(v, (int, float, np.number)))
            interval = f.metadata.get("interval", "")
            raise ValueError(
                f"{type(base).__name__}.{f.name}: got {bad!r}; allowed: a number in {interval}"
            ) from None
    hypers = base.replace(**{k: jnp.asarray(v) for k, v in columns.items()})
    validate_hyper(hypers)
    return Sweep(hypers, settings)


def grid(base: Any, **axes: Sequence[float]) -> Sweep:
    """Cartesian product of the axes (the last axis varies fastest)."""
    _check_axes(base, axes)
    names = list(axes)
    combos = itertools.product(*(list(axes[n]) for n in names))
    return from_settings(base, [dict(zip(names, map(float, c))) for c in combos])


def zipped(base: Any, **axes: Sequence[float]) -> Sweep:
    """Settings taken element-wise from equally long lists."""
    _check_axes(base, axes)
    lengths = {n: len(v) for n, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped sweep axes must have equal lengths, got {lengths}")
    names = list(axes)
    return from_settings(
        base, [dict(zip(names, map(float, c))) for c in zip(*(axes[n] for n in names))]
    )


@dataclasses.dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


@dataclasses.dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.exp(rng.uniform(np.log(self.low), np.log(self.high), n))


@dataclasses.dataclass(frozen=True)
class Choice:
    values: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values, dtype=np.float64), n)


def random_search(base: Any, num_settings: int, seed: int = 0, **distributions: Any) -> Sweep:
    """`num_settings` independent draws from per-field distributions (Uniform, LogUniform, Choice)."""
    _check_axes(base, {n: [0.0] for n in distributions})
    rng = np.random.default_rng(seed)
    draws = {n: d.sample(rng, num_settings) for n, d in distributions.items()}
    return from_settings(
        base, [{n: float(draws[n][i]) for n in draws} for i in range(num_settings)]
    )


# ---------------------------------------------------------------- running batches
@dataclasses.dataclass
class SweepResult:
    """Per-update metrics of every run, as host arrays shaped [setting, seed, update]."""

    metrics: dict[str, np.ndarray]
    settings: tuple[dict[str, float], ...]
    seeds: np.ndarray
    hypers: Any
    final_state: Any | None
    compile_seconds: float
    run_seconds: float

    def final(self, metric: str = "episode_return", last: int = 10) -> np.ndarray:
        """[setting, seed]: mean of `metric` over the last `last` updates (NaN-aware,
        since updates in which no episode finished report NaN returns)."""
        values = self.metrics[metric][..., -last:]
        with np.errstate(all="ignore"):
            return np.nanmean(values, axis=-1)

    def table(self, metric: str = "episode_return", last: int = 10):
        """pandas DataFrame: one row per setting with mean/std/min/max over seeds
        (printing it shows every column)."""

        finals = self.final(metric, last)
        rows = []
        for s, setting in enumerate(self.settings):
            rows.append(
                {
                    **setting,
                    "seeds": finals.shape[1],
                    f"{metric}_mean": float(np.mean(finals[s])),
                    f"{metric}_std": float(np.std(finals[s])),
                    f"{metric}_min": float(np.min(finals[s])),
                    f"{metric}_max": float(np.max(finals[s])),
                }
            )
        return _table_class()(rows)


@functools.cache
def _table_class():
    import pandas as pd

    class Table(pd.DataFrame):
        """A DataFrame whose printed form never elides columns."""

        @property
        def _constructor(self):
            return Table

        def __repr__(self) -> str:
            return self.to_string()

    return Table


class UpdateProgress:
    """A tqdm bar over training updates: `make_train(config, on_update=UpdateProgress(n))`.

    `on_update` runs on the host through `jax.debug.callback`; its argument (the update
    index) is not batched, so under `vmap` it fires once per update for the whole batch,
    and once per update per chunk in `run`. Pass total = num_updates × number of chunks.

    The clock starts at the first update's callback, so compilation stays out of the rate
    and the ETA. The metric `watch[0]` (default: the episode return) of every run arrives
    with each update (`purerl.rl.loop.host_report`); the bar shows its mean over the runs
    that finished an episode in the latest update that had any. `**bar` goes to tqdm
    (e.g. `file=`, `disable=`).
    """

    def __init__(self, total: int, desc: str = "updates", watch: Sequence[str] = ("episode_return",), **bar: Any):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="update", **bar)
        self.watch = tuple(watch)
        self.calls = 0
        self.latest: dict[str, float] = {}

    def __call__(self, update_index: Any, values: dict[str, Any] | None = None) -> None:
        if self.calls == 0:
            # Restart the clock now: the time so far was compilation (and the first update).
            self.bar.reset()
            self.bar.initial = self.bar.n = self.bar.last_print_n = 1
            self.bar.refresh()
        else:
            self.bar.update(1)
        self.calls += 1
        for name, value in (values or {}).items():
            value = np.asarray(value, dtype=np.float64)
            finite = value[np.isfinite(value)]
            if finite.size:  # NaN: no run finished an episode in this update
                self.latest[name] = float(finite.mean())
        if self.latest:
            self.bar.set_postfix({_short(k): f"{v:.4g}" for k, v in self.latest.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _short(metric: str) -> str:
    return "return" if metric == "episode_return" else metric


def _seed_array(seeds: int | Sequence[int]) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds <= 0:
            raise ValueError(f"seeds: got {seeds}; allowed: a positive count or a list of distinct ints")
        return np.arange(seeds)
    array = np.asarray(seeds)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"seeds: got {seeds!r}; allowed: a positive count or a non-empty list of distinct ints")
    values, counts = np.unique(array, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"seeds: got duplicates {values[counts > 1].tolist()}; allowed: distinct integers "
            "(a repeated seed trains an identical run and would count twice)"
        )
    return array


def chunk_size(num_runs: int, max_batch: int | None, num_devices: int) -> int:
    """Runs per compiled call in `run`: as large as `max_batch` allows, a multiple of the
    device count (chunks are padded to it)."""
    chunk = min(max_batch or num_runs, num_runs)
    return max(num_devices, math.ceil(chunk / num_devices) * num_devices)


def chunk_count(num_runs: int, max_batch: int | None, num_devices: int) -> int:
    """How many compiled calls `run` splits `num_runs` runs into. A per-update progress
    bar over a chunked sweep: `make_train(config, on_update=UpdateProgress(num_updates *
    chunk_count(runs, max_batch, jax.local_device_count())))`."""
    return math.ceil(num_runs / chunk_size(num_runs, max_batch, num_devices))


def run(
    train: Callable[[jax.Array, Any], tuple[Any, dict[str, jax.Array]]],
    sweep: Sweep | Any,
    seeds: int | Sequence[int] = 1,
    *,
    max_batch: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    return_state: bool = False,
    export_cache: str | os.PathLike | None = None,
    program_key: str | None = None,
    checkpoint: Any | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Train every setting × seed in one compiled `jit(vmap(train))`.

    `sweep` is a `Sweep` or a single (unbatched) Hyper. `max_batch` caps the number of
    runs per call (memory); chunks are padded to equal size so one executable serves all.
    `devices` defaults to all local devices (at most one per run); the batch axis is sharded
    over them. Under `jax.distributed` with several processes, every process calls `run`
    with the same arguments; `devices` then defaults to every device of every process (the
    batch is padded to a multiple of their count) and each process receives all results
    (the exported-program cache is not used then).

    On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=<cores>` (set before JAX
    starts) makes each core a device, so a many-seed sweep runs one shard per core, about
    twice the env-steps/s of the default single CPU device at 8-32 seeds on 2 cores
    (docs/ppo_speed.md). purerl-train and the experiment scripts set it by default; the
    library never does.

    `program_key` names the program `train` compiles to (algorithm, Config and any
    `on_update` callback): runs with the same key and batch shapes reuse one executable
    within the process (without it, the `train` object itself is the key).
    `export_cache` + `program_key` skip re-tracing an identical program in a later process:
    the lowered program is stored with `jax.export`, keyed by `program_key` (what `train`
    is, e.g. algorithm + Config) plus purerl's source hash, the versions of jax, jaxlib,
    gymnax, flax, optax and distrax (purerl.provenance), the devices and the batch shapes.
    With JAX's persistent compilation cache also on, a warm job then only deserialises and
    fetches the executable.

    `checkpoint` (a `purerl.checkpoint.Checkpointing`) trains each chunk in segments,
    saving checkpoints and resuming from the latest one of the same job; the numbers are
    those of the run without it (purerl.checkpoint). The program caches are not used then.

    `compiler_options` are XLA options for this sweep's programs (`jax.stages.Lowered.compile`);
    they take precedence over `XLA_FLAGS`. E.g. `{"xla_backend_optimization_level": 1}`: on a
    CPU, the learning tests' training programs compile faster than at XLA's default level and
    run about as fast (docs/benchmarks.md).
    """
    if not isinstance(sweep, Sweep):
        sweep = from_settings(sweep, [{}])
    validate_hyper(sweep.hypers)
    seed_values = _seed_array(seeds)
    num_settings, num_seeds = len(sweep), len(seed_values)
    total = num_settings * num_seeds
    # By default, no more devices than runs: padding a 1-run sweep to two CPU devices
    # would train a discarded copy on the second core.
    devices = list(devices) if devices is not None else _default_devices(total)
    if max_batch is not None and max_batch <= 0:
        raise ValueError(f"max_batch: got {max_batch}; allowed: a positive integer or None")

    chunk = chunk_size(total, max_batch, len(devices))
    num_chunks = math.ceil(total / chunk)
    padded = num_chunks * chunk

    # Flat run index r = s * K + k; padding repeats the last run and is dropped afterwards.
    run_setting = np.minimum(np.arange(padded) // num_seeds, num_settings - 1)
    run_seed = seed_values[np.minimum(np.arange(padded), total - 1) % num_seeds]
    # Hypers travel as a list of leaves, rebuilt inside the program: building a Hyper
    # validates concrete values, which a process cannot read from a global array.
    hyper_leaves, hyper_tree = jax.tree.flatten(sweep.hypers)
    flat_hypers = [np.asarray(x)[run_setting] for x in hyper_leaves]
    flat_keys = np.asarray(jax.vmap(jax.random.PRNGKey)(jnp.asarray(run_seed)))

    mesh = Mesh(np.asarray(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    def chunk_inputs(c: int):
        part = slice(c * chunk, (c + 1) * chunk)
        inputs = (flat_keys[part], [x[part] for x in flat_hypers])
        return _to_global(inputs, sharding)

    def batched(keys, hypers):
        state, metrics = jax.vmap(train)(keys, jax.tree.unflatten(hyper_tree, hypers))
        return (state if return_state else None), metrics

    options = dict(compiler_options or {})
    if checkpoint is not None:
        outputs, compile_seconds, run_seconds = _run_checkpointed(
            _on_hyper_leaves(train, hyper_tree), chunk_inputs, num_chunks, return_state, checkpoint, seed_values,
            sweep, chunk, total, options)
        return _result(outputs, sweep, seed_values, total, return_state, compile_seconds, run_seconds)

    start = time.perf_counter()
    example = chunk_inputs(0)
    signature = (
        program_key if program_key is not None else train,
        return_state,
        tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(example)),
        tuple(devices),
        tuple(sorted(options.items())),
    )
    compiled = _EXECUTABLES.get(signature)
    if compiled is None:
        if export_cache is not None and program_key is not None and jax.process_count() == 1:
            compiled = _compile_via_export_cache(batched, example, Path(export_cache), program_key, return_state,
                                                 options)
        if compiled is None:
            compiled = jax.jit(batched).lower(*example).compile(compiler_options=options)
        _EXECUTABLES.remember(signature, compiled)
    compile_seconds = time.perf_counter() - start

    chunks = range(num_chunks)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"sweep ({total} runs, {num_chunks} chunks)", unit="chunk")
    start = time.perf_counter()
    # Dispatch every chunk before fetching any: the device never waits for the host.
    pending = [compiled(*chunk_inputs(c)) for c in chunks]
    outputs = [_to_host(o) for o in pending]
    run_seconds = time.perf_counter() - start

    return _result(outputs, sweep, seed_values, total, return_state, compile_seconds, run_seconds)


def _result(outputs: list, sweep: Sweep, seed_values: np.ndarray, total: int, return_state: bool,
            compile_seconds: float, run_seconds: float) -> SweepResult:
    """The chunks' host outputs (state or None, metrics) as one SweepResult [setting, seed, ...]."""
    num_settings, num_seeds = len(sweep), len(seed_values)

    def gather(*parts):
        flat = np.concatenate(parts, axis=0)[:total]
        return flat.reshape((num_settings, num_seeds) + flat.shape[1:])

    states = [o[0] for o in outputs]
    metrics = host_metrics(jax.tree.map(gather, *[o[1] for o in outputs]))
    final_state = jax.tree.map(gather, *states) if return_state else None
    return SweepResult(
        metrics=metrics,
        settings=sweep.settings,
        seeds=seed_values,
        hypers=sweep.hypers,
        final_state=final_state,
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
    )


# ---------------------------------------------------------------- processes and devices
def _default_devices(total: int) -> list[jax.Device]:
    """Every device of every process under multi-process `jax.distributed` (each process
    must take part in the one global program), else at most one local device per run."""
    if jax.process_count() > 1:
        return list(jax.devices())
    return jax.local_devices()[:total]


def _to_global(host_tree: Any, sharding: NamedSharding) -> Any:
    """Arrays laid out by `sharding` from host arrays that every process holds in full
    (keys and hypers are small): each process transfers only its own devices' shards."""
    if sharding.is_fully_addressable:
        return jax.device_put(host_tree, sharding)

    def place(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, host_tree)


def _to_host(tree: Any) -> Any:
    """Full host copies of the outputs on every process (an all-gather when they are
    spread over several processes)."""
    leaves = jax.tree.leaves(tree)
    if all(x.is_fully_addressable for x in leaves if isinstance(x, jax.Array)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


@functools.lru_cache(maxsize=16)
def _on_hyper_leaves(train: Callable, hyper_tree: Any) -> Callable:
    """`train(key, hyper)` as `train(key, hyper leaves)`, the form `run`'s chunks carry; one
    function per (train, tree), so compiled programs keyed by it are reused."""
    return lambda key, leaves: train(key, jax.tree.unflatten(hyper_tree, leaves))


def _run_checkpointed(train, chunk_inputs, num_chunks: int, return_state: bool, checkpoint: Any,
                      seed_values: np.ndarray, sweep: Sweep, chunk: int, total: int, compiler_options: dict):
    """`run` in segments with checkpoints (purerl.checkpoint); a checkpoint is resumed
    only by a job with the same runs in the same chunks."""
    from purerl import checkpoint as checkpoints

    hypers = jax.tree.leaves(jax.tree.map(np.asarray, sweep.hypers))
    layout = {
        "runs": total, "chunk": chunk, "chunks": num_chunks, "seeds": [int(s) for s in seed_values],
        "hypers": hashlib.sha256(b"".join(np.ascontiguousarray(h).tobytes() for h in hypers)).hexdigest()[:16],
    }
    return checkpoints.run_chunks(train, chunk_inputs, num_chunks, return_state, checkpoint, layout,
                                  compiler_options)


# Compiled executables of this process, keyed by program (program_key, or the train
# function itself), input shapes and devices: a second `run` of the same program with
# the same batch shapes skips tracing and compilation. Small LRU: executables hold memory.
_EXECUTABLES = BoundedCache(maxsize=16)


# ---------------------------------------------------------------- exported-program cache
def _compile_via_export_cache(batched, example, cache_dir: Path, program_key: str, return_state: bool = False,
                              compiler_options: dict | None = None):
    """Compile `batched` through a serialised `jax.export` artefact; None if that fails.

    Export needs builtin containers (custom pytrees such as Hyper or a TrainState have no
    serialisation rule), so the stored program takes and returns flat lists of array leaves;
    the output's tree structure (final state, if `return_state`, and metrics) is pickled
    beside it (`.treedef`), so a warm job rebuilds the outputs without tracing `train`.
    Programs that cannot be exported (host callbacks, e.g. progress bars) fall back to
    the ordinary path.
    """
    leaves, treedef = jax.tree.flatten(example)
    signature = [(x.shape, str(x.dtype)) for x in leaves]
    devices = [(d.platform, d.device_kind) for d in jax.local_devices()]
    identity = repr((program_key, return_state, signature, devices, provenance.dependency_versions(),
                     provenance.source_digest()))
    path = cache_dir / (hashlib.sha256(identity.encode()).hexdigest()[:24] + ".jaxexport")
    tree_path = path.with_suffix(".treedef")
    out_tree = []

    def flat_program(*flat):
        state, metrics = batched(*jax.tree.unflatten(treedef, flat))
        out = (state if return_state else None, metrics)
        out_tree.append(jax.tree.structure(out))
        return jax.tree.leaves(out)

    exported = None
    if path.exists() and tree_path.exists():
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
            out_treedef = pickle.loads(tree_path.read_bytes())
        except Exception as e:  # noqa: BLE001 - a damaged artefact: say so, drop it, export again
            log.warning("export cache: %s is unreadable (%s: %s); exporting the program again",
                        path, type(e).__name__, e)
            path.unlink(missing_ok=True)
            tree_path.unlink(missing_ok=True)
            exported = None
    if exported is None:
        try:
            exported = jax.export.export(jax.jit(flat_program))(*leaves)
        except Exception as e:  # noqa: BLE001 - e.g. host callbacks: jax.export refuses them
            log.info("export cache: the program cannot be exported (%s: %s); compiling it directly",
                     type(e).__name__, " ".join(str(e).split())[:300])
            return None
        out_treedef = out_tree[-1]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            for target, payload in ((tree_path, pickle.dumps(out_treedef)), (path, exported.serialize())):
                with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as tmp:
                    tmp.write(payload)
                os.replace(tmp.name, target)  # the program last: it marks the pair complete
        except OSError as e:  # an unwritable cache still trains: the program is in memory
            log.warning("export cache: cannot write %s (%s); the program is not cached", cache_dir, e)
    try:
        executable = jax.jit(exported.call).lower(*leaves).compile(compiler_options=compiler_options)
    except Exception as e:  # noqa: BLE001 - an artefact this JAX cannot compile: compile directly
        log.warning("export cache: %s does not compile here (%s: %s); compiling the program directly",
                    path, type(e).__name__, " ".join(str(e).split())[:300])
        return None
    return lambda *args: jax.tree.unflatten(out_treedef, executable(*jax.tree.leaves(args)))
