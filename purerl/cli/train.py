"""`purerl-train`: the Hydra app. Composes purerl pieces and writes the job's results.

    purerl-train algo=ppo env=cartpole seeds=16 grid.clip_eps=[0.1,0.2,0.3] grid.gae_lambda=[0.9,0.95]
    purerl-train -m env=cartpole,acrobot algo.config.num_envs=4,16 grid.clip_eps=[0.1,0.2]

Traced `Hyper` fields form the in-job grid (`grid.<field>=[...]`: one compiled program
vmapped over settings × seeds); static `Config` fields change shapes or program
structure and are swept with Hydra multirun (`-m algo.config.<field>=a,b`), one job each.
See docs/hydra.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from purerl.cli import collect_garbage_less_often, defer_imports, devices

# The purerl-train program (not an import of this module, e.g. by a test) sets the CPU
# device count and joins jax.distributed before the imports below start JAX (importing
# the algorithms imports gymnax, which starts a backend), and defers gymnax's plotting imports.
if __name__ == "__main__" or Path(sys.argv[0]).name == "purerl-train":
    defer_imports()
    try:
        devices.prepare()
    except ValueError as e:
        print(f"purerl-train: error: {e}", file=sys.stderr)
        sys.exit(2)

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from purerl.cli import schema  # noqa: E402

log = logging.getLogger("purerl.train")
TENSORBOARD = "tensorboard"  # the job's event files (tensorboard=true)


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
    # What produced the results: configuration, purerl's source hash, library versions.
    config_fingerprint: str
    provenance: dict[str, Any]
    fingerprint: str  # over both: equal fingerprints mean the same numbers

    @property
    def record(self) -> dict[str, Any]:
        """What `job.json` stores about the plan (and what a rerun is compared with)."""
        return {
            "fingerprint": self.fingerprint,
            "config_fingerprint": self.config_fingerprint,
            **self.provenance,
            "algo": self.algo,
            "experiment": self.experiment,
        }


def _rename(message: str, owner: str, key_prefix: str) -> str:
    return re.sub(rf"^{re.escape(owner)}\.", key_prefix, message)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _number(key: str, value: Any, allowed: str = "a number") -> float:
    """`float(value)`, or a ConfigError naming the key (non-numeric strings, lists, None, booleans)."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: got {value!r}; allowed: {allowed}")


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_plan(cfg: DictConfig) -> Plan:
    """Validate the composed config and build Config, base Hyper and the in-job grid.

    Raises ConfigError naming the offending key. Does not compile anything."""
    from purerl import provenance
    from purerl import sweep as sweeps
    from purerl.algos import ALGORITHMS, get_algorithm
    from purerl.config import validate_hyper

    choice = _algo_choice(cfg)
    if choice is not None and choice not in ALGORITHMS:
        raise ConfigError(f"algo: got {choice!r}; allowed: {', '.join(sorted(ALGORITHMS))}")
    try:
        module = get_algorithm(cfg.algo.name)
    except ValueError as e:
        raise ConfigError(f"algo.name: {e}") from None
    Config, Hyper = module.Config, module.Hyper
    intervals = {f.name: f.metadata.get("interval", "") for f in dataclasses.fields(Hyper)}

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
    numbers = {
        k: _number(f"algo.hyper.{k}", v, f"a number in {intervals.get(k) or '(-inf, inf)'}")
        for k, v in hyper_kwargs.items()
    }
    try:
        hyper = Hyper(**numbers)  # validated on construction
    except ValueError as e:
        raise ConfigError(_rename(str(e), Hyper.__name__, "algo.hyper.")) from None

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
        axes[key] = [_number(f"grid.{key}", v, f"numbers in {intervals[key]}") for v in values]

    for key, values in axes.items():  # range-check each axis, naming it
        try:
            validate_hyper(hyper.replace(**{key: np.asarray(values)}))
        except ValueError as e:
            raise ConfigError(_rename(str(e), type(hyper).__name__, "grid.")) from None

    mode = cfg.grid_mode.value if hasattr(cfg.grid_mode, "value") else str(cfg.grid_mode)
    for key, values in axes.items() if mode == "product" else ():
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(
                f"grid.{key}: {', '.join(f'{v:g}' for v in repeated)} listed more than once; each "
                f"setting would train twice and count its seeds twice; allowed: distinct values"
            )
    if mode == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise ConfigError(
            f"grid_mode: 'zip' needs grid lists of equal length, got { {k: len(v) for k, v in axes.items()} }"
        )
    progress_wanted(cfg.progress)
    if cfg.get("tensorboard", False):
        from purerl.watch import INSTALL_HINT, tensorboard_available

        if not tensorboard_available():
            raise ConfigError(f"tensorboard: got true, but tensorboardX is not installed; {INSTALL_HINT}")
    seeds_count = cfg.seeds
    if isinstance(seeds_count, bool) or not isinstance(seeds_count, int) or seeds_count <= 0:
        raise ConfigError(f"seeds: got {seeds_count!r}; allowed: a positive integer")
    if isinstance(cfg.first_seed, bool) or not isinstance(cfg.first_seed, int) or cfg.first_seed < 0:
        raise ConfigError(f"first_seed: got {cfg.first_seed!r}; allowed: a non-negative integer")
    max_batch = cfg.max_batch
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0):
        raise ConfigError(f"max_batch: got {max_batch!r}; allowed: a positive integer or null")
    try:
        if not axes:
            sweep = sweeps.from_settings(hyper, [{}])
        elif mode == "zip":
            sweep = sweeps.zipped(hyper, **axes)
        else:
            sweep = sweeps.grid(hyper, **axes)
    except ValueError as e:
        raise ConfigError(f"grid: {e}") from None
    check = getattr(module, "check_hyper", None)  # an algorithm's checks of Hyper values against its Config
    if check is not None:
        try:
            check(config, sweep.hypers)
        except ValueError as e:
            field = re.match(rf"{Hyper.__name__}\.(\w+)", str(e))
            prefix = "grid." if field and field.group(1) in axes else "algo.hyper."
            raise ConfigError(_rename(str(e), Hyper.__name__, prefix)) from None
    settings = [tuple(sorted(s.items())) for s in sweep.settings]
    if len(set(settings)) != len(settings):
        raise ConfigError(
            "grid: the zipped lists repeat a setting; each setting would train twice and count its "
            "seeds twice; allowed: distinct settings"
        )
    seeds = list(range(cfg.first_seed, cfg.first_seed + seeds_count))
    try:  # the checkpoint settings, checked before anything runs
        from purerl.checkpoint import Checkpointing

        conf = cfg.checkpoint
        Checkpointing(Path("."), "", segment_updates=conf.segment_updates, every_updates=conf.every_updates,
                      every_minutes=conf.every_minutes)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    identity = {
        "name": cfg.name,
        "algo": cfg.algo.name,
        "config": OmegaConf.to_container(cfg.algo.config, resolve=True),
        "hyper": hyper_kwargs,
        "grid": axes,
        "grid_mode": mode,
        "seeds": seeds,
    }
    config_fingerprint = _hash(identity)
    made_by = provenance.provenance()
    return Plan(
        algo=cfg.algo.name,
        module=module,
        config=config,
        hyper=hyper,
        sweep=sweep,
        axes=axes,
        seeds=seeds,
        experiment=cfg.name,
        max_batch=max_batch,
        config_fingerprint=config_fingerprint,
        provenance=made_by,
        fingerprint=_hash({"config": config_fingerprint, **made_by}),
    )


