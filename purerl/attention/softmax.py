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
from purerl.attention.masks import attention_mask, positions_from
from purerl.attention.projections import head_projections
from purerl.attention.rope import apply_rope
from purerl.config import check_choice, check_positive_int

Implementation = Literal["xla", "cudnn", "blockwise"] | None
IMPLEMENTATIONS = (None, "xla", "cudnn", "blockwise")

# implementation=None switches from XLA's dense attention to the blockwise path when the dense
# logits (B × H × T × S floats) would have at least this many elements. CPU: measured (causal,
# 8 heads, d = 64, CPU seconds, docs/attention.md "Prefill"): equal at 256 tokens, blockwise
# 1.8× faster at 512 and 3× at 1,024, forward and backward alike. GPU: the dense path fell off
# a cliff at 16k × 16k × 8 heads = 2^31 elements on an H100, so it is kept below that.
DENSE_LOGITS_LIMIT = {"cpu": 2**21, "gpu": 2**31}


def dense_logits_limit() -> int:
    return DENSE_LOGITS_LIMIT.get(jax.default_backend(), 2**31)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


# How a cache stores K and V, per head: "dn" = [d, max_len] (time is the minor axis), "nd" =
# [max_len, d] (features minor). Named K-then-V: "dn_nd" stores K transposed and V as is.
CACHE_LAYOUTS = ("dn_nd", "nd_nd", "dn_dn")
# Default per backend and head grouping (1 query head per KV head, or more), chosen by
# measurement (`benchmarks/attention.py --only layouts`, tables in docs/attention.md). CPU: MHA's
# matrix-vector products stream fastest with time as the minor axis of both K and V; grouped
# heads' small matrix products are fastest with V stored [n, d]. GPU: not measured here; "nd_nd"
# is the layout fused decode kernels use (rows of d contiguous features, coalesced reads).
DEFAULT_CACHE_LAYOUT = {
    ("cpu", False): "dn_dn", ("cpu", True): "dn_nd",
    ("gpu", False): "nd_nd", ("gpu", True): "nd_nd",
}


def default_cache_layout(group: int = 1) -> str:
    """The measured layout for this backend; `group` = query heads per KV head."""
    return DEFAULT_CACHE_LAYOUT.get((jax.default_backend(), group > 1), "nd_nd")


@struct.dataclass
class KVCache:
    """Key/value cache of one softmax-attention layer, head-major.

    Logically K and V are [B, H_kv, max_len, d]. Each is stored as a 2-D array, per (sequence,
    KV head) row block either [d, max_len] ("dn": the q·Kᵀ product streams contiguous time
    rows) or [max_len, d] ("nd"); `layout` names K's then V's choice (CACHE_LAYOUTS). 2-D
    because XLA on CPU copied a donated 4-D cache on every step when its shape had a size-1
    axis (batch 1, MQA), turning a memory-bound 30 ms step into a 700 ms one.

    Left-padded prompts: `start` [B] (set by a prefill given one; None otherwise) counts each
    sequence's padding slots at the front; only slots [start, lengths) are attended, and a new
    token's position is lengths - start.

    A full cache never grows: writing a token past max_len is an error when the lengths are
    concrete (eager code), and under jit the token is not stored, `lengths` stays at max_len
    and `overflow` turns (and stays) True for that sequence, so a clamped result is flagged,
    never silent.
    """

    keys: jax.Array  # [B * H_kv * d, max_len] ("dn") or [B * H_kv * max_len, d] ("nd")
    values: jax.Array  # likewise
    lengths: jax.Array  # [B] int32: tokens stored per sequence, <= max_len
    overflow: jax.Array  # [B] bool: a token arrived when the cache was full
    num_kv_heads: int = struct.field(pytree_node=False)
    head_dim: int = struct.field(pytree_node=False)
    layout: str = struct.field(pytree_node=False, default="dn_nd")
    # [B] int32: slots [0, start) hold left padding, never attended; None (no leaf): no padding.
    start: jax.Array | None = None

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def rows(self) -> int:
        return self.batch * self.num_kv_heads

    @property
    def max_len(self) -> int:
        return self.keys.size // (self.rows * self.head_dim)

    def _by_head(self, store: jax.Array, kind: str) -> jax.Array:
        shape = (self.batch, self.num_kv_heads)
        if kind == "dn":
            return jnp.swapaxes(store.reshape(*shape, self.head_dim, self.max_len), -1, -2)
        return store.reshape(*shape, self.max_len, self.head_dim)

    def keys_by_head(self) -> jax.Array:
        """K as [B, H_kv, max_len, d] (a copy for the "dn" layouts; for inspection and tests)."""
        return self._by_head(self.keys, self.layout[:2])

    def values_by_head(self) -> jax.Array:
        """V as [B, H_kv, max_len, d]."""
        return self._by_head(self.values, self.layout[3:])


