"""Load sweep results written by `purerl-train` into one DataFrame.

`load(path_or_glob)` accepts a multirun root (`multirun/<name>`), a single job dir, a
parent of several, or a glob; it reads only jobs whose status is `complete`, and lists
the others (failed with their error, incomplete = killed or still running, and — for a
multirun root — missing = expected from `multirun.yaml` but never started) in
`df.attrs["jobs"]` and a warning, instead of crashing.
"""

from __future__ import annotations

import glob as globlib
import os
import warnings
from pathlib import Path

import pandas as pd

from purerl import results as res

JOB_MARKERS = (res.STATUS, ".hydra")


def _is_job_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in JOB_MARKERS) and not (path / "multirun.yaml").exists()


def _find_job_dirs(root: Path) -> list[Path]:
    if _is_job_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and _is_job_dir(here):
            found.append(here)
            dirnames[:] = []
    return found


def _expected_overrides(multirun_root: Path) -> list[tuple[str, ...]] | None:
    """Per job of the multirun started in `multirun_root`: its sorted override list."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(multirun_root / "multirun.yaml")
        overrides = list(cfg.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # not a basic-sweeper multirun, or unreadable: cannot tell
        return None
    return [tuple(sorted(job)) for batch in batches for job in batch]


def _job_overrides(job_dir: Path) -> tuple[str, ...] | None:
    from omegaconf import OmegaConf

    try:
        return tuple(sorted(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")))
    except Exception:
        return None


def jobs(path_or_glob: str | os.PathLike) -> pd.DataFrame:
    """One row per job: job (path relative to the common root), path, status
    (complete | failed | incomplete | missing), error, overrides."""
    pattern = str(path_or_glob)
    roots = [Path(p) for p in sorted(globlib.glob(pattern))] if globlib.has_magic(pattern) else [Path(pattern)]
    roots = [r for r in roots if r.is_dir()]
    if not roots:
        raise FileNotFoundError(f"no sweep or job directory matches {pattern!r}")
    rows = []
    for root in roots:
        job_dirs = _find_job_dirs(root)
        seen: set[tuple[str, ...]] = set()
        for job_dir in job_dirs:
            status = res.read_status(job_dir)
            overrides = _job_overrides(job_dir)
            if overrides is not None:
                seen.add(overrides)
            if res.is_complete(job_dir):
                state, error = "complete", ""
            elif status is not None and status.get("status") == "failed":
                state, error = "failed", status.get("error", "")
            else:
                state, error = "incomplete", "no completion record (killed, crashed or still running)"
            rows.append({"path": job_dir, "status": state, "error": error, "overrides": " ".join(overrides or ())})
        if (root / "multirun.yaml").exists():
            for expected in _expected_overrides(root) or []:
                if expected not in seen:
                    rows.append(
                        {
                            "path": root / "?",
                            "status": "missing",
                            "error": "never started",
                            "overrides": " ".join(expected),
                        }
                    )
    paths = [Path(r["path"]).resolve() for r in rows]
    common = Path(os.path.commonpath([str(p) for p in paths])) if paths else Path(".")
    if len(paths) == 1:
        common = paths[0].parent
    for row, path in zip(rows, paths):
        row["job"] = str(path.relative_to(common)) if row["status"] != "missing" else row["overrides"]
    table = pd.DataFrame(rows, columns=["job", "path", "status", "error", "overrides"])
    return table


def load(path_or_glob: str | os.PathLike, table: str = "summary", quiet: bool = False) -> pd.DataFrame:
    """All complete jobs' `summary` (one row per run) or `results` (one row per run ×
    update) rows, with a `job` column. `df.attrs["jobs"]` lists every job and its status
    (as records; `jobs(path)` gives the same as a DataFrame), `df.attrs["failed"]` and
    `df.attrs["missing"]` (missing or incomplete) the job names that contributed no rows."""
    if table not in ("summary", "results"):
        raise ValueError(f"table: got {table!r}; allowed: 'summary', 'results'")
    job_table = jobs(path_or_glob)
    filename = res.SUMMARY if table == "summary" else res.RESULTS
    frames = []
    for row in job_table.itertuples():
        if row.status != "complete":
            continue
        frame = pd.read_parquet(Path(row.path) / filename)
        frame.insert(0, "job", row.job)
        frames.append(frame)
    problems = job_table[job_table.status != "complete"]
    if len(problems) and not quiet:
        lines = [
            f"  {r.status:10s} {r.job}: {r.error.splitlines()[0] if r.error else ''}" for r in problems.itertuples()
        ]
        warnings.warn(
            f"{len(problems)} of {len(job_table)} jobs under {path_or_glob} are not complete:\n" + "\n".join(lines),
            stacklevel=2,
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # attrs hold plain lists (pandas compares attrs when combining frames; no DataFrames here).
    df.attrs["jobs"] = [{k: str(v) for k, v in r.items()} for r in job_table.to_dict("records")]
    df.attrs["failed"] = job_table[job_table.status == "failed"].job.tolist()
    df.attrs["missing"] = job_table[job_table.status.isin(["missing", "incomplete"])].job.tolist()
    return df
