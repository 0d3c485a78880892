"""Sweep results as tidy tables on disk, written so that a crash never looks complete.

A job directory holds, once finished:

- `results.parquet`: long/tidy, one row per run × update. Columns, in order: experiment,
  algo, env, seed, setting (index into the job's in-job grid), every `Hyper` value, every
  static `Config` value (non-scalars as their `repr`), update, env_steps, then every
  metric the algorithm reports (a metric whose name clashes with one of the columns
  before it, e.g. PPO's scheduled `lr` vs the `Hyper.lr`, is stored as `metric_<name>`).
- `summary.parquet`: one row per run with the same identifying columns plus
  final_return (mean return over the last 10% of updates), auc (mean return over all
  updates: the area under the learning curve divided by its length) — "return" being the
  algorithm's headline metric (`purerl.algos.return_metric`: bandits' cumulative regret,
  which is better when lower, `purerl.algos.lower_is_better`), final_episodes
  (episodes finished in that last 10%; final_return is NaN when it is 0), diverged and
  diverged_update (first update with a NaN/inf metric), num_updates, env_steps,
  wall_seconds and compile_seconds (of the whole job: its runs train together).
  A diverged run has NaN final_return and auc: its numbers after divergence mean
  nothing, and a finite value would let it pass for a result (analysis counts it as
  diverged instead, see `analysis.aggregate`).
- `config.yaml`: the fully resolved configuration (text supplied by the caller).
- `policies/` (purerl-train's `save_policies=true`, the default): the final parameters
  and observation statistics of every run, written by `purerl.policies` (orbax).
- `job.json`: status `running` -> `complete` | `failed`, plus a fingerprint of the
  configuration. It is written first (running) and last (complete); every file is
  written to a temporary name and `os.replace`d into place, so a job killed at any
  point is never `complete`, and no reader sees a half-written parquet file. A complete
  record also holds the size and sha256 of every result file (`files`: the tables,
  config.yaml and the saved policies' files), checked by `is_complete` (a rerun skips
  only an intact job) and by the analysis loader: a file truncated, edited or removed
  afterwards makes the job `damaged` (`damage` says which file and how), and a rerun
  trains it again.

Nothing here knows about Hydra; `purerl/cli/train.py` drives it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = "results.parquet"
SUMMARY = "summary.parquet"
CONFIG = "config.yaml"
STATUS = "job.json"

RETURN_METRIC = "episode_return"
# Metrics that are NaN by design in updates in which no episode finished.
EPISODE_METRICS = ("episode_return", "episode_length")
# Metrics that are NaN by design in the updates without an evaluation (eval_every,
# update_eval_every).
EVALUATION_METRICS = ("eval_return", "eval_before", "eval_after", "eval_before_repeat")
ID_COLUMNS = ("experiment", "algo", "env", "seed", "setting")
# Columns of summary.parquet that are outcomes of a run, not its configuration.
OUTCOME_COLUMNS = (
    "final_return",
    "auc",
    "final_episodes",
    "diverged",
    "diverged_update",
    "num_updates",
    "env_steps",
    "wall_seconds",
    "compile_seconds",
)
FINAL_FRACTION = 0.1


# ---------------------------------------------------------------- atomic files
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- job status
def read_status(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's status record, or None if it has none (never started, or unreadable)."""
    try:
        return json.loads((Path(job_dir) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """{"size": bytes, "sha256": hex digest} of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def _result_files(job_dir: Path, extra: Sequence[str]) -> list[str]:
    """The job's result files, relative to `job_dir`: the tables, config.yaml and every
    file under the `extra` paths (files or folders), sorted."""
    names = [RESULTS, SUMMARY, CONFIG]
    for entry in extra:
        path = job_dir / entry
        if path.is_dir():
            names += [p.relative_to(job_dir).as_posix() for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            names.append(Path(entry).as_posix())
    return sorted(set(names))


def damage(job_dir: str | os.PathLike, status: Mapping[str, Any] | None = None) -> str:
    """Why a complete job's result files differ from what its completion recorded, in one
    line ("results.parquet sha256 mismatch; ..."), or "" if they are intact. A record
    without checksums (written before they were kept) is checked for the tables' presence."""
    job_dir = Path(job_dir)
    status = read_status(job_dir) if status is None else status
    recorded = (status or {}).get("files")
    if not isinstance(recorded, Mapping):
        recorded = {RESULTS: None, SUMMARY: None}
    problems = []
    for name, expected in sorted(recorded.items()):
        path = job_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
            continue
        if not isinstance(expected, Mapping):
            continue
        size = path.stat().st_size
        if size != expected.get("size"):
            problems.append(f"{name} size mismatch ({size} bytes, recorded {expected.get('size')})")
        elif file_record(path)["sha256"] != expected.get("sha256"):
            problems.append(f"{name} sha256 mismatch")
    return "; ".join(problems)


def is_complete(job_dir: str | os.PathLike) -> bool:
    """Whether the job finished and its result files are as it wrote them (see `damage`)."""
    status = read_status(job_dir)
    return status is not None and status.get("status") == "complete" and not damage(job_dir, status)


def job_state(job_dir: str | os.PathLike) -> tuple[str, str]:
    """(state, why): complete | damaged | failed | incomplete, and a one-line reason."""
    status = read_status(job_dir)
    if status is not None and status.get("status") == "complete":
        why = damage(job_dir, status)
        return ("damaged", why) if why else ("complete", "")
    if status is not None and status.get("status") == "failed":
        return "failed", str(status.get("error", ""))
    return "incomplete", "no completion record (killed, crashed or still running)"


def _write_status(job_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(job_dir / STATUS, json.dumps(record, indent=2, sort_keys=True, default=str))


def mark_running(job_dir: str | os.PathLike, **meta: Any) -> None:
    """Invalidate any earlier completion before (re)training; call it first."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    _write_status(job_dir, {"status": "running", "pid": os.getpid(), "started": time.time(), **meta})


def mark_failed(job_dir: str | os.PathLike, error: BaseException, **meta: Any) -> None:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    _write_status(
        job_dir,
        {
            "status": "failed",
            "finished": time.time(),
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            **meta,
        },
    )


def write_job(
    job_dir: str | os.PathLike,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    config_text: str,
    extra_files: Sequence[str] = (),
    **meta: Any,
) -> None:
    """Write the job's files atomically; the `complete` status goes last, with the size and
    sha256 of every result file (the tables, config.yaml, and the files under each of
    `extra_files`, paths relative to `job_dir` already written, e.g. saved policies)."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / CONFIG, config_text)
    atomic_write_parquet(job_dir / RESULTS, results)
    atomic_write_parquet(job_dir / SUMMARY, summary)
    files = {name: file_record(job_dir / name) for name in _result_files(job_dir, extra_files)}
    _write_status(
        job_dir,
        {"status": "complete", "finished": time.time(), "runs": int(len(summary)), **meta, "files": files},
    )


# ---------------------------------------------------------------- tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table of string cells, columns padded to one width; `right[i]`
    right-aligns column i (numbers). Every Markdown table the project writes goes through here."""
    right = list(right) if right is not None else [False] * len(headers)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a else ("-" * (w + 2)) for w, a in zip(widths, right)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def divergence(metrics: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(diverged [..., ], first_update [...] or -1) over the trailing update axis.

    A value is bad if it is inf, or NaN anywhere except in the episode metrics of an
    update in which no episode finished and in the evaluation metrics (those are NaN by
    design in updates without an evaluation)."""
    finished = None
    if "episodes" in metrics:
        finished = np.asarray(metrics["episodes"]) > 0
    bad = None
    for name, values in metrics.items():
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating):
            continue
        if name in EPISODE_METRICS:
            this = np.isinf(values) if finished is None else (~np.isfinite(values) & finished)
        elif name in EVALUATION_METRICS:
            this = np.isinf(values)
        else:
            this = ~np.isfinite(values)
        bad = this if bad is None else (bad | this)
    if bad is None:
        raise ValueError("no floating-point metrics to check")
    diverged = bad.any(axis=-1)
    first = np.where(diverged, np.argmax(bad, axis=-1), -1)
    return diverged, first


def _scalar(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
        return value.item() if isinstance(value, np.generic) else value
    if value is None:
        return "None"
    return repr(value)


def _static_values(config: Any) -> dict[str, Any]:
    return {f.name: _scalar(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "env"}


def _hyper_values(result: Any, base_hyper: Any) -> list[dict[str, float]]:
    """Per setting: the exact values given (swept axes), else the base Hyper's."""
    names = [f.name for f in dataclasses.fields(base_hyper)]
    return [
        {n: float(setting[n]) if n in setting else float(getattr(base_hyper, n)) for n in names}
        for setting in result.settings
    ]


def _identity(result: Any, *, experiment: str, algo: str, config: Any, base_hyper: Any, env: str | None = None):
    """Per (setting, seed) run: the identifying columns, as a dict of [S*K] arrays."""
    num_settings, num_seeds = len(result.settings), len(result.seeds)
    env = env if env is not None else getattr(config, "env", "")
    columns: dict[str, Any] = {
        "experiment": np.repeat(experiment, num_settings * num_seeds).astype(object),
        "algo": np.repeat(algo, num_settings * num_seeds).astype(object),
        "env": np.repeat(env, num_settings * num_seeds).astype(object),
        "seed": np.tile(np.asarray(result.seeds, dtype=np.int64), num_settings),
        "setting": np.repeat(np.arange(num_settings, dtype=np.int64), num_seeds),
    }
    hypers = _hyper_values(result, base_hyper)
    for name in hypers[0] if hypers else []:
        columns[name] = np.repeat([h[name] for h in hypers], num_seeds).astype(np.float64)
    for name, value in _static_values(config).items():
        if name in columns:
            continue
        runs = num_settings * num_seeds
        columns[name] = np.full(runs, value, dtype=object if isinstance(value, str) else None)
    return columns


def _metric_column(name: str, taken: set[str]) -> str:
    return f"metric_{name}" if name in taken else name


def tidy(result: Any, **identity: Any) -> pd.DataFrame:
    """One row per run × update (see the module docstring for the columns). `identity`:
    experiment, algo, config, base_hyper and optionally env (`_identity`)."""
    metrics = {k: np.asarray(v) for k, v in result.metrics.items()}
    num_settings, num_seeds = len(result.settings), len(result.seeds)
    num_updates = next(iter(metrics.values())).shape[2]
    runs = num_settings * num_seeds
    config = identity["config"]
    identity = _identity(result, **identity)
    columns = {k: np.repeat(v, num_updates) for k, v in identity.items()}
    columns["update"] = np.tile(np.arange(num_updates, dtype=np.int64), runs)
    if "env_steps" in metrics:
        env_steps = metrics["env_steps"].reshape(-1)
    else:
        batch = getattr(config, "batch_size", 1)
        env_steps = np.tile((np.arange(num_updates) + 1) * batch, runs)
    columns["env_steps"] = np.asarray(env_steps, dtype=np.int64)
    taken = set(columns)
    for name, values in metrics.items():
        if name == "env_steps":
            continue
        if values.shape[:3] != (num_settings, num_seeds, num_updates) or values.ndim != 3:
            continue  # non-scalar per-update metrics do not fit a tidy table
        columns[_metric_column(name, taken)] = values.reshape(-1)
    return pd.DataFrame(columns)


def final_window(num_updates: int) -> int:
    """Updates averaged for the final return: the last 10%, at least one."""
    return max(1, math.ceil(FINAL_FRACTION * num_updates))


def summarize(
    result: Any, *, return_metric: str = RETURN_METRIC, wall_seconds: float | None = None, **identity: Any
) -> pd.DataFrame:
    """One row per run: identity columns (`identity` as for `tidy`), final_return, auc,
    final_episodes, divergence, timings (see the module docstring; diverged runs get NaN
    final_return and auc)."""
    config = identity["config"]
    metrics = {k: np.asarray(v) for k, v in result.metrics.items()}
    returns = metrics[return_metric].astype(np.float64)
    num_updates = returns.shape[-1]
    window = final_window(num_updates)
    finite = np.where(np.isfinite(returns), returns, np.nan)
    with warnings.catch_warnings():  # all-NaN windows (no finished episode) give NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        final = np.nanmean(finite[..., -window:], axis=-1)
        auc = np.nanmean(finite, axis=-1)
    diverged, first = divergence(metrics)
    final = np.where(diverged, np.nan, final)
    auc = np.where(diverged, np.nan, auc)
    if "episodes" in metrics:
        final_episodes = np.asarray(metrics["episodes"])[..., -window:].sum(axis=-1).reshape(-1)
        final_episodes = pd.array(final_episodes.astype(np.int64), dtype="Int64")
    else:  # unknown: whether an episode finished is only known from the return being finite
        final_episodes = pd.array([None] * diverged.size, dtype="Int64")
    columns = _identity(result, **identity)
    columns["final_return"] = final.reshape(-1)
    columns["auc"] = auc.reshape(-1)
    columns["final_episodes"] = final_episodes
    columns["diverged"] = diverged.reshape(-1)
    columns["diverged_update"] = pd.array([None if u < 0 else int(u) for u in first.reshape(-1)], dtype="Int64")
    columns["num_updates"] = np.full(diverged.size, num_updates, dtype=np.int64)
    if "env_steps" in metrics:
        columns["env_steps"] = metrics["env_steps"][..., -1].reshape(-1).astype(np.int64)
    else:
        columns["env_steps"] = np.full(diverged.size, num_updates * getattr(config, "batch_size", 1))
    columns["wall_seconds"] = np.full(
        diverged.size, float(result.run_seconds if wall_seconds is None else wall_seconds)
    )
    columns["compile_seconds"] = np.full(diverged.size, float(result.compile_seconds))
    return pd.DataFrame(columns)
