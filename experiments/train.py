"""`purerl-train`: the Hydra app. Composes purerl pieces and writes the job's results.

    purerl-train algo=ppo env=cartpole seeds=16 grid.clip_eps=[0.1,0.2,0.3] grid.gae_lambda=[0.9,0.95]
    purerl-train -m env=cartpole,acrobot algo.config.num_envs=4,16 grid.clip_eps=[0.1,0.2]

Traced `Hyper` fields form the in-job grid (`grid.<field>=[...]`: one compiled program
vmapped over settings × seeds); static `Config` fields change shapes or program
structure and are swept with Hydra multirun (`-m algo.config.<field>=a,b`), one job each.
See docs/hydra.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import purerl  # noqa: F401  (sets XLA flags; must precede any JAX import)
from experiments import schema

log = logging.getLogger("purerl.train")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclasses.dataclass
class Plan:
    """Everything a job trains, validated; nothing compiled yet."""

    algo: str
    module: Any
    config: Any
    hyper: Any
    sweep: Any
    axes: dict[str, list[float]]
    seeds: list[int]
    experiment: str
    max_batch: int | None
    fingerprint: str


def _rename(message: str, owner: str, key_prefix: str) -> str:
    return re.sub(rf"^{re.escape(owner)}\.", key_prefix, message)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def build_plan(cfg: DictConfig) -> Plan:
    """Validate the composed config and build Config, base Hyper and the in-job grid.

    Raises ConfigError naming the offending key. Does not compile anything."""
    from purerl import sweep as sweeps
    from purerl.algos import get_algorithm
    from purerl.config import validate_hyper

    try:
        module = get_algorithm(cfg.algo.name)
    except ValueError as e:
        raise ConfigError(f"algo.name: {e}") from None
    Config, Hyper = module.Config, module.Hyper

    config_kwargs = _tuples(OmegaConf.to_container(cfg.algo.config, resolve=True))
    try:
        config = Config(**config_kwargs)
    except (ValueError, TypeError) as e:
        message = _rename(str(e), Config.__name__, "algo.config.")
        if message.startswith("env:"):
            message = "algo.config." + message
        if not message.startswith("algo.config"):
            message = f"algo.config: {message}"
        raise ConfigError(message) from None

    hyper_kwargs = OmegaConf.to_container(cfg.algo.hyper, resolve=True)
    hyper = Hyper(**{k: float(v) for k, v in hyper_kwargs.items()})
    try:
        validate_hyper(hyper)
    except ValueError as e:
        raise ConfigError(_rename(str(e), type(hyper).__name__, "algo.hyper.")) from None

    hyper_fields = [f.name for f in dataclasses.fields(Hyper)]
    static_fields = [f.name for f in dataclasses.fields(Config)]
    axes: dict[str, list[float]] = {}
    for key, values in OmegaConf.to_container(cfg.grid, resolve=True).items():
        if values is None:
            continue
        if key not in hyper_fields:
            if key in static_fields:
                raise ConfigError(
                    f"grid.{key}: {key!r} is a static Config field of {cfg.algo.name} (it changes "
                    f"shapes or the compiled program), so it cannot be an in-job grid axis; sweep it "
                    f"with Hydra multirun instead: -m algo.config.{key}=a,b. Traced fields that can "
                    f"be grid axes: {', '.join(hyper_fields)}"
                )
            raise ConfigError(f"grid.{key}: not a field of {cfg.algo.name}.Hyper; allowed: {', '.join(hyper_fields)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of numbers, got {values!r}")
        axes[key] = [float(v) for v in values]

    for key, values in axes.items():  # range-check each axis, naming it
        try:
            validate_hyper(hyper.replace(**{key: __import__("numpy").asarray(values)}))
        except ValueError as e:
            raise ConfigError(_rename(str(e), type(hyper).__name__, "grid.")) from None

    mode = cfg.grid_mode.value if hasattr(cfg.grid_mode, "value") else str(cfg.grid_mode)
    if mode == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise ConfigError(
            f"grid_mode: 'zip' needs grid lists of equal length, got { {k: len(v) for k, v in axes.items()} }"
        )
    if cfg.seeds <= 0:
        raise ConfigError(f"seeds: got {cfg.seeds}; allowed: a positive integer")
    if cfg.max_batch is not None and cfg.max_batch <= 0:
        raise ConfigError(f"max_batch: got {cfg.max_batch}; allowed: a positive integer or null")
    if not axes:
        sweep = sweeps.from_settings(hyper, [{}])
    elif mode == "zip":
        sweep = sweeps.zipped(hyper, **axes)
    else:
        sweep = sweeps.grid(hyper, **axes)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))

    identity = {
        "name": cfg.name,
        "algo": cfg.algo.name,
        "config": OmegaConf.to_container(cfg.algo.config, resolve=True),
        "hyper": hyper_kwargs,
        "grid": axes,
        "grid_mode": mode,
        "seeds": seeds,
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Plan(
        algo=cfg.algo.name,
        module=module,
        config=config,
        hyper=hyper,
        sweep=sweep,
        axes=axes,
        seeds=seeds,
        experiment=cfg.name,
        max_batch=cfg.max_batch,
        fingerprint=fingerprint,
    )


def enable_compile_cache(directory: str) -> Path:
    """JAX's persistent compilation cache, caching even small, fast-compiling programs."""
    import jax

    path = Path(os.path.expanduser(directory)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def print_table(summary, axes: list[str], title: str = "") -> None:
    from analysis.aggregate import aggregate, to_markdown

    stat = "iqm" if summary["seed"].nunique() >= 4 else "mean"
    by = axes or ["algo", "env"]
    table = aggregate(summary, by=by, metric="final_return", stat=stat)
    if title:
        print(title)
    print(to_markdown(table), flush=True)


def resolved_config_text(cfg: DictConfig) -> str:
    """The fully resolved config as YAML, without the unused (null) grid entries."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container["grid"] = {k: v for k, v in container["grid"].items() if v is not None}
    return OmegaConf.to_yaml(OmegaConf.create(container))


def run_job(cfg: DictConfig, job_dir: str | os.PathLike) -> str:
    """Train one job into `job_dir` unless it is already complete. Returns
    "skipped" or "complete"; raises (after recording the failure) on error."""
    from purerl import results

    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        plan = build_plan(cfg)
    except Exception as e:
        results.mark_failed(job_dir, e)
        raise

    status = results.read_status(job_dir)
    if results.is_complete(job_dir) and not cfg.force:
        if status.get("fingerprint") != plan.fingerprint:
            error = ConfigError(
                f"{job_dir}: holds complete results of a different configuration "
                f"(fingerprint {status.get('fingerprint')} != {plan.fingerprint}); rerun with "
                f"force=true to overwrite, or choose another name=/output dir"
            )
            raise error
        log.info("skipping %s: results exist (force=true redoes it)", job_dir)
        if cfg.print_table:
            import pandas as pd

            print_table(pd.read_parquet(job_dir / results.SUMMARY), list(plan.axes), f"[skipped] {job_dir}")
        return "skipped"

    meta = {"fingerprint": plan.fingerprint, "algo": plan.algo, "experiment": plan.experiment}
    results.mark_running(job_dir, **meta)
    try:
        from purerl import sweep as sweeps

        export_cache = None
        if cfg.compile_cache.enabled:
            # Persistent XLA cache + exported programs: a warm identical job skips tracing too.
            export_cache = enable_compile_cache(cfg.compile_cache.dir) / "exported"
        start = time.perf_counter()
        train = plan.module.make_train(plan.config)
        result = sweeps.run(
            train, plan.sweep, plan.seeds, max_batch=plan.max_batch, progress=cfg.progress,
            export_cache=export_cache, program_key=f"{plan.algo}:{plan.config!r}",
        )
        wall = time.perf_counter() - start
        ids = dict(experiment=plan.experiment, algo=plan.algo, config=plan.config, base_hyper=plan.hyper)
        tidy = results.tidy(result, **ids)
        summary = results.summarize(result, **ids, wall_seconds=result.run_seconds)
        config_text = resolved_config_text(cfg)
        results.write_job(
            job_dir,
            tidy,
            summary,
            config_text,
            **meta,
            compile_seconds=result.compile_seconds,
            run_seconds=result.run_seconds,
            wall_seconds=wall,
        )
    except BaseException as e:
        results.mark_failed(job_dir, e, **meta)
        raise
    log.info(
        "%s: %d runs, compile %.2fs, run %.2fs, %d diverged",
        job_dir,
        len(summary),
        result.compile_seconds,
        result.run_seconds,
        int(summary["diverged"].sum()),
    )
    if cfg.print_table:
        try:
            print_table(summary, list(plan.axes), f"{job_dir}")
        except Exception as e:  # the results are written; a table problem must not fail the job
            log.warning("could not print the table: %s", e)
    return "complete"


def _subdir(override_dirname: str) -> str:
    """Job folder name: the job's overrides (stable across reruns), or "base" if none."""
    return override_dirname or "base"


OmegaConf.register_new_resolver("purerl_subdir", _subdir, replace=True)
schema.register()


@hydra.main(version_base="1.3", config_path=str(schema.CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if "joblib" in str(hc.launcher.get("_target_", "")).lower():
        # Jobs share the machine (and its GPU): don't let each grab 75% of GPU memory.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return run_job(cfg, hc.runtime.output_dir)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
