"""One XLA device per CPU core, set by the command-line apps (purerl.cli.devices) and
never by an import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from purerl.cli import devices

ROOT = Path(__file__).resolve().parent.parent
CPU = {"JAX_PLATFORMS": "cpu"}
FLAG = "--xla_force_host_platform_device_count"


def test_plan_one_device_per_core_on_a_cpu_only_jax():
    assert devices.plan(CPU, 4) == (f"{FLAG}=4", f"4 CPU devices (one per core; {devices.ENV}=off keeps one)")
    # Other XLA flags are kept.
    flags, _ = devices.plan({**CPU, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, 2)
    assert flags == f"--xla_cpu_enable_fast_math=false {FLAG}=2"
    assert devices.plan(CPU, 1)[0] is None  # one core: XLA's default already


def test_plan_leaves_what_the_user_or_an_accelerator_decides():
    assert devices.plan({**CPU, "XLA_FLAGS": f"{FLAG}=3"}, 8) == (None, f"3 CPU device(s), as XLA_FLAGS sets "
                                                                        f"({devices.ENV} is not used)")
    assert devices.plan({**CPU, devices.ENV: "off"}, 8) == (None, f"1 CPU device ({devices.ENV}=off)")
    assert devices.plan({**CPU, devices.ENV: "3"}, 8) == (f"{FLAG}=3", f"3 CPU devices ({devices.ENV}=3)")
    flags, note = devices.plan({"JAX_PLATFORMS": "cuda,cpu"}, 8)
    assert flags is None and note == "CPU device count left to XLA: JAX_PLATFORMS=cuda,cpu"
    # An explicit count applies whatever the platform.
    assert devices.plan({"JAX_PLATFORMS": "cuda", devices.ENV: "2"}, 8)[0] == f"{FLAG}=2"
    with pytest.raises(ValueError, match=r"PURERL_CPU_DEVICES: got 'many'; allowed: auto \(one per core\), off, "):
        devices.plan({devices.ENV: "many"}, 8)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", devices.ENV)}
    return subprocess.run([sys.executable, *args], env={**clean, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_programs_decide_before_jax_starts_and_imports_change_nothing():
    # A bad value stops purerl-train and an experiment script at start-up, naming it: proof
    # that both read PURERL_CPU_DEVICES when they start, before any JAX work.
    bad = {devices.ENV: "many"}
    for program, name in (("purerl.cli.train", "purerl-train"),
                          ("experiments.exploration_bandits", "experiments.exploration_bandits")):
        out = _run("-m", program, **bad)
        assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
            f"{name}: error: PURERL_CPU_DEVICES: got 'many'; allowed: auto (one per core), off, or a positive "
            "integer"), out.stderr[-2000:]
    # Importing the apps' modules (a test, a notebook) sets nothing.
    code = ("import os, purerl.cli.train, experiments.lab, jax; "
            "print(os.environ.get('XLA_FLAGS'), jax.local_device_count())")
    out = _run("-c", code, **CPU, **bad)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "1"]


def test_a_deferred_module_is_imported_on_first_use_and_forwards_to_it(monkeypatch):
    import importlib

    from purerl.cli import DeferredModule, defer_imports

    name = "wave"  # a standard-library module nothing here imports
    monkeypatch.delitem(sys.modules, name, raising=False)
    defer_imports((name,))
    stand_in = sys.modules[name]
    assert isinstance(stand_in, DeferredModule)
    import wave  # a second import, as gymnax's, keeps the stand-in (nothing loaded yet)

    assert wave is stand_in and "Wave_read" not in vars(stand_in)
    assert wave.Wave_read.__module__ == name  # first use: the real module, imported
    real = sys.modules[name]
    assert not isinstance(real, DeferredModule) and real is importlib.import_module(name)
    assert stand_in.open is real.open  # the stand-in forwards
    defer_imports((name,))  # already imported: left alone
    assert sys.modules[name] is real


def test_the_train_program_does_not_import_gymnaxs_plotting_libraries():
    out = _run("-X", "importtime", "-m", "purerl.cli.train", "--cfg", "job", **CPU)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "algo:" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert "gymnax" in imported
    assert not {"seaborn", "matplotlib.pyplot"} & imported
