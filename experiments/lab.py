"""Plumbing shared by the experiment scripts (`python -m experiments.<name> scale=ci`).

An experiment is three things:

- `conf/experiment/<name>.yaml`: a `purerl-train` preset, the base every training job of
  the experiment starts from (`purerl-train experiment=<name>` trains its main grid alone);
- `conf/experiment/<name>/<scale>.yaml` (`ci`, `paper`, and `smoke` for the tests): what
  the experiment runs at that scale — its training jobs (each a list of `purerl-train`
  overrides on top of the preset), seeds, and the sizes of its own measurements;
- `experiments/<name>.py`: a thin script that trains the jobs (`run_job`, so finished
  jobs are skipped and stale ones refused), runs any measurement that is not training,
  and writes the report `experiments/reports[/<scale>]/<name>.md` with its PNG plots.

Command line: `key=value` pairs; `scale` picks the file, every other key overrides a key
of it (dotted paths, YAML values: `seeds=4`, `force=true`, `tabular.num_mdps=8`); `workers=N`
trains N jobs at a time in their own processes (every plan has it; default 1).

Kept results (every plan has `rebuild` and `kept_from`): a script that computes its tables with
`kept = kept_results(plan, compute, measures)` and writes `Report(plan, title, kept=kept)` keeps
those tables beside the report (`<report_dir>/<name>/results/<table>.csv`, at most 2 MB) with
`provenance.json` (purerl source hash, hashes of the declared measuring code `measures`, scale,
machine, wall time); `rebuild=true` [`kept_from=DIR`] remakes the report and its plots from them
without computing anything.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from purerl.cli import devices


def _running_an_experiment() -> bool:
    """Whether this process is `python -m experiments.<name>` (or a worker it spawned)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.startswith("experiments.")


# An experiment script, as purerl-train does, sets the CPU device count before anything
# starts JAX; its own imports come after this module's (an import of lab by a test or a
# notebook changes nothing).
if _running_an_experiment():
    try:
        devices.prepare()
    except ValueError as e:
        print(f"{sys.modules['__main__'].__spec__.name}: error: {e}", file=sys.stderr)
        sys.exit(2)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from purerl.cli import schema  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT_CONF = schema.CONF_DIR / "experiment"
MEASUREMENTS = "measurements.parquet"
MEASUREMENT_STATUS = "measurement.json"
HEADLINE_MARK = "<!-- headline table -->"
KEPT_TABLES = "results"  # <report_dir>/<name>/results/<table>.csv: the numbers every table and plot is made of
PROVENANCE = "provenance.json"
KEPT_LIMIT_BYTES = 2 * 10**6
_RUN_STARTED: list[float] = []  # when lab.main began this run (a list, so no `global` is needed)


class ExperimentError(ValueError):
    """A bad command-line value or a stale result; the message says which and what to do."""


# ---------------------------------------------------------------- configuration
def scales(name: str) -> list[str]:
    return sorted(p.stem for p in (EXPERIMENT_CONF / name).glob("*.yaml"))


def load_plan(name: str, argv: Sequence[str]) -> DictConfig:
    """The experiment's plan at the requested scale, with command-line overrides.

    Adds `experiment`, `scale`, `out_dir` and `report_dir` (absolute paths)."""
    pairs = []
    for arg in argv:
        if "=" not in arg:
            raise ExperimentError(f"argument {arg!r}: expected key=value (e.g. scale=ci)")
        pairs.append(arg.split("=", 1))
    scale = dict(pairs).get("scale", "ci")
    path = EXPERIMENT_CONF / name / f"{scale}.yaml"
    if not path.exists():
        raise ExperimentError(f"scale: got {scale!r}; allowed: {', '.join(scales(name))}")
    plan = OmegaConf.merge(
        OmegaConf.create({"force": False, "workers": 1, "out_dir": f"outputs/experiments/{name}/{scale}",
                          "rebuild": False, "kept_from": ""}),
        OmegaConf.load(path),
    )
    OmegaConf.set_struct(plan, True)
    for key, value in pairs:
        if key == "scale":
            continue
        if OmegaConf.select(plan, key, default="__missing__") == "__missing__":
            raise ExperimentError(f"{key}: unknown key of {name} scale={scale}; allowed: {', '.join(_keys(plan))}")
        OmegaConf.update(plan, key, yaml.safe_load(value), merge=False)
    OmegaConf.set_struct(plan, False)
    plan.experiment = name
    plan.scale = scale
    plan.out_dir = str((REPO_ROOT / plan.out_dir).resolve())
    plan.report_dir = str((REPO_ROOT / plan.report_dir).resolve())
    if plan.kept_from:
        plan.kept_from = str((REPO_ROOT / plan.kept_from).resolve())
    return plan


