"""One sweep over several processes (`jax.distributed`, purerl.distributed)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from purerl import distributed

ROOT = Path(__file__).resolve().parent.parent


def test_settings_from_env_reads_the_switch_and_names_bad_values():
    assert distributed.settings_from_env({}) is None
    assert distributed.settings_from_env({"PURERL_DISTRIBUTED": "off"}) is None
    # On, nothing else: JAX auto-detects (SLURM, Open MPI, ...).
    assert distributed.settings_from_env({"PURERL_DISTRIBUTED": "1"}) == {
        "coordinator_address": None, "num_processes": None, "process_id": None}
    explicit = {"PURERL_DISTRIBUTED": "on", "PURERL_COORDINATOR": "node0:1234",
                "PURERL_NUM_PROCESSES": "4", "PURERL_PROCESS_ID": "3"}
    assert distributed.settings_from_env(explicit) == {
        "coordinator_address": "node0:1234", "num_processes": 4, "process_id": 3}
    with pytest.raises(ValueError, match=r"PURERL_DISTRIBUTED: got 'maybe'; allowed"):
        distributed.settings_from_env({"PURERL_DISTRIBUTED": "maybe"})
    with pytest.raises(ValueError, match=r"PURERL_NUM_PROCESSES: got 'two'; allowed: an integer >= 1"):
        distributed.settings_from_env({"PURERL_DISTRIBUTED": "1", "PURERL_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match=r"PURERL_PROCESS_ID: got 2; allowed: 0 .. PURERL_NUM_PROCESSES-1 = 1"):
        distributed.settings_from_env({"PURERL_DISTRIBUTED": "1", "PURERL_NUM_PROCESSES": "2",
                                       "PURERL_PROCESS_ID": "2"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


TINY_JOB = ["algo=ppo", "env=cartpole", "seeds=2", "grid.clip_eps=[0.1,0.3]", "algo.config.num_envs=2",
            "algo.config.num_steps=8", "algo.config.num_minibatches=1", "algo.config.total_timesteps=48",
            "compile_cache.enabled=false", "print_table=false"]


def test_two_process_purerl_train_job_writes_once_what_one_process_writes(tmp_path):
    """The docs/hydra.md recipe: `PURERL_DISTRIBUTED=1` + coordinator, count and index per
    process, the same job folder; 2 processes × 1 CPU device under jax.distributed (sweep.run
    spans both) against 1 process × 2 CPU devices (PURERL_CPU_DEVICES=2). Every process
    holds all metrics; process 0 alone writes the results and saved policies, exactly equal
    to the 1-process job's (the same runs on the same per-device shards)."""
    from purerl import policies
    from purerl import results as res

    base = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    coordinator = f"localhost:{_free_port()}"
    cluster = {"PURERL_DISTRIBUTED": "1", "PURERL_COORDINATOR": coordinator, "PURERL_NUM_PROCESSES": "2",
               "PURERL_CPU_DEVICES": "1"}
    runs = {
        "single": ({**base, "PURERL_CPU_DEVICES": "2"}, tmp_path / "single"),
        **{f"process{i}": ({**base, **cluster, "PURERL_PROCESS_ID": str(i)}, tmp_path / "distributed")
           for i in (0, 1)},
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "purerl.cli.train", *TINY_JOB, f"hydra.run.dir={job}"],
                                    env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
             for name, (env, job) in runs.items()}
    outputs = {}
    for name, proc in procs.items():
        try:
            outputs[name], _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise
        assert proc.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}"

    single, distributed_job = tmp_path / "single", tmp_path / "distributed"
    assert res.is_complete(single) and res.is_complete(distributed_job)
    # The job's log says what devices trained it; process 1 logged to its console.
    assert "2 cpu device(s), 1 in this process; process 0 of 2" in (distributed_job / "train.log").read_text()
    assert "process 1 of 2" in outputs["process1"]
    assert "the metrics of all 4 runs are held here too" in outputs["process1"]
    assert "2 cpu device(s), 2 in this process [2 CPU devices (PURERL_CPU_DEVICES=2)]" in (
        single / "train.log").read_text()
    a, b = pd.read_parquet(single / res.RESULTS), pd.read_parquet(distributed_job / res.RESULTS)
    assert len(a) == 2 * 2 * 3  # settings × seeds × updates
    pd.testing.assert_frame_equal(a, b)  # exact: the same CPU kernels on the same shards
    for s in range(2):
        for k in range(2):
            p, q = policies.load_policy(single, s, k), policies.load_policy(distributed_job, s, k)
            for x, y in zip(jax.tree.leaves(p.params), jax.tree.leaves(q.params), strict=True):
                np.testing.assert_array_equal(x, y)
