"""Turn an MHA checkpoint into GQA/MQA by pooling K/V projection heads (Ainslie et al. 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from purerl.attention._checks import check_kv_heads
from purerl.config import check_choice, check_positive_int

CONVERSION_METHODS = ("mean", "first", "random")


def _pool(weight: jax.Array, num_kv_heads: int, method: str, key: jax.Array | None,
          path: str) -> jax.Array:
    """weight [..., H_kv_old, d] (kernel [D, H, d] or bias [H, d]) -> [..., num_kv_heads, d]."""
    old_heads = weight.shape[-2]
    check_kv_heads("convert_kv_heads", old_heads, num_kv_heads,
                   heads_name=f"the checkpoint's KV heads at {path}")
    grouped = weight.reshape(*weight.shape[:-2], num_kv_heads, old_heads // num_kv_heads,
                             weight.shape[-1])
    if method == "mean":
        return grouped.mean(axis=-2)
    if method == "first":
        return grouped[..., 0, :]
    new_shape = (*weight.shape[:-2], num_kv_heads, weight.shape[-1])
    if weight.ndim == 2:  # a bias starts at zero, as at initialisation
        return jnp.zeros(new_shape, weight.dtype)
    # Fresh LeCun-normal kernel: the "train K/V from scratch" baseline.
    return jax.random.normal(key, new_shape, weight.dtype) * weight.shape[0] ** -0.5


def convert_kv_heads(
    params: Mapping[str, Any],
    num_kv_heads: int,
    method: str = "mean",
    key: jax.Array | None = None,
) -> dict[str, Any]:
    """Return params with every attention layer's K/V heads reduced to `num_kv_heads`.

    An attention layer is any mapping holding `k_proj` and `v_proj` with kernels [D, H_kv, d]
    (the layout of SoftmaxAttention / LinearAttention). method: "mean" pools each group of
    heads (the paper's choice), "first" keeps the group's first head, "random" re-initialises
    (needs `key`). Load the result into a module built with the new `num_kv_heads`.
    """
    check_positive_int("convert_kv_heads", "num_kv_heads", num_kv_heads)
    check_choice("convert_kv_heads", "method", method, CONVERSION_METHODS)
    if method == "random" and key is None:
        raise ValueError("convert_kv_heads.key: got None; allowed: a PRNG key when "
                         "method='random'")
    found = []

    def convert(tree: Any, path: str) -> Any:
        if not isinstance(tree, Mapping):
            return tree
        if "k_proj" in tree and "v_proj" in tree:
            found.append(path)
            out = dict(tree)
            for name in ("k_proj", "v_proj"):
                # One independent key per projection, numbered in traversal order.
                stream = None if key is None else jax.random.fold_in(key, len(found) * 2
                                                                    + (name == "v_proj"))
                out[name] = {
                    leaf: _pool(jnp.asarray(value), num_kv_heads, method,
                                None if stream is None else jax.random.fold_in(stream, i),
                                f"{path}/{name}/{leaf}")
                    for i, (leaf, value) in enumerate(tree[name].items())
                }
            return out
        return {name: convert(sub, f"{path}/{name}") for name, sub in tree.items()}

    converted = convert(params, "")
    if not found:
        raise ValueError("convert_kv_heads.params: got no attention layer (no mapping with "
                         "k_proj and v_proj); allowed: params of SoftmaxAttention/LinearAttention "
                         "layers")
    return converted
