"""Q/K/V/O projections shared by the softmax and linear attention modules."""

from __future__ import annotations

from typing import Any

import flax.linen as nn


def head_projections(module: Any) -> tuple[nn.DenseGeneral, ...]:
    """(q, k, v, o) projections for `module`'s num_heads / num_kv_heads / head_dim.

    Q has H_q heads, K and V have H_kv heads (grouped: never repeated); O maps the H_q
    heads back to model_dim. Call from `setup` and assign to q_proj, k_proj, v_proj, o_proj.
    """
    dense = dict(use_bias=module.use_bias, dtype=module.dtype, param_dtype=module.param_dtype)
    return (
        nn.DenseGeneral((module.num_heads, module.head_dim), **dense),
        nn.DenseGeneral((module.num_kv_heads, module.head_dim), **dense),
        nn.DenseGeneral((module.num_kv_heads, module.head_dim), **dense),
        nn.DenseGeneral(module.model_dim, axis=(-2, -1), **dense),
    )
