"""Argument checks shared by the attention modules.

They run in Python on static values, so a bad configuration fails before anything compiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_heads(num_heads: Any, num_kv_heads: Any, head_dim: Any) -> None:
    """H_kv must divide H_q: each KV head serves a whole group of query heads."""
    check_positive_int("num_heads", num_heads)
    check_positive_int("num_kv_heads", num_kv_heads)
    check_positive_int("head_dim", head_dim)
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}; "
            f"allowed num_kv_heads: {divisors(num_heads)}"
        )


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_last_dim(name: str, shape: tuple[int, ...], expected: int, ndim: int) -> None:
    if len(shape) != ndim or shape[-1] != expected:
        raise ValueError(
            f"{name} must have {ndim} dims with last dim {expected}, got shape {tuple(shape)}"
        )
