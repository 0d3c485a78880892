"""Causal linear attention (Katharopoulos et al. 2020) with grouped KV heads.

y_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i + eps),  S_i = Σ_{j≤i} φ(k_j) v_jᵀ,  z_i = Σ_{j≤i} φ(k_j).

Three forms compute the same outputs:
- parallel: the masked n×n matrix φ(Q)φ(K)ᵀ (the reference; O(n²)).
- chunked: quadratic inside chunks of C tokens plus the state carried between chunks
  (O(n·C·f + n·f·d)); the fast form for training and prefill.
- recurrent: the state (S, z) updated token by token; constant memory in context length,
  used for decoding.

Shapes: φ(q) [B, T, H_q, f], φ(k) [B, T, H_kv, f], v [B, T, H_kv, d]; query head h reads the
state of KV head h // (H_q / H_kv).
"""

from __future__ import annotations

from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purerl.attention._checks import check_kv_heads
from purerl.attention.projections import head_projections
from purerl.config import check_choice, check_positive_int

FeatureMapName = Literal["elu", "relu", "taylor", "performer"]
FEATURE_MAPS = ("elu", "relu", "taylor", "performer")
FORMS = ("parallel", "chunked", "recurrent")


# ----------------------------------------------------------------------------- feature maps


def feature_dim(name: str, head_dim: int, num_random_features: int | None = None) -> int:
    """Width f of φ(x) for a head of width d."""
    check_choice("feature_dim", "feature_map", name, FEATURE_MAPS)
    if name == "taylor":
        return 1 + head_dim + head_dim * head_dim
    if name == "performer":
        return num_random_features or head_dim
    return head_dim