def _algo_choice(cfg: DictConfig) -> str | None:
    """The `algo=` choice Hydra composed (None outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if "hydra" in cfg:
            return cfg.hydra.runtime.choices.get("algo")
        if HydraConfig.initialized():
            return HydraConfig.get().runtime.choices.get("algo")
    except Exception:  # noqa: BLE001 - no Hydra node: nothing to check
        return None
    return None


def check_existing(job_dir: str | os.PathLike, plan: Plan, force: bool) -> str:
    """What to do with `job_dir`: "train", or "skip" (complete, same fingerprint).

    A damaged job (a result file changed since it finished, see `results.damage`) is not
    complete: it is trained again.

    A complete job made from another configuration, other purerl source or other library
    versions is refused (ConfigError saying what changed) unless `force`."""
    from purerl import provenance, results

    job_dir = Path(job_dir)
    if force or not results.is_complete(job_dir):
        return "train"
    status = results.read_status(job_dir) or {}
    if status.get("fingerprint") == plan.fingerprint:
        return "skip"
    changes = provenance.describe_changes(status, plan.provenance)
    recorded_config = status.get("config_fingerprint", status.get("fingerprint"))
    if recorded_config != plan.config_fingerprint:
        changes.insert(0, "another configuration")
    what = ", ".join(changes) or f"fingerprint {status.get('fingerprint')} (now {plan.fingerprint})"
    raise ConfigError(
        f"{job_dir}: its complete results were made with {what}; rerun with force=true to "
        f"replace them, or give a new name=... to keep both"
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


PROGRESS_CHOICES = ("auto", "true", "false")


def progress_wanted(setting: Any, stream: Any = None) -> bool:
    """Whether `progress=<setting>` shows the bar: true, false, or auto = when `stream`
    (stderr) is a terminal. A program with the bar's host callback is cached neither by
    JAX's persistent cache nor as an exported program, so logs and batch jobs go without."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"progress: got {setting!r}; allowed: {', '.join(PROGRESS_CHOICES)}")
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _progress_bar(plan: Plan) -> Any:
    """A bar that advances once per training update (of every chunk), on the host."""
    import jax

    from purerl.sweep import UpdateProgress, chunk_count

    chunks = chunk_count(len(plan.sweep) * len(plan.seeds), plan.max_batch, len(jax.local_devices()))
    num_updates = getattr(plan.config, "num_updates", None)
    total = num_updates * chunks if num_updates else None
    return UpdateProgress(total, desc=f"{plan.algo} ({len(plan.sweep) * len(plan.seeds)} runs, {chunks} chunk(s))")


