"""Linear attention: feature maps, parallel = chunked = recurrent, decoding, grouped KV heads."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import (
    LinearAttention,
    apply_feature_map,
    feature_dim,
    performer_projection,
)
from purerl.attention import linear_attention_chunked as chunked_eager
from purerl.attention import linear_attention_parallel as parallel_eager
from purerl.attention import linear_attention_recurrent as recurrent_eager

# Jitted once per shape: eager dispatch of many small einsums dominates test time otherwise.
linear_attention_parallel = jax.jit(parallel_eager)
linear_attention_chunked = jax.jit(chunked_eager, static_argnames="chunk_size")
linear_attention_recurrent = jax.jit(recurrent_eager)

# Every test compares float32 results with a reference or another form: full-precision
# matmuls (no TF32 on GPU), tolerances from conftest.tol.
pytestmark = pytest.mark.usefixtures("highest_precision")
MODEL_DIM = 16


def linear_reference(phi_q, phi_k, v, eps=1e-6):
    """Explicit causal sums per token in float64, KV heads repeated. Shapes [B, T, H, ·]."""
    phi_q, phi_k, v = (np.asarray(a, np.float64) for a in (phi_q, phi_k, v))
    group = phi_q.shape[2] // phi_k.shape[2]
    phi_k, v = np.repeat(phi_k, group, axis=2), np.repeat(v, group, axis=2)
    out = np.zeros(phi_q.shape[:3] + v.shape[-1:])
    for t in range(phi_q.shape[1]):
        state = np.einsum("bshf,bshd->bhfd", phi_k[:, : t + 1], v[:, : t + 1])
        norm = phi_k[:, : t + 1].sum(1)
        num = np.einsum("bhf,bhfd->bhd", phi_q[:, t], state)
        out[:, t] = num / (np.einsum("bhf,bhf->bh", phi_q[:, t], norm)[..., None] + eps)
    return out


def jitted(module):
    """module.apply under jit: eager dispatch compiles every small op separately (slow)."""
    return jax.jit(module.apply, static_argnames=("form", "method"))


def normal(seed, shape):
    """Test inputs from numpy: a jax.random call would compile once per shape."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_features(shape_q, shape_kv, seed=0, width=None):
    rng = np.random.default_rng(seed)
    width = width or shape_q[-1]
    phi_q = rng.uniform(size=shape_q[:-1] + (width,)).astype(np.float32)
    phi_k = rng.uniform(size=shape_kv[:-1] + (width,)).astype(np.float32)
    v = rng.standard_normal(shape_kv).astype(np.float32)
    return phi_q, phi_k, v


# ----------------------------------------------------------------------------- feature maps


def test_elu_and_relu_maps():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    xs = np.asarray(x)
    np.testing.assert_allclose(apply_feature_map("elu", x), np.where(xs > 0, xs + 1, np.exp(xs)),
                               atol=1e-6)
    np.testing.assert_allclose(apply_feature_map("relu", x), np.maximum(xs, 0), atol=0)


def test_taylor_map_is_second_order_exp_kernel():
    q, k = normal(0, (2, 5, 8))
    phi_q, phi_k = apply_feature_map("taylor", q), apply_feature_map("taylor", k)
    assert phi_q.shape == (5, feature_dim("taylor", 8)) == (5, 1 + 8 + 64)
    s = np.einsum("td,td->t", q, k) / np.sqrt(8)
    np.testing.assert_allclose(np.einsum("tf,tf->t", phi_q, phi_k), 1 + s + s * s / 2, atol=1e-5)


def test_performer_features_estimate_softmax_kernel():
    q, k = 0.5 * normal(1, (2, 6, 8))
    proj = performer_projection(8, 65536, seed=0)
    estimate = np.einsum("tf,tf->t", apply_feature_map("performer", q, proj),
                         apply_feature_map("performer", k, proj))
    exact = np.exp(np.einsum("td,td->t", q, k) / np.sqrt(8))
    np.testing.assert_allclose(estimate, exact, rtol=0.03)
    assert np.all(np.asarray(apply_feature_map("performer", q, proj)) > 0)


def test_performer_projection_is_orthogonal_within_blocks():
    proj = performer_projection(8, 8, seed=3)
    directions = proj / np.linalg.norm(proj, axis=1, keepdims=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(8), atol=1e-5)


