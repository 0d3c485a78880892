"""Advantage estimators against plain NumPy loops written independently of the scan code."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purerl.rl import advantages as adv


def over_starts(shape, from_start):
    """out[t, b] = from_start(t, b) for every start step t of every column b."""
    out = np.zeros(shape)
    for t, b in np.ndindex(*shape):
        out[t, b] = from_start(t, b)
    return out


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Double loop: A_t = Σ_k (γλ)^k δ_{t+k}, summing forward until the episode ends."""

    def from_start(t, b):
        total, weight = 0.0, 1.0
        for u in range(t, rewards.shape[0]):
            bootstrap = 0.0 if terminated[u, b] else next_values[u, b]
            total += weight * (rewards[u, b] + gamma * bootstrap - values[u, b])
            if terminated[u, b] or truncated[u, b]:
                break
            weight *= gamma * lam
        return total

    return over_starts(rewards.shape, from_start)


def reference_discounted_returns(rewards, terminated, truncated, gamma):
    def from_start(t, b):
        total, weight = 0.0, 1.0
        for u in range(t, rewards.shape[0]):
            total += weight * rewards[u, b]
            if terminated[u, b] or truncated[u, b]:
                break
            weight *= gamma
        return total

    return over_starts(rewards.shape, from_start)


def reference_n_step(rewards, values, next_values, terminated, truncated, gamma, n):
    def from_start(t, b):
        total, weight = 0.0, 1.0
        stop = min(t + n, rewards.shape[0])
        for u in range(t, stop):
            total += weight * rewards[u, b]
            weight *= gamma
            if terminated[u, b]:
                break
            if truncated[u, b] or u == stop - 1:
                total += weight * next_values[u, b]
                break
        return total

    return over_starts(rewards.shape, from_start)


# Few distinct shapes: each new shape compiles every op of the estimator again, while the values,
# the episode ends and γ, λ vary freely within a shape.
HORIZONS, BATCHES = (1, 2, 5, 12), (1, 3)


@st.composite
def rollouts(draw):
    horizon = draw(st.sampled_from(HORIZONS))
    batch = draw(st.sampled_from(BATCHES))
    floats = st.floats(-5, 5, allow_nan=False, width=32)
    shape = (horizon, batch)
    rewards = draw(hnp.arrays(np.float32, shape, elements=floats))
    values = draw(hnp.arrays(np.float32, shape, elements=floats))
    next_values = draw(hnp.arrays(np.float32, shape, elements=floats))
    terminated = draw(hnp.arrays(np.bool_, shape))
    truncated = draw(hnp.arrays(np.bool_, shape))
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return rewards, values, next_values, terminated, truncated, gamma, lam


@settings(max_examples=60, deadline=None)
@given(rollouts())
def test_gae_matches_numpy_double_loop(data):
    rewards, values, next_values, terminated, truncated, gamma, lam = data
    advantages, targets = adv.gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    expected = reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(targets, expected + values, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(rollouts())
def test_discounted_returns_match_numpy(data):
    rewards, _, _, terminated, truncated, gamma, _ = data
    returns = adv.discounted_returns(rewards, terminated, truncated, gamma)
    expected = reference_discounted_returns(rewards, terminated, truncated, gamma)
    np.testing.assert_allclose(returns, expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(rollouts(), st.integers(1, 5))
def test_n_step_targets_match_numpy(data, n):
    rewards, values, next_values, terminated, truncated, gamma, _ = data
    targets = adv.n_step_targets(rewards, values, next_values, terminated, truncated, gamma, n)
    expected = reference_n_step(rewards, values, next_values, terminated, truncated, gamma, n)
    np.testing.assert_allclose(targets, expected, rtol=1e-4, atol=1e-4)


def test_td_lambda_endpoints():
    rng = np.random.default_rng(0)
    rewards, values, next_values = rng.normal(size=(3, 6, 2)).astype(np.float32)
    terminated = np.zeros((6, 2), bool)
    truncated = np.zeros((6, 2), bool)
    one_step = adv.lambda_returns(rewards, values, next_values, terminated, truncated, 0.9, 0.0)
    np.testing.assert_allclose(one_step, rewards + 0.9 * next_values, rtol=1e-6)
    one_step_n = adv.n_step_targets(rewards, values, next_values, terminated, truncated, 0.9, 1)
    np.testing.assert_allclose(one_step_n, one_step, rtol=1e-6)


def test_truncation_bootstraps_from_final_observation_termination_does_not():
    # One step, reward 1, V(s) = 0, V(final obs) = 10, γ = 0.5.
    reward, value, final_value = np.ones((1, 1)), np.zeros((1, 1)), np.full((1, 1), 10.0)
    no = np.zeros((1, 1), bool)
    yes = np.ones((1, 1), bool)
    truncated_adv, _ = adv.gae(reward, value, final_value, no, yes, 0.5, 0.95)
    terminated_adv, _ = adv.gae(reward, value, final_value, yes, no, 0.5, 0.95)
    assert float(truncated_adv[0, 0]) == pytest.approx(1.0 + 0.5 * 10.0)
    assert float(terminated_adv[0, 0]) == pytest.approx(1.0)


def test_recursion_stops_at_episode_end():
    # Episode ends (truncated) at t=0; the large advantage at t=1 must not leak back.
    rewards = np.array([[0.0], [100.0]], np.float32)
    values = np.zeros((2, 1), np.float32)
    next_values = np.zeros((2, 1), np.float32)
    truncated = np.array([[True], [False]])
    advantages, _ = adv.gae(rewards, values, next_values, np.zeros((2, 1), bool), truncated, 1.0, 1.0)
    assert float(advantages[0, 0]) == 0.0
    assert float(advantages[1, 0]) == 100.0


def test_works_on_any_batch_shape():
    rng = np.random.default_rng(1)
    shape = (5, 2, 3, 4)
    r, v, nv = rng.normal(size=(3,) + shape).astype(np.float32)
    term = rng.random(shape) < 0.2
    trunc = rng.random(shape) < 0.2
    advantages, _ = adv.gae(r, v, nv, term, trunc, 0.99, 0.95)
    flat = adv.gae(*(x.reshape(5, -1) for x in (r, v, nv, term, trunc)), 0.99, 0.95)[0]
    assert advantages.shape == shape
    np.testing.assert_allclose(np.asarray(advantages).reshape(5, -1), flat, rtol=1e-6)


def test_n_step_rejects_non_positive_n():
    z = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="n: must be a positive integer"):
        adv.n_step_targets(z, z, z, z.astype(bool), z.astype(bool), 0.9, 0)


def test_mismatched_shapes_are_rejected_not_broadcast():
    rewards = np.zeros((4, 2), np.float32)
    flags = np.zeros((4, 2), bool)
    with pytest.raises(AssertionError, match="shape"):
        adv.gae(rewards, np.zeros((4, 2, 1), np.float32), rewards, flags, flags, 0.99, 0.95)
    with pytest.raises(AssertionError, match="shape"):
        adv.n_step_targets(rewards, rewards, rewards, flags[:3], flags, 0.99, 2)