# Jobs of at least this many updates train in segments with checkpoints unless
# checkpoint.enabled=false: below it, a rerun from scratch costs little.
AUTO_CHECKPOINT_UPDATES = 100
CHECKPOINTS = "checkpoints"  # <job>/checkpoints


def _checkpointing(cfg: DictConfig, plan: Plan, job_dir: Path) -> Any:
    """The job's `purerl.checkpoint.Checkpointing`, or None when it trains in one piece."""
    from purerl import checkpoint as checkpoints

    conf = cfg.checkpoint
    num_updates = getattr(plan.config, "num_updates", None)
    enabled = conf.enabled if conf.enabled is not None else (num_updates or 0) >= AUTO_CHECKPOINT_UPDATES
    if not enabled:
        return None
    try:
        return checkpoints.Checkpointing(
            job_dir / CHECKPOINTS, plan.fingerprint, segment_updates=conf.segment_updates,
            every_updates=conf.every_updates, every_minutes=conf.every_minutes,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _stop_signals() -> list[int]:
    """SIGINT, SIGTERM and, under submitit (SLURM), its preemption/timeout signal."""
    import signal

    signums = [signal.SIGINT, signal.SIGTERM]
    if os.environ.get("SUBMITIT_FOLDER") or os.environ.get("SUBMITIT_EXECUTOR"):
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        signums.append(getattr(signal, "SIG" + name.removeprefix("SIG"), signal.SIGUSR2))
    return signums


def _after_stop(signum: int, previous: Any) -> None:
    """After the checkpoint of a stopped job: hand the signal to the handler it replaced
    when that is a function (submitit's requeues the job and exits), else exit with
    128 + signum as the signal would have."""
    if callable(previous):
        previous(signum, None)
    print(f"purerl-train: stopped by signal {signum} after saving a checkpoint; rerun the same command to "
          "resume", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def run_job(cfg: DictConfig, job_dir: str | os.PathLike) -> str:
    """Train one job into `job_dir` unless it is already complete. Returns
    "skipped" or "complete"; raises (after recording the failure) on error.

    Everything is validated before the job's status is touched, and a complete job is never
    marked failed by a rerun that does not validate."""
    from purerl import checkpoint as checkpoints
    from purerl import policies, results
    from purerl.algos import return_metric

    job_dir = Path(job_dir)
    progress = None
    writer = _writes_results()
    try:
        plan = build_plan(cfg)
        action = check_existing(job_dir, plan, cfg.force)
        if action == "train" and not cfg.force:
            state, why = results.job_state(job_dir)
            if state == "damaged":
                log.warning("[damaged] %s: %s; training it again", job_dir, why)
        if action == "train":
            progress = _progress_bar(plan) if progress_wanted(cfg.progress) else None
            train = plan.module.make_train(plan.config, **({"on_update": progress} if progress else {}))
    except Exception as e:
        if progress is not None:
            progress.close()
        if writer and not results.is_complete(job_dir):
            results.mark_failed(job_dir, e)
        raise

    if action == "skip":
        log.info("skipping %s: results exist (force=true redoes it)", job_dir)
        if cfg.save_policies and policies.supports(plan.config) and not (job_dir / "policies").is_dir():
            log.info("%s has no saved policies (trained with save_policies=false); force=true retrains it", job_dir)
        if cfg.print_table:
            import pandas as pd

            print_table(pd.read_parquet(job_dir / results.SUMMARY), list(plan.axes), f"[skipped] {job_dir}")
        return "skipped"

    meta = plan.record
    log.info("%s: %s", job_dir, devices.summary())
    if writer:
        results.mark_running(job_dir, **meta)
    try:
        from purerl import sweep as sweeps

        if writer:
            policies.remove_policies(job_dir)  # an earlier run's policies must not outlive its results
            shutil.rmtree(job_dir / TENSORBOARD, ignore_errors=True)  # nor its curves
        save = cfg.save_policies and policies.supports(plan.config)
        if cfg.save_policies and not save:
            log.info("%s: saved policies are not supported for %s; none will be saved", job_dir, plan.algo)

        export_cache = None
        if cfg.compile_cache.enabled:
            cache_dir = enable_compile_cache(cfg.compile_cache.dir)
            # Exported programs let a warm identical job skip tracing; a program with a
            # progress callback cannot be exported, and must not pick up one without it.
            export_cache = None if progress is not None else cache_dir / "exported"
        start = time.perf_counter()
        checkpointing = _checkpointing(cfg, plan, job_dir)
        with checkpoints.stop_signals(_stop_signals()) as stop:
            if checkpointing is not None:
                checkpointing.should_stop = stop
            result = sweeps.run(
                train, plan.sweep, plan.seeds, max_batch=plan.max_batch,
                export_cache=export_cache, return_state=save,
                # The key names the whole program: a progress callback makes it a different one.
                program_key=f"{plan.algo}:{plan.config!r}:progress={progress is not None}",
                checkpoint=checkpointing,
            )
        wall = time.perf_counter() - start
        ids = dict(experiment=plan.experiment, algo=plan.algo, config=plan.config, base_hyper=plan.hyper)
        tidy = results.tidy(result, **ids)
        summary = results.summarize(result, **ids, return_metric=return_metric(plan.algo, plan.config),
                                    wall_seconds=result.run_seconds)
        config_text = resolved_config_text(cfg)
        if not writer:
            log.info("%s: the metrics of all %d runs are held here too; process 0 writes them", job_dir, len(summary))
            return "complete"
        if cfg.get("tensorboard", False):
            from purerl.watch import write_tensorboard

            write_tensorboard(job_dir / TENSORBOARD, result.metrics, result.settings, result.seeds)
        if save:  # before write_job: a complete job has its policies
            policies.save_policies(
                job_dir, result.final_state, algo=plan.algo, config=plan.config,
                settings=result.settings, seeds=result.seeds, fingerprint=plan.fingerprint,
            )
        results.write_job(
            job_dir,
            tidy,
            summary,
            config_text,
            extra_files=[policies.POLICIES] if save else [],
            **meta,
            compile_seconds=result.compile_seconds,
            run_seconds=result.run_seconds,
            wall_seconds=wall,
        )
        if checkpointing is not None:
            checkpointing.remove()  # the results are the record now
    except checkpoints.Interrupted as e:
        results.mark_failed(job_dir, e, **meta)
        log.warning("%s: %s", job_dir, e)
        if progress is not None:
            progress.close()
        _after_stop(e.signum, stop.previous.get(e.signum))
    except BaseException as e:
        if writer:
            results.mark_failed(job_dir, e, **meta)
        raise
    finally:
        if progress is not None:
            progress.close()
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


def _writes_results() -> bool:
    """Under jax.distributed every process trains its share of the sweep and holds all
    results; process 0 alone writes them."""
    import jax

    return jax.process_index() == 0


def _subdir(override_dirname: str) -> str:
    """Job folder name: the job's overrides (stable across reruns), or "base" if none."""
    return override_dirname or "base"


OmegaConf.register_new_resolver("purerl_subdir", _subdir, replace=True)
schema.register()


# ---------------------------------------------------------------- command line
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _allowed_keys(key: str, job: list[str], config_name: str) -> str:
    """The keys allowed next to the unknown `key` (for `grid.*`: the algorithm's traced fields)."""
    from hydra import compose

    parent = key.rpartition(".")[0]
    def name(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    groups = [o for o in job if "=" in o and "." not in name(o) and name(o) != key]
    try:
        cfg = compose(config_name, overrides=groups)
    except Exception:  # noqa: BLE001 - a bad group choice is reported on its own
        return ""
    if parent == "grid":
        return f"traced fields of {cfg.algo.name}: {', '.join(cfg.algo.hyper)}"
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""


def composition_error(error: Exception, job: list[str], config_name: str = "config") -> str:
    """One line for a Hydra composition error: the key, the bad value, what is allowed."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, name = str(error.missing_cfg_file or "").rpartition("/")
        return f"{group or 'config'}: got {name!r}; allowed: {', '.join(error.options)}"
    cause = error.__cause__ or error.__context__
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key == "algo.config.env":
        algo = next((o.split("=", 1)[1] for o in job if o.startswith("algo=")), "this algorithm")
        return f"env: {algo} trains on its own task, not a gymnax env; drop the env group: add '~env'"
    parent = key.rpartition(".")[0] if key else ""
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and parent.endswith("kwargs"):
        return (f"{key}: not a key of {parent} yet; add it with '+': "
                f"+{key}=<value> (e.g. +algo.config.task_kwargs.num_digits=1)")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        allowed = _allowed_keys(key, job, config_name)
        return f"{key}: unknown key" + (f"; allowed: {allowed}" if allowed else "")
    if isinstance(cause, ValidationError) and key:
        message = str(getattr(cause, "msg", cause)).splitlines()[0]
        if "is not a ListConfig" in message:
            return f"{key}: got {cause.value!r}; allowed: a list of values, e.g. {key}=[{cause.value}]"
        converted = re.search(r"could not be converted to (\w+)", message)
        if converted:
            kind = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false"}
            return f"{key}: got {cause.value!r}; allowed: {kind.get(converted.group(1), converted.group(1))}"
        return f"{key}: {message}"
    noise = ("Config search path", "provider=")
    lines = [line for line in str(error).splitlines() if not line.lstrip().startswith(noise)]
    return _one_line(" ".join(lines)) + (f": {_one_line(cause)}" if cause else "")


def _hydra_flags() -> argparse.ArgumentParser:
    """The flags of Hydra's own command line (hydra.main), parsed here only to tell a plain
    run or multirun from --help, --cfg and the like."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("overrides", nargs="*")
    for flags in (["--help", "-h"], ["--hydra-help"], ["--version"], ["--resolve"], ["--run", "-r"],
                  ["--multirun", "-m"], ["--shell-completion", "-sc"]):
        parser.add_argument(*flags, action="store_true")
    for flags in (["--cfg", "-c"], ["--package", "-p"], ["--config-path", "-cp"], ["--config-name", "-cn"],
                  ["--config-dir", "-cd"], ["--experimental-rerun"]):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    return parser




def validate_command_line(argv: list[str]) -> list[str]:
    """Compose and validate every job the command line would run, before any of them runs.

    Returns one line per invalid job (empty when all are valid, or when the command is not
    a plain run/multirun of the bundled configs, e.g. --help or --cfg: Hydra handles those).
    Checks composition, `build_plan` and, for jobs whose folder holds complete results,
    that a rerun would not mix results of other code or configuration."""
    return check_command_line(argv)[0]


def check_command_line(argv: list[str]) -> tuple[list[str], list[Path], int]:
    """`validate_command_line`'s errors, plus the folders of the jobs a run would skip
    (complete, same fingerprint, intact) and the number of jobs (0: not a plain run)."""
    skipped: list[Path] = []
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from analysis.loader import multirun_jobs

    try:
        args = _hydra_flags().parse_args(argv)
    except SystemExit:
        return [], [], 0  # argparse's own message; Hydra will repeat it
    if any([args.help, args.hydra_help, args.version, args.cfg, args.info, args.shell_completion,
            args.config_path, args.config_dir, args.experimental_rerun, args.package]):
        return [], [], 0
    config_name = args.config_name or "config"
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        return [_one_line(e)], [], 0
    hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o for o in parsed if not o.is_hydra_override()]
    swept = {o.key_or_group for o in task if o.is_sweep_override()}
    if args.multirun:
        jobs = multirun_jobs(task)
    elif any(o.is_sweep_override() for o in task):
        return [], [], 0  # Hydra explains that a sweep needs -m
    else:
        jobs = [[o.input_line for o in task]]

    errors = []
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR), job_name="train"):
        for job in jobs:
            varying = [o for o in job if o.split("=", 1)[0] in swept]
            label = f"job {' '.join(varying)}: " if len(jobs) > 1 else ""
            try:
                cfg = compose(config_name, overrides=hydra_overrides + job, return_hydra_config=True)
            except Exception as e:  # noqa: BLE001 - any composition error is reported
                errors.append(label + composition_error(e, job, config_name))
                continue
            try:
                sweep = cfg.hydra.sweep
                job_dir = Path(sweep.dir) / sweep.subdir if args.multirun else Path(cfg.hydra.run.dir)
                if check_existing(job_dir, build_plan(cfg), cfg.force) == "skip":
                    skipped.append(job_dir)
            except ConfigError as e:
                errors.append(label + str(e))
    if errors and len(jobs) > 1:
        errors.append(f"nothing was started: {len(errors)} of {len(jobs)} jobs are invalid")
    return errors, skipped, len(jobs)


