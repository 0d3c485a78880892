"""`purerl-analyze SWEEP_DIR --by clip_eps --metric final_return --stat iqm`

Prints the table (and one line for each job that is missing, failed, damaged or
unreadable: those contribute nothing), and writes next to the sweep: table.md, table.tex,
curves.png (learning curves with CI bands per group) and, when two columns are grouped
(or --heatmap X Y is given), heatmap.png.

Every argument is checked before anything is written; a bad one is a one-line error that
lists what is allowed. `--by` must name every column that varies within its groups (or
pass --pool to pool over them on purpose): otherwise e.g. two envs would silently share
one IQM.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from analysis.aggregate import (
    DIVERGED_POLICIES,
    STATISTICS,
    aggregate,
    check_ci,
    complete_by,
    config_columns,
    default_diverged_policy,
    pooled_columns,
    to_latex,
    to_markdown,
    varying_columns,
)
from analysis.loader import load
from purerl import results as res

__all__ = ["main", "varying_columns"]


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see --help)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="purerl-analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="a multirun root, a job dir, a parent of several, or a quoted glob")
    p.add_argument("--by", nargs="+", default=None, help="group columns (default: every varying column)")
    p.add_argument("--pool", action="store_true", help="allow pooling runs over varying columns not in --by")
    p.add_argument("--metric", default="final_return", help="summary column (default: final_return)")
    p.add_argument("--stat", default="iqm", choices=sorted(STATISTICS))
    p.add_argument("--ci", type=float, default=0.95, help="confidence level in (0, 1) (default: 0.95)")
    p.add_argument(
        "--diverged",
        choices=DIVERGED_POLICIES,
        default=None,
        help="diverged runs: 'worst' counts them as -inf (default for returns), 'exclude' leaves them out",
    )
    p.add_argument(
        "--duplicates",
        choices=("error", "newest"),
        default="error",
        help="runs held by several jobs: refuse (default) or keep each run's newest copy",
    )
    p.add_argument("--curve-metric", default=None,
                   help="per-update column for curves.png (default: the algorithm's headline metric)")
    p.add_argument("--heatmap", nargs=2, metavar=("X", "Y"), default=None, help="axes of heatmap.png")
    p.add_argument("--heatmap-ci", action="store_true", help="also print the CI width in each heatmap cell")
    p.add_argument("--out", default=None, help="output folder (default: the sweep dir)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def _allowed(columns) -> str:
    return ", ".join(map(str, columns)) or "(none)"


def summary_metrics(summary: pd.DataFrame) -> list[str]:
    """Numeric per-run outcome columns that `--metric` accepts."""
    return [
        c
        for c in res.OUTCOME_COLUMNS
        if c in summary
        and c not in ("diverged", "diverged_update")
        and pd.api.types.is_numeric_dtype(summary[c])
        and not pd.api.types.is_bool_dtype(summary[c])
    ]


def curve_metrics(results: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Numeric per-update columns that `--curve-metric` accepts (not configuration)."""
    skip = {"job", "experiment", "seed", "setting", "update", "env_steps", *config_columns(summary)}
    return [c for c in results.columns if c not in skip and pd.api.types.is_numeric_dtype(results[c])]


def headline_metric(summary: pd.DataFrame) -> str:
    """The algorithms' headline per-update metric (`purerl.algos.return_metric`); one is needed."""
    from purerl.algos import ALGORITHMS, return_metric

    names = {return_metric(algo) if algo in ALGORITHMS else res.RETURN_METRIC for algo in summary["algo"].unique()}
    if len(names) > 1:
        raise UsageError(f"--curve-metric: the algorithms' headline metrics differ ({', '.join(sorted(names))}); "
                         "name one")
    return names.pop() if names else res.RETURN_METRIC


def _heatmap_axes(summary: pd.DataFrame, by: list[str], explicit: list[str] | None):
    """(x, y, facets) for heatmap.png, or None when there is no second axis."""
    if explicit:
        x, y = explicit
        return x, y, [b for b in by if b not in (x, y)]
    varying = [b for b in by if summary[b].nunique(dropna=False) > 1]
    if len(varying) < 2:
        return None
    numeric = [b for b in varying if pd.api.types.is_numeric_dtype(summary[b])]
    pair = numeric[-2:] if len(numeric) >= 2 else varying[-2:]
    y, x = pair
    return x, y, [b for b in by if b not in (x, y)]