# ----------------------------------------------------------------------------- three forms


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_parallel_matches_reference(heads, kv_heads):
    phi_q, phi_k, v = random_features((2, 13, heads, 6), (2, 13, kv_heads, 6))
    out = linear_attention_parallel(phi_q, phi_k, v)
    np.testing.assert_allclose(out, linear_reference(phi_q, phi_k, v), **tol())


@pytest.mark.parametrize(
    "steps,chunk_size", [(1, 4), (13, 1), (13, 5), (37, 4), (37, 16), (37, 64), (32, 8)]
)
def test_parallel_equals_chunked(steps, chunk_size):
    phi_q, phi_k, v = random_features((2, steps, 4, 6), (2, steps, 2, 6), seed=steps)
    parallel = linear_attention_parallel(phi_q, phi_k, v)
    chunked, _ = linear_attention_chunked(phi_q, phi_k, v, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, parallel, **tol())


def test_recurrent_equals_parallel_and_states_agree():
    phi_q, phi_k, v = random_features((2, 29, 6, 4), (2, 29, 3, 4), seed=5, width=7)
    parallel = linear_attention_parallel(phi_q, phi_k, v)
    recurrent, (kv_r, z_r) = linear_attention_recurrent(phi_q, phi_k, v)
    _, (kv_c, z_c) = linear_attention_chunked(phi_q, phi_k, v, chunk_size=8)
    np.testing.assert_allclose(recurrent, parallel, **tol())
    assert kv_r.shape == (2, 3, 7, 4) and z_r.shape == (2, 3, 7)  # one state per KV head
    np.testing.assert_allclose(kv_c, kv_r, **tol())
    np.testing.assert_allclose(z_c, z_r, **tol())
    np.testing.assert_allclose(z_r, np.asarray(phi_k).sum(1), rtol=1e-6)


# ----------------------------------------------------------------------------- module


def make(feature_map="elu", form="chunked", num_kv_heads=2, **kw):
    return LinearAttention(model_dim=MODEL_DIM, num_heads=4, num_kv_heads=num_kv_heads,
                           head_dim=4, feature_map=feature_map, form=form, chunk_size=4, **kw)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "taylor", "performer"])