def performer_projection(head_dim: int, num_features: int, seed: int = 0) -> np.ndarray:
    """Orthogonal random features [m, d] for FAVOR+ (Choromanski et al. 2021).

    Gaussian rows orthogonalised in blocks of d, then rescaled to chi-distributed norms so each
    row is still marginally Gaussian. A numpy constant: fixed per seed, not a parameter.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-num_features // head_dim)):
        basis, upper = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))
        # Sign fix makes the basis Haar-distributed; raw QR output is not, and biases the kernel.
        blocks.append((basis * np.sign(np.diag(upper))).T)
    rows = np.concatenate(blocks, axis=0)[:num_features]
    norms = np.linalg.norm(rng.standard_normal((num_features, head_dim)), axis=1)
    return (rows * norms[:, None]).astype(np.float32)


def apply_feature_map(
    name: str, x: jax.Array, projection: np.ndarray | jax.Array | None = None
) -> jax.Array:
    """φ(x) over the last axis, in float32. All maps are non-negative."""
    check_choice("apply_feature_map", "feature_map", name, FEATURE_MAPS)
    x = x.astype(jnp.float32)
    if name == "elu":
        return jax.nn.elu(x) + 1.0
    if name == "relu":
        return jax.nn.relu(x)
    head_dim = x.shape[-1]
    # Scale by d^(-1/4) on both sides so φ(q)·φ(k) approximates exp(q·k / √d).
    x = x * head_dim**-0.25
    if name == "taylor":
        # [1, x, vec(x xᵀ)/√2]: φ(q)·φ(k) = 1 + q·k + (q·k)²/2, the 2nd-order Taylor of exp.
        outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], head_dim * head_dim)
        ones = jnp.ones((*x.shape[:-1], 1), x.dtype)
        return jnp.concatenate([ones, x, outer * 0.5**0.5], axis=-1)
    if projection is None:
        raise ValueError(
            "apply_feature_map.projection: got None; allowed: an array [m, head_dim] when "
            "feature_map='performer'"
        )
    # Positive random features: E[φ(q)·φ(k)] = exp(q·k).
    proj = jnp.asarray(projection, jnp.float32)
    logits = jnp.einsum("...d,md->...m", x, proj) - 0.5 * jnp.sum(x * x, -1, keepdims=True)
    return jnp.exp(logits) * proj.shape[0] ** -0.5


# ----------------------------------------------------------------------------- three forms


def _group(phi_q: jax.Array, kv_heads: int) -> jax.Array:
    """[B, T, H_q, f] -> [B, T, H_kv, G, f]."""
    batch, steps, heads, width = phi_q.shape
    return phi_q.reshape(batch, steps, kv_heads, heads // kv_heads, width)


def _check_qkv(owner: str, phi_q: jax.Array, phi_k: jax.Array, v: jax.Array) -> None:
    shapes = f"got phi_q {phi_q.shape}, phi_k {phi_k.shape}, v {v.shape}"
    if not phi_q.ndim == phi_k.ndim == v.ndim == 4:
        raise ValueError(f"{owner}: {shapes}; allowed: 4-D [B, T, heads, width] arrays")
    if phi_q.shape[:2] != phi_k.shape[:2] or phi_k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"{owner}: {shapes}; allowed: one [B, T] for all three, one H_kv for phi_k and v")
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(f"{owner}: {shapes}; allowed: one feature width for phi_q and phi_k")
    check_kv_heads(owner, phi_q.shape[2], phi_k.shape[2], name="num_kv_heads (phi_k.shape[2])",
                   heads_name="num_heads (phi_q.shape[2])")


def linear_attention_parallel(
    phi_q: jax.Array, phi_k: jax.Array, v: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """Reference form: masked φ(Q)φ(K)ᵀ. Returns [B, T, H_q, d]."""
    _check_qkv("linear_attention_parallel", phi_q, phi_k, v)
    batch, steps, heads, _ = phi_q.shape
    q = _group(phi_q, phi_k.shape[2])
    scores = jnp.einsum("btkgf,bskf->bkgts", q, phi_k)
    scores = jnp.where(jnp.tril(jnp.ones((steps, steps), bool)), scores, 0.0)
    num = jnp.einsum("bkgts,bskd->btkgd", scores, v.astype(jnp.float32))
    den = jnp.einsum("bkgts->btkg", scores)
    out = num / (den[..., None] + eps)
    return out.reshape(batch, steps, heads, v.shape[-1])


def linear_attention_chunked(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    chunk_size: int = 64,
    eps: float = 1e-6,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Chunked form. Returns ([B, T, H_q, d], final state (S [B, H_kv, f, d], z [B, H_kv, f]))."""
    check_positive_int("linear_attention_chunked", "chunk_size", chunk_size)
    _check_qkv("linear_attention_chunked", phi_q, phi_k, v)
    batch, steps, heads, _ = phi_q.shape
    kv_heads, head_dim = phi_k.shape[2], v.shape[-1]
    # A sequence shorter than a chunk is one chunk of its own length: padding it to chunk_size
    # would only multiply zeros (2x the work for 32 tokens in chunks of 64).
    chunk_size = min(chunk_size, steps)
    num_chunks = -(-steps // chunk_size)
    pad = num_chunks * chunk_size - steps
    # Zero-padded keys have φ(k) = 0 after padding, and sit after every real query anyway.
    pad_t = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    split = lambda a: a.reshape(batch, num_chunks, chunk_size, *a.shape[2:])
    q = split(pad_t(_group(phi_q, kv_heads)))  # [B, N, C, K, G, f]
    k = split(pad_t(phi_k))  # [B, N, C, K, f]
    vals = split(pad_t(v.astype(jnp.float32)))  # [B, N, C, K, d]

    chunk_kv = jnp.einsum("bnckf,bnckd->bnkfd", k, vals)
    chunk_z = jnp.einsum("bnckf->bnkf", k)
    # State before each chunk: exclusive prefix sum over chunks.
    prev_kv = jnp.cumsum(chunk_kv, axis=1) - chunk_kv
    prev_z = jnp.cumsum(chunk_z, axis=1) - chunk_z

    num = jnp.einsum("bnckgf,bnkfd->bnckgd", q, prev_kv)
    den = jnp.einsum("bnckgf,bnkf->bnckg", q, prev_z)
    scores = jnp.einsum("bnckgf,bnskf->bnkgcs", q, k)
    scores = jnp.where(jnp.tril(jnp.ones((chunk_size, chunk_size), bool)), scores, 0.0)
    num = num + jnp.einsum("bnkgcs,bnskd->bnckgd", scores, vals)
    den = den + jnp.einsum("bnkgcs->bnckg", scores)
    out = (num / (den[..., None] + eps)).reshape(batch, num_chunks * chunk_size, heads, head_dim)
    final_state = (prev_kv[:, -1] + chunk_kv[:, -1], prev_z[:, -1] + chunk_z[:, -1])
    return out[:, :steps], final_state


def linear_attention_step(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    state: tuple[jax.Array, jax.Array],
    eps: float = 1e-6,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One token: φ(q) [B, H_q, f], φ(k) [B, H_kv, f], v [B, H_kv, d] -> ([B, H_q, d], state)."""
    kv_state, z_state = state
    batch, heads, width = phi_q.shape
    kv_heads = phi_k.shape[1]
    v = v.astype(jnp.float32)
    q = phi_q.reshape(batch, kv_heads, heads // kv_heads, width)
    # Rank-1 update as a broadcast multiply (fused with the add into one pass over the state),
    # then read out from the new state. Measured in a 256-step scan on CPU (32 heads, f = d =
    # 128, a 2 MiB state): 0.10 ms/step. Reading out from the old state plus the new token's
    # term, φ(q)ᵀS + (φ(q)·φ(k))v, looks independent but made XLA copy the loop-carried state
    # every step (0.18 ms/step).
    kv_state = kv_state + phi_k[..., :, None] * v[..., None, :]
    z_state = z_state + phi_k
    num = jnp.einsum("bkgf,bkfd->bkgd", q, kv_state)
    den = jnp.einsum("bkgf,bkf->bkg", q, z_state)
    out = num / (den[..., None] + eps)
    return out.reshape(batch, heads, v.shape[-1]), (kv_state, z_state)


def linear_attention_recurrent(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    state: tuple[jax.Array, jax.Array] | None = None,
    eps: float = 1e-6,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Token-by-token scan from `state` (zeros if None). Returns ([B, T, H_q, d], final state)."""
    _check_qkv("linear_attention_recurrent", phi_q, phi_k, v)
    batch, _, _, width = phi_q.shape
    kv_heads, head_dim = phi_k.shape[2], v.shape[-1]
    if state is None:
        state = (
            jnp.zeros((batch, kv_heads, width, head_dim), jnp.float32),
            jnp.zeros((batch, kv_heads, width), jnp.float32),
        )

    def step(carry, inputs):
        out, carry = linear_attention_step(*inputs, carry, eps=eps)
        return carry, out

    time_major = lambda a: jnp.swapaxes(a, 0, 1)
    state, out = jax.lax.scan(step, state, (time_major(phi_q), time_major(phi_k), time_major(v)))
    return time_major(out), state


# ----------------------------------------------------------------------------- module


@struct.dataclass
class LinearState:
    """Recurrent state of one linear-attention layer: constant size in context length.

    Linear attention itself has no length limit; `overflow` is set by a model that has one
    (TinyLM's learned positions) when a token arrives past it, as for `KVCache.overflow`.
    """

    kv: jax.Array  # [B, H_kv, f, d]: Σ φ(k) vᵀ
    normalizer: jax.Array  # [B, H_kv, f]: Σ φ(k)
    lengths: jax.Array  # [B] int32: tokens absorbed per sequence, left padding included
    overflow: jax.Array  # [B] bool: a token arrived past the owning model's max_len
    # [B] int32: left-padding tokens skipped at prefill (position = lengths - start); None: none.
    start: jax.Array | None = None


def init_linear_state(
    batch: int, num_kv_heads: int, feature_width: int, head_dim: int, dtype: Any = jnp.float32
) -> LinearState:
    for name, value in [("batch", batch), ("num_kv_heads", num_kv_heads),
                        ("feature_width", feature_width), ("head_dim", head_dim)]:
        check_positive_int("init_linear_state", name, value)
    return LinearState(
        kv=jnp.zeros((batch, num_kv_heads, feature_width, head_dim), dtype),
        normalizer=jnp.zeros((batch, num_kv_heads, feature_width), dtype),
        lengths=jnp.zeros((batch,), jnp.int32),
        overflow=jnp.zeros((batch,), bool),
    )


def check_linear_config(
    model_dim: Any, num_heads: Any, num_kv_heads: Any, head_dim: Any, feature_map: Any,
    form: Any, chunk_size: Any, num_random_features: Any, owner: str = "LinearAttention",
    qk_dim: Any = None,
) -> None:
    for name, value in [("model_dim", model_dim), ("num_heads", num_heads),
                        ("head_dim", head_dim), ("chunk_size", chunk_size)]:
        check_positive_int(owner, name, value)
    if qk_dim is not None:
        check_positive_int(owner, "qk_dim", qk_dim)
    check_kv_heads(owner, num_heads, num_kv_heads)
    check_choice(owner, "feature_map", feature_map, FEATURE_MAPS)
    check_choice(owner, "form", form, FORMS)
    if num_random_features is not None:
        check_positive_int(owner, "num_random_features", num_random_features)


class LinearAttention(nn.Module):
    """Causal linear attention with grouped KV heads and a constant-size decoding state."""

    model_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    feature_map: FeatureMapName = "elu"
    form: Literal["parallel", "chunked", "recurrent"] = "chunked"
    chunk_size: int = 64
    num_random_features: int | None = None  # performer only; default head_dim
    random_feature_seed: int = 0
    # Width of the projected queries and keys the feature map reads (default head_dim). Based
    # (Arora et al. 2024) projects them to a small dimension before its Taylor map, so that the
    # state (1 + r + r²) × head_dim per head stays small; values keep head_dim.
    qk_dim: int | None = None
    eps: float = 1e-6
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_linear_config(
            self.model_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.feature_map,
            self.form, self.chunk_size, self.num_random_features, qk_dim=self.qk_dim,
        )
        super().__post_init__()

    def setup(self) -> None:
        q_proj, k_proj, self.v_proj, self.o_proj = head_projections(self)
        if self.qk_dim is not None:
            dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
            q_proj = nn.DenseGeneral((self.num_heads, self.qk_dim), **dense)
            k_proj = nn.DenseGeneral((self.num_kv_heads, self.qk_dim), **dense)
        self.q_proj, self.k_proj = q_proj, k_proj

    @property
    def feature_input_dim(self) -> int:
        """Width of the projected queries and keys: qk_dim, or head_dim."""
        return self.qk_dim or self.head_dim

    @property
    def feature_width(self) -> int:
        return feature_dim(self.feature_map, self.feature_input_dim, self.num_random_features)

    def _projection(self) -> np.ndarray | None:
        if self.feature_map != "performer":
            return None
        return performer_projection(self.feature_input_dim, self.feature_width, self.random_feature_seed)

    def init_state(self, batch: int, dtype: Any = jnp.float32) -> LinearState:
        return init_linear_state(batch, self.num_kv_heads, self.feature_width, self.head_dim, dtype)

    def _features(self, x: jax.Array, valid: jax.Array | None):
        """x [B, T, D] -> φ(q), φ(k), v; keys and values of invalid tokens are zeroed."""
        if x.ndim != 3 or x.shape[-1] != self.model_dim:
            raise ValueError(
                f"LinearAttention: x has shape {x.shape}; allowed: [B, T, model_dim="
                f"{self.model_dim}]"
            )
        projection = self._projection()
        phi_q = apply_feature_map(self.feature_map, self.q_proj(x), projection)
        phi_k = apply_feature_map(self.feature_map, self.k_proj(x), projection)
        v = self.v_proj(x).astype(jnp.float32)
        if valid is not None:
            chex.assert_shape(valid, x.shape[:2])
            keep = valid.astype(jnp.float32)[:, :, None, None]
            phi_k, v = phi_k * keep, v * keep
        return phi_q, phi_k, v

    def _run(self, phi_q, phi_k, v, form):
        if form == "parallel":
            return linear_attention_parallel(phi_q, phi_k, v, self.eps), None
        if form == "chunked":
            return linear_attention_chunked(phi_q, phi_k, v, self.chunk_size, self.eps)
        return linear_attention_recurrent(phi_q, phi_k, v, None, self.eps)

    def __call__(
        self,
        x: jax.Array,
        *,
        padding_mask: jax.Array | None = None,
        form: str | None = None,
    ) -> jax.Array:
        """x [B, T, model_dim] -> [B, T, model_dim]; `form` overrides the configured form."""
        form = form or self.form
        check_choice("LinearAttention", "form", form, FORMS)
        out, _ = self._run(*self._features(x, padding_mask), form)
        return self.o_proj(out.astype(self.dtype))

    def prefill(
        self, x: jax.Array, state: LinearState, lengths: jax.Array | None = None,
        start: jax.Array | None = None,
    ) -> tuple[jax.Array, LinearState]:
        """Start fresh sequences from padded prompts; the state absorbs the real tokens
        [start, lengths) (`start` [B]: left padding, default 0; `lengths` [B]: default T)."""
        batch, steps = x.shape[:2]
        if lengths is None:
            lengths = jnp.full((batch,), steps, jnp.int32)
        index = jnp.arange(steps)[None, :]
        valid = index < lengths[:, None]
        if start is not None:
            start = start.astype(jnp.int32)
            valid = valid & (index >= start[:, None])
        phi_q, phi_k, v = self._features(x, valid)
        form = "chunked" if self.form == "parallel" else self.form
        out, (kv, normalizer) = self._run(phi_q, phi_k, v, form)
        new_state = LinearState(
            kv=kv.astype(state.kv.dtype),
            normalizer=normalizer.astype(state.normalizer.dtype),
            lengths=lengths.astype(jnp.int32),
            overflow=jnp.zeros((batch,), bool),
            start=start,
        )
        return self.o_proj(out.astype(self.dtype)), new_state

    def decode(self, x: jax.Array, state: LinearState) -> tuple[jax.Array, LinearState]:
        """One token per sequence, x [B, model_dim]: O(1) in context length."""
        if x.ndim != 2:
            raise ValueError(
                f"LinearAttention.decode: x has shape {x.shape}; allowed: [B, model_dim="
                f"{self.model_dim}]"
            )
        phi_q, phi_k, v = self._features(x[:, None, :], None)
        state_f32 = (state.kv.astype(jnp.float32), state.normalizer.astype(jnp.float32))
        out, (kv, normalizer) = linear_attention_step(
            phi_q[:, 0], phi_k[:, 0], v[:, 0], state_f32, self.eps
        )
        new_state = state.replace(
            kv=kv.astype(state.kv.dtype),
            normalizer=normalizer.astype(state.normalizer.dtype),
            lengths=state.lengths + 1,
        )
        return self.o_proj(out.astype(self.dtype)), new_state
