"""MHA -> GQA/MQA conversion, MQAR data, and the tiny LM (decoding, seeds, learning MQAR)."""

from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import SoftmaxAttention, convert_kv_heads
from purerl.attention.lm import LMConfig, TinyLM, TrainConfig, evaluate_mqar, train_mqar
from purerl.attention.mqar import MQARConfig
from purerl.attention.mqar import generate_mqar as generate_eager

# Float32 comparisons with references and between forms: full-precision matmuls on GPU too.
# The tests share cached compiled programs and runs (functools.cache): one worker runs the module.
pytestmark = [pytest.mark.usefixtures("highest_precision"), pytest.mark.xdist_group(__name__)]

MODEL_DIM = 16
# One compile per (config, batch) instead of eager dispatch of every op.
generate_mqar = jax.jit(generate_eager, static_argnums=(1, 2))


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- conversion


def mha_with_identical_heads_per_group(group_count, seed=0):
    """MHA-8 params whose K/V heads are identical within each of `group_count` groups."""
    module = SoftmaxAttention(model_dim=MODEL_DIM, num_heads=8, num_kv_heads=8, head_dim=4)
    x = normal(seed, (2, 7, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), x)
    for name in ("k_proj", "v_proj"):
        kernel = params["params"][name]["kernel"]  # [D, 8, d]
        per_group = kernel[:, :: 8 // group_count]
        params["params"][name]["kernel"] = jnp.repeat(per_group, 8 // group_count, axis=1)
    return x, params


@pytest.mark.parametrize("method", ["mean", "first"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_conversion_is_exact_for_identical_heads(method, kv_heads):
    x, params = mha_with_identical_heads_per_group(kv_heads)
    mha = SoftmaxAttention(model_dim=MODEL_DIM, num_heads=8, num_kv_heads=8, head_dim=4)
    grouped = SoftmaxAttention(model_dim=MODEL_DIM, num_heads=8, num_kv_heads=kv_heads,
                               head_dim=4)
    converted = convert_kv_heads(params, kv_heads, method)
    assert converted["params"]["k_proj"]["kernel"].shape == (MODEL_DIM, kv_heads, 4)
    np.testing.assert_allclose(jax.jit(grouped.apply)(converted, x),
                               jax.jit(mha.apply)(params, x), **tol())


def test_mean_pools_and_first_selects():
    kernel = normal(1, (MODEL_DIM, 4, 3))
    params = {"attn": {"k_proj": {"kernel": kernel}, "v_proj": {"kernel": kernel + 1}}}
    mean = convert_kv_heads(params, 2, "mean")["attn"]["k_proj"]["kernel"]
    first = convert_kv_heads(params, 2, "first")["attn"]["v_proj"]["kernel"]
    np.testing.assert_allclose(mean[:, 1], (kernel[:, 2] + kernel[:, 3]) / 2, **tol())
    np.testing.assert_allclose(first[:, 1], kernel[:, 2] + 1, **tol())


def test_random_conversion_depends_on_key_and_converts_every_layer():
    cfg = LMConfig(vocab_size=16, max_len=8, d_model=MODEL_DIM, num_layers=2, num_heads=4,
                   num_kv_heads=4)
    params = jax.jit(TinyLM(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    a = convert_kv_heads(params, 1, "random", jax.random.PRNGKey(1))
    b = convert_kv_heads(params, 1, "random", jax.random.PRNGKey(2))
    for layer in ("blocks_0", "blocks_1"):
        kernel_a = a["params"][layer]["attn"]["k_proj"]["kernel"]
        assert kernel_a.shape == (MODEL_DIM, 1, 4)
        assert not np.allclose(kernel_a, b["params"][layer]["attn"]["k_proj"]["kernel"])
    # The converted checkpoint runs in an MQA model.
    mqa = TinyLM(LMConfig(**{**cfg.__dict__, "num_kv_heads": 1}))
    assert jax.jit(mqa.apply)(a, jnp.zeros((1, 8), jnp.int32)).shape == (1, 8, 16)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_kv_heads=3), r"convert_kv_heads.num_kv_heads: got 3; allowed: a divisor of "
                               r"the checkpoint's KV heads at /params/k_proj/kernel=8"),
        (dict(num_kv_heads=2, method="median"),
         r"convert_kv_heads.method: got 'median'; allowed: 'mean', 'first', 'random'"),
        (dict(num_kv_heads=2, method="random"),
         r"convert_kv_heads.key: got None; allowed: a PRNG key when method='random'"),
    ],
)
def test_conversion_bad_arguments(kwargs, pattern):
    _, params = mha_with_identical_heads_per_group(2)
    with pytest.raises(ValueError, match=pattern):
        convert_kv_heads(params, **kwargs)


def test_conversion_needs_attention_layers():
    with pytest.raises(ValueError, match="no attention layer"):
        convert_kv_heads({"dense": {"kernel": jnp.ones((2, 2))}}, 1)


# ----------------------------------------------------------------------------- MQAR


def test_mqar_answers_are_correct_by_construction():
    cfg = MQARConfig(vocab_size=64, seq_len=40, num_pairs=6)
    batch = jax.device_get(generate_mqar(jax.random.PRNGKey(0), cfg, 16))
    assert batch.tokens.shape == batch.targets.shape == batch.loss_mask.shape == (16, 40)
    for tokens, targets, mask in zip(batch.tokens, batch.targets, batch.loss_mask, strict=True):
        keys, values = tokens[0:12:2], tokens[1:12:2]
        assert len(set(keys)) == 6 and np.all((1 <= keys) & (keys < 32))
        assert np.all((32 <= values) & (values < 64))
        positions = np.flatnonzero(mask)
        assert len(positions) == 6 and positions.min() >= 12  # queries come after the pairs
        lookup = dict(zip(keys, values, strict=True))
        for p in positions:
            assert targets[p] == lookup[tokens[p]] == tokens[p + 1]
        assert sorted(tokens[positions]) == sorted(keys)  # every key is asked once


def test_mqar_is_deterministic_per_key():
    cfg = MQARConfig(vocab_size=64, seq_len=32, num_pairs=4)
    a = generate_mqar(jax.random.PRNGKey(3), cfg, 4)
    b = generate_mqar(jax.random.PRNGKey(3), cfg, 4)
    c = generate_mqar(jax.random.PRNGKey(4), cfg, 4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(vocab_size=8, num_pairs=4), r"vocab_size=8 leaves 3 distinct keys"),
        (dict(seq_len=20, num_pairs=6), r"seq_len=20 has room for 4 query slots"),
        (dict(num_queries=9, num_pairs=8), r"num_queries=9 must be <= num_pairs=8"),
        (dict(num_pairs=0), r"MQARConfig.num_pairs: got 0; allowed: a positive integer"),
    ],
)
def test_mqar_bad_config(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MQARConfig(**kwargs)


# ----------------------------------------------------------------------------- tiny LM


@pytest.mark.parametrize("attention,kv_heads,tie,shift", [("softmax", 2, False, False), ("linear", 2, True, False),
                                                         ("linear", 1, True, True)])
def test_lm_decode_matches_forward(attention, kv_heads, tie, shift):
    cfg = LMConfig(vocab_size=32, max_len=12, d_model=MODEL_DIM, num_layers=2, num_heads=4,
                   num_kv_heads=kv_heads, attention=attention, tie_embeddings=tie,
                   chunk_size=4, token_shift=shift)
    model = TinyLM(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 12)), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)
    assert ("output" in params["params"]) != tie
    full = jax.jit(model.apply)(params, tokens)
    prefill = jax.jit(partial(model.apply, method="prefill"))
    decode = jax.jit(partial(model.apply, method="decode"))
    logits, caches = prefill(params, tokens[:, :5], model.init_cache(2))
    steps = [logits]
    for t in range(5, 12):
        step_logits, caches = decode(params, tokens[:, t], caches, tokens[:, t - 1])
        steps.append(step_logits[:, None])
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, **tol())
    if shift:  # the previous token is part of the decode state: without it, a clear error
        with pytest.raises(ValueError, match="TinyLM.decode.previous"):
            model.apply(params, tokens[:, 5], caches, method="decode")


