"""Test policy that holds on CPU and on GPU.

- Reference tests (comparisons against float64 NumPy / closed forms) request the
  `highest_precision` fixture: GPUs run float32 matmuls as TF32 by default, which is
  ~1e-3 relative error and would fail any float32 tolerance.
- Tolerances come from `tol(dtype)`, one table keyed on dtype (and widened on GPU for
  comparisons of two JAX computations that run different kernels).
- Bitwise equality of a vmapped run and the same run alone holds on CPU; on GPU the
  batched kernels may reduce in a different order, so `tol(..., exact_on_cpu=True)`
  gives 0 on CPU and a stated tolerance elsewhere.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purerl  # noqa: F401  (sets up XLA flags before the backend starts)

ON_CPU = jax.default_backend() == "cpu"

# (rtol, atol) per dtype for float32-vs-float64-reference comparisons at highest precision.
_TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(jax.numpy.bfloat16): (2e-2, 2e-2),
    np.dtype(np.float16): (2e-3, 2e-3),
}
# Two float32 JAX programs that should agree but may run different kernels on GPU.
_GPU_FLOAT32_KERNEL_TOLERANCE = (1e-4, 1e-5)


def tol(dtype=np.float32, *, exact_on_cpu: bool = False) -> dict[str, float]:
    """`np.testing.assert_allclose(..., **tol(dtype))`."""
    if exact_on_cpu:
        if ON_CPU:
            return {"rtol": 0.0, "atol": 0.0}
        rtol, atol = _GPU_FLOAT32_KERNEL_TOLERANCE
        return {"rtol": rtol, "atol": atol}
    rtol, atol = _TOLERANCES[np.dtype(dtype)]
    return {"rtol": rtol, "atol": atol}


@pytest.fixture
def highest_precision():
    """Run the test under full float32 matmul precision (no TF32/bf16 passes on GPU)."""
    with jax.default_matmul_precision("highest"):
        yield
