"""Tables of point estimates with stratified bootstrap confidence intervals.

Following Agarwal et al. 2021: the statistic (mean, median or IQM = 25%-trimmed mean,
`scipy.stats.trim_mean(x, 0.25)`) is taken over all runs of a group; its percentile
bootstrap CI resamples seeds *within* each stratum — one stratum per distinct
configuration in the group (job × setting), so a group pooling several settings keeps
each setting's share of runs fixed. Uses `scipy.stats.bootstrap` (rliable 1.2.0 does
not import with pandas 3). Diverged runs are counted (`n_diverged`) and left out of the
statistic; so are runs whose metric is NaN (e.g. no episode finished), counted in `n_nan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

STAT_LABELS = {"mean": "Mean", "median": "Median", "iqm": "IQM"}


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return sps.trim_mean(x, 0.25, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "median": lambda x, axis=-1: np.median(x, axis=axis),
    "iqm": _iqm,
}


def statistic(name: str) -> Callable[..., np.ndarray]:
    if name not in STATISTICS:
        raise ValueError(f"stat: got {name!r}; allowed: {', '.join(STATISTICS)}")
    return STATISTICS[name]


def stratified_bootstrap_ci(
    samples: Sequence[np.ndarray],
    stat: str = "iqm",
    ci: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of `stat` over the pooled strata, resampling within each stratum.

    Each sample has observations (seeds) on its last axis and any leading batch axes
    (e.g. updates, for learning curves). Strata with a single observation are kept fixed
    (nothing to resample); with no stratum of two or more, the CI is NaN."""
    fn = statistic(stat)
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    varying = [s for s in samples if s.shape[-1] >= 2]
    fixed = [s for s in samples if s.shape[-1] < 2]
    batch = samples[0].shape[:-1]
    if not varying:
        nan = np.full(batch, np.nan)
        return nan, nan

    def pooled(*resampled, axis=-1):
        parts = list(resampled)
        lead = resampled[0].shape[:-1]  # (*batch, resamples)
        for f in fixed:  # (*batch, 1) -> (*batch, resamples, 1)
            extra = resampled[0].ndim - f.ndim
            f = f.reshape(f.shape[:-1] + (1,) * extra + f.shape[-1:])
            parts.append(np.broadcast_to(f, lead + f.shape[-1:]))
        return fn(np.concatenate(parts, axis=-1), axis=-1)

    result = sps.bootstrap(
        tuple(varying),
        pooled,
        n_resamples=n_resamples,
        confidence_level=ci,
        method="percentile",
        vectorized=True,
        paired=False,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def _strata_columns(df: pd.DataFrame, by: Sequence[str], strata: Sequence[str] | None) -> list[str]:
    if strata is None:
        strata = [c for c in ("job", "setting") if c in df.columns]
    return [c for c in strata if c not in by]


def aggregate(
    df: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "final_return",
    stat: str = "iqm",
    ci: float = 0.95,
    *,
    strata: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group of `by`: the statistic, its CI (ci_low, ci_high), n_runs (all
    runs in the group), n_diverged and n_nan (both excluded from the statistic)."""
    by = [by] if isinstance(by, str) else list(by)
    statistic(stat)
    if not 0 < ci < 1:
        raise ValueError(f"ci: got {ci}; allowed: (0, 1)")
    missing = [c for c in [*by, metric] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the data; available: {', '.join(map(str, df.columns))}")
    strata_cols = _strata_columns(df, by, strata)
    rows = []
    for key, group in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        diverged = group["diverged"].to_numpy(bool) if "diverged" in group else np.zeros(len(group), bool)
        values = group[metric].to_numpy(np.float64)
        nan = ~np.isfinite(values) & ~diverged
        used = group[~diverged & ~nan]
        if strata_cols:
            samples = [g[metric].to_numpy(np.float64) for _, g in used.groupby(strata_cols, sort=True)]
        else:
            samples = [used[metric].to_numpy(np.float64)]
        samples = [s for s in samples if s.size]
        if samples:
            estimate = float(statistic(stat)(np.concatenate(samples)))
            low, high = stratified_bootstrap_ci(samples, stat, ci, n_resamples, seed)
        else:
            estimate, low, high = np.nan, np.nan, np.nan
        rows.append(
            {
                **dict(zip(by, key)),
                stat: estimate,
                "ci_low": float(low),
                "ci_high": float(high),
                "n_runs": len(group),
                "n_diverged": int(diverged.sum()),
                "n_nan": int(nan.sum()),
            }
        )
    table = pd.DataFrame(rows, columns=[*by, stat, "ci_low", "ci_high", "n_runs", "n_diverged", "n_nan"])
    table.attrs.update({"metric": metric, "stat": stat, "ci": ci, "by": list(by)})
    return table


# ---------------------------------------------------------------- formatting
def _fmt(value: object, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _display(table: pd.DataFrame, digits: int) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: by columns, "<Stat> <metric> [CI]" and the counts."""
    stat = table.attrs.get("stat") or next(c for c in table.columns if c in STATISTICS)
    metric = table.attrs.get("metric", "")
    ci = table.attrs.get("ci", 0.95)
    by = table.attrs.get("by") or list(table.columns[: list(table.columns).index(stat)])
    headers = [*by, f"{STAT_LABELS[stat]} {metric} [{ci:.0%} CI]".replace("  ", " "), "n runs", "n diverged"]
    rows = []
    for r in table.to_dict("records"):
        estimate = f"{_fmt(r[stat], digits)} [{_fmt(r['ci_low'], digits)}, {_fmt(r['ci_high'], digits)}]"
        rows.append([*(_fmt(r[b], digits) for b in by), estimate, str(r["n_runs"]), str(r["n_diverged"])])
    return headers, rows


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` needed)."""
    headers, rows = _display(table, digits)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [i >= len(headers) - 3 for i in range(len(headers))]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, digits: int = 4, caption: str | None = None) -> str:
    """A booktabs `tabular` (wrapped in a `table` float if `caption` is given)."""
    headers, rows = _display(table, digits)
    spec = "l" * (len(headers) - 3) + "rrr"
    body = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
        *(" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if caption:
        body = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_latex_escape(caption)}}}",
            *body,
            r"\end{table}",
        ]
    return "\n".join(body) + "\n"
