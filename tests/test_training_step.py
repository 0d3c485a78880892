"""The one optimiser step and the one supervised fitting loop against hand-written references:
a least-squares fit whose gradient is known in closed form, and plain SGD (no optax state)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tol

from purerl.rl.training import adam_clipped, fit, gradient_step


def loss_fn(w, batch):
    x, y = batch
    residual = x @ w - y
    return 0.5 * jnp.mean(residual**2), {"residual_max": jnp.max(jnp.abs(residual))}


def closed_form_gradient(w, x, y):
    return x.T @ (x @ w - y) / len(y)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.normal(size=16).astype(np.float32)
    return x, y, rng.normal(size=3).astype(np.float32)


def test_gradient_step_is_one_sgd_step_and_reports_loss_aux_and_grad_norm(data, highest_precision):
    x, y, w = data
    optimizer = optax.sgd(0.1)
    new_w, _, stats = gradient_step(optimizer, loss_fn, jnp.asarray(w), optimizer.init(w), (x, y))
    g = closed_form_gradient(w.astype(np.float64), x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(new_w, w - 0.1 * g, **tol())
    np.testing.assert_allclose(stats.loss, 0.5 * np.mean((x @ w - y) ** 2), **tol())
    np.testing.assert_allclose(stats.aux["residual_max"], np.max(np.abs(x @ w - y)), **tol())
    np.testing.assert_allclose(stats.grad_norm, np.linalg.norm(g), **tol())


def test_gradient_step_clips_before_adam(data, highest_precision):
    x, y, w = data
    optimizer = adam_clipped(0.01, max_grad_norm=1e-3)
    new_w, _, stats = gradient_step(optimizer, loss_fn, jnp.asarray(w), optimizer.init(w), (x, y))
    assert float(stats.grad_norm) > 1e-3  # reported before clipping
    # Adam's bias-corrected first step is lr·ĝ/(|ĝ| + ε) with ĝ the clipped gradient; ε = 1e-5 is
    # not small beside |ĝ| ~ 1e-4, so the step depends on the clipped scale.
    g = closed_form_gradient(w.astype(np.float64), x.astype(np.float64), y.astype(np.float64))
    clipped = g * 1e-3 / np.linalg.norm(g)
    np.testing.assert_allclose(new_w, w - 0.01 * clipped / (np.abs(clipped) + 1e-5), **tol())


def test_fit_equals_a_python_loop_of_steps_on_fresh_batches(data, highest_precision):
    x, y, w = data
    optimizer = optax.sgd(0.05)
    keys = jax.random.split(jax.random.PRNGKey(1), 5)

    def make_batch(key):  # a fresh random half of the data per step
        rows = jax.random.permutation(key, len(y))[:8]
        return jnp.asarray(x)[rows], jnp.asarray(y)[rows]

    seen = []
    params, _, stats = fit(optimizer, loss_fn, jnp.asarray(w), optimizer.init(w), keys, make_batch,
                           on_step=lambda i: seen.append(int(i)))
    jax.effects_barrier()
    reference = w.astype(np.float64)
    losses = []
    for key in keys:
        bx, by = (np.asarray(a, np.float64) for a in make_batch(key))
        losses.append(0.5 * np.mean((bx @ reference - by) ** 2))
        reference = reference - 0.05 * closed_form_gradient(reference, bx, by)
    np.testing.assert_allclose(params, reference, **tol())
    np.testing.assert_allclose(stats.loss, losses, **tol())
    assert stats.grad_norm.shape == (5,) and sorted(seen) == list(range(5))
