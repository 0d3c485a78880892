"""PPO's clipped surrogate: the case analysis of where its gradient is zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.rl import losses

EPS = 0.2


def surrogate_grad(ratio: float, advantage: float) -> float:
    """d loss / d log π for a single sample with the given probability ratio."""
    old_log_prob = jnp.zeros(1)
    f = lambda lp: losses.clipped_surrogate(lp, old_log_prob, jnp.array([advantage]), EPS)[0]
    return float(jax.grad(f)(jnp.log(jnp.array([ratio])))[0])


def unclipped_grad(ratio: float, advantage: float) -> float:
    # −d(r·A)/d log π = −r·A, independently of the clipping code.
    return -ratio * advantage


@pytest.mark.parametrize("ratio", [1.25, 1.5, 3.0])
def test_positive_advantage_above_band_has_zero_gradient(ratio):
    assert surrogate_grad(ratio, advantage=2.0) == 0.0


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75])
def test_negative_advantage_below_band_has_zero_gradient(ratio):
    assert surrogate_grad(ratio, advantage=-2.0) == 0.0


@pytest.mark.parametrize("ratio", [0.85, 1.0, 1.15])
@pytest.mark.parametrize("advantage", [-1.5, 0.7])
def test_inside_band_gradient_equals_unclipped(ratio, advantage):
    assert surrogate_grad(ratio, advantage) == pytest.approx(unclipped_grad(ratio, advantage), rel=1e-6)


@pytest.mark.parametrize("ratio,advantage", [(1.5, -1.0), (0.5, 1.0)])
def test_pessimistic_side_outside_band_keeps_gradient(ratio, advantage):
    # The min picks the unclipped term when it is worse: gradient still flows.
    assert surrogate_grad(ratio, advantage) == pytest.approx(unclipped_grad(ratio, advantage), rel=1e-6)


def test_diagnostics():
    log_prob = jnp.log(jnp.array([1.0, 1.5, 0.5, 1.1]))
    _, stats = losses.clipped_surrogate(log_prob, jnp.zeros(4), jnp.ones(4), EPS)
    assert float(stats["clip_frac"]) == pytest.approx(0.5)
    ratio = np.array([1.0, 1.5, 0.5, 1.1])
    assert float(stats["approx_kl"]) == pytest.approx(np.mean((ratio - 1) - np.log(ratio)), rel=1e-5)


def test_clipped_value_loss_takes_the_larger_error():
    values, old, target = jnp.array([2.0]), jnp.array([0.0]), jnp.array([3.0])
    # Clipped prediction 0 + clip(2, ±0.5) = 0.5 is further from 3 than 2 is.
    assert float(losses.value_loss(values, target, old, 0.5)) == pytest.approx(0.5 * 2.5**2)
    assert float(losses.value_loss(values, target)) == pytest.approx(0.5 * 1.0)


def test_normalize_and_explained_variance():
    x = jnp.array([1.0, 2.0, 3.0, 6.0])
    z = losses.normalize(x)
    assert float(jnp.mean(z)) == pytest.approx(0.0, abs=1e-6)
    assert float(jnp.std(z)) == pytest.approx(1.0, rel=1e-5)
    assert float(losses.explained_variance(x, x)) == pytest.approx(1.0)
    assert float(losses.explained_variance(jnp.full(4, jnp.mean(x)), x)) == pytest.approx(0.0, abs=1e-6)


def test_masked_explained_variance_matches_numpy_over_the_valid_entries():
    rng = np.random.default_rng(0)
    targets, predictions = rng.normal(3.0, 2.0, (6, 5)), rng.normal(3.0, 2.0, (6, 5))
    mask = rng.random((6, 5)) < 0.6
    garbage = np.where(mask, predictions, 1e6)  # masked-out entries must not count
    valid_t, valid_p = targets[mask], predictions[mask]
    expected = 1.0 - np.var(valid_t - valid_p) / np.var(valid_t)
    got = losses.masked_explained_variance(jnp.asarray(garbage, jnp.float32), jnp.asarray(targets, jnp.float32),
                                           jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
