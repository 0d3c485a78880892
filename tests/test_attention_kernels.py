"""The attention kernels (`purerl.attention.kernels`) against explicit NumPy loops and closed
forms, and the FLOP share of attention's n² term (`purerl.attention.cost`) against a count of
the layer's matmuls."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import LMConfig, linear_attention_parallel
from purerl.attention.cost import layer_flops, quadratic_share
from purerl.attention.kernels import kernel_cosine, log_kernel, retrieval_weights

pytestmark = pytest.mark.usefixtures("highest_precision")


def _phi(kind: str, x: np.ndarray) -> np.ndarray:
    """The feature maps written out per vector, in float64."""
    x = np.asarray(x, np.float64)
    if kind == "elu":
        return np.where(x > 0, x + 1.0, np.exp(x))
    x = x * len(x) ** -0.25
    return np.concatenate([[1.0], x, np.outer(x, x).ravel() / np.sqrt(2.0)])


def _keys(seed: int, shape=(6, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("kind", ["elu", "taylor"])
def test_feature_map_cosine_matches_a_numpy_loop(kind):
    keys = _keys(0)
    cos = np.asarray(kernel_cosine(kind, jnp.asarray(keys)))
    for i in range(len(keys)):
        for j in range(len(keys)):
            a, b = _phi(kind, keys[i]), _phi(kind, keys[j])
            np.testing.assert_allclose(cos[i, j], a @ b / np.sqrt((a @ a) * (b @ b)), **tol())


def test_softmax_cosine_is_a_gaussian_of_the_key_distance():
    """exp(a·b/√d) / √(exp(|a|²/√d) exp(|b|²/√d)) = exp(−|a − b|² / (2√d))."""
    keys = 2.0 * _keys(1)
    d = keys.shape[-1]
    distance = ((keys[:, None] - keys[None]) ** 2).sum(-1)
    np.testing.assert_allclose(kernel_cosine("softmax", jnp.asarray(keys)), np.exp(-distance / (2 * np.sqrt(d))),
                               **tol())


def test_positive_features_cannot_make_keys_orthogonal():
    """elu+1 features are all positive: even keys pointing opposite ways keep a cosine well above
    0; under softmax's kernel the same keys, scaled apart, have a cosine that goes to 0."""
    keys = np.array([[3.0, 0, 0, 0], [-3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, -3.0, 0, 0]], np.float32)
    elu = np.asarray(kernel_cosine("elu", jnp.asarray(keys)))
    soft = np.asarray(kernel_cosine("softmax", jnp.asarray(keys)))
    off = ~np.eye(4, dtype=bool)
    assert elu[off].min() > 0.3
    assert soft[off].max() < 0.2
    assert np.asarray(kernel_cosine("softmax", jnp.asarray(4 * keys)))[off].max() < 1e-3


def test_elu_retrieval_weights_are_what_linear_attention_reads_out():
    """With one-hot values, the last query's output of linear attention (which sees every key) is
    exactly its row of normalised weights."""
    q, k = _keys(2, (7, 4)), _keys(3, (7, 4))
    weights = np.asarray(retrieval_weights("elu", jnp.asarray(q), jnp.asarray(k)))
    phi = lambda x: np.asarray([_phi("elu", row) for row in x], np.float32)[None, :, None]
    out = linear_attention_parallel(jnp.asarray(phi(q)), jnp.asarray(phi(k)), jnp.eye(7)[None, :, None], eps=0.0)
    np.testing.assert_allclose(weights[-1], np.asarray(out)[0, -1, 0], **tol())
    np.testing.assert_allclose(weights.sum(-1), 1.0, **tol())


def test_softmax_retrieval_weights_and_mask():
    q, k = _keys(4, (3, 4)), _keys(5, (5, 4))
    logits = q.astype(np.float64) @ k.T.astype(np.float64) / 2.0  # √d = 2
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(retrieval_weights("softmax", jnp.asarray(q), jnp.asarray(k)), expected, **tol())
    np.testing.assert_allclose(log_kernel("softmax", jnp.asarray(q), jnp.asarray(k)), logits, **tol())
    mask = np.array([True, True, False, True, False])
    masked = np.asarray(retrieval_weights("softmax", jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask)))
    assert np.all(masked[:, ~mask] == 0)
    np.testing.assert_allclose(masked[:, mask], expected[:, mask] / expected[:, mask].sum(-1, keepdims=True), **tol())


def test_unknown_kernel_raises():
    with pytest.raises(ValueError, match=r"log_kernel.kind: got 'relu'; allowed: 'softmax', 'elu', 'taylor'"):
        log_kernel("relu", jnp.ones((2, 3)), jnp.ones((2, 3)))


def _counted_flops(n: int, d: int, r: int, causal: bool) -> dict[str, float]:
    """2·m·k·p per matmul [m, k] @ [k, p] of one layer, listed one by one."""
    mm = lambda m, k, p: 2.0 * m * k * p
    projections = sum(mm(n, d, d) for _ in ("q", "k", "v", "o"))
    mlp = mm(n, d, r * d) + mm(n, r * d, d)
    attention = mm(n, d, n) + mm(n, n, d)  # QKᵀ then PV, summed over heads: d = heads × head_dim
    return {"projections": projections, "mlp": mlp, "attention_n2": attention / (2 if causal else 1)}


@pytest.mark.parametrize("n, d, r, causal", [(128, 64, 4, False), (4096, 1024, 4, True), (100, 48, 2, False)])
def test_layer_flops_count_the_layers_matmuls(n, d, r, causal):
    assert layer_flops(n, d, r, causal) == pytest.approx(_counted_flops(n, d, r, causal), rel=1e-12)


def test_quadratic_share_is_half_at_six_d_model():
    for d in (256, 1024, 4096):
        assert quadratic_share(6 * d, d) == pytest.approx(0.5)
        assert quadratic_share(12 * d, d, causal=True) == pytest.approx(0.5)
        assert quadratic_share(3 * d, d) < 0.5 < quadratic_share(9 * d, d)
        assert quadratic_share(2 * d, d) == pytest.approx(2 / (2 + 6))


def test_qk_dim_is_linear_attention_only():
    with pytest.raises(ValueError, match=r"LMConfig.qk_dim: got 4 with attention='softmax'"):
        LMConfig(attention="softmax", qk_dim=4)
