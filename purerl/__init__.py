"""purerl: a pure-JAX laboratory for policy-gradient RL and efficient attention.

Importing purerl changes no global settings (no XLA flags, no JAX config). The XLA:CPU
hang that an earlier version worked around with an import-time flag was a batched
LAPACK QR (orthogonal initialisation) blocking the CPU thread pool; training programs no
longer call LAPACK (purerl.nets.orthogonal_init). Details: docs/algorithms.md.
"""

__version__ = "0.1.0"

__all__ = ["load_policy"]


def __getattr__(name: str):
    # Lazy: `import purerl` stays cheap (no JAX, no orbax) until a saved policy is loaded.
    if name == "load_policy":
        from purerl.policies import load_policy

        return load_policy
    raise AttributeError(f"module 'purerl' has no attribute {name!r}")
