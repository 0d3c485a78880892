"""The outer training loop every algorithm shares, and per-update counters.

`run_updates` scans an algorithm's `update_step(state, key, update_index) -> (state,
metrics)` over a fixed number of updates, so the whole run is one program; it calls the
optional host callback `on_update(update_index)` (progress bars) — or, if the callback
names metrics in a `watch` attribute, `on_update(update_index, {name: value})` with those
metrics of every run of the batch at once (`host_report`) — and applies the traced
hyperparameter contract (`purerl.config`): a run whose hyperparameters leave their
intervals reports NaN for every float metric and `hyper_ok = 0`.

Counters: in-graph metrics named `<name>_in_update` are integer counts of one update
(int32, exact). Cumulative totals over a 1e10-step run do not fit int32 (and x64 is off),
so they are made on the host: `host_metrics` adds `<name>` = cumulative int64 sum along
the update axis (e.g. `env_steps_in_update` -> `env_steps`). `purerl.sweep.run` applies
it; call it yourself on the metrics of a bare `train`.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from purerl.config import traced_hyper_ok

COUNT_SUFFIX = "_in_update"

UpdateStep = Callable[[Any, jax.Array, jax.Array], tuple[Any, dict[str, jax.Array]]]
# What every algorithm's make_train(config, on_update) returns: train(key, hyper) ->
# (final_state, metrics with a leading update axis). on_update(update_index) runs on the
# host after each update (progress bars), via jax.debug.callback.
TrainFn = Callable[[jax.Array, Any], tuple[Any, dict[str, jax.Array]]]
OnUpdate = Callable[[jax.Array], None] | None


def run_updates(
    update_step: UpdateStep,
    state: Any,
    key: jax.Array,
    num_updates: int,
    hyper: Any,
    on_update: Callable[[jax.Array], None] | None = None,
) -> tuple[Any, dict[str, jax.Array]]:
    """`num_updates` calls of `update_step` in one `lax.scan`; metrics [num_updates].

    While `Segmented` traces `train`, the run's main loop (this call) instead yields its
    starting carry, or scans only one segment of its updates (see `Segmented`)."""
    trace = _SEGMENT_TRACE.get()
    if trace is not None:
        return trace.intercept(update_step, state, key, num_updates, hyper, on_update)
    (state, _), metrics = _scan(update_step, state, key, jnp.arange(num_updates), hyper, on_update)
    return state, metrics


def _scan(update_step: UpdateStep, state: Any, key: jax.Array, indices: jax.Array, hyper: Any,
          on_update: OnUpdate) -> tuple[tuple[Any, jax.Array], dict[str, jax.Array]]:
    """The updates `indices` (global update numbers) from carry (state, key)."""

    def body(carry, update_index):
        state, key = carry
        key, update_key = jax.random.split(key)
        state, metrics = update_step(state, update_key, update_index)
        if on_update is not None:
            watched = {name: metrics[name] for name in getattr(on_update, "watch", ()) if name in metrics}
            if watched:
                host_report(on_update, update_index, watched)
            else:
                jax.debug.callback(on_update, update_index)
        return (state, key), metrics

    carry, metrics = lax.scan(body, (state, key), indices)
    ok = traced_hyper_ok(hyper)
    metrics = {
        name: jnp.where(ok, value, jnp.nan) if jnp.issubdtype(value.dtype, jnp.floating) else value
        for name, value in metrics.items()
    }
    metrics["hyper_ok"] = jnp.broadcast_to(ok.astype(jnp.int32), indices.shape)
    return carry, metrics


# ---------------------------------------------------------------- segments
class NotSegmentable(ValueError):
    """`train` cannot be split at a `run_updates` call (see `Segmented`)."""


@dataclasses.dataclass
class _Call:
    """One `run_updates` call seen while tracing `train`."""

    state: Any
    key: jax.Array
    num_updates: int
    outputs: tuple[Any, dict[str, jax.Array]]


@dataclasses.dataclass
class _SegmentTrace:
    """What `run_updates` does while `Segmented` traces `train`.

    "init": every call runs as usual and is recorded (the caller then finds the main loop
    among them). "advance": the `main`-th call scans the updates `first + arange(num)`
    from `carry` and records the carry it ends with; the other calls run as usual."""

    mode: str
    main: int | None = None
    carry: Any = None
    first: jax.Array | None = None
    num: int = 0
    calls: list[_Call] = dataclasses.field(default_factory=list)
    result: tuple[Any, dict[str, jax.Array]] | None = None

    def intercept(self, update_step, state, key, num_updates, hyper, on_update):
        index = len(self.calls)
        if self.mode == "advance" and index == self.main:
            state, key = self.carry
            indices = self.first + jnp.arange(self.num)
            self.result = _scan(update_step, state, key, indices, hyper, on_update)
            outputs = (self.result[0][0], self.result[1])
        else:
            # The init program never runs the main loop (its outputs are dead code that XLA
            # drops); a host callback would keep it alive, so none is traced here.
            callback = None if self.mode == "init" else on_update
            (final, _), metrics = _scan(update_step, state, key, jnp.arange(num_updates), hyper, callback)
            outputs = (final, metrics)
        self.calls.append(_Call(state, key, num_updates, outputs))
        return outputs


_SEGMENT_TRACE: contextvars.ContextVar[_SegmentTrace | None] = contextvars.ContextVar(
    "purerl_segment_trace", default=None
)


def _same(a: Any, b: Any) -> bool:
    """a and b are the same traced values (the very same objects, leaf by leaf)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(x is y for x, y in zip(leaves_a, leaves_b))