@cache  # shared by the tests below: one init and one prefill compile per attention kind
def small_lm(attention="softmax"):
    cfg = LMConfig(vocab_size=16, max_len=6, d_model=MODEL_DIM, num_layers=2, num_heads=4,
                   num_kv_heads=2, attention=attention, chunk_size=4)
    model = TinyLM(cfg)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 16, (2, 6)), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)
    return model, params, tokens, jax.jit(partial(model.apply, method="prefill"))


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_lm_decode_past_max_len_raises_when_eager(attention):
    model, params, tokens, prefill = small_lm(attention)
    _, caches = prefill(params, tokens, model.init_cache(2), jnp.array([6, 6]))
    with pytest.raises(ValueError, match=r"TinyLM.decode: got a token at position 6; allowed: "
                                         r"positions < max_len=6"):
        model.apply(params, tokens[:, 0], caches, method="decode")


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_lm_decode_past_max_len_under_jit_is_finite_and_flagged(attention):
    """Before the fix: NaN logits (position embedding read out of range), no flag."""
    model, params, tokens, prefill = small_lm(attention)
    decode = jax.jit(partial(model.apply, method="decode"))
    # Sequence 0 fills all 6 positions, sequence 1 has room for one more token.
    _, caches = prefill(params, tokens, model.init_cache(2), jnp.array([6, 5]))
    logits, caches = decode(params, tokens[:, 0], caches)
    assert np.all(np.isfinite(logits))
    for layer_cache in caches:
        np.testing.assert_array_equal(layer_cache.overflow, [True, False])
    if attention == "softmax":
        np.testing.assert_array_equal(caches[0].lengths, [6, 6])


