"""The spread and bias statistics of batch gradients (experiments.pg_estimators) against NumPy loops."""

import jax.numpy as jnp
import numpy as np

from experiments import pg_estimators as pg


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_gradient_and_reference_statistics_match_numpy_loops():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=7)
    grads = signal + rng.normal(scale=2.0, size=(5, 7))
    reference = signal + rng.normal(scale=0.1, size=7)
    num = len(grads)
    pairs = [_cos(grads[i], grads[j]) for i in range(num) for j in range(num) if i != j]
    mean = grads.mean(axis=0)
    noise = sum(np.sum((g - mean) ** 2) for g in grads) / (num - 1)
    expected = {
        "cosine": np.mean(pairs),
        "snr": (np.sum(mean**2) - noise / num) / noise,
        "relative_sd": np.sqrt(noise) / np.linalg.norm(mean),
        "ref_cosine": np.mean([_cos(g, reference) for g in grads]),
        "mean_ref_cosine": _cos(mean, reference),
    }
    got = {**pg.gradient_statistics(jnp.asarray(grads, jnp.float32)),
           **pg.reference_statistics(jnp.asarray(grads, jnp.float32), jnp.asarray(reference, jnp.float32))}
    for name, value in expected.items():
        np.testing.assert_allclose(float(got[name]), value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_biased_estimator_is_further_from_the_reference_than_an_unbiased_one():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=20)
    unbiased = truth + rng.normal(scale=1.0, size=(400, 20))
    biased = unbiased + 2.0 * rng.normal(size=20)  # a fixed offset: the mean points elsewhere
    near = float(pg.reference_statistics(jnp.asarray(unbiased), jnp.asarray(truth))["mean_ref_cosine"])
    far = float(pg.reference_statistics(jnp.asarray(biased), jnp.asarray(truth))["mean_ref_cosine"])
    assert near > 0.99 and far < 0.7
