"""purerl: a pure-JAX laboratory for policy-gradient RL and efficient attention.

Importing purerl changes no global settings (no XLA flags, no JAX config). The XLA:CPU
hang that an earlier version worked around with an import-time flag was a batched
LAPACK QR (orthogonal initialisation) blocking the CPU thread pool; training programs no
longer call LAPACK (purerl.nets.orthogonal_init). Details: docs/algorithms.md.
"""

__version__ = "0.1.0"
