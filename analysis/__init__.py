"""Analysis of purerl sweep results: `load`, `aggregate`, tables, plots (`analysis.plots`)."""

from analysis.aggregate import (
    aggregate,
    duplicate_runs,
    pooled_columns,
    stratified_bootstrap_ci,
    to_latex,
    to_markdown,
    varying_columns,
)
from analysis.loader import jobs, load

__all__ = [
    "aggregate",
    "duplicate_runs",
    "jobs",
    "load",
    "pooled_columns",
    "stratified_bootstrap_ci",
    "to_latex",
    "to_markdown",
    "varying_columns",
]
