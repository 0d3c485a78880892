"""The similarity kernel behind each attention kind, and how much keys interfere under it.

Softmax attention weighs key j for query i by κ(q, k) = exp(q·k/√d); linear attention by
κ(q, k) = φ(q)·φ(k) for its feature map φ. Both then normalise over the keys, so the read-out
is Σ_j a_j v_j with a_j = κ(q, k_j) / Σ_j' κ(q, k_j') (`retrieval_weights`).

A lookup reads one stored value back cleanly only if the asked key's weight dominates: the
other keys must be nearly orthogonal to it in the kernel's feature space. `kernel_cosine` is
that cosine, κ(a, b) / √(κ(a, a) κ(b, b)). For elu+1 every feature is positive, so the cosine of
any two keys is positive: they cannot be made orthogonal, and each stored pair leaks into every
read-out. For softmax it is exp(−|a − b|² / (2√d)), which goes to 0 as keys move apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from purerl.attention.linear import apply_feature_map
from purerl.config import check_choice

KERNELS = ("softmax", "elu", "taylor")


def log_kernel(kind: str, q: jax.Array, k: jax.Array) -> jax.Array:
    """log κ(q_i, k_j): q [..., Tq, d], k [..., Tk, d] -> [..., Tq, Tk]. In log space so that
    softmax's exp does not overflow; κ > 0 for all three kernels (the Taylor polynomial
    1 + x + x²/2 has no real root)."""
    check_choice("log_kernel", "kind", kind, KERNELS)
    q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    if kind == "softmax":
        return jnp.einsum("...id,...jd->...ij", q, k) * q.shape[-1] ** -0.5
    phi_q, phi_k = apply_feature_map(kind, q), apply_feature_map(kind, k)
    return jnp.log(jnp.einsum("...if,...jf->...ij", phi_q, phi_k))


def kernel_cosine(kind: str, keys: jax.Array) -> jax.Array:
    """Cosine of every pair of keys in the kernel's feature space: keys [..., T, d] -> [..., T, T]
    (1 on the diagonal)."""
    log = log_kernel(kind, keys, keys)
    diagonal = jnp.diagonal(log, axis1=-2, axis2=-1)
    return jnp.exp(log - 0.5 * (diagonal[..., :, None] + diagonal[..., None, :]))


def retrieval_weights(kind: str, q: jax.Array, k: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The normalised weights a_ij the attention read-out puts on key j for query i (no causal
    mask; `mask` [..., Tq, Tk] True = the key is readable): [..., Tq, Tk], rows sum to 1."""
    log = log_kernel(kind, q, k)
    if mask is not None:
        log = jnp.where(mask, log, -jnp.inf)
    return jax.nn.softmax(log, axis=-1)
