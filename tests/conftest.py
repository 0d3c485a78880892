"""Test policy that holds on CPU and on GPU.

- Reference tests (comparisons against float64 NumPy / closed forms) request the
  `highest_precision` fixture: GPUs run float32 matmuls as TF32 by default, which is
  ~1e-3 relative error and would fail any float32 tolerance.
- Tolerances come from `tol(dtype)`, one table keyed on dtype (and widened on GPU for
  comparisons of two JAX computations that run different kernels).
- A vmapped run and the same run alone are NOT bitwise equal, even on CPU: vmap turns
  matmuls and reductions into batched kernels whose summation order differs (measured:
  6e-8 absolute on PPO's explained_variance after one update). `tol(vmapped=True)` is the
  stated tolerance for that comparison: tight on CPU, wider on GPU (TF32-free but
  differently tiled kernels). Whole chaotic trajectories are compared on CPU only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import jax
import numpy as np
import pytest

from purerl.cli import collect_garbage_less_often

# As purerl-train does: a test process traces thousands of programs (the library sets nothing).
collect_garbage_less_often()


def _start_jax_with_one_intra_op_thread() -> None:
    """Start JAX's CPU client while this thread may run on one core only, then give the thread
    every core back.

    XLA:CPU sizes its intra-op thread pool by the cores the process may use, and runs a program's
    kernels on it. Each pytest worker already keeps one core busy, so a second pool thread finds
    no idle core: it costs CPU waiting for work and does not shorten the run (measured in
    docs/benchmarks.md, "Test suite (fifth measurement)"). The pool threads are created with the
    client and keep the one-core mask; the test's own thread and the processes it starts (CLI
    jobs, Ray, SLURM) get every core back. Each worker's pool takes its own core. Only where JAX
    has no accelerator to start: no PJRT plugin (found as JAX finds them) and no libtpu."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    accelerator = (any(importlib.metadata.entry_points(group="jax_plugins"))
                   or importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu"))
    if worker is None or len(cores) < 2 or os.environ.get("JAX_PLATFORMS", "cpu") != "cpu" or accelerator:
        return
    os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
    try:
        jax.devices()
    finally:
        os.sched_setaffinity(0, cores)


_start_jax_with_one_intra_op_thread()
ON_CPU = jax.default_backend() == "cpu"

# (rtol, atol) per dtype for float32-vs-float64-reference comparisons at highest precision.
_TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(jax.numpy.bfloat16): (2e-2, 2e-2),
    np.dtype(np.float16): (2e-3, 2e-3),
}
# Two float32 JAX programs that should agree but run batched vs unbatched kernels.
_VMAPPED_TOLERANCE = {True: (1e-5, 1e-5), False: (1e-4, 1e-5)}  # keyed on ON_CPU


def tol(dtype=np.float32, *, vmapped: bool = False) -> dict[str, float]:
    """`np.testing.assert_allclose(..., **tol(dtype))`; `vmapped=True` for a vmapped
    float32 computation against the same computation alone."""
    if vmapped:
        rtol, atol = _VMAPPED_TOLERANCE[ON_CPU]
        return {"rtol": rtol, "atol": atol}
    rtol, atol = _TOLERANCES[np.dtype(dtype)]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture
def highest_precision():
    """Run the test under full float32 matmul precision (no TF32/bf16 passes on GPU)."""
    with jax.default_matmul_precision("highest"):
        yield


# XLA options of the `runtime_bound` tests' training programs (`sweep.run(compiler_options=...)`).
# `make test` compiles everything else at optimisation level 0 with XLA:CPU's legacy fusion
# emitters (XLA_FLAGS), which quarters the compile time of the many small programs but runs a
# long training program 3-5 times slower. On a CPU, level 1 with the default (fusion) emitters
# compiled these programs in about two thirds of the time of XLA's default level 3 and ran them
# as fast (docs/benchmarks.md); on a GPU they get XLA's default level.
RUNTIME_BOUND_COMPILE = (
    {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": True} if ON_CPU
    else {"xla_backend_optimization_level": 3}
)

# The learning test of PPO's defaults and the trained-policy evaluation share one 8-seed run.
# Each xdist worker builds its own copy of a fixture shared across modules, so both tests sit in
# one xdist group: that of tests/test_policies.py, whose module mark the evaluation test carries.
PPO_CARTPOLE_DEFAULTS_GROUP = "test_policies"


@pytest.fixture(scope="session")
def ppo_cartpole_defaults():
    """PPO at its defaults (PureJaxRL's CartPole settings, 5e5 steps), seeds 0-7, final states kept."""
    from purerl import sweep
    from purerl.algos import ppo

    config = ppo.Config()
    return config, sweep.run(ppo.make_train(config), ppo.Hyper(), seeds=list(range(8)), return_state=True,
                             compiler_options=RUNTIME_BOUND_COMPILE)


def declared_seconds(item: pytest.Item) -> float:
    """The seconds a `runtime_bound(seconds=...)` test was measured to take (0 if undeclared)."""
    marker = item.get_closest_marker("runtime_bound")
    return float(marker.kwargs.get("seconds", 0)) if marker is not None else 0.0


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(config, items):
    """A test that uses a module-scoped fixture joins its module's xdist group, so the fixture
    (often a compiled training run or a subprocess) is built on one worker, not on each.
    Explicit `xdist_group` marks are kept: they split a module into groups on purpose.

    The few long `runtime_bound` tests start longest first (their declared seconds): handed out
    in file order, two long ones could end up last on one worker while the other idles."""
    items.sort(key=lambda item: -declared_seconds(item))  # stable: the rest keep their order
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        fixturedefs = getattr(item, "_fixtureinfo", None)
        scopes = {defs[-1].scope for defs in fixturedefs.name2fixturedefs.values()} if fixturedefs else set()
        module = getattr(item, "module", None)
        if module is not None and scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(module.__name__))
