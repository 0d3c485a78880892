"""Check a multirun's Ray or SLURM resource request against the cluster before any job is submitted.

Ray waits forever for a task that asks for resources no node has, and SLURM queues a job
asking for more CPUs than any node of its partition has forever (and refuses GPUs on a node
without any with a cryptic gres error). The presets `hydra/launcher=ray_cpu|ray_gpu|
slurm_cpu|slurm_gpu` register `CheckLauncherResources` as a Hydra callback: at the start of
the multirun (before the launcher submits anything) it asks the cluster what its nodes have
and stops with one line naming the resource when no node can run a job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RAY_RESOURCES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class LauncherResourceError(ValueError):
    """A job asks for resources that no node of the cluster has."""


def _number(value: float) -> str:
    return f"{value:g}"


def ray_shortfall(remote: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """Why no alive node of `nodes` (`ray.nodes()`) can run a task with `ray.remote(**remote)`; None if one can.

    Ray's task defaults are 1 CPU, no GPU; custom `resources` are checked too.
    """
    request = {"CPU": 1.0}
    for key, resource in RAY_RESOURCES.items():
        if remote.get(key) is not None:
            request[resource] = float(remote[key])
    for resource, amount in (remote.get("resources") or {}).items():
        request[str(resource)] = float(amount)
    request = {r: a for r, a in request.items() if a > 0}
    alive = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive", True)]
    if not alive:
        return "the Ray cluster has no alive node"
    if any(all(node.get(r, 0.0) >= a for r, a in request.items()) for node in alive):
        return None
    missing = []
    for resource, amount in request.items():
        most = max(node.get(resource, 0.0) for node in alive)
        if most < amount:
            key = next((k for k, r in RAY_RESOURCES.items() if r == resource), f"resources.{resource}")
            missing.append(
                f"hydra.launcher.ray.remote.{key}={_number(amount)} but no node of the Ray cluster has "
                f"{_number(amount)} {resource} (most on one node: {_number(most)}, {len(alive)} node(s))"
            )
    if not missing:
        missing.append(f"no single node of the Ray cluster has all of {request}")
    return "; ".join(missing)


_GPU_GRES = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


def gres_gpus(gres: str | None) -> int:
    """GPUs in a SLURM gres string (`sinfo %G` or `--gres`): 'gpu:4', 'gpu:a100:2(S:0-1),shard:8', '(null)'."""
    total = 0
    for item in (gres or "").split(","):
        item = item.strip()
        match = _GPU_GRES.match(item)
        if match:
            total += int(match.group(1))
        elif item == "gpu":
            total += 1
    return total


def slurm_request(launcher: Mapping[str, Any]) -> dict[str, int]:
    """CPUs and GPUs one node must have for a job of a hydra-submitit-launcher `SlurmQueueConf`."""
    tasks = int(launcher.get("tasks_per_node") or 1)
    gpus = 0
    if launcher.get("gpus_per_node"):
        gpus = int(launcher["gpus_per_node"])
    elif launcher.get("gpus_per_task"):
        gpus = int(launcher["gpus_per_task"]) * tasks
    elif launcher.get("gres"):
        gpus = gres_gpus(str(launcher["gres"]))
    cpus = int(launcher.get("cpus_per_task") or 1) * tasks
    if launcher.get("cpus_per_gpu") and gpus:
        cpus = max(cpus, int(launcher["cpus_per_gpu"]) * gpus)
    return {"cpus": cpus, "gpus": gpus, "nodes": int(launcher.get("nodes") or 1)}


def slurm_shortfall(launcher: Mapping[str, Any], nodes: Sequence[Mapping[str, int]]) -> str | None:
    """Why the partition's `nodes` (dicts with 'cpus' and 'gpus') cannot run one job; None if they can."""
    need = slurm_request(launcher)
    partition = launcher.get("partition") or "the default partition"
    if not nodes:
        return f"hydra.launcher.partition: {partition} has no node"
    fits = [n for n in nodes if n["cpus"] >= need["cpus"] and n["gpus"] >= need["gpus"]]
    if len(fits) >= need["nodes"]:
        return None
    problems = []
    if need["gpus"] > max(n["gpus"] for n in nodes):
        key = next(k for k in ("gpus_per_node", "gpus_per_task", "gres") if launcher.get(k))
        problems.append(
            f"hydra.launcher.{key}={launcher[key]} asks for {need['gpus']} GPU(s) per node but no node of "
            f"{partition} has {need['gpus']} (most: {max(n['gpus'] for n in nodes)}); "
            "use hydra/launcher=slurm_cpu or hydra.launcher.gpus_per_node=null"
        )
    if need["cpus"] > max(n["cpus"] for n in nodes):
        problems.append(
            f"hydra.launcher.cpus_per_task={launcher.get('cpus_per_task')} asks for {need['cpus']} CPUs per node "
            f"but no node of {partition} has {need['cpus']} (most: {max(n['cpus'] for n in nodes)})"
        )
    if not problems:
        problems.append(
            f"hydra.launcher.nodes={need['nodes']}: {partition} has {len(fits)} node(s) with "
            f"{need['cpus']} CPUs and {need['gpus']} GPU(s)"
        )
    return "; ".join(problems)