def init_kv_cache(
    batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32,
    layout: str | None = None, group: int = 1,
) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens.

    `layout`: one of CACHE_LAYOUTS; None picks the measured default for the backend and
    `group` (query heads per KV head; SoftmaxAttention.init_cache passes it).
    """
    for name, value in [("batch", batch), ("max_len", max_len),
                        ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                        ("group", group)]:
        check_positive_int("init_kv_cache", name, value)
    layout = default_cache_layout(group) if layout is None else layout
    check_choice("init_kv_cache", "layout", layout, CACHE_LAYOUTS)
    rows = batch * num_kv_heads
    shape = lambda kind: (rows * head_dim, max_len) if kind == "dn" else (rows * max_len, head_dim)
    return KVCache(
        keys=jnp.zeros(shape(layout[:2]), dtype),
        values=jnp.zeros(shape(layout[3:]), dtype),
        lengths=jnp.zeros((batch,), jnp.int32),
        overflow=jnp.zeros((batch,), bool),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        layout=layout,
    )


def _store_prefix(store: jax.Array, kind: str, x: jax.Array, max_len: int) -> jax.Array:
    """x [B, T, H_kv, d] into positions [0, T) of a 2-D store."""
    batch, steps, kv_heads, head_dim = x.shape
    rows = batch * kv_heads
    if kind == "dn":
        x_t = jnp.transpose(x, (0, 2, 3, 1)).reshape(rows * head_dim, steps)
        return jax.lax.dynamic_update_slice(store, x_t.astype(store.dtype), (0, 0))
    x_rows = jnp.transpose(x, (0, 2, 1, 3)).reshape(rows, steps, head_dim).astype(store.dtype)
    by_row = jax.lax.dynamic_update_slice(store.reshape(rows, max_len, head_dim), x_rows,
                                          (0, 0, 0))
    return by_row.reshape(rows * max_len, head_dim)


def _store_token(store: jax.Array, kind: str, x: jax.Array, position: jax.Array,
                 max_len: int) -> jax.Array:
    """x [B, H_kv, d] at each sequence's `position` [B]; out-of-range positions are dropped."""
    batch, kv_heads, head_dim = x.shape
    if kind == "dn":
        columns = jnp.repeat(position, kv_heads * head_dim)
        return store.at[jnp.arange(batch * kv_heads * head_dim), columns].set(
            x.reshape(-1).astype(store.dtype), mode="drop", unique_indices=True)
    head_position = jnp.repeat(position, kv_heads)
    rows = jnp.arange(batch * kv_heads) * max_len + head_position
    # A position >= max_len would land in the next row block: send it out of bounds instead.
    rows = jnp.where(head_position < max_len, rows, store.shape[0])
    return store.at[rows].set(x.reshape(-1, head_dim).astype(store.dtype), mode="drop",
                              unique_indices=True)


