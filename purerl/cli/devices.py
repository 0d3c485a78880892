"""Process start-up of the command-line apps: one XLA device per CPU core, jax.distributed.

XLA:CPU runs a program on one device; a batched sweep (`purerl.sweep.run`) shards its
runs over devices, so exposing each core as a device
(`XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`) runs one shard per core:
about 2x the env-steps/s of the single default device for 8-32 seed PPO sweeps on two
cores (docs/ppo_speed.md). The flag is read once, when JAX starts its CPU backend, so
`purerl-train` and the experiment scripts call `prepare` before anything starts JAX
(importing gymnax does). The library never sets it.

`PURERL_CPU_DEVICES`: `auto` (default: one device per core the process may use, on a
CPU-only JAX), `off` (one CPU device, XLA's default), or a positive integer. An
`XLA_FLAGS` that already sets the device count is left alone.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import sys
from collections.abc import Mapping, MutableMapping

ENV = "PURERL_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"

# What `prepare` decided in this process, for the job's log (`summary`).
NOTE: str | None = None


def cores() -> int:
    """CPU cores this process may run on (its affinity mask: SLURM's --cpus-per-task, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def accelerator(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why JAX would not run on the CPU alone (None when it would): a non-CPU platform in
    JAX_PLATFORMS, or an installed GPU/TPU plugin. Imports nothing of JAX."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        names = {p.strip().lower() for p in platforms.split(",") if p.strip()}
        return None if names <= {"cpu"} else f"JAX_PLATFORMS={platforms}"
    plugins = {e.name for e in importlib.metadata.entry_points(group="jax_plugins")}
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        plugins |= {m.name for m in pkgutil.iter_modules(namespace.submodule_search_locations)}
    if importlib.util.find_spec("libtpu") is not None:
        plugins.add("libtpu")
    return f"accelerator plugin {', '.join(sorted(plugins))} installed" if plugins else None


def plan(environ: Mapping[str, str], num_cores: int) -> tuple[str | None, str]:
    """(new XLA_FLAGS or None to leave it, a line saying what and why). Pure: reads `environ`
    only. Raises ValueError naming PURERL_CPU_DEVICES for a bad value."""
    raw = environ.get(ENV, "").strip()
    value = raw.lower()
    flags = environ.get("XLA_FLAGS", "")
    given = re.search(rf"{FLAG}=(\S+)", flags)
    if given:
        return None, f"{given.group(1)} CPU device(s), as XLA_FLAGS sets ({ENV} is not used)"
    if value in ("off", "0", "false", "no"):
        return None, f"1 CPU device ({ENV}={raw})"
    if value in ("", "auto"):
        reason = accelerator(environ)
        if reason is not None:
            return None, f"CPU device count left to XLA: {reason}"
        count, why = num_cores, f"one per core; {ENV}=off keeps one"
    else:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count <= 0:
            raise ValueError(f"{ENV}: got {raw!r}; allowed: auto (one per core), off, or a positive integer")
        why = f"{ENV}={raw}"
    if count == 1:
        return None, f"1 CPU device ({why})"
    return f"{flags} {FLAG}={count}".strip(), f"{count} CPU devices ({why})"


def jax_started() -> bool:
    """Whether this process has already started a JAX backend (too late for XLA_FLAGS)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bridge.backends_are_initialized()


def prepare(environ: MutableMapping[str, str] = os.environ) -> str:
    """Before JAX starts: set XLA_FLAGS's CPU device count as `plan` decides, then
    initialise jax.distributed if PURERL_DISTRIBUTED asks (purerl.distributed). Returns
    the line for the log (also kept in `NOTE`). Raises ValueError for a bad variable."""
    global NOTE
    from purerl import distributed

    if jax_started():
        NOTE = "JAX had already started; XLA_FLAGS left as is"
    else:
        flags, NOTE = plan(environ, cores())
        if flags is not None:
            environ["XLA_FLAGS"] = flags
    joined = distributed.initialize_from_env(environ)
    if joined:
        NOTE = f"{NOTE}; {joined}"
    return NOTE


def summary() -> str:
    """The devices JAX uses and why, for a job's log."""
    import jax

    devices = jax.devices()
    local = jax.local_device_count()
    where = f"; process {jax.process_index()} of {jax.process_count()}" if jax.process_count() > 1 else ""
    given = re.search(rf"{FLAG}=(\S+)", os.environ.get("XLA_FLAGS", ""))
    why = NOTE or (f"XLA_FLAGS sets {given.group(1)} CPU device(s)" if given else "XLA's default devices")
    return f"{len(devices)} {devices[0].platform} device(s), {local} in this process{where} [{why}]"
