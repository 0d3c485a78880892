"""The launcher presets run for real: submitit_local, Ray (local `ray.init` and a `ray start --head`
cluster) and a one-node SLURM brought up here when its Debian packages are installed.

Each launcher: a 2-job multirun completes, the same command again skips both jobs (their result
files are untouched), `purerl-analyze` reads both. Requests that no node can serve stop with one
line naming the resource before anything is submitted. The jobs are tiny PPO CartPole runs; one
plain job first fills a compilation cache that every launcher's jobs then load.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

import analysis
import purerl.cli.train  # noqa: F401 - registers the resolvers the root config uses
from purerl import results as res
from purerl.cli import schema
from purerl.cli.launchers import gres_gpus, ray_shortfall, slurm_request, slurm_shortfall

REPO = Path(__file__).resolve().parents[1]
SHAPE = ["seeds=2", "algo.config.num_envs=4", "algo.config.num_steps=16", "algo.config.total_timesteps=256"]
OVERRIDES = ["name=t", *SHAPE, "algo.hyper.ent_coef=0.0,0.01", "save_policies=false", "print_table=false"]
JOBS = [
    f"algo.config.num_envs=4,algo.config.num_steps=16,algo.config.total_timesteps=256,algo.hyper.ent_coef={v},seeds=2"
    for v in ("0.0", "0.01")
]
TIMEOUT = 600
# Ray's dashboard is not what these tests check, and costs about 3 CPU-s per Ray start.
NO_DASHBOARD = "+hydra.launcher.ray.init.include_dashboard=false"

pytestmark = pytest.mark.xdist_group(__name__)


# ---- the checks themselves, against hand-written cluster descriptions


def ray_node(cpu: float, gpu: float = 0.0, alive: bool = True, **custom: float) -> dict:
    resources = {"CPU": cpu, "memory": 8e9, "object_store_memory": 1e9, **custom}
    if gpu:
        resources["GPU"] = gpu
    return {"Alive": alive, "Resources": resources}


def test_ray_request_that_a_node_can_serve_passes():
    assert ray_shortfall({"num_cpus": 1, "num_gpus": 0}, [ray_node(2)]) is None
    assert ray_shortfall({"num_cpus": 8, "num_gpus": 1}, [ray_node(2), ray_node(16, 1)]) is None
    assert ray_shortfall({}, [ray_node(1)]) is None  # Ray's defaults: 1 CPU, no GPU
    assert ray_shortfall({"resources": {"tpu_host": 1}}, [ray_node(4, tpu_host=1)]) is None


def test_ray_request_that_no_node_can_serve_names_the_resource():
    assert ray_shortfall({"num_cpus": 1, "num_gpus": 1}, [ray_node(2)]) == (
        "hydra.launcher.ray.remote.num_gpus=1 but no node of the Ray cluster has 1 GPU (most on one node: 0, 1 node(s))"
    )
    # 8 CPUs in total, but no single node has them
    problem = ray_shortfall({"num_cpus": 8}, [ray_node(4), ray_node(4)])
    assert problem.startswith("hydra.launcher.ray.remote.num_cpus=8 but no node") and "most on one node: 4" in problem
    # each resource exists somewhere, never together
    problem = ray_shortfall({"num_cpus": 8, "num_gpus": 1}, [ray_node(2, 1), ray_node(16)])
    assert problem.startswith("no single node of the Ray cluster has all of")
    assert ray_shortfall({"num_cpus": 1}, [ray_node(64, 8, alive=False)]) == "the Ray cluster has no alive node"
    assert "remote.resources.tpu_host=1" in ray_shortfall({"resources": {"tpu_host": 1}}, [ray_node(4)])


@pytest.mark.parametrize(
    "gres, gpus",
    [("(null)", 0), ("", 0), ("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2), ("gpu:a100:2,gpu:v100:1,shard:8", 3), ("gpu", 1)],
)
def test_gres_gpus(gres, gpus):
    assert gres_gpus(gres) == gpus


def test_slurm_request_counts_per_node():
    assert slurm_request({"cpus_per_task": 2, "tasks_per_node": 1, "nodes": 1}) == {"cpus": 2, "gpus": 0, "nodes": 1}
    assert slurm_request({"cpus_per_task": 2, "tasks_per_node": 4, "gpus_per_task": 1}) == {
        "cpus": 8,
        "gpus": 4,
        "nodes": 1,
    }
    assert slurm_request({"gres": "gpu:a100:2", "cpus_per_gpu": 6})["cpus"] == 12


def test_slurm_shortfall():
    two_cpus = [{"cpus": 2, "gpus": 0}]
    assert slurm_shortfall({"cpus_per_task": 2, "gpus_per_node": None}, two_cpus) is None
    assert slurm_shortfall({"cpus_per_task": 2, "gpus_per_node": 1}, two_cpus) == (
        "hydra.launcher.gpus_per_node=1 asks for 1 GPU(s) per node but no node of the default partition has 1 "
        "(most: 0); use hydra/launcher=slurm_cpu or hydra.launcher.gpus_per_node=null"
    )
    assert slurm_shortfall({"cpus_per_task": 8, "partition": "cpu"}, two_cpus) == (
        "hydra.launcher.cpus_per_task=8 asks for 8 CPUs per node but no node of cpu has 8 (most: 2)"
    )
    assert slurm_shortfall({"cpus_per_task": 2, "nodes": 2}, two_cpus) == (
        "hydra.launcher.nodes=2: the default partition has 1 node(s) with 2 CPUs and 0 GPU(s)"
    )
    assert slurm_shortfall({}, []) == "hydra.launcher.partition: the default partition has no node"


# ---- presets


PRESETS = sorted(p.stem for p in (schema.CONF_DIR / "hydra" / "launcher").glob("*.yaml"))


def test_no_preset_is_named_like_a_plugin_schema():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports every installed plugin, which registers its schemas
    schemas = {name.removesuffix(".yaml") for name in ConfigStore.instance().list("hydra/launcher")}
    assert {"ray", "submitit_slurm", "submitit_local", "joblib"} <= schemas
    assert not schemas & set(PRESETS)


@pytest.mark.parametrize(
    "preset, resources",
    [
        ("ray_cpu", {"num_cpus": 1, "num_gpus": 0}),
        ("ray_gpu", {"num_cpus": 1, "num_gpus": 1}),
        ("slurm_cpu", {"cpus_per_task": 2, "gpus_per_node": None, "mem_gb": None}),
        ("slurm_gpu", {"cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 32}),
    ],
)
def test_cluster_presets_compose_without_warnings(preset, resources):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher" if preset.startswith("ray") else "submitit")
    with warnings.catch_warnings(), initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        warnings.simplefilter("error", UserWarning)  # Hydra's schema-matching deprecation is a UserWarning
        cfg = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    got = launcher.ray.remote if preset.startswith("ray") else launcher
    assert {k: got[k] for k in resources} == resources
    if preset.startswith("ray"):
        assert launcher.ray.init.object_store_memory is None
    assert cfg.hydra.callbacks.purerl_launcher_check._target_ == "purerl.cli.launchers.CheckLauncherResources"


# ---- real multiruns


def purerl_train(env: dict, *args: str, cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "purerl.cli.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def mtimes(sweep_dir: Path) -> dict[str, int]:
    return {
        f"{job}/{name}": (sweep_dir / job / name).stat().st_mtime_ns
        for job in JOBS
        for name in (res.RESULTS, res.STATUS)
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Environment of every command: a private HOME (a local Ray writes ~/.ray) and a warm compile cache."""
    root = tmp_path_factory.mktemp("launchers")
    (root / "home").mkdir()
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "PURERL_COMPILE_CACHE": str(root / "jax-cache"),
        "JAX_PLATFORMS": "cpu",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        # Ray and SLURM start the jobs in fresh interpreters; they import this checkout's purerl.
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    warm = purerl_train(env, "name=warm", *SHAPE, "save_policies=false", "print_table=false", cwd=root)
    assert warm.returncode == 0, warm.stderr[-3000:]
    return env