def write_prefix(cache: KVCache, k: jax.Array, v: jax.Array, lengths: jax.Array,
                 start: jax.Array | None = None) -> KVCache:
    """Store k, v [B, T, H_kv, d] at positions [0, T); set the stored lengths and padding starts."""
    steps = k.shape[1]
    if steps > cache.max_len:
        raise ValueError(
            f"SoftmaxAttention.prefill: prompt length {steps} exceeds cache max_len="
            f"{cache.max_len}; allowed: prompts of at most max_len tokens"
        )
    return cache.replace(
        keys=_store_prefix(cache.keys, cache.layout[:2], k, cache.max_len),
        values=_store_prefix(cache.values, cache.layout[3:], v, cache.max_len),
        lengths=lengths.astype(jnp.int32),
        overflow=jnp.zeros((k.shape[0],), bool),
        start=None if start is None else start.astype(jnp.int32),
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
    position = cache.lengths  # [B]
    full = position >= cache.max_len
    return cache.replace(
        keys=_store_token(cache.keys, cache.layout[:2], k, position, cache.max_len),
        values=_store_token(cache.values, cache.layout[3:], v, position, cache.max_len),
        lengths=jnp.where(full, position, position + 1),
        overflow=cache.overflow | full,
    )


def cache_positions(cache: Any) -> jax.Array:
    """[B] position of the next token of a KVCache or LinearState: lengths - start."""
    return cache.lengths if cache.start is None else cache.lengths - cache.start


def attend_cache(q: jax.Array, cache: KVCache, scale: float) -> jax.Array:
    """One query per sequence, q [B, H_q, d], against the first `lengths` cached tokens."""
    batch, num_heads, head_dim = q.shape
    rows, max_len = cache.rows, cache.max_len
    group = num_heads // cache.num_kv_heads
    # Scale the G·d query entries rather than the G·n logits: one pass fewer over the logits.
    q_rows = (q.reshape(rows, group, head_dim).astype(jnp.float32) * scale).astype(
        cache.keys.dtype)
    if cache.layout[:2] == "dn":
        keys = cache.keys.reshape(rows, head_dim, max_len)
        logits = jnp.einsum("rgd,rdn->rgn", q_rows, keys, preferred_element_type=jnp.float32)
    else:
        keys = cache.keys.reshape(rows, max_len, head_dim)
        logits = jnp.einsum("rgd,rnd->rgn", q_rows, keys, preferred_element_type=jnp.float32)
    # Mask by cache index: a lone query must see keys [start, length), not is_causal's
    # top-left band; slots before `start` hold left padding.
    row_lengths = jnp.repeat(cache.lengths, cache.num_kv_heads)
    slots = jnp.arange(max_len)[None, :]
    valid = slots < row_lengths[:, None]
    if cache.start is not None:
        valid = valid & (slots >= jnp.repeat(cache.start, cache.num_kv_heads)[:, None])
    logits = jnp.where(valid[:, None, :], logits, MASKED_LOGIT)
    # Unnormalised weights; the division by their sum is applied to the [G, d] output instead
    # of the [G, n] weights (another pass over the logits saved).
    weights = jnp.exp(logits - logits.max(-1, keepdims=True))
    total = weights.sum(-1, keepdims=True)
    weights = weights.astype(cache.values.dtype)
    if cache.layout[3:] == "dn":
        values = cache.values.reshape(rows, head_dim, max_len)
        out = jnp.einsum("rgn,rdn->rgd", weights, values, preferred_element_type=jnp.float32)
    else:
        values = cache.values.reshape(rows, max_len, head_dim)
        out = jnp.einsum("rgn,rnd->rgd", weights, values, preferred_element_type=jnp.float32)
    out = out / total
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
    block_size: int = 256  # key/query block of the blockwise path (measured best on CPU)
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

    def init_cache(self, batch: int, max_len: int, dtype: Any = None,
                   layout: str | None = None) -> KVCache:
        return init_kv_cache(batch, max_len, self.num_kv_heads, self.head_dim,
                             dtype or self.dtype, layout, self.num_heads // self.num_kv_heads)

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

    def _forward(self, x, lengths, padding_mask, causal, positions=None, segment_ids=None):
        self._check_input(x, 3)
        batch, steps, _ = x.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(steps), (batch, steps))
        else:
            chex.assert_shape(positions, (batch, steps))
        q, k, v = self._project(x, positions)
        if lengths is not None:
            chex.assert_shape(lengths, (batch,))
            lengths = lengths.astype(jnp.int32)
        if padding_mask is not None or segment_ids is not None:
            if self.implementation in ("cudnn", "blockwise"):
                raise ValueError(
                    f"SoftmaxAttention.implementation: got {self.implementation!r} with a "
                    "padding_mask or segment_ids; allowed: 'xla' or None (use lengths= for "
                    "right padding)"
                )
            for name, value in (("padding_mask", padding_mask), ("segment_ids", segment_ids)):
                if value is not None and value.shape != (batch, steps):
                    raise ValueError(f"SoftmaxAttention.{name}: got shape {value.shape}; "
                                     f"allowed: [B, T] = {(batch, steps)}")
            if lengths is not None:
                right = jnp.arange(steps)[None, :] < lengths[:, None]
                padding_mask = right if padding_mask is None else padding_mask & right
            mask = attention_mask((batch, steps), causal=causal, padding_mask=padding_mask,
                                  segment_ids=segment_ids)
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
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """x [B, T, model_dim] -> [B, T, model_dim].

        Padding: `lengths` [B] (right-padded sequences; portable to cuDNN) or an arbitrary
        `padding_mask` [B, T] (True = real token; an explicit mask, XLA only). Packed rows:
        `segment_ids` [B, T] (a token attends within its segment only; 0 = padding; XLA only;
        `purerl.attention.masks`). `positions` [B, T]: the RoPE position of every token
        (default 0..T-1; `masks.positions_from` restarts them per sequence).
        """
        return self._forward(x, lengths, padding_mask, causal, positions, segment_ids)[0]

    def prefill(
        self, x: jax.Array, cache: KVCache, lengths: jax.Array | None = None,
        start: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Start fresh sequences from padded prompts x [B, T, D]; returns outputs and cache.

        Whatever the cache held is discarded; `lengths` [B] (right padding) defaults to T for
        every sequence; `start` [B] (left padding) to 0: tokens [start, lengths) are real,
        counted from position 0 (the cache keeps the padding slots, masked, see KVCache).
        """
        self._check_input(x, 3)
        batch, steps, _ = x.shape
        self._check_batch(cache, batch)
        if start is None:
            out, k, v = self._forward(x, lengths, None, causal=True)
        else:
            chex.assert_shape(start, (batch,))
            start = start.astype(jnp.int32)
            real = jnp.arange(steps)[None, :] >= start[:, None]
            out, k, v = self._forward(x, lengths, real, True, positions_from((batch, steps), real))
        if lengths is None:
            lengths = jnp.full((batch,), steps, jnp.int32)
        return out, write_prefix(cache, k, v, lengths, start)

    def decode(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per sequence, x [B, D], in slot cache.lengths, at position lengths - start.

        The cache must have room (lengths < max_len): checked when concrete, flagged in
        `cache.overflow` under jit (the token is then not stored; see KVCache).
        """
        self._check_input(x, 2)
        self._check_batch(cache, x.shape[0])
        check_room("SoftmaxAttention.decode", cache.lengths, cache.max_len)
        q, k, v = self._project(x[:, None, :], cache_positions(cache)[:, None])
        cache = write_token(cache, k[:, 0], v[:, 0])
        # Read after the write: XLA updates the donated cache in place only in this order.
        out = attend_cache(q[:, 0], cache, self.scale).astype(self.dtype)
        return self.o_proj(out), cache
