"""Memory accounting for KV caches and linear-attention states (printed by `purerl-memory`,
`purerl/cli/memory.py`).

KV cache bytes = 2 (K and V) × layers × H_kv × head_dim × bytes/element × tokens × batch.
Linear state bytes = layers × heads × (f × d + f) × bytes/element × batch (S plus normaliser z),
independent of context length. The per-sequence bookkeeping (an int32 length and a bool
overflow flag: 5 bytes × batch per layer) is not counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from purerl.attention._checks import check_kv_heads
from purerl.config import check_positive_int

DTYPE_ALIASES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "f16": "float16", "float16": "float16",
    "fp32": "float32", "f32": "float32", "float32": "float32",
    "fp8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn",
}
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element; accepts numpy/jax dtypes and the names in DTYPE_ALIASES."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_ALIASES:
            raise ValueError(
                f"dtype_bytes.dtype: got {dtype!r}; allowed: {', '.join(sorted(DTYPE_ALIASES))}")
        dtype = DTYPE_ALIASES[dtype.lower()]
    return jnp.dtype(dtype).itemsize


def kv_cache_bytes(
    layers: int,
    num_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch: int = 1,
    dtype: Any = "bfloat16",
) -> int:
    """Bytes of K and V for `batch` sequences of `seq_len` tokens."""
    for name, value in [("layers", layers), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim), ("seq_len", seq_len), ("batch", batch)]:
        check_positive_int("kv_cache_bytes", name, value)
    return 2 * layers * num_kv_heads * head_dim * seq_len * batch * dtype_bytes(dtype)


def linear_state_bytes(
    layers: int,
    heads: int,
    feature_dim: int,
    head_dim: int,
    batch: int = 1,
    dtype: Any = "float32",
) -> int:
    """Bytes of the recurrent state (S [f, d] and z [f] per head): constant in context length."""
    for name, value in [("layers", layers), ("heads", heads), ("feature_dim", feature_dim),
                        ("head_dim", head_dim), ("batch", batch)]:
        check_positive_int("linear_state_bytes", name, value)
    return layers * heads * (feature_dim * head_dim + feature_dim) * batch * dtype_bytes(dtype)


def format_bytes(num_bytes: float) -> str:
    """Binary units, trailing zeros dropped: 524288 -> '512 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            text = f"{num_bytes:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """'80GiB', '80 GB', '1.5TiB', '1024' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"purerl-memory.budget: got {text!r}; allowed: a number with an optional unit in "
            f"{sorted(_UNITS)}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_table(
    layers: int,
    num_heads: int,
    head_dim: int,
    seq_len: int,
    dtype: Any,
    kv_heads: Sequence[int],
    budget_bytes: int,
    feature_dim: int | None = None,
    state_dtype: Any = "float32",
    weight_bytes: int = 0,
) -> list[dict[str, Any]]:
    """One row per softmax variant (H_kv) plus linear attention with one state per head.

    The KV cache is counted in `dtype`, the linear state in `state_dtype` (float32: the dtype
    `init_linear_state` holds it in, since its running sums accumulate over the whole context).
    `max_batch` counts the sequences whose cache fits in what the budget leaves after
    `weight_bytes` (0: the whole budget); `cache_budget` is that remainder."""
    check_positive_int("purerl-memory", "heads", num_heads)
    if isinstance(weight_bytes, bool) or not isinstance(weight_bytes, int) or not 0 <= weight_bytes <= budget_bytes:
        raise ValueError(f"purerl-memory.weight_bytes: got {weight_bytes!r}; allowed: an integer in "
                         f"[0, budget={budget_bytes}]")
    budget_bytes -= weight_bytes
    rows = []
    for h_kv in kv_heads:
        check_kv_heads("purerl-memory", num_heads, h_kv, name="kv_heads", heads_name="heads")
        name = "MHA" if h_kv == num_heads else "MQA" if h_kv == 1 else "GQA"
        per_token = kv_cache_bytes(layers, h_kv, head_dim, 1, 1, dtype)
        per_seq = kv_cache_bytes(layers, h_kv, head_dim, seq_len, 1, dtype)
        rows.append(dict(attention=f"{name}-{h_kv}" if name == "GQA" else name, kv_heads=h_kv,
                         per_token=per_token, per_sequence=per_seq,
                         max_batch=budget_bytes // per_seq, cache_budget=budget_bytes))
    width = feature_dim or head_dim
    state = linear_state_bytes(layers, num_heads, width, head_dim, 1, state_dtype)
    rows.append(dict(attention=f"linear (f={width})", kv_heads=num_heads, per_token=0,
                     per_sequence=state, max_batch=budget_bytes // state, cache_budget=budget_bytes))
    return rows
