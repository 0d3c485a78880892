"""purerl: a pure-JAX laboratory for policy-gradient RL and efficient attention."""

import os

# XLA:CPU (jaxlib 0.10.x) can deadlock executing vmapped training programs: its
# concurrency-optimised scheduler leaves the worker pool parked with no work while
# `block_until_ready` waits forever (reproduced here with 2 vmapped PPO seeds; also
# reported upstream as the Eigen pool "wedging" on vmap graphs). Turning that scheduler
# off fixes it at no measurable cost. It must be set before JAX creates its CPU
# backend; it only affects the CPU backend. Set PURERL_KEEP_XLA_FLAGS=1 to opt out.
_CPU_WORKAROUND = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if not os.environ.get("PURERL_KEEP_XLA_FLAGS"):
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in _flags:
        os.environ["XLA_FLAGS"] = f"{_flags} {_CPU_WORKAROUND}".strip()

__version__ = "0.1.0"
