"""One sweep over several processes (`jax.distributed`, purerl.distributed)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from purerl import distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_sweep_worker.py"


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


def test_two_process_sweep_equals_the_same_sweep_in_one_process(tmp_path):
    """2 processes × 1 CPU device under jax.distributed vs 1 process × 2 CPU devices: the
    same runs on the same per-device batch, so every process holds exactly the same
    [setting, seed, update] metrics and final parameters as the single process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    coordinator = f"localhost:{_free_port()}"
    commands = {
        "single": [str(tmp_path / "single.npz"), "2"],
        **{f"process{i}": [str(tmp_path / f"process{i}.npz"), "1", coordinator, "2", str(i)] for i in (0, 1)},
    }
    procs = {name: subprocess.Popen([sys.executable, str(WORKER), *args], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, args in commands.items()}
    for name, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise
        assert proc.returncode == 0, f"{name} failed:\n{output[-3000:]}"

    single = np.load(tmp_path / "single.npz")
    arrays = [k for k in single.files if k.startswith(("metric/", "param/"))]
    assert single["metric/episode_return"].shape == (2, 2, 3)  # [setting, seed, update]
    assert any(k.startswith("param/") for k in arrays)
    for i in (0, 1):
        part = np.load(tmp_path / f"process{i}.npz")
        assert int(part["process_count"]) == 2 and int(part["global_devices"]) == 2
        assert sorted(k for k in part.files if k.startswith(("metric/", "param/"))) == sorted(arrays)
        for k in arrays:  # exact: both sides run the same CPU kernels on the same shards
            np.testing.assert_array_equal(part[k], single[k], err_msg=f"process {i}: {k}")