def _pooling_message(flag: str, summary: pd.DataFrame, by: list[str], pooled: list[str]) -> str:
    suggestion = " ".join(complete_by(summary, by))
    return (
        f"{flag} {' '.join(by)} pools runs over {', '.join(pooled)} (they vary within its groups); "
        f"group by them too (--by {suggestion}) or pass --pool to pool on purpose"
    )


def run(args: argparse.Namespace) -> int:
    try:
        check_ci(args.ci)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            summary = load(args.sweep, duplicates=args.duplicates)
            results = None if args.no_plots else load(args.sweep, table="results", duplicates=args.duplicates)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        except ValueError as e:  # duplicated runs
            raise UsageError(str(e)) from None
    jobs = pd.DataFrame((summary if results is None else results).attrs["jobs"])
    if results is not None:  # a job whose per-update table cannot be read is left out of the table too
        complete = set(jobs.job[jobs.status == "complete"]) if len(jobs) else set()
        summary = summary[summary.job.isin(complete)].reset_index(drop=True) if len(summary) else summary
    problems = jobs[jobs.status != "complete"] if len(jobs) else jobs
    for row in problems.itertuples():
        print(f"[{row.status}] {row.job}: {row.error.splitlines()[0] if row.error else ''}", file=sys.stderr)
    if summary.empty:
        print(f"no complete jobs under {args.sweep}", file=sys.stderr)
        return 1
    if summary.attrs.get("dropped_duplicates"):
        print(f"note: kept the newest copy of duplicated runs ({summary.attrs['dropped_duplicates']} left out)")

    # ---- every argument checked before anything is written
    axes = varying_columns(summary)
    by = args.by or complete_by(summary) or ["algo", "env"]
    groupable = ["job", *config_columns(summary)]
    unknown = [b for b in by if b not in summary.columns or b not in groupable]
    if unknown:
        raise UsageError(f"--by: unknown column(s) {', '.join(unknown)}; allowed: {_allowed(groupable)}")
    metrics = summary_metrics(summary)
    if args.metric not in metrics:
        raise UsageError(f"--metric: got {args.metric!r}; allowed: {_allowed(metrics)}")
    pooled = pooled_columns(summary, by)
    if pooled and not args.pool:
        raise UsageError(_pooling_message("--by", summary, by, pooled))
    heat = None
    if not args.no_plots:
        if args.heatmap:
            bad = [c for c in args.heatmap if c not in groupable]
            if bad:
                allowed = _allowed(axes or groupable)
                raise UsageError(f"--heatmap: unknown column(s) {', '.join(bad)}; allowed: {allowed}")
        heat = _heatmap_axes(summary, by, args.heatmap)
        if heat is not None:
            x, y, facets = heat
            heat_pooled = pooled_columns(summary, [*facets, y, x])
            if heat_pooled and not args.pool:
                raise UsageError(_pooling_message("--heatmap", summary, [*facets, y, x], heat_pooled))
        allowed_curves = curve_metrics(results, summary)
        if args.curve_metric is None:
            args.curve_metric = headline_metric(summary)
        if args.curve_metric not in allowed_curves:
            raise UsageError(f"--curve-metric: got {args.curve_metric!r}; allowed: {_allowed(allowed_curves)}")
    diverged = args.diverged or default_diverged_policy(args.metric)
    table = aggregate(summary, by=by, metric=args.metric, stat=args.stat, ci=args.ci, diverged=diverged)

    markdown = to_markdown(table)
    complete = int((jobs.status == "complete").sum()) if len(jobs) else 0
    print(f"{args.sweep}: {complete}/{len(jobs)} jobs complete, {len(summary)} runs")
    if pooled:
        print(f"note: pooled over {', '.join(pooled)} (--pool)")
    print(markdown, end="")
    out = Path(args.out) if args.out else (Path(args.sweep) if Path(args.sweep).is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    (out / "table.tex").write_text(to_latex(table, caption=f"{args.stat} {args.metric}"))
    written = ["table.md", "table.tex"]
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")  # files only
        from analysis import plots

        plots.learning_curves(
            results, by, args.curve_metric, stat=args.stat, ci=args.ci, summary=summary,
            path=out / "curves.png", diverged=diverged, pooled=pooled,
        )
        written.append("curves.png")
        if heat is not None:
            x, y, facets = heat
            plots.heatmap(
                summary, x=x, y=y, metric=args.metric, stat=args.stat, ci=args.ci, path=out / "heatmap.png",
                facets=facets, pooled=pooled_columns(summary, [*facets, y, x]), show_ci=args.heatmap_ci,
                diverged=diverged,
            )
            written.append("heatmap.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UsageError as e:
        print(f"purerl-analyze: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
