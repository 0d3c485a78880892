"""Jobs that survive preemption: a sweep's training in segments, with checkpoints.

`purerl.sweep.run(..., checkpoint=Checkpointing(directory, identity))` trains each chunk
of runs as `Segmented(train)` (purerl.rl.loop): one program for the initial carry, one
for a segment of `segment_updates` updates, called until the chunk is done. Between
segments the host may save a checkpoint (every `every_updates` updates or
`every_minutes` minutes, whichever comes first): the carry of every run of the chunk,
the metrics so far and the finished chunks, as an orbax checkpoint. A later `run` with a
checkpoint of the same `identity` and layout resumes from it; since every update gets
the same key and index as in one uninterrupted run, the results are the same numbers.

Checkpoints are written to a temporary directory and renamed to
`<directory>/ckpt-<serial>` when complete (`meta.json` written last); older ones are
then removed, so a job killed at any point leaves a readable latest checkpoint.

`should_stop()` is polled after every segment; when it returns a signal number the
job saves a checkpoint and raises `Interrupted` (`stop_signals` installs handlers for
SIGINT/SIGTERM that set it), so a stop takes one segment, not the rest of the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purerl import orbax_io
from purerl.programs import BoundedCache
from purerl.rl.loop import Segmented

log = logging.getLogger("purerl.checkpoint")

PREFIX = "ckpt-"
META = "meta.json"
STATE = "state"
FORMAT = 1
DEFAULT_SEGMENTS = 100  # segments per chunk when `segment_updates` is not given


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, path: Path, chunk: int, update: int):
        self.signum, self.path, self.chunk, self.update = signum, path, chunk, update
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        super().__init__(f"stopped by {name} at update {update} of chunk {chunk}; checkpoint saved to {path} "
                         "(rerun the same command to resume)")


@dataclasses.dataclass
class Checkpointing:
    """Where and how often a segmented `sweep.run` saves, and when it stops."""

    directory: Path
    identity: str  # a checkpoint saved under another identity (other job) is never resumed
    segment_updates: int | None = None  # None: num_updates / DEFAULT_SEGMENTS, rounded up
    every_updates: int | None = None
    every_minutes: float | None = 10.0
    should_stop: Callable[[], int | None] = lambda: None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        for name in ("segment_updates", "every_updates"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"checkpoint.{name}: got {value!r}; allowed: a positive integer or null")
        minutes = self.every_minutes
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                    or not minutes > 0):
            raise ValueError(f"checkpoint.every_minutes: got {minutes!r}; allowed: a positive number or null")

    def segment_length(self, num_updates: int) -> int:
        return min(num_updates, self.segment_updates or math.ceil(num_updates / DEFAULT_SEGMENTS))

    def remove(self) -> None:
        """Delete the checkpoints (once the job's results are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------- signals
@contextlib.contextmanager
def stop_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[Any]:
    """Within the block, the signals only record themselves: yields `stop` with
    `stop()` -> the last signal number received or None, and `stop.previous` -> the
    handlers they replaced (restored on exit). Outside the main thread nothing changes."""
    received: list[int] = []

    def stop() -> int | None:
        return received[-1] if received else None

    def handler(signum, frame) -> None:
        log.warning("received %s: stopping after the current segment", signal.Signals(signum).name)
        received.append(signum)

    stop.previous = {}
    try:
        for signum in signums:
            stop.previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield stop
    finally:
        for signum, previous in stop.previous.items():
            signal.signal(signum, previous)


# ---------------------------------------------------------------- saving
def _serial(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def _complete(directory: Path) -> list[Path]:
    """Finished checkpoints, newest last."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(PREFIX + "*") if p.name[len(PREFIX):].isdigit() and (p / META).exists()]
    return sorted(found, key=_serial)


@dataclasses.dataclass
class Progress:
    """Host copy of everything a job has trained so far."""

    chunk: int = 0  # the chunk in progress
    update: int = 0  # updates done in it
    carry: Any = None  # its carry after `update` updates (None before its init)
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metrics: dict[str, np.ndarray] | None = None  # its metrics so far [chunk runs, update]
    done: list[tuple[Any, dict[str, np.ndarray]]] = dataclasses.field(default_factory=list)


def save(checkpointing: Checkpointing, layout: dict[str, Any], progress: Progress) -> Path:
    """Write `progress` as the newest checkpoint; remove the older ones."""
    directory = checkpointing.directory
    directory.mkdir(parents=True, exist_ok=True)
    existing = _complete(directory)
    serial = _serial(existing[-1]) + 1 if existing else 1
    tree: dict[str, np.ndarray] = {}
    names = sorted(progress.metrics or {})
    for i, leaf in enumerate(jax.tree.leaves(progress.carry)):
        tree[f"carry_{i}"] = np.asarray(leaf)
    for name in names:
        tree[f"metric_{name}"] = np.asarray(progress.metrics[name])
    extras = sorted(progress.extras)
    for i, name in enumerate(extras):
        tree[f"extra_{i}"] = np.asarray(progress.extras[name])
    done_names = sorted(progress.done[0][1]) if progress.done else []
    for c, (state, metrics) in enumerate(progress.done):
        for i, name in enumerate(done_names):
            tree[f"done_{c}_metric_{i}"] = np.asarray(metrics[name])
        for i, leaf in enumerate(jax.tree.leaves(state)):
            tree[f"done_{c}_state_{i}"] = np.asarray(leaf)
    meta = {
        "format": FORMAT, "identity": checkpointing.identity, "layout": layout, "chunk": progress.chunk,
        "update": progress.update, "has_carry": progress.carry is not None, "metrics": names,
        "extras": extras, "done": len(progress.done), "done_metrics": done_names, "saved": time.time(),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{PREFIX}tmp-", dir=directory))
    try:
        if tree:
            with orbax_io.checkpointer() as checkpointer, orbax_io.orbax_path(tmp / STATE) as state_path:
                checkpointer.save(state_path, tree)
                checkpointer.wait_until_finished()
        with open(tmp / META, "w") as f:  # last: a directory without it was never finished
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        final = directory / f"{PREFIX}{serial:06d}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in [*existing, *directory.glob(f".{PREFIX}tmp-*")]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(checkpointing: Checkpointing, layout: dict[str, Any], carry_tree: Any, state_tree: Any
            ) -> tuple[Progress, Path] | None:
    """The newest checkpoint of this job (same identity and layout), or None. Checkpoints
    of another job are reported and left alone; they are replaced by the next save."""
    for path in reversed(_complete(checkpointing.directory)):
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT or meta.get("identity") != checkpointing.identity \
                or meta.get("layout") != layout:
            log.warning("%s belongs to another job (identity or layout differs); starting from update 0", path)
            return None
        tree = {}
        if (path / STATE).exists():
            with orbax_io.checkpointer() as checkpointer, orbax_io.orbax_path(path / STATE) as state_path:
                tree = {k: np.asarray(v) for k, v in checkpointer.restore(state_path).items()}
        num_carry = len(jax.tree.leaves(carry_tree))
        num_state = len(jax.tree.leaves(state_tree))
        carry = None
        if meta["has_carry"]:
            carry = jax.tree.unflatten(jax.tree.structure(carry_tree), [tree[f"carry_{i}"] for i in range(num_carry)])
        metrics = {name: tree[f"metric_{name}"] for name in meta["metrics"]} or None
        extras = {name: tree[f"extra_{i}"] for i, name in enumerate(meta["extras"])}
        done = []
        for c in range(meta["done"]):
            state = None
            if f"done_{c}_state_0" in tree:
                leaves = [tree[f"done_{c}_state_{i}"] for i in range(num_state)]
                state = jax.tree.unflatten(jax.tree.structure(state_tree), leaves)
            done.append((state, {n: tree[f"done_{c}_metric_{i}"] for i, n in enumerate(meta["done_metrics"])}))
        return Progress(meta["chunk"], meta["update"], carry, extras, metrics, done), path
    return None


# ---------------------------------------------------------------- running
# Compiled init and segment programs of this process, keyed by `train` and the chunk's
# input shapes and shardings: a rerun in the same process (a resumed job) compiles nothing.
_PROGRAMS = BoundedCache(maxsize=8)


def run_chunks(
    train: Callable[[jax.Array, Any], tuple[Any, dict[str, jax.Array]]],
    chunk_inputs: Callable[[int], tuple[jax.Array, Any]],
    num_chunks: int,
    return_state: bool,
    checkpointing: Checkpointing,
    layout: dict[str, Any],
    compiler_options: dict | None = None,
) -> tuple[list[tuple[Any, dict[str, np.ndarray]]], float, float]:
    """`sweep.run`'s chunks trained in segments with checkpoints: per chunk (final state
    or None, metrics [run, update]) as host arrays, compile and run seconds. `compiler_options`:
    XLA options of the init and segment programs (`sweep.run`)."""
    start = time.perf_counter()
    example = chunk_inputs(0)
    options = dict(compiler_options or {})
    signature = (train, tuple((x.shape, str(x.dtype), x.sharding) for x in jax.tree.leaves(example)),
                 tuple(sorted(options.items())))
    if signature not in _PROGRAMS:
        seg = Segmented(train)
        lowered_init = jax.jit(jax.vmap(seg.init)).lower(*example)
        # The carry's structure from the one trace of `init` (eval_shape would trace train again).
        init, carry_tree = lowered_init.compile(compiler_options=options), lowered_init.out_info[0]

        @functools.partial(jax.jit, static_argnums=4)
        def advance(keys, hypers, carry, first, num):
            return jax.vmap(lambda k, h, c: seg.advance(k, h, c, first, num))(keys, hypers, carry)

        _PROGRAMS.remember(signature, (seg, init, carry_tree, advance, {}))
    seg, init, carry_tree, advance, programs = _PROGRAMS[signature]
    num_updates = seg.num_updates
    length = checkpointing.segment_length(num_updates)
    layout = {**layout, "num_updates": num_updates, "segment_updates": length, "return_state": return_state}
    compile_seconds = time.perf_counter() - start

    def program(num: int, *args) -> Any:
        """The compiled segment of `num` updates: all segments but a shorter last one share one."""
        nonlocal compile_seconds
        if num not in programs:
            begin = time.perf_counter()
            programs[num] = advance.lower(*args, num).compile(compiler_options=options)
            compile_seconds += time.perf_counter() - begin
        return programs[num]

    restored = restore(checkpointing, layout, carry_tree, carry_tree[0])
    progress = Progress()
    if restored is not None:
        progress, path = restored
        log.info("resuming from checkpoint %s: chunk %d of %d, update %d of %d", path, progress.chunk + 1,
                 num_chunks, progress.update, num_updates)
    last_save, saved_update = time.monotonic(), progress.chunk * num_updates + progress.update

    def due() -> bool:
        done_updates = progress.chunk * num_updates + progress.update
        by_updates = checkpointing.every_updates and done_updates - saved_update >= checkpointing.every_updates
        by_time = checkpointing.every_minutes and time.monotonic() - last_save >= 60 * checkpointing.every_minutes
        return bool(by_updates or by_time)

    def checkpoint_now() -> Path:
        nonlocal last_save, saved_update
        path = save(checkpointing, layout, progress)
        last_save, saved_update = time.monotonic(), progress.chunk * num_updates + progress.update
        return path

    run_start = time.perf_counter()
    while progress.chunk < num_chunks:
        keys, hypers = chunk_inputs(progress.chunk)
        if progress.carry is None:
            carry, extras = init(keys, hypers)
            progress.update, progress.metrics, progress.extras = 0, None, jax.device_get(extras)
        else:
            carry = progress.carry
        while progress.update < num_updates:
            num = min(length, num_updates - progress.update)
            # Every leaf of the carry has the run axis first: keep it sharded like the runs, so
            # each segment program sees the layout it was compiled for (XLA may choose another
            # layout for the outputs of init or of the previous segment).
            carry = jax.device_put(carry, keys.sharding)
            args = (keys, hypers, carry, jnp.int32(progress.update))
            carry, metrics = program(num, *args)(*args)
            metrics = jax.device_get(metrics)
            parts = [metrics] if progress.metrics is None else [progress.metrics, metrics]
            progress.metrics = {n: np.concatenate([p[n] for p in parts], axis=1) for n in metrics}
            progress.update += num
            progress.carry = carry  # host copies only when saved
            signum = checkpointing.should_stop()
            if signum is not None or due():
                progress.carry = jax.device_get(carry)
                path = checkpoint_now()
                if signum is not None:
                    raise Interrupted(signum, path, progress.chunk, progress.update)
        state, metrics = seg.finish(jax.device_get(carry), [progress.metrics], progress.extras, axis=1)
        progress.done.append((state if return_state else None, metrics))
        progress.chunk, progress.update, progress.carry, progress.metrics = progress.chunk + 1, 0, None, None
        if progress.chunk < num_chunks and due():
            checkpoint_now()
    return progress.done, compile_seconds, time.perf_counter() - run_start
