"""Analysis of purerl sweep results: `load`, `aggregate`, tables, plots (`analysis.plots`)."""

from analysis.aggregate import aggregate, stratified_bootstrap_ci, to_latex, to_markdown
from analysis.loader import jobs, load

__all__ = ["aggregate", "jobs", "load", "stratified_bootstrap_ci", "to_latex", "to_markdown"]