def multirun_twice(env: dict, sweep_dir: Path, *launcher: str, cwd: Path) -> tuple:
    """The 2-job multirun, then the same command again; returns both processes and the result files' mtimes."""
    args = ["-m", *OVERRIDES, f"hydra.sweep.dir={sweep_dir}", *launcher]
    first = purerl_train(env, *args, cwd=cwd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    absolute = sweep_dir if sweep_dir.is_absolute() else cwd / sweep_dir
    before = mtimes(absolute)
    second = purerl_train(env, *args, cwd=cwd)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return absolute, second, before


def check_ran_skipped_and_analysed(absolute: Path, second: subprocess.CompletedProcess, before: dict, capsys) -> None:
    jobs = analysis.jobs(absolute)
    assert sorted(jobs.status) == ["complete", "complete"]
    assert sorted(Path(j).name for j in jobs.job) == sorted(JOBS)
    # Ray prints its jobs' logs here; submitit and SLURM write them into the sweep folder.
    files = [p for p in absolute.rglob("*") if p.suffix in (".out", ".err", ".log") and p.is_file()]
    log = second.stdout + second.stderr + "".join(p.read_text(errors="replace") for p in files)
    for job in JOBS:
        assert f"skipping {absolute / job}: results exist" in log, log[-3000:]
    # Every job complete: purerl-train does not start the launcher (a cluster, SLURM jobs) at all.
    assert "all 2 job(s) complete; nothing launched" in second.stdout, log[-3000:]
    assert mtimes(absolute) == before  # the rerun rewrote nothing

    from purerl.cli.analyze import main

    capsys.readouterr()
    assert main([str(absolute), "--by", "ent_coef"]) == 0
    out = capsys.readouterr().out
    table = (absolute / "table.md").read_text()
    assert table in out
    rows = [line for line in table.splitlines() if line.startswith("| 0")]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "0.01"]
    assert all(row.split("|")[3].strip() == "2" for row in rows)  # n: 2 seeds per job