def sinfo_nodes(partition: str | None) -> list[dict[str, int]]:
    """The nodes of `partition` (None: the default partition) as `sinfo` reports them."""
    if shutil.which("sinfo") is None:
        raise LauncherResourceError("hydra/launcher=slurm_*: `sinfo` not found; this machine is not a SLURM client")
    out = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N|%c|%G|%P"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise LauncherResourceError(f"hydra/launcher=slurm_*: sinfo failed: {out.stderr.strip()}")
    wanted = set(partition.split(",")) if partition else None
    nodes = {}
    for line in out.stdout.splitlines():
        name, cpus, gres, part = line.strip().split("|")
        default = part.endswith("*")
        if (wanted is None and default) or (wanted is not None and part.rstrip("*") in wanted):
            nodes[name] = {"cpus": int(cpus), "gpus": gres_gpus(gres)}
    return list(nodes.values())


def check_ray(launcher: DictConfig, sweep_dir: str) -> None:
    """Connect to (or start) Ray as the launcher would, then check its request against the nodes."""
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    # A relative sweep directory is refused before connecting: that needs no cluster.
    address = launcher.ray.init.get("address")
    if address not in (None, "local") and not os.path.isabs(sweep_dir):
        raise LauncherResourceError(
            f"hydra.sweep.dir={sweep_dir} is relative, and the jobs of a Ray cluster (address={address}) resolve it "
            "against the cluster's working directory, not this one; give an absolute path on a filesystem every "
            f"node shares, e.g. hydra.sweep.dir={os.path.abspath(sweep_dir)}"
        )
    # The launcher finds Ray initialised and uses this connection.
    start_ray(launcher.ray.init)
    nodes = [n for n in ray.nodes() if n.get("Alive", True)]
    remote = OmegaConf.to_container(launcher.ray.get("remote") or {}, resolve=True)
    problem = ray_shortfall(remote, nodes)
    if problem:
        raise LauncherResourceError(problem)


def check_slurm(launcher: DictConfig) -> None:
    problem = slurm_shortfall(launcher, sinfo_nodes(launcher.get("partition")))
    if problem:
        raise LauncherResourceError(problem)


def check_launcher(config: DictConfig) -> None:
    """Raise `LauncherResourceError` if the configured Ray or SLURM launcher cannot run a job."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if target.endswith("RayLauncher"):
        check_ray(launcher, str(config.hydra.sweep.dir))
    elif target.endswith("SlurmLauncher"):
        check_slurm(launcher)


class CheckLauncherResources(Callback):
    """Hydra callback: stop a multirun whose jobs no node of the cluster can run, before submitting."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config)
        except LauncherResourceError as e:
            print(f"purerl-train: error: {e}", file=sys.stderr)
            sys.exit(2)
