"""Softmax attention: one Flax module for MHA (H_kv = H_q), GQA (1 < H_kv < H_q) and MQA (H_kv = 1).

Query head h reads KV head h // (H_q / H_kv), the convention of `jax.nn.dot_product_attention`,
which takes K/V with fewer heads natively, so repeated KV heads are never materialised.
"""

from __future__ import annotations

from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from purerl.attention._checks import check_kv_heads
from purerl.attention.blockwise import MASKED_LOGIT, blockwise_attention
from purerl.attention.projections import head_projections
from purerl.attention.rope import apply_rope
from purerl.config import check_choice, check_positive_int

Implementation = Literal["xla", "cudnn", "blockwise"] | None
IMPLEMENTATIONS = (None, "xla", "cudnn", "blockwise")

# implementation=None switches from XLA's dense attention to the blockwise path when the dense
# logits (B × H × T × S floats) would have at least this many elements. CPU: measured crossover
# (docs/attention.md, "Prefill"); GPU: the dense path fell off a cliff at 16k × 16k × 8 heads
# = 2^31 elements on an H100 (issue 11), so it is used only below that.
DENSE_LOGITS_LIMIT = {"cpu": 2**24, "gpu": 2**31}


def dense_logits_limit() -> int:
    return DENSE_LOGITS_LIMIT.get(jax.default_backend(), 2**31)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


@struct.dataclass
class KVCache:
    """Key/value cache of one softmax-attention layer, head-major.

    Logically K is [B, H_kv, max_len, d] stored transposed as [B, H_kv, d, max_len] (the q·Kᵀ
    product then streams contiguous rows) and V is [B, H_kv, max_len, d]. Both are kept as 2-D
    arrays: XLA on CPU copies a donated cache on every step when its shape has a size-1 axis
    (batch 1, MQA), turning a memory-bound 30 ms step into a 700 ms one.

    A full cache never grows: writing a token past max_len is an error when the lengths are
    concrete (eager code), and under jit the token is not stored, `lengths` stays at max_len
    and `overflow` turns (and stays) True for that sequence, so a clamped result is flagged,
    never silent.
    """

    keys_t: jax.Array  # [B * H_kv * d, max_len]
    values: jax.Array  # [B * H_kv * max_len, d]
    lengths: jax.Array  # [B] int32: tokens stored per sequence, <= max_len
    overflow: jax.Array  # [B] bool: a token arrived when the cache was full
    num_kv_heads: int = struct.field(pytree_node=False)
    head_dim: int = struct.field(pytree_node=False)

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.keys_t.shape[1]

    def keys_by_head(self) -> jax.Array:
        """K as [B, H_kv, max_len, d] (a transposed copy, for inspection and tests)."""
        k_t = self.keys_t.reshape(self.batch, self.num_kv_heads, self.head_dim, self.max_len)
        return jnp.swapaxes(k_t, -1, -2)

    def values_by_head(self) -> jax.Array:
        """V as [B, H_kv, max_len, d]."""
        return self.values.reshape(self.batch, self.num_kv_heads, self.max_len, self.head_dim)