@hydra.main(version_base="1.3", config_path=str(schema.CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if "joblib" in str(hc.launcher.get("_target_", "")).lower():
        # Jobs share the machine (and its GPU): don't let each grab 75% of GPU memory.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        return run_job(cfg, hc.runtime.output_dir)
    except ValueError as e:  # ConfigError included
        if hc.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failure and runs the other jobs
        where = "" if isinstance(e, ConfigError) else f" (traceback in {Path(hc.runtime.output_dir) / 'job.json'})"
        print(f"purerl-train: error: {_one_line(e)}{where}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """`purerl-train`: validate every job of the command line, then let Hydra run them."""
    collect_garbage_less_often()
    errors, skipped, num_jobs = check_command_line(sys.argv[1:])
    if errors:
        for line in errors:
            print(f"purerl-train: error: {line}", file=sys.stderr)
        sys.exit(2)
    if num_jobs and len(skipped) == num_jobs:
        # Nothing to train: don't start a launcher (a Ray cluster, SLURM jobs) to skip every job.
        for job_dir in skipped:
            print(f"skipping {job_dir.resolve()}: results exist (force=true redoes it)", flush=True)
        print(f"purerl-train: all {num_jobs} job(s) complete; nothing launched", flush=True)
        return
    if not _writes_results():
        # The other processes of a jax.distributed job: process 0 writes the job folder
        # (config, log, results); these log to the console.
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    _app()


if __name__ == "__main__":
    main()
