"""Softmax attention (MHA / GQA / MQA) against an independent numpy reference."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import KVCache, SoftmaxAttention, blockwise_attention, init_kv_cache, softmax

# Every test compares float32 results with a reference or another form: full-precision
# matmuls (no TF32 on GPU), tolerances from conftest.tol.
pytestmark = pytest.mark.usefixtures("highest_precision")
MODEL_DIM = 24


# ----------------------------------------------------------------------------- references


def rope_reference(x, positions, base=10_000.0):
    """Rotate (x_i, x_{i+d/2}) as the complex number x_i + i·x_{i+d/2}. x [T, H, d]."""
    half = x.shape[-1] // 2
    freq = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * positions[:, None, None] * freq)
    return np.concatenate([z.real, z.imag], axis=-1)


def rms_norm_reference(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def attention_reference(params, x, num_heads, num_kv_heads, *, rope=True, qk_norm=False,
                        causal=True, valid=None):
    """Plain numpy, one sequence at a time, K/V heads explicitly repeated. x [B, T, D]."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    x = np.asarray(x, np.float64)
    batch, steps, _ = x.shape
    group = num_heads // num_kv_heads
    outputs = []
    for b in range(batch):
        q = np.einsum("td,dhe->the", x[b], p["q_proj"]["kernel"])
        k = np.einsum("td,dhe->the", x[b], p["k_proj"]["kernel"])
        v = np.einsum("td,dhe->the", x[b], p["v_proj"]["kernel"])
        if qk_norm:
            q = rms_norm_reference(q, p["q_norm"]["scale"])
            k = rms_norm_reference(k, p["k_norm"]["scale"])
        if rope:
            q = rope_reference(q, np.arange(steps))
            k = rope_reference(k, np.arange(steps))
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        logits = np.einsum("the,she->hts", q, k) / np.sqrt(q.shape[-1])
        allowed = np.ones((steps, steps), bool)
        if causal:
            allowed &= np.tril(allowed)
        if valid is not None:
            allowed &= valid[b][None, :]
        logits = np.where(allowed[None], logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        heads = np.einsum("hts,she->the", weights, v)
        outputs.append(np.einsum("the,hed->td", heads, p["o_proj"]["kernel"]))
    return np.stack(outputs)


def jitted(module):
    """module.apply under jit: eager dispatch compiles every small op separately (slow)."""
    return jax.jit(module.apply, static_argnames=("causal", "method"))


def normal(seed, shape):
    """Test inputs from numpy: a jax.random call would compile once per shape."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def make(num_heads=4, num_kv_heads=2, head_dim=8, **kw):
    return SoftmaxAttention(model_dim=MODEL_DIM, num_heads=num_heads,
                            num_kv_heads=num_kv_heads, head_dim=head_dim, **kw)


def setup_module_params(module, batch=2, steps=11, seed=0):
    x = normal(seed, (batch, steps, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(seed + 1), x)
    if module.qk_norm:
        # Non-trivial norm scales, so a missing or misplaced norm shows up.
        for name in ("q_norm", "k_norm"):
            scale = params["params"][name]["scale"]
            params["params"][name]["scale"] = 1.0 + 0.3 * normal(seed + 7, scale.shape)
    return x, params


KINDS = [pytest.param(4, id="MHA"), pytest.param(2, id="GQA"), pytest.param(1, id="MQA")]


# ----------------------------------------------------------------------------- full forward


@pytest.mark.parametrize(
    "num_kv_heads,rope,qk_norm",
    [(4, True, False), (2, True, True), (1, True, False), (2, False, False)],
    ids=["MHA-rope", "GQA-rope-qknorm", "MQA-rope", "GQA-plain"],
)
def test_forward_matches_reference(num_kv_heads, rope, qk_norm):
    module = make(num_kv_heads=num_kv_heads, use_rope=rope, qk_norm=qk_norm)
    x, params = setup_module_params(module)
    out = jitted(module)(params, x)
    ref = attention_reference(params, x, 4, num_kv_heads, rope=rope, qk_norm=qk_norm)
    np.testing.assert_allclose(out, ref, **tol())


def test_grouped_kv_projections_are_not_repeated():
    module = make(num_heads=8, num_kv_heads=2)
    _, params = setup_module_params(module)
    assert params["params"]["k_proj"]["kernel"].shape == (MODEL_DIM, 2, 8)
    assert params["params"]["v_proj"]["kernel"].shape == (MODEL_DIM, 2, 8)
    assert params["params"]["q_proj"]["kernel"].shape == (MODEL_DIM, 8, 8)


@pytest.mark.parametrize("num_kv_heads", KINDS)
def test_non_causal_matches_reference(num_kv_heads):
    module = make(num_kv_heads=num_kv_heads)
    x, params = setup_module_params(module)
    out = jitted(module)(params, x, causal=False)
    ref = attention_reference(params, x, 4, num_kv_heads, causal=False)
    np.testing.assert_allclose(out, ref, **tol())


@pytest.mark.parametrize("num_kv_heads", KINDS)
def test_padding_lengths_and_mask_match_reference(num_kv_heads):
    module = make(num_kv_heads=num_kv_heads)
    x, params = setup_module_params(module, batch=3)
    lengths = np.array([11, 6, 1])
    valid = np.arange(11)[None, :] < lengths[:, None]
    ref = attention_reference(params, x, 4, num_kv_heads, valid=valid)
    by_lengths = jitted(module)(params, x, lengths=jnp.asarray(lengths))
    by_mask = jitted(module)(params, x, padding_mask=jnp.asarray(valid))
    for b, n in enumerate(lengths):  # outputs at padded positions are unspecified
        np.testing.assert_allclose(by_lengths[b, :n], ref[b, :n], **tol())
        np.testing.assert_allclose(by_mask[b, :n], ref[b, :n], **tol())


def test_arbitrary_padding_mask_non_causal():
    module = make(num_kv_heads=2)
    x, params = setup_module_params(module)
    valid = np.ones((2, 11), bool)
    valid[0, [0, 4, 5]] = False  # holes anywhere, not just right padding
    out = jitted(module)(params, x, padding_mask=jnp.asarray(valid), causal=False)
    ref = attention_reference(params, x, 4, 2, causal=False, valid=valid)
    np.testing.assert_allclose(out, ref, **tol())


# ----------------------------------------------------------------------------- KV cache


def decode_all(module, params, x, prompt_len, max_len, cache=None, layout=None):
    """Prefill x[:, :prompt_len], then decode the rest one token at a time."""
    batch, steps, _ = x.shape
    cache = module.init_cache(batch, max_len, layout=layout) if cache is None else cache
    prefill = jax.jit(partial(module.apply, method="prefill"))
    decode = jax.jit(partial(module.apply, method="decode"), donate_argnums=(2,))
    out, cache = prefill(params, x[:, :prompt_len], cache)
    outs = [out]
    for t in range(prompt_len, steps):
        step_out, cache = decode(params, x[:, t], cache)
        outs.append(step_out[:, None])
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize(
    "num_kv_heads,qk_norm,layout",
    [(4, False, "dn_dn"), (2, True, "dn_nd"), (1, False, "nd_nd"), (4, False, "nd_nd")],
    ids=["MHA-dn_dn", "GQA-qknorm-dn_nd", "MQA-nd_nd", "MHA-nd_nd"],
)
def test_decode_matches_full_forward_up_to_full_cache(num_kv_heads, qk_norm, layout):
    module = make(num_kv_heads=num_kv_heads, qk_norm=qk_norm)
    x, params = setup_module_params(module, steps=12)
    full = jitted(module)(params, x)
    # max_len == sequence length: the last decode step fills the cache completely.
    decoded, cache = decode_all(module, params, x, prompt_len=5, max_len=12, layout=layout)
    np.testing.assert_allclose(decoded, full, **tol())
    np.testing.assert_array_equal(cache.lengths, [12, 12])


def test_decode_from_single_token_prompt():
    module = make(num_kv_heads=1)
    x, params = setup_module_params(module, steps=7)
    decoded, _ = decode_all(module, params, x, prompt_len=1, max_len=9)
    np.testing.assert_allclose(decoded, jitted(module)(params, x), **tol())


@pytest.mark.parametrize("layout", softmax.CACHE_LAYOUTS)
def test_cache_contents_match_projected_keys_and_values(layout):
    module = make(num_kv_heads=2, use_rope=False)
    x, params = setup_module_params(module, steps=6)
    _, cache = decode_all(module, params, x, prompt_len=3, max_len=8, layout=layout)
    assert cache.layout == layout
    p = params["params"]
    k = np.einsum("btd,dhe->bhte", x, p["k_proj"]["kernel"])
    v = np.einsum("btd,dhe->bhte", x, p["v_proj"]["kernel"])
    np.testing.assert_allclose(cache.keys_by_head()[:, :, :6], k, **tol())
    np.testing.assert_allclose(cache.values_by_head()[:, :, :6], v, **tol())
    np.testing.assert_array_equal(cache.values_by_head()[:, :, 6:], 0.0)


def test_decode_masks_by_cache_index_not_by_contents():
    """Garbage beyond each sequence's length must not leak into the output."""
    module = make(num_kv_heads=2)
    x, params = setup_module_params(module, steps=9)
    garbage = init_kv_cache(2, 16, 2, 8)
    noise = normal(3, garbage.keys.shape) * 50
    garbage = garbage.replace(keys=noise, values=noise.reshape(garbage.values.shape))
    decoded, _ = decode_all(module, params, x, prompt_len=4, max_len=16, cache=garbage)
    np.testing.assert_allclose(decoded, jitted(module)(params, x), **tol())


@pytest.mark.parametrize("num_kv_heads", [pytest.param(2, id="GQA"), pytest.param(1, id="MQA")])
def test_ragged_prefill_then_decode_matches_each_sequence_alone(num_kv_heads):
    module = make(num_kv_heads=num_kv_heads)
    x, params = setup_module_params(module, batch=2, steps=10)
    lengths = jnp.array([6, 3])
    prefill = jax.jit(partial(module.apply, method="prefill"))
    decode = jax.jit(partial(module.apply, method="decode"))
    forward = jitted(module)
    out, cache = prefill(params, x[:, :6], module.init_cache(2, 10), lengths)
    extra = normal(9, (2, 3, MODEL_DIM))
    steps = []
    for t in range(3):
        y, cache = decode(params, extra[:, t], cache)
        steps.append(y)
    for b in range(2):
        n = int(lengths[b])
        seq = jnp.concatenate([x[b : b + 1, :n], extra[b : b + 1]], axis=1)
        full = forward(params, seq)
        np.testing.assert_allclose(out[b, :n], full[0, :n], **tol())
        for t in range(3):
            np.testing.assert_allclose(steps[t][b], full[0, n + t], **tol())


def test_cache_is_head_major_and_sized_by_kv_heads():
    cache = make(num_kv_heads=2).init_cache(3, 20)
    assert isinstance(cache, KVCache)
    assert cache.keys_by_head().shape == (3, 2, 20, 8)
    assert cache.values_by_head().shape == (3, 2, 20, 8)
    assert cache.keys.nbytes + cache.values.nbytes == 2 * 3 * 2 * 20 * 8 * 4


# ----------------------------------------------------------------------------- full cache


def test_decode_past_max_len_raises_when_eager():
    """Before the fix the write was dropped and lengths still grew: a silently wrong output."""
    module = make(num_kv_heads=2)
    x, params = setup_module_params(module, steps=4)
    _, cache = jax.jit(partial(module.apply, method="prefill"))(params, x, module.init_cache(2, 4))
    with pytest.raises(ValueError, match=r"SoftmaxAttention.decode: got a token at position 4; "
                                         r"allowed: positions < max_len=4"):
        module.apply(params, x[:, 0], cache, method="decode")


@pytest.mark.parametrize("layout", ["dn_dn", "nd_nd"])  # both store kinds for K and for V
def test_decode_past_max_len_under_jit_is_clamped_and_flagged(layout):
    module = make(num_kv_heads=2)
    x, params = setup_module_params(module, batch=2, steps=5)
    decode = jax.jit(partial(module.apply, method="decode"))
    # Sequence 0 fills its 4-slot cache with the prompt; sequence 1 has room for one more.
    _, cache = jax.jit(partial(module.apply, method="prefill"))(
        params, x[:, :4], module.init_cache(2, 4, layout=layout), jnp.array([4, 3]))
    before = jax.device_get(cache)
    out, after = decode(params, x[:, 4], cache)
    np.testing.assert_array_equal(after.lengths, [4, 4])  # not 5: nothing stored past the end
    np.testing.assert_array_equal(after.overflow, [True, False])
    # The full sequence's cache is untouched; the other one stored its token.
    np.testing.assert_array_equal(after.keys_by_head()[0], before.keys_by_head()[0])
    assert not np.array_equal(after.keys_by_head()[1, :, 3], before.keys_by_head()[1, :, 3])
    assert np.all(np.isfinite(out))
    # The flag is sticky, and a fresh prefill clears it.
    _, again = decode(params, x[:, 4], after)
    np.testing.assert_array_equal(again.overflow, [True, True])
    _, fresh = jax.jit(partial(module.apply, method="prefill"))(params, x[:, :2], again)
    np.testing.assert_array_equal(fresh.overflow, [False, False])


# ----------------------------------------------------------------------------- blockwise


def blockwise(q, k, v, **kw):
    return jax.jit(partial(blockwise_attention, **kw),
                   static_argnames=("causal", "block_size"))(q, k, v)


def dense_reference(q, k, v, causal, kv_lengths=None):
    """Float64 numpy softmax attention, KV heads repeated. q [B, T, H, d], k/v [B, S, Hkv, d]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    allowed = np.ones(logits.shape[-2:], bool)
    if causal:
        allowed = np.tril(allowed)
    allowed = np.broadcast_to(allowed, logits.shape).copy()
    if kv_lengths is not None:
        for b, n in enumerate(kv_lengths):
            allowed[b, :, :, n:] = False
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdims=True), v)


@pytest.mark.parametrize(
    "steps,block_size,causal",
    [(1, 4, True), (13, 4, True), (16, 4, False), (37, 8, True), (20, 64, False)],
    ids=["one-token", "ragged-blocks", "full-even-blocks", "many-blocks", "one-block-full"],
)
def test_blockwise_matches_reference(steps, block_size, causal):
    q, k, v = normal(steps, (3, 2, steps, 4, 8))
    k, v = k[:, :, :2], v[:, :, :2]  # GQA: 4 query heads, 2 KV heads
    out = blockwise(q, k, v, scale=8**-0.5, causal=causal, block_size=block_size)
    np.testing.assert_allclose(out, dense_reference(q, k, v, causal), **tol())


def test_blockwise_respects_kv_lengths():
    q, k, v = normal(5, (3, 2, 19, 2, 8))
    lengths = np.array([19, 7])
    out = jax.jit(partial(blockwise_attention, scale=8**-0.5, block_size=4))(
        q, k, v, kv_lengths=jnp.asarray(lengths))
    ref = dense_reference(q, k, v, causal=True, kv_lengths=lengths)
    np.testing.assert_allclose(out, ref, **tol())


def test_blockwise_module_path_equals_xla_and_is_chosen_for_long_inputs(monkeypatch):
    x, params = setup_module_params(make(num_kv_heads=2), steps=13)
    lengths = jnp.array([13, 5])
    xla = jitted(make(num_kv_heads=2, implementation="xla"))
    explicit = jitted(make(num_kv_heads=2, implementation="blockwise", block_size=4))
    by_xla, by_blocks = xla(params, x, lengths=lengths), explicit(params, x, lengths=lengths)
    np.testing.assert_allclose(by_blocks[0], by_xla[0], **tol())
    np.testing.assert_allclose(by_blocks[1, :5], by_xla[1, :5], **tol())  # padding unspecified
    # implementation=None: dense below the limit, blockwise at or above it.
    auto = make(num_kv_heads=2, block_size=4)
    assert auto._dense_or_blockwise(2, 13) is None
    monkeypatch.setitem(softmax.DENSE_LOGITS_LIMIT, jax.default_backend(), 2 * 4 * 13 * 13)
    assert auto._dense_or_blockwise(2, 13) == "blockwise"
    np.testing.assert_allclose(jitted(auto)(params, x), xla(params, x), **tol())


def test_blockwise_gradients_match_xla():
    module = make(num_kv_heads=1, implementation="blockwise", block_size=4)
    x, params = setup_module_params(module, steps=10)
    loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, x)))))
    grads = loss(module)(params)
    ref = loss(make(num_kv_heads=1, implementation="xla"))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol()["rtol"], atol=10 * tol()["atol"])


# ----------------------------------------------------------------------------- bad input


def test_kv_heads_must_divide_query_heads():
    with pytest.raises(ValueError, match=r"SoftmaxAttention.num_kv_heads: got 3; allowed: a "
                                         r"divisor of num_heads=8 \(1, 2, 4, 8\)"):
        make(num_heads=8, num_kv_heads=3)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_heads=0), r"SoftmaxAttention.num_heads: got 0; allowed: a positive integer"),
        (dict(num_kv_heads=-1),
         r"SoftmaxAttention.num_kv_heads: got -1; allowed: a positive integer"),
        (dict(head_dim=7), r"SoftmaxAttention.head_dim: got 7; allowed: an even number when "
                           r"use_rope=True"),
        (dict(implementation="flash"),
         r"SoftmaxAttention.implementation: got 'flash'; allowed: None, 'xla', 'cudnn'"),
        (dict(block_size=0), r"SoftmaxAttention.block_size: got 0; allowed: a positive integer"),
    ],
)
def test_bad_config_raises_before_compiling(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(**kwargs)


def test_bad_input_shape_raises():
    module = make()
    x, params = setup_module_params(module)
    with pytest.raises(ValueError, match=r"x has shape \(2, 11, 5\); allowed: 3 dims with last "
                                         r"dim model_dim=24"):
        jitted(module)(params, jnp.zeros((2, 11, 5)))
    with pytest.raises(ValueError, match=r"cache batch=3 does not match x batch=2"):
        jitted(module)(params, x[:, 0], module.init_cache(3, 4), method="decode")
    with pytest.raises(ValueError, match=r"prompt length 11 exceeds cache max_len=4"):
        jitted(module)(params, x, module.init_cache(2, 4), method="prefill")
    with pytest.raises(ValueError, match=r"implementation: got 'blockwise' with a padding_mask"):
        jitted(make(implementation="blockwise"))(params, x, padding_mask=jnp.ones((2, 11), bool))