class Segmented:
    """`train(key, hyper)` split at its main `run_updates` loop, to run it in segments:

        carry, extras = seg.init(key, hyper)                   # state before update 0
        carry, metrics = seg.advance(key, hyper, carry, 0, 5)  # updates 0..4
        carry, metrics = seg.advance(key, hyper, carry, 5, 5)  # updates 5..9
        state, metrics = seg.finish(carry, [m0, m1], extras)   # what train returns

    No trainer needs code for this: each piece traces `train` itself, with `run_updates`
    changed for the duration (a context variable). The carry is (state, loop key) of the
    main loop, so every update gets the key and the global index it gets in one
    uninterrupted `train`: the numbers are the same. Values the update step closes over
    are recomputed in each segment's program from (key, hyper); what only built the
    initial state is dead code there, which XLA removes. `first` may be traced, so
    segments of equal length share one program.

    The main loop is the `run_updates` call whose final state and metrics `train`
    returns as they are; `train` may add metric columns computed before the loop (start
    statistics, `extras`), shaped per update. A `train` that returns anything else raises
    `NotSegmentable` (e.g. one that concatenates the metrics of several loops).
    """

    def __init__(self, train: TrainFn):
        self.train = train
        self.main: int | None = None  # which run_updates call is the main loop
        self.num_updates: int | None = None
        self.metric_names: tuple[str, ...] | None = None  # train's output order

    def init(self, key: jax.Array, hyper: Any) -> tuple[Any, dict[str, jax.Array]]:
        trace = _SegmentTrace("init")
        token = _SEGMENT_TRACE.set(trace)
        try:
            state, metrics = self.train(key, hyper)
        finally:
            _SEGMENT_TRACE.reset(token)
        returned = [i for i, c in enumerate(trace.calls)
                    if _same(state, c.outputs[0]) and all(metrics.get(k) is v for k, v in c.outputs[1].items())]
        if not returned:
            raise NotSegmentable(
                "train does not return the final state and metrics of one of its run_updates loops "
                f"({len(trace.calls)} loop(s) traced), so it cannot run in segments"
            )
        index = returned[0]
        call = trace.calls[index]
        loop_metrics = call.outputs[1]
        traced = {id(leaf) for c in trace.calls for leaf in jax.tree.leaves(c.outputs)}
        extras = {k: v for k, v in metrics.items() if k not in loop_metrics}
        if any(id(v) in traced for v in extras.values()):
            raise NotSegmentable("train returns metric columns copied from a loop's outputs under new names")
        self.main, self.num_updates, self.metric_names = index, call.num_updates, tuple(metrics)
        return (call.state, call.key), extras

    def advance(self, key: jax.Array, hyper: Any, carry: Any, first: jax.Array | int, num: int
                ) -> tuple[Any, dict[str, jax.Array]]:
        if self.main is None:
            jax.eval_shape(self.init, key, hyper)  # finds the main loop
        trace = _SegmentTrace("advance", main=self.main, carry=carry, first=jnp.asarray(first, jnp.int32),
                              num=num)
        token = _SEGMENT_TRACE.set(trace)
        try:
            self.train(key, hyper)
        finally:
            _SEGMENT_TRACE.reset(token)
        if trace.result is None:
            raise NotSegmentable(f"train made {len(trace.calls)} run_updates call(s), fewer than when it was split")
        return trace.result

    def finish(self, carry: Any, metrics: Sequence[dict[str, Any]], extras: dict[str, Any],
               axis: int = 0) -> tuple[Any, dict[str, Any]]:
        """train's (final state, metrics) from the last carry, the segments' metrics (update
        axis `axis`, e.g. 1 for a batch of runs) and the extras of `init`."""
        joined = {name: np.concatenate([np.asarray(m[name]) for m in metrics], axis=axis) for name in metrics[0]}
        joined.update(extras)
        return carry[0], {name: joined[name] for name in self.metric_names}


def host_report(callback: Callable[..., None], update_index: jax.Array, values: dict[str, jax.Array]) -> None:
    """`callback(update_index, values)` on the host, once per update even under `vmap`:
    `values` then carry the batch axes (one call with every run's values), where a plain
    `jax.debug.callback` would be unrolled into one call per run. `update_index` must not
    be batched (it is the scan's counter, the same for every run)."""

    @custom_vmap
    def report(index, values):
        jax.debug.callback(callback, index, values)
        return index

    @report.def_vmap
    def _batched(axis_size, in_batched, index, values):
        if in_batched[0]:
            raise ValueError("host_report: the update index is batched; allowed: one index for the whole batch")
        jax.debug.callback(callback, index, values)  # `values` hold the batch axis here
        return index, False

    report(update_index, values)


def host_metrics(metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    """Host copies of `metrics` (update axis last) plus exact int64 cumulative counters."""
    out = {name: np.asarray(value) for name, value in metrics.items()}
    for name in list(out):
        if name.endswith(COUNT_SUFFIX):
            out[name[: -len(COUNT_SUFFIX)]] = np.cumsum(out[name].astype(np.int64), axis=-1)
    return out