def test_module_forms_agree_with_reference(feature_map):
    module = make(feature_map)
    x = normal(0, (2, 11, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(1), x)
    apply = jitted(module)
    outs = {form: apply(params, x, form=form) for form in ("parallel", "chunked", "recurrent")}
    p = params["params"]
    proj = performer_projection(4, 4) if feature_map == "performer" else None
    phi = lambda name: apply_feature_map(
        feature_map, jnp.einsum("btd,dhe->bthe", x, p[name]["kernel"]), proj)
    v = np.einsum("btd,dhe->bthe", x, p["v_proj"]["kernel"])
    heads = linear_reference(phi("q_proj"), phi("k_proj"), v)
    ref = np.einsum("bthe,hed->btd", heads, np.asarray(p["o_proj"]["kernel"], np.float64))
    for form, out in outs.items():
        np.testing.assert_allclose(out, ref, **tol(), err_msg=form)


@pytest.mark.parametrize(
    "form,num_kv_heads",
    [("parallel", 2), ("chunked", 2), ("recurrent", 2), ("chunked", 4), ("chunked", 1)],
)
def test_prefill_then_decode_matches_full_forward(form, num_kv_heads):
    module = make("elu", form, num_kv_heads)
    x = normal(2, (2, 10, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(3), x)
    full = jitted(module)(params, x, form="parallel")
    prefill = jax.jit(partial(module.apply, method="prefill"))
    decode = jax.jit(partial(module.apply, method="decode"))
    out, state = prefill(params, x[:, :3], module.init_state(2))
    outs = [out]
    for t in range(3, 10):
        y, state = decode(params, x[:, t], state)
        outs.append(y[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, **tol())
    np.testing.assert_array_equal(state.lengths, [10, 10])
    assert state.kv.shape == (2, num_kv_heads, 4, 4)  # constant in context length


def test_padding_mask_equals_truncated_sequence():
    module = make("relu")
    x = normal(4, (1, 9, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(5), x)
    valid = jnp.arange(9)[None] < 6
    padded = jitted(module)(params, x, padding_mask=valid)
    np.testing.assert_allclose(padded[:, :6], jitted(module)(params, x[:, :6]), **tol())


def test_ragged_prefill_state_ignores_padding():
    module = make("elu")
    x = normal(6, (2, 8, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(7), x)
    prefill = jax.jit(partial(module.apply, method="prefill"))
    _, ragged = prefill(params, x, module.init_state(2), jnp.array([8, 5]))
    _, alone = prefill(params, x[1:, :5], module.init_state(1))
    np.testing.assert_allclose(ragged.kv[1], alone.kv[0], **tol())
    np.testing.assert_array_equal(ragged.lengths, [8, 5])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(feature_map="cosine"), r"LinearAttention.feature_map: got 'cosine'; allowed: "
                                     r"'elu', 'relu', 'taylor', 'performer'"),
        (dict(form="fast"), r"LinearAttention.form: got 'fast'; allowed: 'parallel'"),
        (dict(num_kv_heads=3),
         r"LinearAttention.num_kv_heads: got 3; allowed: a divisor of num_heads=4 \(1, 2, 4\)"),
        (dict(chunk_size=0), r"LinearAttention.chunk_size: got 0; allowed: a positive integer"),
    ],
)
def test_bad_config_raises(kwargs, pattern):
    base = dict(model_dim=MODEL_DIM, num_heads=4, num_kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match=pattern):
        LinearAttention(**{**base, **kwargs})


def test_unknown_feature_map_in_function_raises():
    with pytest.raises(ValueError, match=r"apply_feature_map.feature_map: got 'softplus'"):
        apply_feature_map("softplus", jnp.ones(3))


def test_bad_shapes_raise():
    phi_q, phi_k, v = random_features((2, 5, 3, 4), (2, 5, 2, 4))
    with pytest.raises(ValueError, match=r"linear_attention_parallel.num_kv_heads \(phi_k.shape"
                                         r"\[2\]\): got 2; allowed: a divisor of num_heads"):
        parallel_eager(phi_q, phi_k, v)
    with pytest.raises(ValueError, match=r"allowed: one \[B, T\] for all three"):
        chunked_eager(phi_q[:, :4], phi_k, v)


@pytest.mark.parametrize("form", ["parallel", "chunked", "recurrent"])
def test_qk_dim_projects_queries_and_keys_before_the_feature_map(form):
    """Based's layout: q and k projected to qk_dim = 3, Taylor map (f = 1 + 3 + 9), values keep
    head_dim 4; every form against the float64 loop, and a state of f × head_dim per head."""
    module = LinearAttention(model_dim=MODEL_DIM, num_heads=4, num_kv_heads=2, head_dim=4, feature_map="taylor",
                             form=form, chunk_size=4, qk_dim=3)
    x = normal(8, (2, 9, MODEL_DIM))
    params = jax.jit(module.init)(jax.random.PRNGKey(9), x)
    p = params["params"]
    assert p["q_proj"]["kernel"].shape == (MODEL_DIM, 4, 3) and p["k_proj"]["kernel"].shape == (MODEL_DIM, 2, 3)
    assert p["v_proj"]["kernel"].shape == (MODEL_DIM, 2, 4)
    phi = lambda name: apply_feature_map("taylor", np.einsum("btd,dhe->bthe", x, p[name]["kernel"]))
    v = np.einsum("btd,dhe->bthe", x, p["v_proj"]["kernel"])
    ref = np.einsum("bthe,hed->btd", linear_reference(phi("q_proj"), phi("k_proj"), v),
                    np.asarray(p["o_proj"]["kernel"], np.float64))
    np.testing.assert_allclose(jitted(module)(params, x), ref, **tol())
    assert module.feature_width == 1 + 3 + 9 == feature_dim("taylor", 3)
    assert module.init_state(2).kv.shape == (2, 2, 13, 4)


def test_bad_qk_dim_raises():
    with pytest.raises(ValueError, match=r"LinearAttention.qk_dim: got 0; allowed: a positive integer"):
        LinearAttention(model_dim=MODEL_DIM, num_heads=4, num_kv_heads=2, head_dim=4, qk_dim=0)
