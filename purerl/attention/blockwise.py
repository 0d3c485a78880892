"""Memory-efficient softmax attention in pure JAX: online softmax over key blocks (flash-style).

Never materialises the T×S logits: query blocks are processed one after another, and each
accumulates its output over key blocks with a running maximum m, normaliser l and unnormalised
output acc (Milakov & Gimelshein 2018; Dao et al. 2022):

    m' = max(m, rowmax(s)),  l' = l·e^(m−m') + rowsum(e^(s−m')),  acc' = acc·e^(m−m') + e^(s−m')·V

Causal key blocks that lie wholly after a query block are skipped (`lax.cond`), so causal
prefill does about half the work of the dense form. Peak memory is one block of logits per
step (B × H × block² floats) instead of B × H × T × S.

It is the XLA fallback for long sequences (`SoftmaxAttention(implementation=None)` switches to
it when the dense logits would be large) and for backends without a fused kernel. Gradients
flow through it (scan + cond are differentiable) but store per-block residuals; it targets
prefill and evaluation, not long-context training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Masked logits get this instead of -inf: a block with no visible key then contributes
# e^(MASKED − m) = 0 once any real key was seen, and never a NaN from (−inf) − (−inf).
MASKED_LOGIT = float(jnp.finfo(jnp.float32).min)


def _pad_to(a: jax.Array, axis: int, multiple: int) -> jax.Array:
    pad = -a.shape[axis] % multiple
    if not pad:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, pad)
    return jnp.pad(a, widths)


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    causal: bool = True,
    kv_lengths: jax.Array | None = None,
    block_size: int = 256,
) -> jax.Array:
    """q [B, T, H, d], k and v [B, S, H_kv, d] -> [B, T, H, d] (dtype of q).

    Query head h reads KV head h // (H / H_kv). `kv_lengths` [B]: only keys [0, length) are
    visible (right padding). Causal aligns query t with key t (T == S for prefill). Rows with
    no visible key are unspecified, as in `jax.nn.dot_product_attention`.
    """
    batch, steps, heads, head_dim = q.shape
    keys, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    block = min(block_size, max(steps, keys))
    num_q_blocks = -(-steps // block)
    num_k_blocks = -(-keys // block)
    if kv_lengths is None:
        kv_lengths = jnp.full((batch,), keys, jnp.int32)
    # Padded keys sit at index >= keys >= kv_lengths, so the length mask hides them too.
    kv_lengths = jnp.minimum(kv_lengths.astype(jnp.int32), keys)

    # Head-major blocks, so every product below is a plain batched matmul over (B, H_kv) with
    # the group's queries stacked as rows: q [nq, B, H_kv, G·block, d], k/v [nk, B, H_kv, block, d].
    q_blocks = _pad_to(q.reshape(batch, steps, kv_heads, group, head_dim), 1, block)
    q_blocks = q_blocks.reshape(batch, num_q_blocks, block, kv_heads, group, head_dim)
    q_blocks = jnp.transpose(q_blocks, (1, 0, 3, 4, 2, 5)).reshape(
        num_q_blocks, batch, kv_heads, group * block, head_dim)
    to_blocks = lambda a: jnp.transpose(
        _pad_to(a, 1, block).reshape(batch, num_k_blocks, block, kv_heads, head_dim),
        (1, 0, 3, 2, 4))
    k_blocks, v_blocks = to_blocks(k), to_blocks(v)
    offsets = jnp.arange(block)
    row_offsets = jnp.tile(offsets, group)  # query position within the block, per stacked row

    def one_query_block(inputs):
        q_index, q_block = inputs
        query_pos = q_index * block + row_offsets  # [G·block]

        def update(carry, key_index):
            m, norm, acc = carry
            key_pos = key_index * block + offsets
            s = jnp.einsum("bkqd,bksd->bkqs", q_block, k_blocks[key_index],
                           preferred_element_type=jnp.float32) * scale
            visible = (key_pos[None, :] < kv_lengths[:, None])[:, None, None, :]  # [B,1,1,S]
            if causal:
                visible = visible & (key_pos[None, :] <= query_pos[:, None])
            s = jnp.where(visible, s, MASKED_LOGIT)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m - m_new)
            norm_new = norm * correction + p.sum(-1)
            v_block = v_blocks[key_index]
            pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v_block.dtype), v_block,
                            preferred_element_type=jnp.float32)
            return m_new, norm_new, acc * correction[..., None] + pv

        def step(carry, key_index):
            if causal:  # key blocks wholly in the future of this query block: skip
                carry = jax.lax.cond(key_index <= q_index, update, lambda c, _: c,
                                     carry, key_index)
            else:
                carry = update(carry, key_index)
            return carry, None

        shape = (batch, kv_heads, group * block)
        init = (jnp.full(shape, MASKED_LOGIT, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros((*shape, head_dim), jnp.float32))
        (_, norm, acc), _ = jax.lax.scan(step, init, jnp.arange(num_k_blocks))
        out = acc / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)[..., None]
        return out.reshape(batch, kv_heads, group, block, head_dim)

    out = jax.lax.map(one_query_block, (jnp.arange(num_q_blocks), q_blocks))
    # [nq, B, H_kv, G, block, d] -> [B, nq·block, H, d]
    out = jnp.transpose(out, (1, 0, 4, 2, 3, 5)).reshape(batch, num_q_blocks * block, heads,
                                                         head_dim)
    return out[:, :steps].astype(q.dtype)
