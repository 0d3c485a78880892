"""Tables of point estimates with stratified bootstrap confidence intervals.

Following Agarwal et al. 2021: the statistic (mean, median or IQM = 25%-trimmed mean,
`scipy.stats.trim_mean(x, 0.25)`) is taken over all runs of a group; its percentile
bootstrap CI resamples seeds *within* each stratum — one stratum per distinct
configuration in the group (job × setting), so a group pooling several settings keeps
each setting's share of runs fixed.

Runs that have no value are never dropped silently. Every row counts its runs (`n_runs`),
the diverged ones (`n_diverged`) and those whose metric is NaN without diverging
(`n_no_episode`: for returns, no episode finished in the final window). The choice for
diverged runs (`diverged=`):

- "worst" (default for return metrics): a diverged run counts as a failure, the worst
  possible outcome: -inf where higher is better, +inf where the algorithm's headline is
  better when lower (bandit regret: `purerl.algos.lower_is_better`). It ranks below every
  finished run, so the median or IQM stays finite while few runs diverge (IQM: at most 25%)
  and becomes infinite beyond that; a mean with any diverged run is infinite.
- "exclude": diverged runs are left out of the statistic (and counted); this overstates
  the performance of a setting that diverges, so the table says so.

Runs without a finished episode are left out of the statistic in both cases (they have
no value to rank; counted in `n_no_episode`). A row whose estimate or CI cannot be
computed says why in `note`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from purerl import results as res

STAT_LABELS = {"mean": "Mean", "median": "Median", "iqm": "IQM"}
DIVERGED_POLICIES = ("worst", "exclude")
# Summary metrics for which higher is better, so that a diverged run is the worst outcome.
RETURN_METRICS = ("final_return", "auc")
# Summary columns that say which run a row is, beyond its configuration.
RUN_COLUMNS = ("job", "experiment", "setting", "seed")


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end)."""
    # Imported here: scipy.stats takes most of a second to import, and every purerl-train
    # process imports the analysis package (to check its command line) without aggregating.
    from scipy.stats import trim_mean

    return trim_mean(x, 0.25, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "median": lambda x, axis=-1: np.median(x, axis=axis),
    "iqm": iqm,
}


def statistic(name: str) -> Callable[..., np.ndarray]:
    if name not in STATISTICS:
        raise ValueError(f"stat: got {name!r}; allowed: {', '.join(STATISTICS)}")
    return STATISTICS[name]


def check_ci(ci: float) -> float:
    """The confidence level, or a ValueError saying what is allowed."""
    if isinstance(ci, bool) or not isinstance(ci, (int, float, np.floating)) or not 0 < ci < 1:
        raise ValueError(f"ci: got {ci!r}; allowed: a confidence level strictly between 0 and 1, e.g. 0.95")
    return float(ci)


def default_diverged_policy(metric: str) -> str:
    return "worst" if metric in RETURN_METRICS else "exclude"


def lower_is_better(df: pd.DataFrame, metric: str = "final_return") -> bool:
    """Whether `metric` of these runs is better when lower: a return metric (final_return, auc)
    of algorithms whose headline is (`purerl.algos.lower_is_better`, e.g. bandit regret).
    Runs of algorithms with opposite directions cannot share one table (ValueError)."""
    if metric not in RETURN_METRICS or "algo" not in df.columns or df.empty:
        return False
    from purerl.algos import lower_is_better as algo_lower

    directions = {algo: algo_lower(str(algo)) for algo in df["algo"].dropna().unique()}
    if len(set(directions.values())) > 1:
        lower = sorted(a for a, d in directions.items() if d)
        higher = sorted(a for a, d in directions.items() if not d)
        raise ValueError(f"metric: {metric} is better when lower for {', '.join(lower)} but when higher for "
                         f"{', '.join(higher)}; allowed: runs whose headline metrics point the same way")
    return bool(directions) and next(iter(directions.values()))


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
    (nothing to resample); with no stratum of two or more, the CI is NaN. Values may be
    -inf (diverged runs): the bounds are order statistics of the resampled statistic
    (the lower bound rounds down, the upper bound up), never an interpolation, so an
    infinite bound is exact rather than NaN."""
    fn = statistic(stat)
    check_ci(ci)
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    batch = samples[0].shape[:-1]
    if not any(s.shape[-1] >= 2 for s in samples):
        nan = np.full(batch, np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    parts = []
    for s in samples:
        n = s.shape[-1]
        if n >= 2:
            parts.append(s[..., rng.integers(0, n, size=(n_resamples, n))])  # (*batch, R, n)
        else:
            parts.append(np.broadcast_to(s[..., None, :], (*batch, n_resamples, n)))
    resampled = fn(np.concatenate(parts, axis=-1), axis=-1)  # (*batch, R)
    alpha = (1.0 - ci) / 2.0
    low = np.quantile(resampled, alpha, axis=-1, method="lower")
    high = np.quantile(resampled, 1.0 - alpha, axis=-1, method="higher")
    return np.asarray(low), np.asarray(high)


# ---------------------------------------------------------------- what a run is
def config_columns(summary: pd.DataFrame) -> list[str]:
    """The summary's configuration columns: algo, env, every Hyper and Config value."""
    skip = {*RUN_COLUMNS, *res.OUTCOME_COLUMNS}
    return [c for c in summary.columns if c not in skip]