def _keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, DictConfig) and key != "jobs":
            keys += _keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def enable_compile_cache() -> None:
    """JAX's persistent compilation cache, where `purerl-train` keeps it."""
    from purerl.cli.train import enable_compile_cache as enable

    enable(os.environ.get("PURERL_COMPILE_CACHE", "~/.cache/purerl/jax"))


# ---------------------------------------------------------------- training jobs
def compose_job(plan: DictConfig, overrides: Sequence[str], preset: bool = True) -> DictConfig:
    """The `purerl-train` config of one job: the preset (unless `preset=False`), the plan's
    seeds, the overrides."""
    from hydra import compose, initialize_config_dir

    # No progress bar: its host callback would keep every job's program out of the caches.
    base = [f"name={plan.experiment}", f"seeds={plan.seeds}", f"force={str(bool(plan.force)).lower()}",
            "print_table=false", "progress=false"]
    if preset:
        base.insert(0, f"experiment={plan.experiment}")
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR), job_name=plan.experiment):
        return compose("config", overrides=[*base, *overrides])


def job_spec(spec: Any) -> tuple[list[str], bool]:
    """(overrides, preset) of a job: a list of overrides on top of the preset, or
    {overrides: [...], preset: false}."""
    if isinstance(spec, DictConfig):
        return list(spec.overrides), bool(spec.get("preset", True))
    return list(spec), True


def train_jobs(plan: DictConfig, jobs: dict[str, Sequence[str]] | None = None) -> dict[str, Path]:
    """Train each job (name -> overrides, or {overrides, preset}) into `out_dir/<name>` unless
    it is complete; `workers=N` trains N jobs at a time in their own processes (XLA compiles a
    program on one core, so a second worker uses an idle core while the first compiles)."""
    jobs = plan.jobs if jobs is None else jobs
    names = list(jobs)
    specs = [(job, OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else list(spec))
             for job, spec in jobs.items()]
    in_workers(plan, _train_job_spec, specs, on_result=lambda i, out: _report_job(plan, names[i], *out))
    return {job: Path(plan.out_dir) / job for job in jobs}


