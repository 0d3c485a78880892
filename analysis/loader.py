"""Load sweep results written by `purerl-train` into one DataFrame.

`load(path_or_glob)` accepts a multirun root (`multirun/<name>`), a single job dir, a
parent of several, or a glob (an existing path is always taken literally, so job folders
named `grid.clip_eps=[0.1,0.2]` work); it reads only jobs whose status is `complete`, and
lists the others (failed with their error, incomplete = killed or still running,
damaged = complete but a result file's size or sha256 differs from what the job recorded
when it finished, unreadable = complete but a parquet file cannot be read, and — for a
multirun root —
missing = expected from `multirun.yaml` but never started) in `df.attrs["jobs"]` and a
warning, instead of crashing.

Two jobs that hold the same run (same configuration and seed, e.g. two single runs under
one `name` with overlapping grids) would count that seed twice: `load` refuses them
(`duplicates="error"`), or keeps the copy of the most recently finished job
(`duplicates="newest"`), or keeps all (`duplicates="keep"`, to compare the jobs with
`by="job"`; `analysis.aggregate` still refuses to pool them).
"""

from __future__ import annotations

import glob as globlib
import itertools
import os
import warnings
from pathlib import Path
from typing import Any

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


def multirun_jobs(overrides: list[Any]) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun, as Hydra's basic sweeper makes them: the
    Cartesian product of every sweep override's values (in command-line order), each job a
    list of `key=value` overrides. `overrides`: parsed Hydra overrides."""
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override() else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
        for o in overrides
    ]
    return [list(job) for job in itertools.product(*choices)]


def _expected_overrides(multirun_root: Path) -> list[tuple[str, ...]] | None:
    """Per job of the multirun started in `multirun_root`: its sorted override list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(multirun_root / "multirun.yaml")
        overrides = list(cfg.hydra.overrides.task)
        jobs = multirun_jobs(OverridesParser.create().parse_overrides(overrides))
    except Exception:  # not a basic-sweeper multirun, or unreadable: cannot tell
        return None
    return [tuple(sorted(job)) for job in jobs]