def init_kv_cache(
    batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32
) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens."""
    for name, value in [("batch", batch), ("max_len", max_len),
                        ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)]:
        check_positive_int("init_kv_cache", name, value)
    rows = batch * num_kv_heads
    return KVCache(
        keys_t=jnp.zeros((rows * head_dim, max_len), dtype),
        values=jnp.zeros((rows * max_len, head_dim), dtype),
        lengths=jnp.zeros((batch,), jnp.int32),
        overflow=jnp.zeros((batch,), bool),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )


def write_prefix(cache: KVCache, k: jax.Array, v: jax.Array, lengths: jax.Array) -> KVCache:
    """Store k, v [B, T, H_kv, d] at positions [0, T) and set the stored lengths."""
    batch, steps, kv_heads, head_dim = k.shape
    if steps > cache.max_len:
        raise ValueError(
            f"SoftmaxAttention.prefill: prompt length {steps} exceeds cache max_len="
            f"{cache.max_len}; allowed: prompts of at most max_len tokens"
        )
    rows = batch * kv_heads
    k_t = jnp.transpose(k, (0, 2, 3, 1)).reshape(rows * head_dim, steps).astype(cache.keys_t.dtype)
    keys_t = jax.lax.dynamic_update_slice(cache.keys_t, k_t, (0, 0))
    v_rows = jnp.transpose(v, (0, 2, 1, 3)).reshape(rows, steps, head_dim)
    values = cache.values.reshape(rows, cache.max_len, head_dim)
    values = jax.lax.dynamic_update_slice(values, v_rows.astype(values.dtype), (0, 0, 0))
    return cache.replace(
        keys_t=keys_t,
        values=values.reshape(rows * cache.max_len, head_dim),
        lengths=lengths.astype(jnp.int32),
        overflow=jnp.zeros((batch,), bool),
    )


def check_room(owner: str, lengths: jax.Array, max_len: int) -> None:
    """Eager decoding past `max_len` is an error (under jit the caller flags it instead)."""
    if _is_concrete(lengths):
        longest = int(jnp.max(lengths))
        if longest >= max_len:
            raise ValueError(
                f"{owner}: got a token at position {longest}; allowed: positions < max_len="
                f"{max_len} (the cache is full; allocate a longer one)"
            )


def write_token(cache: KVCache, k: jax.Array, v: jax.Array) -> KVCache:
    """Store one token k, v [B, H_kv, d] at each sequence's current length; lengths += 1.

    A sequence whose cache is full keeps its cache and length and gets overflow=True (see
    KVCache); with concrete lengths this raises instead.
    """
    check_room("KVCache.write_token", cache.lengths, cache.max_len)
    batch, kv_heads, head_dim = k.shape
    max_len = cache.max_len
    position = cache.lengths  # [B]
    full = position >= max_len
    # Out-of-bounds indices are dropped by the scatters (mode="drop"): a full cache keeps its
    # contents instead of overwriting the last token.
    key_cols = jnp.repeat(position, kv_heads * head_dim)
    key_rows = jnp.arange(batch * kv_heads * head_dim)
    keys_t = cache.keys_t.at[key_rows, key_cols].set(
        k.reshape(-1).astype(cache.keys_t.dtype), mode="drop", unique_indices=True
    )
    head_position = jnp.repeat(position, kv_heads)
    value_rows = jnp.arange(batch * kv_heads) * max_len + head_position
    value_rows = jnp.where(head_position < max_len, value_rows, cache.values.shape[0])
    values = cache.values.at[value_rows].set(
        v.reshape(-1, head_dim).astype(cache.values.dtype), mode="drop", unique_indices=True
    )
    return cache.replace(keys_t=keys_t, values=values, lengths=jnp.where(full, position,
                         position + 1), overflow=cache.overflow | full)


def attend_cache(q: jax.Array, cache: KVCache, scale: float) -> jax.Array:
    """One query per sequence, q [B, H_q, d], against the first `lengths` cached tokens."""
    batch, num_heads, head_dim = q.shape
    rows = batch * cache.num_kv_heads
    group = num_heads // cache.num_kv_heads
    k_t = cache.keys_t.reshape(rows, head_dim, cache.max_len)
    values = cache.values.reshape(rows, cache.max_len, head_dim)
    q_rows = q.reshape(rows, group, head_dim).astype(k_t.dtype)
    logits = jnp.einsum("rgd,rdn->rgn", q_rows, k_t, preferred_element_type=jnp.float32) * scale
    # Mask by cache index: a lone query must see keys [0, length), not is_causal's top-left band.
    row_lengths = jnp.repeat(cache.lengths, cache.num_kv_heads)
    valid = jnp.arange(cache.max_len)[None, :] < row_lengths[:, None]
    logits = jnp.where(valid[:, None, :], logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "rgn,rnd->rgd", probs.astype(values.dtype), values, preferred_element_type=jnp.float32
    )
    return out.reshape(batch, num_heads, head_dim)


def check_softmax_config(
    model_dim: Any, num_heads: Any, num_kv_heads: Any, head_dim: Any, use_rope: bool,
    implementation: Any, owner: str = "SoftmaxAttention",
) -> None:
    for name, value in [("model_dim", model_dim), ("num_heads", num_heads),
                        ("head_dim", head_dim)]:
        check_positive_int(owner, name, value)
    check_kv_heads(owner, num_heads, num_kv_heads)
    if use_rope and head_dim % 2:
        raise ValueError(
            f"{owner}.head_dim: got {head_dim}; allowed: an even number when use_rope=True"
        )
    check_choice(owner, "implementation", implementation, IMPLEMENTATIONS)


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention with grouped KV heads, RoPE, optional QK-norm and a KV cache.

    Full sequences: `apply(params, x)` with x [B, T, model_dim]. Generation:
    `init_cache`, then `method="prefill"` on the prompt, then `method="decode"` per token
    (jit the step with the cache donated so it is updated in place, or better, run all steps
    in one `lax.scan` as `purerl.attention.generate` does).

    `implementation`: "xla" (dense logits, any mask), "cudnn" (fused flash kernel; GPU,
    fp16/bf16), "blockwise" (online softmax over key blocks in pure JAX, memory O(block²);
    causal and `lengths` padding only), or None: "xla", switching to "blockwise" when the dense
    logits would exceed `dense_logits_limit()` elements and no arbitrary `padding_mask` is
    given.
    """

    model_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_rope: bool = True
    rope_base: float = 10_000.0
    qk_norm: bool = False
    implementation: Implementation = None
    block_size: int = 512  # key/query block of the blockwise path
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_softmax_config(
            self.model_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.use_rope,
            self.implementation,
        )
        check_positive_int("SoftmaxAttention", "block_size", self.block_size)
        super().__post_init__()

    def setup(self) -> None:
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = head_projections(self)
        if self.qk_norm:
            norm = dict(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype)
            self.q_norm = nn.RMSNorm(**norm)
            self.k_norm = nn.RMSNorm(**norm)

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        return init_kv_cache(batch, max_len, self.num_kv_heads, self.head_dim, dtype or self.dtype)

    def _check_input(self, x: jax.Array, ndim: int) -> None:
        if x.ndim != ndim or x.shape[-1] != self.model_dim:
            raise ValueError(
                f"SoftmaxAttention: x has shape {x.shape}; allowed: {ndim} dims with last dim "
                f"model_dim={self.model_dim}"
            )

    def _check_batch(self, cache: KVCache, batch: int) -> None:
        if cache.batch != batch:
            raise ValueError(
                f"SoftmaxAttention: cache batch={cache.batch} does not match x batch={batch}"
            )

    def _dense_or_blockwise(self, batch: int, steps: int) -> str | None:
        if self.implementation is not None:
            return self.implementation
        logits = batch * self.num_heads * steps * steps
        return "blockwise" if logits >= dense_logits_limit() else None

    def _project(self, x: jax.Array, positions: jax.Array):
        """x [B, T, D], positions [B, T] -> q [B, T, H, d], k and v [B, T, H_kv, d]."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q = apply_rope(q, positions, self.rope_base)
            k = apply_rope(k, positions, self.rope_base)
        return q, k, v

    def _forward(self, x, lengths, padding_mask, causal):
        self._check_input(x, 3)
        batch, steps, _ = x.shape
        positions = jnp.broadcast_to(jnp.arange(steps), (batch, steps))
        q, k, v = self._project(x, positions)
        if lengths is not None:
            chex.assert_shape(lengths, (batch,))
            lengths = lengths.astype(jnp.int32)
        if padding_mask is not None:
            if self.implementation in ("cudnn", "blockwise"):
                raise ValueError(
                    f"SoftmaxAttention.implementation: got {self.implementation!r} with a "
                    "padding_mask; allowed: 'xla' or None (use lengths= for right padding)"
                )
            chex.assert_shape(padding_mask, (batch, steps))
            mask = padding_mask.astype(bool)[:, None, None, :]
            if causal:
                mask = mask & jnp.tril(jnp.ones((steps, steps), bool))[None, None]
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, scale=self.scale, implementation="xla"
            )
        elif self._dense_or_blockwise(batch, steps) == "blockwise":
            out = blockwise_attention(q, k, v, scale=self.scale, causal=causal,
                                      kv_lengths=lengths, block_size=self.block_size)
        else:
            out = jax.nn.dot_product_attention(
                q, k, v, scale=self.scale, is_causal=causal, key_value_seq_lengths=lengths,
                implementation=self.implementation,
            )
        return self.o_proj(out), k, v

    def __call__(
        self,
        x: jax.Array,
        *,
        lengths: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        causal: bool = True,
    ) -> jax.Array:
        """x [B, T, model_dim] -> [B, T, model_dim].

        Padding: `lengths` [B] (right-padded sequences; portable to cuDNN) or an arbitrary
        `padding_mask` [B, T] (True = real token; an explicit mask, XLA only).
        """
        return self._forward(x, lengths, padding_mask, causal)[0]

    def prefill(
        self, x: jax.Array, cache: KVCache, lengths: jax.Array | None = None
    ) -> tuple[jax.Array, KVCache]:
        """Start fresh sequences from right-padded prompts x [B, T, D]; returns outputs and cache.

        Whatever the cache held is discarded; `lengths` [B] defaults to T for every sequence.
        """
        self._check_input(x, 3)
        batch, steps, _ = x.shape
        self._check_batch(cache, batch)
        out, k, v = self._forward(x, lengths, None, causal=True)
        if lengths is None:
            lengths = jnp.full((batch,), steps, jnp.int32)
        return out, write_prefix(cache, k, v, lengths)

    def decode(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per sequence, x [B, D], at position cache.lengths.

        The cache must have room (lengths < max_len): checked when concrete, flagged in
        `cache.overflow` under jit (the token is then not stored; see KVCache).
        """
        self._check_input(x, 2)
        self._check_batch(cache, x.shape[0])
        check_room("SoftmaxAttention.decode", cache.lengths, cache.max_len)
        q, k, v = self._project(x[:, None, :], cache.lengths[:, None])
        cache = write_token(cache, k[:, 0], v[:, 0])
        # Read after the write: XLA updates the donated cache in place only in this order.
        out = attend_cache(q[:, 0], cache, self.scale).astype(self.dtype)
        return self.o_proj(out), cache