def in_workers(plan: DictConfig, fn: Callable[..., Any], calls: Sequence[Sequence[Any]],
               on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """[fn(plan, *args) for args in calls], `plan.workers` calls at a time in their own
    processes (spawned; each with the persistent compile cache), results in call order;
    `on_result(i, result)` as each call finishes. One worker (the default): in this process.
    `fn` must be a module-level function (it is pickled); its arguments plain data."""
    workers = min(int(plan.get("workers", 1)), len(calls))
    results_in_order: list[Any] = [None] * len(calls)
    if workers <= 1:
        for i, args in enumerate(calls):
            results_in_order[i] = fn(plan, *args)
            if on_result is not None:
                on_result(i, results_in_order[i])
        return results_in_order
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    container = OmegaConf.to_container(plan, resolve=True)
    # spawn, not fork: a forked copy of a process that has started XLA's threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_call_in_worker, fn, container, tuple(args)): i for i, args in enumerate(calls)}
        for future in as_completed(futures):
            i = futures[future]
            results_in_order[i] = future.result()
            if on_result is not None:
                on_result(i, results_in_order[i])
    return results_in_order


def _call_in_worker(fn: Callable[..., Any], container: dict, args: tuple) -> Any:
    enable_compile_cache()
    return fn(OmegaConf.create(container), *args)


def _train_job(plan: DictConfig, job: str, spec: Any) -> tuple[str, float, str | None]:
    """(status, seconds, error message or None) of one training job."""
    from purerl.cli.train import ConfigError, run_job

    overrides, preset = job_spec(spec)
    started = time.perf_counter()
    try:
        status = run_job(compose_job(plan, list(overrides), preset=preset), Path(plan.out_dir) / job)
    except ConfigError as e:
        return "error", time.perf_counter() - started, str(e)
    return status, time.perf_counter() - started, None


def _train_job_spec(plan: DictConfig, job: str, spec: Any) -> tuple[str, float, str | None]:
    """_train_job with a spec that crossed a process boundary as plain data."""
    return _train_job(plan, job, OmegaConf.create(spec) if isinstance(spec, dict) else spec)


def _report_job(plan: DictConfig, job: str, status: str, seconds: float, error: str | None) -> None:
    if error is not None:
        raise ExperimentError(f"job {job}: {error}")
    print(f"[{plan.experiment}] {job}: {status} ({seconds:.0f} s)", flush=True)


def load_jobs(folders: dict[str, Path], table: str = "summary") -> pd.DataFrame:
    """The jobs' summary (or results) rows, with `job` = the job's name in the plan."""
    from purerl import results

    name = results.SUMMARY if table == "summary" else results.RESULTS
    return pd.concat([pd.read_parquet(folder / name).assign(job=job) for job, folder in folders.items()],
                     ignore_index=True)


# ---------------------------------------------------------------- measurements
def _source_digest(modules: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def measured(
    plan: DictConfig,
    name: str,
    identity: Any,
    compute: Callable[[], pd.DataFrame | dict[str, pd.DataFrame]],
    code: Sequence[Any] = (),
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A measurement table in `out_dir/<name>/measurements.parquet` (or several tables,
    `<key>.parquet`, when `compute` returns a dict), computed unless complete ones with the
    same fingerprint exist.

    The fingerprint covers `identity` (what is measured), purerl's source and library
    versions, and the source of `code` (the modules and functions that measure; not the
    report code, so a report can change without invalidating its measurements). A complete
    table with another fingerprint is refused unless `force=true`, as `purerl-train` does."""
    from purerl import provenance, results

    folder = Path(plan.out_dir) / name
    made_by = {**provenance.provenance(), "code": _source_digest(code)}
    identity = OmegaConf.to_container(identity, resolve=True) if isinstance(identity, DictConfig) else identity
    fingerprint = hashlib.sha256(json.dumps([identity, made_by], sort_keys=True, default=str).encode()).hexdigest()[:16]
    status_path = folder / MEASUREMENT_STATUS
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    if status.get("status") == "complete" and not plan.force:
        if status.get("fingerprint") == fingerprint:
            print(f"[{plan.experiment}] {name}: skipped (results exist)", flush=True)
            tables = {key: pd.read_parquet(folder / f"{key}.parquet") for key in status.get("tables", ["measurements"])}
            return tables if status.get("several") else tables[MEASUREMENTS.removesuffix(".parquet")]
        raise ExperimentError(
            f"{folder}: its complete measurements were made with other code or settings; rerun with "
            f"force=true to replace them, or out_dir=... to keep both"
        )
    folder.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint, "identity": identity, **made_by}
    results.atomic_write_text(status_path, json.dumps({"status": "running", **record}, default=str))
    started = time.perf_counter()
    out = compute()
    seconds = time.perf_counter() - started
    tables = out if isinstance(out, dict) else {MEASUREMENTS.removesuffix(".parquet"): out}
    for key, table in tables.items():
        results.atomic_write_parquet(folder / f"{key}.parquet", table)
    record.update(status="complete", seconds=seconds, finished=time.time(), tables=list(tables),
                  several=isinstance(out, dict))
    results.atomic_write_text(status_path, json.dumps(record, indent=2, default=str))
    print(f"[{plan.experiment}] {name}: complete ({seconds:.0f} s)", flush=True)
    return out


# ---------------------------------------------------------------- kept results
def qualified_name(obj: Any) -> str:
    """'purerl.llm.memory' for a module, 'experiments.rlhf_memory:arithmetic' for a function."""
    module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
    if module == "__main__":  # `python -m experiments.<name>`: the name it is imported by elsewhere
        module = sys.modules["__main__"].__spec__.name
    return module if inspect.ismodule(obj) else f"{module}:{obj.__qualname__}"


def resolve(name: str) -> Any:
    """The module or function a `qualified_name` names (ImportError/AttributeError if gone)."""
    module, _, attribute = name.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def source_digests(measures: Sequence[Any]) -> dict[str, str]:
    """{qualified name: hash of its source} of the modules and functions an experiment declares
    as what it measures."""
    return {qualified_name(obj): _source_digest([obj]) for obj in measures}


def changed_measures(recorded: dict[str, str]) -> list[str]:
    """The declared measuring code whose source differs from (or no longer has) the recorded hash."""
    changed = []
    for name, digest in recorded.items():
        try:
            current = _source_digest([resolve(name)])
        except (ImportError, AttributeError, OSError, TypeError):
            current = None
        if current != digest:
            changed.append(name)
    return changed


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "devices": devices.summary()}


class Kept:
    """The per-setting numbers a report is made of, kept beside it (`<report_dir>/<name>/results/
    <table>.csv`, with `provenance.json`: purerl source hash, hashes of the declared measuring
    code, scale, machine, wall time), so that `rebuild=true` remakes the report and its plots from
    them without computing anything. Made by `kept_results`."""

    def __init__(self, plan: DictConfig, tables: dict[str, pd.DataFrame], provenance: dict[str, Any],
                 rebuilt: bool):
        self.plan, self.tables, self.provenance, self.rebuilt = plan, tables, provenance, rebuilt

    @property
    def folder(self) -> Path:
        return Path(self.plan.report_dir) / self.plan.experiment

    def write(self, parts: list[tuple[str, str, float]]) -> None:
        """Write the tables and the provenance beside the report (a rebuild into the folder it read
        from leaves them as they are)."""
        from purerl import results

        source = Path(self.plan.kept_from or self.folder)
        if self.rebuilt and source.resolve() == self.folder.resolve():
            return
        if not self.rebuilt:
            started = _RUN_STARTED[-1] if _RUN_STARTED else self.provenance.pop("_started")
            self.provenance.pop("_started", None)
            # A resumed run skips the parts that are done: its own wall time can be seconds. The
            # parts' times, recorded when each ran, add up to what the results cost to compute.
            self.provenance.update(wall_seconds=round(time.perf_counter() - started, 3),
                                   parts_seconds=round(float(sum(s for _, _, s in parts if s)), 3),
                                   parts=[[p, k, None if s is None else round(float(s), 4)] for p, k, s in parts])
        folder = self.folder / KEPT_TABLES
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.csv"):
            if stale.stem not in self.tables:
                stale.unlink()
        for key, table in self.tables.items():
            results.atomic_write_text(folder / f"{key}.csv", _kept_text(table))
        size = sum(path.stat().st_size for path in folder.glob("*.csv"))
        if size > KEPT_LIMIT_BYTES:
            raise ExperimentError(f"kept results {folder}: {size:,} bytes; allowed: at most {KEPT_LIMIT_BYTES:,} "
                                  "(keep per-seed, per-setting summaries, not curves)")
        results.atomic_write_text(self.folder / PROVENANCE, json.dumps(self.provenance, indent=2, default=str) + "\n")

    def run_times(self) -> str:
        record = self.provenance
        if record.get("wall_seconds") is None:
            return ""
        parts = ""
        if record.get("parts"):
            table = pd.DataFrame(record["parts"], columns=["part", "kind", "wall seconds"])
            parts = " Its measurements (when they ran):\n\n" + markdown_table(table)
        machine = record.get("machine", {})
        summed = (f"; its jobs and measurements took {record['parts_seconds']:.1f} s summed, as recorded when "
                  "each ran (a resumed run skips the finished ones)" if record.get("parts_seconds") else "")
        return (f"Wall time of the run that made the kept results (scale `{record.get('scale')}`): "
                f"{record['wall_seconds']:.1f} s on {machine.get('platform', '?')} ({machine.get('cpus', '?')} CPUs; "
                f"{machine.get('devices', '?')}){summed}.{parts}")


def kept_results(plan: DictConfig, compute: Callable[[], dict[str, pd.DataFrame]], measures: Sequence[Any]) -> Kept:
    """The tables a report is made of: computed by `compute` (then kept beside the report when it
    is written), or, with `rebuild=true`, read back from the kept results (`kept_from=DIR`, default
    the report's own folder) without computing.

    `measures`: the modules and functions whose code decides the numbers; their source hashes go
    into the provenance, and docs/experiments.md flags a report whose measuring code has changed
    since (`python -m experiments.index`)."""
    if plan.rebuild:
        folder = Path(plan.kept_from or Path(plan.report_dir) / plan.experiment)
        path = folder / PROVENANCE
        if not path.exists():
            raise ExperimentError(f"rebuild=true: no kept results in {folder} ({PROVENANCE} missing); run without "
                                  "rebuild=true to make them, or give kept_from=DIR")
        provenance = json.loads(path.read_text())
        if (provenance.get("experiment"), provenance.get("scale")) != (plan.experiment, plan.scale):
            raise ExperimentError(f"rebuild=true: {folder} keeps {provenance.get('experiment')} "
                                  f"scale={provenance.get('scale')}; asked for {plan.experiment} scale={plan.scale}")
        tables = {key: _read_kept(folder / KEPT_TABLES / f"{key}.csv") for key in provenance["tables"]}
        print(f"[{plan.experiment}] rebuilding from the kept results in {folder}", flush=True)
        return Kept(plan, tables, provenance, rebuilt=True)
    from purerl import provenance as purerl_provenance

    started = time.perf_counter()
    # Hashed before computing: inspect reads the source files when asked, so a script edited
    # while a long run computes would otherwise be recorded as the code that measured.
    measure_digests = source_digests(measures)
    tables = compute()
    identity = OmegaConf.to_container(plan, resolve=True)
    for key in ("out_dir", "report_dir", "kept_from", "rebuild", "force", "workers"):
        identity.pop(key, None)
    record = {"experiment": plan.experiment, "scale": plan.scale, "command": _command(plan),
              "purerl_source": purerl_provenance.source_digest(), "versions": purerl_provenance.dependency_versions(),
              "measures": measure_digests, "machine": _machine(), "tables": list(tables),
              "rows": {key: len(table) for key, table in tables.items()}, "plan": identity, "_started": started}
    # The report is made from the tables as they are kept (float32 columns widen to float64 and
    # the like), so it equals what `rebuild=true` makes from the kept files, to the last digit.
    tables = {key: _read_kept(io.StringIO(_kept_text(table))) for key, table in tables.items()}
    return Kept(plan, tables, record, rebuilt=False)


def _kept_text(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, na_rep="NaN")


def _read_kept(source: Any) -> pd.DataFrame:
    return pd.read_csv(source, keep_default_na=False, na_values=["NaN"], float_precision="round_trip")


def _command(plan: DictConfig) -> str:
    extra = "" if plan.scale == "ci" else f" scale={plan.scale}"
    return f"python -m experiments.{plan.experiment}{extra}"


# ---------------------------------------------------------------- reports
def bootstrap_ci(
    values: np.ndarray, stat: str = "mean", ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(statistic, low, high) of a 1-d sample with a percentile bootstrap CI; NaNs are left out."""
    from analysis.aggregate import statistic, stratified_bootstrap_ci

    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]  # runs with nothing to measure (e.g. no finished episode)
    if values.size == 0:
        return np.nan, np.nan, np.nan
    low, high = stratified_bootstrap_ci([values], stat, ci, seed=seed)
    return float(statistic(stat)(values)), float(low), float(high)


def verdict(diff: tuple[float, float, float], lower: str, higher: str, n: int) -> str:
    """A claim only when the paired CI (estimate, low, high) of a difference excludes 0. A bound
    within float rounding of 0 (e.g. −7e-18 from averaging differences that are multiples of 1/N)
    counts as 0."""
    estimate, low, high = diff
    rounding = 1e-9 * max(1.0, abs(estimate), abs(low), abs(high))
    if high < -rounding:
        return lower
    if low > rounding:
        return higher
    return f"not resolved at {n} seeds"


def curve_ci(
    matrix: np.ndarray, stat: str = "mean", ci: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, low, high) at every point (column) of a [runs, points] matrix, with a
    percentile bootstrap CI that resamples the same runs at every point (a band over a curve)."""
    from analysis.aggregate import statistic

    matrix = np.asarray(matrix, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, matrix.shape[0], (resamples, matrix.shape[0]))
    boot = statistic(stat)(matrix[index], axis=1)  # [resamples, points]
    tail = (1 - ci) / 2
    return statistic(stat)(matrix, axis=0), np.quantile(boot, tail, axis=0), np.quantile(boot, 1 - tail, axis=0)


def fmt(value: float, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "nan" if value is None or np.isnan(value) else ("inf" if value > 0 else "-inf")
    if value != 0 and (abs(value) >= 10 ** (digits + 1) or abs(value) < 10 ** -(digits - 1)):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def fmt_ci(estimate: float, low: float, high: float, digits: int = 3) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return fmt(estimate, digits)
    return f"{fmt(estimate, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def markdown_table(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """A GitHub Markdown table of `df`'s cells as they are (strings, or formatted numbers)."""
    headers = [str(c) for c in df.columns]
    rows = [[c if isinstance(c, str) else fmt(c) for c in row] for row in df.itertuples(index=False)]
    from purerl.results import markdown_table as cells_table

    aligned = [h in right or bool(rows and all(_numeric(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return cells_table(headers, rows, aligned) + "\n"


def _numeric(cell: str) -> bool:
    head = cell.split(" ", 1)[0]
    try:
        float(head)
    except ValueError:
        return head in ("nan", "inf", "-inf")
    return True


class Report:
    """A Markdown report with PNG figures in `<report_dir>/<name>/`."""

    def __init__(self, plan: DictConfig, title: str, kept: Kept | None = None):
        self.plan = plan
        self.kept = kept
        self.path = Path(plan.report_dir) / f"{plan.experiment}.md"
        self.figure_dir = Path(plan.report_dir) / plan.experiment
        self.lines = [f"# {title}", ""]

    def add(self, *blocks: str) -> None:
        for block in blocks:
            self.lines += [block.rstrip("\n"), ""]

    def headline(self, title: str, table: str) -> None:
        """A table that docs/experiments.md repeats (`python -m experiments.index`)."""
        self.add(f"### {title}", HEADLINE_MARK, table)

    def figure(self, fig: Any, filename: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        self.figure_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figure_dir / filename, dpi=110)
        plt.close(fig)
        self.add(f"![{caption}]({self.plan.experiment}/{filename})", f"*{caption}*")

    def command(self) -> str:
        return _command(self.plan)

    def _parts(self) -> list[tuple[str, str, float | None, float | None]]:
        """(part, kind, wall seconds, finished) of each complete job and measurement in out_dir."""
        rows = []
        for status in sorted(Path(self.plan.out_dir).glob("*/*.json")):
            record = json.loads(status.read_text())
            if status.name == "job.json" and record.get("status") == "complete":
                rows.append((status.parent.name, "training job (incl. compile)", record.get("wall_seconds"),
                             record.get("finished")))
            elif status.name == MEASUREMENT_STATUS and record.get("status") == "complete":
                rows.append((status.parent.name, "measurement", record.get("seconds"), record.get("finished")))
        return rows

    def run_times(self) -> str:
        """Wall time of each job and measurement, as recorded when it ran."""
        parts = self._parts()
        rows = [(part, kind, seconds) for part, kind, seconds, _ in parts]
        spans = [(finished - seconds, finished) for _, _, seconds, finished in parts if finished and seconds]
        if not rows:
            return ""
        table = pd.DataFrame(rows, columns=["part", "kind", "wall seconds"])
        total = table["wall seconds"].fillna(0).sum()
        overlap = ""
        if int(self.plan.get("workers", 1)) > 1 and spans:
            span = max(end for _, end in spans) - min(start for start, _ in spans)
            overlap = (f"; the parts ran up to {int(self.plan.workers)} at a time, from the first start to the last "
                       f"finish in {span:.0f} s")
        return (f"Wall time of each part when it ran (sum {total:.0f} s{overlap}; the 2-core machine was shared, so "
                f"these are upper bounds):\n\n" + markdown_table(table))

    def write(self) -> Path:
        from purerl import results

        if self.kept is not None:
            self.kept.write([(part, kind, seconds) for part, kind, seconds, _ in self._parts()])
            self.add("## Kept results",
                     f"Every table and plot above is computed from `{self.plan.experiment}/{KEPT_TABLES}/*.csv` beside "
                     f"this report ({', '.join(f'`{k}`' for k in self.kept.tables)}); `{self.plan.experiment}/"
                     f"{PROVENANCE}` records the purerl source hash, the hashes of the measuring code, the scale, the "
                     f"machine and the wall time. Rebuild this report and its plots from them, computing nothing:",
                     f"```bash\n{self.command()} rebuild=true\n```")
        times = self.kept.run_times() if self.kept is not None else self.run_times()
        if times:
            self.add("## Run time", times)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results.atomic_write_text(self.path, "\n".join(self.lines).rstrip() + "\n")
        print(f"[{self.plan.experiment}] report: {self.path}", flush=True)
        return self.path


def main(run: Callable[[DictConfig], Any], name: str, argv: Sequence[str] | None = None) -> int:
    """Command-line entry of an experiment (`argv`: the command line's arguments by default):
    one-line errors, exit status 2. Each experiment's `main` is this, with its `run` and name."""
    argv = sys.argv[1:] if argv is None else argv
    _RUN_STARTED.append(time.perf_counter())
    try:
        plan = load_plan(name, argv)
        print(f"[{name}] devices: {devices.summary()}", flush=True)
        enable_compile_cache()
        run(plan)
    except ExperimentError as e:
        print(f"experiments.{name}: error: {e}", file=sys.stderr)
        return 2
    return 0
