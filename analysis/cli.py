"""`purerl-analyze SWEEP_DIR --by clip_eps --metric final_return --stat iqm`

Prints the table (and which jobs are missing or failed), and writes next to the sweep:
table.md, table.tex, curves.png (learning curves with CI bands per group) and, when two
axes vary (or --heatmap X Y is given), heatmap.png.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from analysis.aggregate import STATISTICS, aggregate, to_latex, to_markdown
from analysis.loader import load

ID_COLUMNS = {
    "job",
    "experiment",
    "seed",
    "setting",
    "final_return",
    "auc",
    "diverged",
    "diverged_update",
    "num_updates",
    "env_steps",
    "wall_seconds",
    "compile_seconds",
}


def varying_columns(summary: pd.DataFrame) -> list[str]:
    """Configuration columns that take more than one value (the sweep's axes)."""
    return [c for c in summary.columns if c not in ID_COLUMNS and summary[c].nunique(dropna=False) > 1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="purerl-analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="a multirun root, a job dir, a parent of several, or a quoted glob")
    p.add_argument("--by", nargs="+", default=None, help="group columns (default: the varying axes)")
    p.add_argument("--metric", default="final_return", help="summary column (default: final_return)")
    p.add_argument("--stat", default="iqm", choices=sorted(STATISTICS))
    p.add_argument("--ci", type=float, default=0.95)
    p.add_argument("--curve-metric", default="episode_return", help="per-update column for curves.png")
    p.add_argument("--heatmap", nargs=2, metavar=("X", "Y"), default=None, help="axes of heatmap.png")
    p.add_argument("--out", default=None, help="output folder (default: the sweep dir)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = load(args.sweep)
    jobs = pd.DataFrame(summary.attrs["jobs"])
    problems = jobs[jobs.status != "complete"] if len(jobs) else jobs
    for row in problems.itertuples():
        print(f"[{row.status}] {row.job}: {row.error.splitlines()[0] if row.error else ''}", file=sys.stderr)
    if summary.empty:
        print(f"no complete jobs under {args.sweep}", file=sys.stderr)
        return 1
    axes = varying_columns(summary)
    by = args.by or axes or ["algo", "env"]
    unknown = [b for b in by if b not in summary.columns]
    if unknown:
        print(f"--by: unknown column(s) {unknown}; sweep axes here: {axes}", file=sys.stderr)
        return 2
    table = aggregate(summary, by=by, metric=args.metric, stat=args.stat, ci=args.ci)
    markdown = to_markdown(table)
    complete = int((jobs.status == "complete").sum()) if len(jobs) else 0
    print(f"{args.sweep}: {complete}/{len(jobs)} jobs complete, {len(summary)} runs")
    print(markdown, end="")
    out = Path(args.out) if args.out else Path(args.sweep if not any(c in args.sweep for c in "*?[") else ".")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown)
    (out / "table.tex").write_text(to_latex(table, caption=f"{args.stat} {args.metric}"))
    written = ["table.md", "table.tex"]
    if not args.no_plots:
        from analysis import plots

        results = load(args.sweep, table="results", quiet=True)
        curve_by = by if len(by) <= 2 else by[:1]
        plots.learning_curves(
            results,
            curve_by,
            args.curve_metric,
            stat=args.stat,
            ci=args.ci,
            summary=summary,
            path=out / "curves.png",
        )
        written.append("curves.png")
        pair = args.heatmap or (by[:2] if len(by) >= 2 else (axes[:2] if len(axes) >= 2 else None))
        if pair:
            x, y = pair
            # Other varying columns (e.g. env) share cells: say so instead of hiding it.
            pooled = tuple(a for a in dict.fromkeys([*axes, *by]) if a not in (x, y))
            if pooled:
                print(f"note: heatmap.png pools runs over {', '.join(pooled)} in each ({x}, {y}) cell")
            plots.heatmap(
                summary, x=x, y=y, metric=args.metric, stat=args.stat, ci=args.ci,
                path=out / "heatmap.png", pooled=pooled,
            )
            written.append("heatmap.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
