"""PNG plots: learning curves with bootstrap CI bands, and sweep heatmaps.

Both take `by`-style grouping and draw small multiples: with several grouping columns,
one panel per combination of all but the last (e.g. one per env), one line (or one
heatmap) per value of the last. Titles name the algorithm(s), env(s) and seeds per
setting. More than `MAX_CYCLE_COLOURS` lines in a panel use a sequential colour map, so
no two lines share a colour. Diverged runs are treated as in `analysis.aggregate`
("worst": -inf from the update where they diverged; "exclude": left out) and always
marked: the legend says how many runs of a line diverged, an x marks the first
divergence, a triangle the point where the statistic becomes -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.aggregate import (
    DIVERGED_POLICIES,
    STAT_LABELS,
    aggregate,
    check_ci,
    statistic,
    stratified_bootstrap_ci,
)

MAX_CYCLE_COLOURS = 8  # beyond this many lines in one panel: a sequential colour map
RUN_KEYS = ("job", "setting", "seed")


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _label(by: Sequence[str], key: tuple) -> str:
    return ", ".join(f"{b}={_short(k)}" for b, k in zip(by, key))


def _key(key: object) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def describe_runs(df: pd.DataFrame) -> str:
    """"PPO on CartPole-v1, 8 seeds per setting" (from the algo, env and seed columns)."""
    algos = sorted(map(str, df["algo"].dropna().unique())) if "algo" in df else []
    envs = sorted(map(str, df["env"].dropna().unique())) if "env" in df else []
    algo_text = "/".join(a.upper() for a in algos) or "runs"
    env_text = ", ".join(envs) if len(envs) <= 3 else f"{len(envs)} envs"
    keys = [c for c in ("job", "setting") if c in df]
    if "seed" in df and keys:
        per_setting = df.groupby(keys, dropna=False)["seed"].nunique()
        low, high = int(per_setting.min()), int(per_setting.max())
        seeds = f"{low} seeds" if low == high else f"{low}-{high} seeds"
    else:
        seeds = f"{df['seed'].nunique()} seeds" if "seed" in df else ""
    return f"{algo_text} on {env_text or '?'}, {seeds} per setting"


def line_colours(n: int) -> list:
    """`n` distinct colours: the default cycle up to MAX_CYCLE_COLOURS, else viridis."""
    if n <= MAX_CYCLE_COLOURS:
        return [f"C{i}" for i in range(n)]
    return list(plt.get_cmap("viridis")(np.linspace(0.0, 0.95, n)))


def _panels(n: int, width: float, height: float, max_cols: int = 3):
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _divergence(summary: pd.DataFrame | None, results: pd.DataFrame) -> pd.DataFrame | None:
    """Per run (job, setting, seed): the update at which it diverged (NA if it did not)."""
    if summary is None or "diverged" not in summary:
        return None
    keys = [c for c in RUN_KEYS if c in summary and c in results]
    frame = summary[keys].copy()
    first = summary["diverged_update"] if "diverged_update" in summary else pd.Series(0, index=summary.index)
    frame["_diverged_at"] = pd.array(
        [int(u) if d and pd.notna(u) else (0 if d else None) for d, u in zip(summary["diverged"], first)],
        dtype="Int64",
    )
    return frame


def curve_table(
    results: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "episode_return",
    x: str = "env_steps",
    stat: str = "iqm",
    ci: float = 0.95,
    n_resamples: int = 500,
    max_points: int = 100,
    summary: pd.DataFrame | None = None,
    diverged: str = "worst",
) -> pd.DataFrame:
    """Per group and x: the statistic over runs, its stratified bootstrap CI, n (runs)
    and n_diverged (runs diverged by then).

    NaN values (no episode finished in an update) are carried forward from the run's
    previous value; x values where some run has no value yet are dropped. With `summary`,
    diverged runs are -inf from their first bad update on (`diverged="worst"`) or left
    out (`"exclude"`)."""
    by = [by] if isinstance(by, str) else list(by)
    statistic(stat)
    check_ci(ci)
    if diverged not in DIVERGED_POLICIES:
        raise ValueError(f"diverged: got {diverged!r}; allowed: {', '.join(DIVERGED_POLICIES)}")
    run_keys = [c for c in RUN_KEYS if c in results.columns]
    strata = [c for c in ("job", "setting") if c in results.columns and c not in by]
    divergence = _divergence(summary, results)
    frame = results[list(dict.fromkeys([*by, *run_keys, x, "update", metric]))]
    if divergence is not None:
        frame = frame.merge(divergence, on=[c for c in run_keys if c in divergence], how="left")
        if diverged == "exclude":
            frame = frame[frame["_diverged_at"].isna().to_numpy()]
        bad = (frame["update"] >= frame["_diverged_at"]).fillna(False).astype(bool)
    else:
        bad = pd.Series(False, index=frame.index)
    frame = frame.assign(_bad=bad.to_numpy())
    rows = []
    for key, group in frame.groupby(by, sort=True, dropna=False):
        wide = group.set_index([*run_keys, x])[metric].unstack(x).sort_index(axis=1).ffill(axis=1)
        flags = group.set_index([*run_keys, x])["_bad"].unstack(x).sort_index(axis=1)
        flags = flags.astype("boolean").ffill(axis=1).fillna(False).astype(bool)
        values = np.where(flags.to_numpy(), -np.inf, wide.to_numpy(np.float64))
        xs = np.asarray(wide.columns)
        if len(xs) > max_points:
            keep = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(int))
            values, xs = values[:, keep], xs[keep]
        ok = ~np.isnan(values).any(axis=0)
        values, xs = values[:, ok], xs[ok]
        if not len(xs):
            continue
        if strata:
            levels = [run_keys.index(s) for s in strata]
            codes = wide.index.to_frame(index=False).iloc[:, levels].astype(str).agg("|".join, axis=1).to_numpy()
            samples = [values[codes == c].T for c in dict.fromkeys(codes)]  # [x, runs of one stratum]
        else:
            samples = [values.T]
        estimate = statistic(stat)(np.concatenate(samples, axis=-1), axis=-1)
        low, high = stratified_bootstrap_ci(samples, stat, ci, n_resamples)
        n_bad = np.isneginf(values).sum(axis=0)
        for i, xv in enumerate(xs):
            rows.append(
                {
                    **dict(zip(by, _key(key))),
                    x: xv,
                    stat: estimate[i],
                    "ci_low": low[i],
                    "ci_high": high[i],
                    "n": values.shape[0],
                    "n_diverged": int(n_bad[i]),
                }
            )
    return pd.DataFrame(rows, columns=[*by, x, stat, "ci_low", "ci_high", "n", "n_diverged"])


def _facet_groups(df: pd.DataFrame, facets: Sequence[str]):
    if not facets:
        return [((), df)]
    return [(_key(k), g) for k, g in df.groupby(list(facets), sort=True, dropna=False)]


def learning_curves(
    results: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "episode_return",
    *,
    summary: pd.DataFrame | None = None,
    x: str = "env_steps",
    stat: str = "iqm",
    ci: float = 0.95,
    path: str | Path | None = None,
    diverged: str = "worst",
    pooled: Sequence[str] = (),
):
    """`stat` of `metric` vs `x` with CI bands; one panel per combination of `by[:-1]`,
    one line per value of `by[-1]`. Pass `summary` so diverged runs are handled and
    marked (see the module docstring). Returns the figure."""
    by = [by] if isinstance(by, str) else list(by)
    facets, line_by = by[:-1], by[-1:]
    table = curve_table(results, by, metric, x, stat, ci, summary=summary, diverged=diverged)
    runs = summary if summary is not None else results.drop_duplicates([c for c in RUN_KEYS if c in results])
    groups = _facet_groups(table, facets) if len(table) else [((), table)]
    fig, axes = _panels(len(groups), 5.2, 3.6)
    for ax, (facet_key, panel) in zip(axes, groups):
        lines = list(panel.groupby(line_by, sort=True, dropna=False)) if len(panel) else []
        colours = line_colours(len(lines))
        marked = set()
        for colour, (key, group) in zip(colours, lines):
            key = _key(key)
            member = np.ones(len(runs), bool)
            for column, value in zip([*facets, *line_by], [*facet_key, *key]):
                member &= (runs[column] == value).to_numpy() | (runs[column].isna() & pd.isna(value)).to_numpy()
            n_runs = int(member.sum())
            n_div = int(runs.loc[member, "diverged"].sum()) if "diverged" in runs else 0
            label = _label(line_by, key) + (f" ({n_div}/{n_runs} diverged)" if n_div else "")
            xs, ys = group[x].to_numpy(), group[stat].to_numpy(np.float64)
            finite = np.isfinite(ys)
            ax.plot(xs[finite], ys[finite], color=colour, label=label)
            band = np.isfinite(group["ci_low"].to_numpy()) & np.isfinite(group["ci_high"].to_numpy())
            ax.fill_between(xs, group["ci_low"], group["ci_high"], where=band, color=colour, alpha=0.15)
            diverging = np.flatnonzero(group["n_diverged"].to_numpy() > 0)
            if len(diverging):
                i = diverging[0]
                before = np.flatnonzero(finite & (xs <= xs[i]))
                if len(before):  # on the curve where the first run diverged
                    ax.plot(xs[i], ys[before[-1]], "x", color=colour, markersize=9, mew=2)
                    marked.add("x")
            if (~finite).any() and finite.any():
                last = np.flatnonzero(finite)[-1]
                if last < len(ys) - 1:
                    ax.plot(xs[last], ys[last], "v", color=colour, markersize=8)
                    marked.add("v")
            if not finite.any():
                label_all = f"{label}: {STAT_LABELS[stat]} -inf throughout"
                ax.plot([], [], "v", color=colour, label=label_all)
        handles, labels = ax.get_legend_handles_labels()
        if "x" in marked:
            handles.append(plt.Line2D([], [], marker="x", color="k", linestyle="", mew=2))
            labels.append("first divergence")
        if "v" in marked:
            handles.append(plt.Line2D([], [], marker="v", color="k", linestyle=""))
            labels.append(f"{STAT_LABELS[stat]} -inf after this (diverged)")
        if len(handles) > MAX_CYCLE_COLOURS:  # many lines: the legend goes beside the curves
            ax.legend(handles, labels, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      ncol=1 if len(handles) <= 16 else 2)
        elif handles:
            ax.legend(handles, labels, fontsize="x-small")
        ax.set_xlabel(x)
        ax.set_ylabel(f"{STAT_LABELS[stat]} {metric}")
        if facets:
            ax.set_title(_label(facets, facet_key), fontsize="medium")
        ax.grid(alpha=0.3)
    pooled_note = f"; pooled over {', '.join(pooled)}" if pooled else ""
    fig.suptitle(
        f"{describe_runs(runs)}\n{STAT_LABELS[stat]} {metric} ({ci:.0%} bootstrap CI){pooled_note}",
        fontsize="medium",
    )
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
    facets: Sequence[str] = (),
    pooled: Sequence[str] = (),
    show_ci: bool = False,
    diverged: str | None = None,
):
    """Cells = `stat` of `metric` over the runs with that (x, y), annotated with the value,
    n (and the diverged count), and with `show_ci` the CI width; one panel per combination
    of `facets`. `pooled` names other varying columns whose runs share a cell (shown in
    the title, so pooling is never hidden). Returns the figure."""
    facets = list(facets)
    table = aggregate(summary, by=[*facets, y, x], metric=metric, stat=stat, ci=ci, n_resamples=500,
                      diverged=diverged)
    groups = _facet_groups(table, facets)
    nx, ny = table[x].nunique(), table[y].nunique()
    fig, axes = _panels(len(groups), 1.4 * nx + 2.4, 0.8 * ny + 1.2, max_cols=2)
    for ax, (facet_key, panel) in zip(axes, groups):
        grid = panel.pivot(index=y, columns=x, values=stat).sort_index(ascending=False)
        cells = panel.set_index([y, x])
        values = grid.to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        # Each panel (e.g. each env) gets its own colour scale: returns of different envs
        # share no scale.
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        image = ax.imshow(np.where(np.isfinite(values), values, np.nan), cmap="viridis", aspect="auto",
                          vmin=vmin, vmax=vmax)
        ax.set_xticks(range(grid.shape[1]), [_short(v) for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [_short(v) for v in grid.index])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        middle = (vmin + vmax) / 2
        digits = distinct_digits(values)
        for i, yv in enumerate(grid.index):
            for j, xv in enumerate(grid.columns):
                v = values[i, j]
                if (yv, xv) not in cells.index:
                    ax.text(j, i, "no runs", ha="center", va="center", color="black", fontsize="x-small")
                    continue
                cell = cells.loc[(yv, xv)]
                text = [_short_value(v, digits)]
                if show_ci:
                    low, high = cell["ci_low"], cell["ci_high"]
                    if np.isfinite(low) and np.isfinite(high):
                        text.append(f"CI width {high - low:.3g}")
                    elif np.isneginf(low):
                        text.append("CI reaches -inf")
                count = f"n={int(cell['n_runs'])}"
                if cell["n_diverged"]:
                    count += f", {int(cell['n_diverged'])} diverged"
                if cell["n_no_episode"]:
                    count += f", {int(cell['n_no_episode'])} no episode"
                text.append(count)
                ax.text(j, i, "\n".join(text), ha="center", va="center", fontsize="x-small",
                        color="black" if np.isfinite(v) and v > middle else "white")
        if facets:
            ax.set_title(_label(facets, facet_key), fontsize="medium")
        fig.colorbar(image, ax=ax, label=f"{STAT_LABELS[stat]} {metric}", shrink=0.9)
    pooled_note = f"\n(pooled over {', '.join(pooled)})" if pooled else ""
    fig.suptitle(f"{describe_runs(summary)}\n{STAT_LABELS[stat]} {metric} per cell{pooled_note}", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _short_value(v: float, digits: int = 3) -> str:
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:.{digits}g}"


def distinct_digits(values: np.ndarray, start: int = 3, most: int = 10) -> int:
    """The fewest significant digits (≥ `start`) at which distinct finite values get
    distinct labels: cells whose colours differ never read the same."""
    finite = np.unique(values[np.isfinite(values)])
    for digits in range(start, most + 1):
        if len({_short_value(v, digits) for v in finite}) == finite.size:
            return digits
    return most
