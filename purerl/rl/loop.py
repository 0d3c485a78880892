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

from collections.abc import Callable
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
    """`num_updates` calls of `update_step` in one `lax.scan`; metrics [num_updates]."""

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

    (state, _), metrics = lax.scan(body, (state, key), jnp.arange(num_updates))
    ok = traced_hyper_ok(hyper)
    metrics = {
        name: jnp.where(ok, value, jnp.nan) if jnp.issubdtype(value.dtype, jnp.floating) else value
        for name, value in metrics.items()
    }
    metrics["hyper_ok"] = jnp.broadcast_to(ok.astype(jnp.int32), (num_updates,))
    return state, metrics


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