def _job_overrides(job_dir: Path) -> tuple[str, ...] | None:
    from omegaconf import OmegaConf

    try:
        return tuple(sorted(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")))
    except Exception:
        return None


def jobs(path_or_glob: str | os.PathLike) -> pd.DataFrame:
    """One row per job: job (path relative to the common root), path, status
    (complete | damaged | failed | incomplete | missing), error, overrides. A damaged job
    finished, but a result file changed since (its size or sha256 differs from the
    completion record: truncated, edited, removed); error names the file."""
    pattern = str(path_or_glob)
    if Path(pattern).exists():  # a real path is literal, even with [ ] * ? in its name
        roots = [Path(pattern)]
    elif globlib.has_magic(pattern):
        roots = [Path(p) for p in sorted(globlib.glob(pattern))]
    else:
        roots = []
    roots = [r for r in roots if r.is_dir()]
    if not roots:
        raise FileNotFoundError(f"no sweep or job directory matches {pattern!r}")
    rows = []
    visited: set[Path] = set()
    for root in roots:
        job_dirs = _find_job_dirs(root)
        seen: set[tuple[str, ...]] = set()
        for job_dir in job_dirs:
            if job_dir.resolve() in visited:  # overlapping glob matches: read each job once
                continue
            visited.add(job_dir.resolve())
            overrides = _job_overrides(job_dir)
            if overrides is not None:
                seen.add(overrides)
            state, error = res.job_state(job_dir)
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


def _read(path: Path) -> tuple[pd.DataFrame | None, str]:
    """A parquet file, or (None, why) if it cannot be read (truncated, corrupted, missing)."""
    try:
        return pd.read_parquet(path), ""
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"{path.name} unreadable: {type(e).__name__}: {first}"


DUPLICATE_POLICIES = ("error", "newest", "keep")


def load(
    path_or_glob: str | os.PathLike,
    table: str = "summary",
    quiet: bool = False,
    duplicates: str = "error",
) -> pd.DataFrame:
    """All complete jobs' `summary` (one row per run) or `results` (one row per run ×
    update) rows, with a `job` column. `df.attrs["jobs"]` lists every job and its status
    (as records; `jobs(path)` gives the same as a DataFrame), `df.attrs["failed"]`,
    `df.attrs["missing"]` (missing or incomplete), `df.attrs["damaged"]` and
    `df.attrs["unreadable"]` the job names that contributed no rows. `duplicates`: see the module docstring; with
    "newest", `df.attrs["dropped_duplicates"]` counts the runs left out."""
    from analysis.aggregate import describe_duplicates, duplicate_runs

    if table not in ("summary", "results"):
        raise ValueError(f"table: got {table!r}; allowed: 'summary', 'results'")
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates: got {duplicates!r}; allowed: {', '.join(DUPLICATE_POLICIES)}")
    job_table = jobs(path_or_glob)
    summaries, frames = {}, []
    for i, row in job_table.iterrows():
        if row.status != "complete":
            continue
        summary, why = _read(Path(row.path) / res.SUMMARY)
        frame = summary
        if summary is not None and table == "results":
            frame, why = _read(Path(row.path) / res.RESULTS)
        if frame is None:
            job_table.loc[i, ["status", "error"]] = ["unreadable", why]
            continue
        summaries[row.job] = summary.assign(job=row.job)
        frames.append(frame.assign(job=row.job))

    dropped = 0
    if summaries and duplicates != "keep":
        all_runs = pd.concat(list(summaries.values()), ignore_index=True)
        repeated = duplicate_runs(all_runs)
        if len(repeated) and duplicates == "error":
            raise ValueError(
                f"{path_or_glob}: {describe_duplicates(repeated)}; load the jobs separately, or pass "
                f"duplicates='newest' (purerl-analyze --duplicates newest) to keep each run's newest copy"
            )
        if len(repeated):
            frames, dropped = _keep_newest(frames, all_runs, job_table)

    problems = job_table[job_table.status != "complete"]
    if len(problems) and not quiet:
        lines = [
            f"  {r.status:10s} {r.job}: {r.error.splitlines()[0] if r.error else ''}" for r in problems.itertuples()
        ]
        warnings.warn(
            f"{len(problems)} of {len(job_table)} jobs under {path_or_glob} are not complete:\n" + "\n".join(lines),
            stacklevel=2,
        )
    frames = [f[["job", *[c for c in f.columns if c != "job"]]] for f in frames]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # attrs hold plain lists (pandas compares attrs when combining frames; no DataFrames here).
    df.attrs["jobs"] = [{k: str(v) for k, v in r.items()} for r in job_table.to_dict("records")]
    df.attrs["failed"] = job_table[job_table.status == "failed"].job.tolist()
    df.attrs["missing"] = job_table[job_table.status.isin(["missing", "incomplete"])].job.tolist()
    df.attrs["damaged"] = job_table[job_table.status == "damaged"].job.tolist()
    df.attrs["unreadable"] = job_table[job_table.status == "unreadable"].job.tolist()
    df.attrs["dropped_duplicates"] = dropped
    return df


def _keep_newest(frames: list[pd.DataFrame], all_runs: pd.DataFrame, job_table: pd.DataFrame):
    """Drop every run that a more recently finished job also holds."""
    from analysis.aggregate import config_columns

    finished = {}
    for row in job_table.itertuples():
        status = res.read_status(row.path) or {}
        finished[row.job] = float(status.get("finished", 0.0))
    keys = [*config_columns(all_runs), "seed"]
    ranked = all_runs.assign(_finished=all_runs.job.map(finished)).astype({k: str for k in keys})
    newest = ranked.sort_values("_finished").groupby(keys, dropna=False).job.transform("last")
    keep = all_runs.loc[ranked.job == newest, ["job", "setting", "seed"]]
    kept = []
    for frame in frames:
        merged = frame.merge(keep.assign(_keep=True), on=["job", "setting", "seed"], how="left")
        kept.append(frame[merged["_keep"].notna().to_numpy()])
    return kept, int(len(all_runs) - len(keep))
