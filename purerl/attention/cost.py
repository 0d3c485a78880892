"""A roofline cost model of causal prefill for the attention cores: FLOPs and bytes moved
per path (dense XLA softmax, fused FlashAttention-style softmax, chunked and parallel linear
attention), the roofline time they imply on a machine, and the length where one path
overtakes another. A model, not a measurement: `benchmarks/attention.py` measures."""

from __future__ import annotations

import numpy as np


def cost(path: str, n: int, heads: int, d: int, chunk: int, bytes_per: int, query_block: int = 128,
         fused_linear: bool = False, qk_dim: int = 16) -> tuple[float, float]:
    """(FLOPs, bytes moved to/from main memory) of one causal prefill of the attention core,
    batch 1. Feature maps: elu f = d; Taylor f = 1 + d + d²; based (Taylor on q, k projected to
    qk_dim = r, as Based does) f = 1 + r + r².

    softmax_xla: dense QKᵀ and PV over all n² entries (no causal skipping), logits and
      probabilities written and read once each in fp32 (16 n² H bytes).
    softmax_fused: FlashAttention-style: causal blocks skipped (half of 4n²dH), no n² array; Q and
      O move once, K and V once per query block (half of the blocks, causal).
    linear_chunked: per chunk of C tokens the chunk state φ(K)ᵀV (2Cfd), the read-out of the
      previous state (2Cfd) and the causal in-chunk part (2C²f + 2C²d); memory: Q, K, V, O, φ(Q),
      φ(K) and the per-chunk states (written, prefix-summed, read: 4 passes of n/C · f · d) — as
      this XLA implementation runs; `fused_linear`: a fused GPU kernel computes φ in registers and
      writes each chunk state once and reads it once (fp32).
    linear_parallel: the masked n×n φ(Q)φ(K)ᵀ (2n²f) and its product with V (2n²d), the n² scores
      written and read.
    """
    widths = {"elu": d, "taylor": 1 + d + d * d, "based": 1 + qk_dim + qk_dim * qk_dim}
    f = widths[path.rsplit("_", 1)[-1]] if path.startswith("linear") else d
    io = 4 * n * d * heads * bytes_per  # Q, K, V in, O out
    if path == "softmax_xla":
        return 4 * n * n * d * heads + 5 * n * n * heads, io + 16 * n * n * heads
    if path == "softmax_fused":
        blocks = max(1, -(-n // query_block))
        return 2 * n * n * d * heads, io + 2 * n * d * heads * bytes_per * max(1, blocks // 2)
    if path.startswith("linear_chunked"):
        chunks = max(1, -(-n // chunk))
        flops = heads * n * (4 * f * d + 2 * chunk * (f + d))
        if fused_linear:
            return flops, io + 2 * chunks * f * d * heads * 4
        return flops, io + 4 * n * f * heads * 4 + 4 * chunks * f * d * heads * 4
    if path.startswith("linear_parallel"):
        return 2 * n * n * (f + d) * heads, io + 4 * n * f * heads * 4 + 16 * n * n * heads
    raise ValueError(f"cost.path: got {path!r}")


def roofline_seconds(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """Time bound by compute or by memory traffic, whichever is slower."""
    return max(flops / peak_flops, bytes_moved / bandwidth)


# Kernel launches per prefill: a fused softmax is one kernel; XLA's dense path QKᵀ, softmax, PV;
# the chunked form feature maps, chunk states, prefix sum, read-out (as in fla-style kernels).
KERNELS = {"softmax_fused": 1, "softmax_xla": 3, "linear_chunked": 4, "linear_parallel": 3}


def crossover(lengths: np.ndarray, slow: np.ndarray, fast: np.ndarray) -> float:
    """First length where `fast` < `slow` (log-log interpolation between grid points); inf if never,
    the first length if always."""
    ratio = np.log(np.asarray(slow) / np.asarray(fast))
    above = np.nonzero(ratio > 0)[0]
    if len(above) == 0:
        return np.inf
    i = above[0]
    if i == 0:
        return float(lengths[0])
    x0, x1 = np.log(lengths[i - 1]), np.log(lengths[i])
    return float(np.exp(x0 + (x1 - x0) * (0 - ratio[i - 1]) / (ratio[i] - ratio[i - 1])))


def layer_flops(n: int, d_model: int, mlp_ratio: int = 4, causal: bool = False) -> dict[str, float]:
    """Forward FLOPs of one transformer layer over a sequence of n tokens (2 per multiply-add):
    the Q, K, V, O projections (8 n d²), the MLP (4 r n d²) and the n² term of attention, QKᵀ and
    PV (4 n² d; half of it with causal blocks skipped, as a fused kernel does). Norms, the
    softmax and the feature maps are O(n d) and left out."""
    attention = 4 * n * n * d_model * (0.5 if causal else 1.0)
    return {"projections": 8.0 * n * d_model**2, "mlp": 4.0 * mlp_ratio * n * d_model**2, "attention_n2": attention}


def quadratic_share(n: int, d_model: int, mlp_ratio: int = 4, causal: bool = False) -> float:
    """Share of a layer's FLOPs in attention's n² term: n / (n + (2 + r) d) counted in full
    (n / (n + 2 (2 + r) d) causal); with the usual r = 4 it is half at n = 6 d_model."""
    parts = layer_flops(n, d_model, mlp_ratio, causal)
    return parts["attention_n2"] / sum(parts.values())