def test_submitit_local(env, tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    check_ran_skipped_and_analysed(
        *multirun_twice(env, tmp_path / "sweep", "hydra/launcher=submitit_local", cwd=tmp_path), capsys
    )


def test_ray_local_init(env, tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    # A relative sweep directory works with a local ray.init: its workers share this working directory.
    check_ran_skipped_and_analysed(
        *multirun_twice(env, Path("multirun/t"), "hydra/launcher=ray_cpu", NO_DASHBOARD, cwd=tmp_path), capsys
    )


@pytest.fixture(scope="module")
def ray_cluster(request, tmp_path_factory):
    """A one-node `ray start --head` cluster (2 CPUs, no GPU), stopped with `ray stop` afterwards."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    cwd = tmp_path_factory.mktemp("ray_head")
    # A HOME of its own: Ray keeps its cluster authentication token in ~/.ray, which a local
    # ray.init under another test's HOME would replace (the drivers then fail to authenticate).
    (cwd / "home").mkdir()
    env = {**request.getfixturevalue("env"), "HOME": str(cwd / "home")}  # only once the plugin is there
    ray_cli = Path(sys.executable).with_name("ray")
    with socket.socket() as probe:  # a free port: another Ray on this machine may hold the default 6379
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = [str(ray_cli), "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
             "--disable-usage-stats", "--include-dashboard=false"]
    try:
        started = subprocess.run(start, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        # `address=auto` looks for running Ray instances and gives up when it finds several (a local
        # ray.init of another test may still be shutting down); RAY_ADDRESS is where Ray's "auto"
        # looks first, as on a cluster node set up by `ray start`.
        yield cwd, {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        subprocess.run([str(ray_cli), "stop"], capture_output=True, env=env, cwd=cwd, timeout=300)


def test_ray_cluster_address_auto(ray_cluster, tmp_path, capsys):
    _, env = ray_cluster
    cluster = ["hydra/launcher=ray_cpu", "hydra.launcher.ray.init.address=auto"]
    check_ran_skipped_and_analysed(*multirun_twice(env, tmp_path / "sweep", *cluster, cwd=tmp_path), capsys)


def test_ray_refuses_gpus_the_cluster_lacks(ray_cluster, tmp_path):
    _, env = ray_cluster
    proc = purerl_train(
        env, "-m", *OVERRIDES, f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/launcher=ray_gpu",
        "hydra.launcher.ray.init.address=auto", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "purerl-train: error: hydra.launcher.ray.remote.num_gpus=1 but no node of the Ray cluster has 1 GPU "
        "(most on one node: 0, 1 node(s))"
    )
    assert not (tmp_path / "sweep").exists()


def test_ray_cluster_refuses_a_relative_sweep_dir(ray_cluster, tmp_path):
    head, env = ray_cluster
    proc = purerl_train(
        env, "-m", *OVERRIDES, "hydra.sweep.dir=multirun/t", "hydra/launcher=ray_cpu",
        "hydra.launcher.ray.init.address=auto", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("purerl-train: error: hydra.sweep.dir=multirun/t is relative")
    assert last.endswith(f"hydra.sweep.dir={tmp_path / 'multirun/t'}")
    assert not (tmp_path / "multirun").exists() and not (head / "multirun").exists()


# ---- a one-node SLURM


SLURM_CONF = """\
ClusterName=purerl
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(pid_file: Path) -> None:
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().split()[0]), 15)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def slurm(request, tmp_path_factory):
    """munged + slurmctld + slurmd: one node (this host, 2 CPUs, no GPU), no accounting; stopped afterwards."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(c) is None]
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} not found): "
            "apt-get install slurmctld slurmd slurm-client munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("a one-node SLURM needs root (slurmd runs the jobs as their user)")
    env = request.getfixturevalue("env")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    (root / "spool").mkdir()
    (root / "state").mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, cpus=2, ctld_port=free_port(), d_port=free_port()))
    slurm_env = {**env, "SLURM_CONF": str(conf)}
    daemons = [
        ["munged", "--force", f"--key-file={key}", f"--socket={root}/munge.sock", f"--pid-file={root}/munged.pid",
         f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
        ["slurmctld", "-f", str(conf), "-i"],
        ["slurmd", "-f", str(conf), "-N", host],
    ]  # fmt: skip
    try:
        for command in daemons:
            subprocess.run(command, check=True, env=slurm_env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=slurm_env).stdout
            if state.strip() == "idle":
                break
            time.sleep(0.5)
        assert state.strip() == "idle", f"node state {state!r}; {(root / 'slurmctld.log').read_text()[-2000:]}"
        yield slurm_env, root
    finally:
        # submitit returns once a job's result file exists, while SLURM may still be finishing
        # its steps; stopping slurmd under them would orphan their slurmstepd processes.
        if (root / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--user", "root"], env=slurm_env, capture_output=True, timeout=60)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm_env)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for daemon in ("slurmd", "slurmctld", "munged"):
            stop(root / f"{daemon}.pid")


def test_slurm_refuses_gpus_the_node_lacks(slurm, tmp_path):
    slurm_env, _ = slurm
    proc = purerl_train(
        slurm_env, "-m", *OVERRIDES, f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/launcher=slurm_gpu",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "purerl-train: error: hydra.launcher.gpus_per_node=1 asks for 1 GPU(s) per node but no node of the default "
            "partition has 1 (most: 0)"
        )
    )
    assert not (tmp_path / "sweep").exists()


def test_slurm_one_node(slurm, tmp_path, capsys):
    slurm_env, root = slurm
    try:
        result = multirun_twice(slurm_env, tmp_path / "sweep", "hydra/launcher=slurm_cpu", cwd=tmp_path)
    except subprocess.TimeoutExpired:
        # Without accounting, submitit cannot see a job fail (sacct), so it would wait; show why.
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "sweep").rglob("*.err")))
        pytest.fail(f"SLURM multirun timed out; job logs:\n{logs}\n{(root / 'slurmd.log').read_text()[-1500:]}")
    check_ran_skipped_and_analysed(*result, capsys)
