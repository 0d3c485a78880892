"""The attention-specific argument check: grouped heads.

The generic checks (`check_positive_int`, `check_choice`) come from `purerl.config`, so the RL
and attention code speak one vocabulary: "Owner.field: got X; allowed: Y". Everything runs in
Python on static values, so a bad configuration fails before anything compiles.
"""

from __future__ import annotations

from typing import Any

from purerl.config import check_positive_int


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_kv_heads(
    owner: str, num_heads: int, num_kv_heads: Any, *, name: str = "num_kv_heads",
    heads_name: str = "num_heads",
) -> None:
    """The one group-size check: each KV head serves a whole group of H_q / H_kv query heads.

    `num_heads` must already be a checked positive integer; `heads_name` says what it is in
    the message (e.g. "the checkpoint's KV heads at /params/attn/k_proj").
    """
    check_positive_int(owner, name, num_kv_heads)
    if num_heads % num_kv_heads:
        allowed = ", ".join(map(str, divisors(num_heads)))
        raise ValueError(
            f"{owner}.{name}: got {num_kv_heads}; allowed: a divisor of "
            f"{heads_name}={num_heads} ({allowed})"
        )
