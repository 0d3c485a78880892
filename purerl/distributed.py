"""One sweep over several processes (nodes, GPUs): `jax.distributed` set up explicitly.

`purerl.sweep.run` spans every device of every process once `jax.distributed` is
initialised: each process puts its own devices' share of the runs and every process gets
the full metrics back. Initialisation must happen before JAX starts a backend, which
importing gymnax (hence `purerl.envs`, `purerl.sweep`, any algorithm) already does, so
call `initialize` (or `initialize_from_env`) first:

    from purerl import distributed
    distributed.initialize("10.0.0.1:12355", num_processes=2, process_id=rank)
    from purerl import sweep   # now the sweep spans both processes

Under SLURM (`srun`, one task per node or GPU) every argument may be left out: JAX reads
the job's environment (SLURM_PROCID, SLURM_NTASKS, SLURM_STEP_NODELIST). `purerl-train`
calls `initialize_from_env` at start-up when `PURERL_DISTRIBUTED=1` (docs/hydra.md).

This module imports nothing heavy at import time and changes nothing until called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

ENV = "PURERL_DISTRIBUTED"
_ON = ("1", "on", "true", "yes", "auto")
_OFF = ("", "0", "off", "false", "no")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> tuple[int, int]:
    """`jax.distributed.initialize` with these arguments; returns (process index, process count).

    Arguments left as None are auto-detected by JAX on clusters it knows (SLURM, Open MPI,
    Kubernetes, Cloud TPU). Raises RuntimeError if a JAX backend has already started."""
    import jax

    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return jax.process_index(), jax.process_count()


def _int(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name}: got {value!r}; allowed: an integer >= {minimum}")
    return number


def settings_from_env(environ: Mapping[str, str] = os.environ) -> dict | None:
    """The `initialize` arguments that the environment asks for, or None (not distributed).

    `PURERL_DISTRIBUTED`: unset/0/off (default) or 1/on/auto. With it on,
    `PURERL_COORDINATOR` (host:port of process 0; JAX also reads `JAX_COORDINATOR_ADDRESS`),
    `PURERL_NUM_PROCESSES` and `PURERL_PROCESS_ID` are used when set, and JAX detects the
    rest (SLURM). Raises ValueError naming the variable for a bad value."""
    switch = environ.get(ENV, "").strip().lower()
    if switch in _OFF:
        return None
    if switch not in _ON:
        raise ValueError(f"{ENV}: got {environ[ENV]!r}; allowed: 0/off (default) or 1/on/auto")
    settings = {
        "coordinator_address": environ.get("PURERL_COORDINATOR", "").strip() or None,
        "num_processes": _int(environ, "PURERL_NUM_PROCESSES", 1),
        "process_id": _int(environ, "PURERL_PROCESS_ID", 0),
    }
    n, i = settings["num_processes"], settings["process_id"]
    if n is not None and i is not None and i >= n:
        raise ValueError(f"PURERL_PROCESS_ID: got {i}; allowed: 0 .. PURERL_NUM_PROCESSES-1 = {n - 1}")
    return settings


def initialize_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """`initialize` as the environment asks (`settings_from_env`); a line for the log, or
    None when `PURERL_DISTRIBUTED` is off."""
    settings = settings_from_env(environ)
    if settings is None:
        return None
    index, count = initialize(**settings)
    return f"jax.distributed: process {index} of {count}"
