"""PNG plots: learning curves with bootstrap CI bands, and a 2-axis sweep heatmap."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.aggregate import STAT_LABELS, aggregate, statistic, stratified_bootstrap_ci


def _label(by: Sequence[str], key: tuple) -> str:
    return ", ".join(f"{b}={_short(k)}" for b, k in zip(by, key))


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def curve_table(
    results: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "episode_return",
    x: str = "env_steps",
    stat: str = "iqm",
    ci: float = 0.95,
    n_resamples: int = 500,
    max_points: int = 100,
) -> pd.DataFrame:
    """Per group and x: the statistic over runs and its stratified bootstrap CI.

    Diverged runs (per `diverged` in the summary, or any non-finite loss) are expected to
    be filtered by the caller; NaN values (no episode finished in an update) are carried
    forward from the run's previous update, and x values where some run has no value yet
    are dropped."""
    by = [by] if isinstance(by, str) else list(by)
    strata = [c for c in ("job", "setting") if c in results.columns and c not in by]
    run_keys = [c for c in ("job", "setting", "seed") if c in results.columns]
    rows = []
    for key, group in results.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        wide = group.set_index([*run_keys, x])[metric].unstack(x).sort_index(axis=1).ffill(axis=1)
        xs = np.asarray(wide.columns)
        if len(xs) > max_points:
            keep = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(int))
            wide, xs = wide.iloc[:, keep], xs[keep]
        ok = np.isfinite(wide.to_numpy()).all(axis=0)
        wide, xs = wide.loc[:, ok], xs[ok]
        if not len(xs):
            continue
        if strata:
            levels = [run_keys.index(s) for s in strata]
            groups = wide.groupby(level=levels, sort=True)
            samples = [g.to_numpy().T for _, g in groups]  # [x, seeds]
        else:
            samples = [wide.to_numpy().T]
        estimate = statistic(stat)(np.concatenate(samples, axis=-1), axis=-1)
        low, high = stratified_bootstrap_ci(samples, stat, ci, n_resamples)
        for i, xv in enumerate(xs):
            rows.append({**dict(zip(by, key)), x: xv, stat: estimate[i], "ci_low": low[i], "ci_high": high[i]})
    return pd.DataFrame(rows)


def learning_curves(
    results: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "episode_return",
    x: str = "env_steps",
    stat: str = "iqm",
    ci: float = 0.95,
    path: str | Path | None = None,
    summary: pd.DataFrame | None = None,
    ax=None,
):
    """Plot `stat` of `metric` vs `x` per group with CI bands; returns the figure.

    Pass `summary` to drop the runs it marks as diverged."""
    by = [by] if isinstance(by, str) else list(by)
    if summary is not None and "diverged" in summary:
        keys = [c for c in ("job", "setting", "seed") if c in summary and c in results]
        bad = summary.loc[summary["diverged"].astype(bool), keys]
        if len(bad):
            merged = results.merge(bad.assign(_bad=True), on=keys, how="left")
            results = results[merged["_bad"].isna().to_numpy()]
    table = curve_table(results, by, metric, x, stat, ci)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    if len(table):
        for key, group in table.groupby(by, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            line = ax.plot(group[x], group[stat], label=_label(by, key))[0]
            ax.fill_between(group[x], group["ci_low"], group["ci_high"], color=line.get_color(), alpha=0.2)
        ax.legend(fontsize="small")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{STAT_LABELS[stat]} {metric}")
    ax.set_title(f"{STAT_LABELS[stat]} {metric} ({ci:.0%} bootstrap CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def heatmap(
    summary: pd.DataFrame,
    x: str,
    y: str,
    metric: str = "final_return",
    stat: str = "iqm",
    ci: float = 0.95,
    path: str | Path | None = None,
    ax=None,
    pooled: tuple[str, ...] = (),
):
    """Cells = `stat` of `metric` over the runs with that (x, y) (diverged runs excluded),
    annotated with the value; returns the figure. `pooled` names other varying columns
    whose runs share a cell; they are shown in the title so the pooling is not hidden."""
    table = aggregate(summary, by=[y, x], metric=metric, stat=stat, ci=ci, n_resamples=200)
    grid = table.pivot(index=y, columns=x, values=stat).sort_index(ascending=False)
    fig, ax = (
        (ax.figure, ax)
        if ax is not None
        else plt.subplots(figsize=(1.2 * grid.shape[1] + 2.5, 0.8 * grid.shape[0] + 1.8))
    )
    values = grid.to_numpy(np.float64)
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [_short(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [_short(v) for v in grid.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(
                j,
                i,
                "—" if not np.isfinite(v) else f"{v:.3g}",
                ha="center",
                va="center",
                color="black" if np.isfinite(v) and v > middle else "white",
                fontsize="small",
            )
    fig.colorbar(image, ax=ax, label=f"{STAT_LABELS[stat]} {metric}")
    pooled_note = f"\n(pooled over {', '.join(pooled)})" if pooled else ""
    ax.set_title(f"{STAT_LABELS[stat]} {metric}{pooled_note}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