def varying_columns(summary: pd.DataFrame) -> list[str]:
    """Configuration columns that take more than one value (the sweep's axes)."""
    return [c for c in config_columns(summary) if summary[c].nunique(dropna=False) > 1]


def pooled_columns(summary: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """Configuration columns not in `by` that vary *within* some group of `by`: grouping
    by `by` pools runs over them (e.g. `--by clip_eps` in a sweep over two envs)."""
    by = list(by)
    candidates = [c for c in varying_columns(summary) if c not in by]
    if not candidates:
        return []
    if not by:
        return candidates
    counts = summary.groupby(by, dropna=False)[candidates].nunique(dropna=False)
    return [c for c in candidates if (counts[c] > 1).any()]


def complete_by(summary: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """`by` plus the fewest varying columns (taken in column order) that leave nothing
    pooled; e.g. with env and num_envs varying, `--by clip_eps` -> [env, clip_eps,
    num_envs] (total_timesteps, set per env, then varies within no group)."""
    by = list(by)
    while pooled := pooled_columns(summary, by):
        by.append(pooled[0])
    return by


def duplicate_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Runs present in more than one job (same configuration and seed): pooling them
    would count the same seed twice. One row per duplicated run with its jobs."""
    if "job" not in summary.columns or summary.empty:
        return pd.DataFrame(columns=["jobs", "copies"])
    keys = [*config_columns(summary), "seed"]
    frame = summary[[*keys, "job"]].astype({k: str for k in keys})
    grouped = frame.groupby(keys, dropna=False, sort=True)["job"].agg(lambda j: tuple(sorted(set(j))))
    copies = frame.groupby(keys, dropna=False, sort=True).size()
    table = pd.DataFrame({"jobs": grouped, "copies": copies}).reset_index()
    return table[table.jobs.map(len) > 1].reset_index(drop=True)


def describe_duplicates(duplicates: pd.DataFrame) -> str:
    """One line: which jobs share how many runs."""
    pairs = duplicates.groupby("jobs").size().sort_values(ascending=False)
    shown = "; ".join(f"{' and '.join(jobs)} share {n} run(s)" for jobs, n in pairs.head(3).items())
    more = f"; and {len(pairs) - 3} more job groups" if len(pairs) > 3 else ""
    return (
        f"{len(duplicates)} run(s) (same configuration and seed) appear in several jobs, so pooling "
        f"would count their seeds twice: {shown}{more}"
    )


# ---------------------------------------------------------------- the table
def _note(n: int, n_diverged: int, n_no_episode: int, n_used: int, policy: str,
          estimate: float, low: float, high: float, metric: str, worst: float = -np.inf) -> str:
    """Why a cell is NaN or infinite (empty when it is an ordinary number)."""
    no_value = "no finished episode" if metric in RETURN_METRICS else f"{metric} is NaN"
    if n_used == 0:
        parts = []
        if n_diverged:
            parts.append(f"{n_diverged} diverged" + (" (excluded)" if policy == "exclude" else ""))
        if n_no_episode:
            parts.append(f"{n_no_episode} with {no_value}")
        return "no run to aggregate: " + ", ".join(parts) if parts else "no runs"
    if estimate == worst:
        return f"{n_diverged} of {n - n_no_episode} runs diverged and count as {_fmt(worst, 1)}"
    if np.isnan(low) and np.isnan(high):
        return "no CI: fewer than 2 runs per setting"
    if worst in (low, high):
        return f"CI reaches {_fmt(worst, 1)}: resamples with more diverged runs"
    return ""


def aggregate(
    df: pd.DataFrame,
    by: str | Sequence[str],
    metric: str = "final_return",
    stat: str = "iqm",
    ci: float = 0.95,
    *,
    diverged: str | None = None,
    strata: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group of `by`: the statistic, its CI (ci_low, ci_high), n_runs (all
    runs in the group), n_diverged, n_no_episode and a note when a cell is NaN/-inf.

    `diverged`: "worst" (a diverged run counts as -inf, or +inf where lower is better:
    `lower_is_better`) or "exclude"; default "worst" for return metrics (final_return, auc),
    "exclude" otherwise (see the module docstring).
    Refuses (ValueError) to pool the same run from two jobs unless "job" is in `by`."""
    by = [by] if isinstance(by, str) else list(by)
    statistic(stat)
    check_ci(ci)
    policy = default_diverged_policy(metric) if diverged is None else diverged
    if policy not in DIVERGED_POLICIES:
        raise ValueError(f"diverged: got {policy!r}; allowed: {', '.join(DIVERGED_POLICIES)}")
    unknown = [c for c in by if c not in df.columns]
    if unknown:
        raise ValueError(f"by: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(map(str, df.columns))}")
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if metric not in numeric:
        raise ValueError(f"metric: got {metric!r}; allowed: {', '.join(map(str, numeric))}")
    if "job" not in by and "job" in df.columns:
        duplicates = duplicate_runs(df)
        if len(duplicates):
            raise ValueError(describe_duplicates(duplicates) + "; analyse the jobs separately or group by job")
    lower = lower_is_better(df, metric)
    worst = np.inf if lower else -np.inf
    strata_cols = [c for c in (strata if strata is not None else ("job", "setting")) if c in df.columns and c not in by]
    fn = statistic(stat)
    rows = []
    for key, group in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        is_diverged = group["diverged"].to_numpy(bool) if "diverged" in group else np.zeros(len(group), bool)
        values = group[metric].to_numpy(np.float64)
        no_value = ~np.isfinite(values) & ~is_diverged
        if policy == "worst":
            values = np.where(is_diverged, worst, values)
            used = ~no_value
        else:
            used = ~no_value & ~is_diverged
        kept = group.assign(_value=values)[used]
        if strata_cols:
            samples = [g["_value"].to_numpy() for _, g in kept.groupby(strata_cols, sort=True, dropna=False)]
        else:
            samples = [kept["_value"].to_numpy()]
        samples = [s for s in samples if s.size]
        if samples:
            estimate = float(fn(np.concatenate(samples)))
            low, high = (float(v) for v in stratified_bootstrap_ci(samples, stat, ci, n_resamples, seed))
        else:
            estimate, low, high = np.nan, np.nan, np.nan
        n_div, n_none = int(is_diverged.sum()), int(no_value.sum())
        rows.append(
            {
                **dict(zip(by, key)),
                stat: estimate,
                "ci_low": low,
                "ci_high": high,
                "n_runs": len(group),
                "n_diverged": n_div,
                "n_no_episode": n_none,
                "note": _note(len(group), n_div, n_none, int(used.sum()), policy, estimate, low, high, metric,
                              worst),
            }
        )
    columns = [*by, stat, "ci_low", "ci_high", "n_runs", "n_diverged", "n_no_episode", "note"]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs.update({"metric": metric, "stat": stat, "ci": ci, "by": list(by), "diverged": policy,
                        "lower_is_better": lower})
    return table


def explain(table: pd.DataFrame) -> str:
    """The sentence printed under a table: how diverged runs and missing values were treated."""
    policy = table.attrs.get("diverged", "worst")
    n_div = int(table["n_diverged"].sum()) if "n_diverged" in table else 0
    n_none = int(table["n_no_episode"].sum()) if "n_no_episode" in table else 0
    parts = []
    if n_div:
        parts.append(
            f"{n_div} diverged run(s) count as the worst outcome "
            f"({'+inf' if table.attrs.get('lower_is_better') else '-inf'})"
            if policy == "worst"
            else f"{n_div} diverged run(s) are left out of the statistic (which overstates those settings)"
        )
    if n_none:
        parts.append(f"{n_none} run(s) without a finished episode in the final window are left out")
    return ("Note: " + "; ".join(parts) + ".") if parts else ""


# ---------------------------------------------------------------- formatting
def _fmt(value: object, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "nan"
        if np.isinf(value):
            return "-inf" if value < 0 else "inf"
        return f"{value:.{digits}g}"
    return str(value)


def _display(table: pd.DataFrame, digits: int) -> tuple[list[str], list[list[str]], int]:
    """Headers, cells and the number of leading (left-aligned) columns."""
    stat = table.attrs.get("stat") or next(c for c in table.columns if c in STATISTICS)
    metric = table.attrs.get("metric", "")
    ci = table.attrs.get("ci", 0.95)
    by = table.attrs.get("by") or list(table.columns[: list(table.columns).index(stat)])
    with_notes = "note" in table and table["note"].astype(bool).any()
    direction = " (lower is better)" if table.attrs.get("lower_is_better") else ""
    headers = [*by, f"{STAT_LABELS[stat]} {metric}{direction} [{ci:.0%} CI]".replace("  ", " "), "n", "n diverged",
               "n no episode"]
    if with_notes:
        headers.append("note")
    rows = []
    for r in table.to_dict("records"):
        estimate = f"{_fmt(r[stat], digits)} [{_fmt(r['ci_low'], digits)}, {_fmt(r['ci_high'], digits)}]"
        cells = [*(_fmt(r[b], digits) for b in by), estimate, str(r["n_runs"]), str(r["n_diverged"])]
        cells.append(str(r.get("n_no_episode", r.get("n_nan", 0))))
        if with_notes:
            cells.append(r["note"])
        rows.append(cells)
    return headers, rows, len(by)


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` needed), with the `explain` note."""
    headers, rows, lead = _display(table, digits)
    numeric = [lead <= i < lead + 4 for i in range(len(headers))]
    note = explain(table)
    return res.markdown_table(headers, rows, numeric) + "\n" + (f"\n{note}\n" if note else "")


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
    headers, rows, lead = _display(table, digits)
    spec = "".join("r" if lead <= i < lead + 4 else "l" for i in range(len(headers)))
    body = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
        *(" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    note = explain(table)
    if caption:
        body = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_latex_escape(caption + ('. ' + note if note else ''))}}}",
            *body,
            r"\end{table}",
        ]
    return "\n".join(body) + "\n"