def test_lm_cache_longer_than_positions_is_rejected():
    model = small_lm()[0]
    with pytest.raises(ValueError, match=r"TinyLM.init_cache.max_len: got 7; allowed: 1..6"):
        model.init_cache(2, 7)


def test_lm_config_errors():
    with pytest.raises(ValueError, match=r"LMConfig.num_kv_heads: got 3; allowed: a divisor of "
                                         r"num_heads=4 \(1, 2, 4\)"):
        LMConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"LMConfig.attention: got 'sparse'; allowed: 'softmax', "
                                         r"'linear'"):
        LMConfig(attention="sparse")
    with pytest.raises(ValueError, match=r"LMConfig.num_layers: got 0; allowed: a positive int"):
        LMConfig(num_layers=0)
    with pytest.raises(ValueError, match=r"MQARConfig.seq_len: got 64; allowed: at most "
                                         r"LMConfig.max_len=32"):
        train_mqar(jax.random.PRNGKey(0), LMConfig(max_len=32), TrainConfig())


def test_training_seeds_vmap():
    """One update on fixed inputs (the MQAR batch is a function of the seed): each vmapped seed
    equals the same seed trained alone.

    The updated parameters are not bitwise equal: under vmap XLA:CPU runs the backward pass's
    weight-gradient matmuls and bias reductions as batched kernels that sum in another order,
    and Adam's first step (a gradient divided by its own magnitude) enlarges that rounding
    (measured, jaxlib 0.10.2: at most 5e-7 apart with XLA's default kernels, 3e-6 with the
    legacy CPU emitters `make test` compiles with), so they get the vmapped tolerance.
    """
    lm = LMConfig(vocab_size=16, max_len=16, d_model=MODEL_DIM, num_layers=1, num_heads=2,
                  num_kv_heads=1)
    train = TrainConfig(steps=1, batch_size=4, warmup_steps=0,
                        mqar=MQARConfig(vocab_size=16, seq_len=16, num_pairs=2))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    run = jax.jit(lambda k: train_mqar(k, lm, train))
    params, metrics = jax.jit(jax.vmap(run))(keys)
    assert metrics["loss"].shape == (2, 1) and np.all(np.isfinite(metrics["loss"]))
    kernel = params["params"]["blocks_0"]["attn"]["q_proj"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])  # seeds differ
    for i, key in enumerate(keys):
        params_i, metrics_i = run(key)
        for name in ("loss", "accuracy"):
            np.testing.assert_allclose(metrics[name][i], metrics_i[name],
                                       **tol(vmapped=True))
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, **tol(vmapped=True)),
                     params, params_i)


@pytest.mark.slow
def test_softmax_lm_learns_mqar():
    """2-layer softmax LM on MQAR (vocab 32, 16 tokens, 4 pairs), 300 steps, fixed seed.

    Measured: answer accuracy 0.48 on fresh data (0.30 at 10% of training). Guessing among the
    4 values present scores 0.25 and uniform guessing 1/16, so 0.38 leaves margin while still
    failing for a model that does not read the pairs in context.
    """
    mqar = MQARConfig(vocab_size=32, seq_len=16, num_pairs=4)
    lm = LMConfig(vocab_size=32, max_len=16, d_model=64, num_layers=2, num_heads=4,
                  num_kv_heads=4)
    train = TrainConfig(steps=300, batch_size=32, learning_rate=1e-2, warmup_steps=30, mqar=mqar)
    params, metrics = jax.jit(lambda k: train_mqar(k, lm, train))(jax.random.PRNGKey(0))
    accuracy = float(evaluate_mqar(params, jax.random.PRNGKey(123), lm, mqar, 512))
    assert accuracy > 0.38
    curve = np.asarray(metrics["accuracy"])
    assert curve[-30:].mean() > curve[:30].mean() + 0.15


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(d_model=16, num_heads=3, num_kv_heads=3),
     r"LMConfig.num_heads: got 3; allowed: a divisor of d_model=16 when head_dim"),
    (dict(d_model=16, num_heads=3, num_kv_heads=3, qk_dim=4, attention="linear"), r"LMConfig.num_heads: got 3"),
    (dict(d_model=16, num_heads=2, num_kv_heads=2, qk_dim=4), r"LMConfig.qk_dim: got 4 with attention='softmax'"),
])
def test_lm_config_head_layout_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LMConfig(vocab_size=8, max_len=8, num_layers=1, **kwargs)


def test_lm_config_head_dim_frees_num_heads_from_d_model():
    # 32 heads of dim 2 on d_model 16 (the kv_cache_4x layout), with and without qk_dim.
    assert LMConfig(vocab_size=8, max_len=8, d_model=16, num_heads=32, num_kv_heads=8,
                    head_dim=2).resolved_head_dim == 2
    assert LMConfig(vocab_size=8, max_len=8, d_model=16, num_heads=32, num_kv_heads=8, head_dim=2,
                    attention="linear", qk_dim=2).resolved_head_dim == 2
