"""Trust-region building blocks against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from purerl.nets import ActorCritic
from purerl.rl import trust_region as tr


def random_spd(key, n):
    m = jax.random.normal(key, (n, n))
    return m @ m.T + 0.5 * jnp.eye(n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_gradient_matches_dense_solve(seed, highest_precision):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    n = 12
    a = random_spd(k1, n)
    b = jax.random.normal(k2, (n,))
    # n iterations are exact in exact arithmetic; a few extra absorb float32 round-off.
    solve = jax.jit(lambda a, b: tr.conjugate_gradient(lambda v: a @ v, b, 3 * n))
    x, residual_sq = solve(a, b)
    expected = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    np.testing.assert_allclose(x, expected, rtol=1e-3, atol=1e-4)
    assert float(residual_sq) < 1e-6 * float(b @ b)


def test_conjugate_gradient_few_iterations_reduce_residual_and_zero_rhs_is_safe():
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))
    a = random_spd(k1, 30)
    b = jax.random.normal(k2, (30,))
    residuals = [
        float(jnp.linalg.norm(b - a @ jax.jit(tr.conjugate_gradient, static_argnums=(0, 2))(
            lambda v: a @ v, b, k)[0]))
        for k in (1, 3, 10)
    ]
    assert residuals[0] > residuals[1] > residuals[2]
    # A zero right-hand side (zero policy gradient) must give x = 0, not 0/0 = NaN.
    x, _ = tr.conjugate_gradient(lambda v: a @ v, jnp.zeros(30), 10)
    np.testing.assert_array_equal(x, np.zeros(30))


def tiny_policy(discrete):
    net = ActorCritic(action_dim=3, discrete=discrete, actor_hidden=(5,), critic_hidden=(2,))
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    params = net.init(jax.random.PRNGKey(2), obs)
    # Make the policy non-uniform and the log-std non-zero, so F is not degenerate.
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params
    )
    theta, unravel = ravel_pytree(params["params"]["actor"])

    def policy_at(vector):
        actor = unravel(vector)
        full = {"params": {**params["params"], "actor": actor}}
        return net.apply(full, obs, method=ActorCritic.policy)

    return net, obs, theta, policy_at


@pytest.mark.parametrize("discrete", [True, False])
def test_fisher_vector_product_equals_explicit_fisher(discrete, highest_precision):
    _, obs, theta, policy_at = tiny_policy(discrete)
    old = policy_at(theta)

    def mean_kl(vector):
        return jnp.mean(old.kl_divergence(policy_at(vector)))

    # Explicit Fisher E_s[Cov of the score] built from first derivatives only.
    if discrete:
        log_probs = lambda v: jax.nn.log_softmax(policy_at(v).logits)  # noqa: E731
        scores = np.asarray(jax.jit(jax.jacobian(log_probs))(theta), np.float64)  # [B, A, P]
        probs = np.exp(np.asarray(log_probs(theta), np.float64))
        fisher = np.einsum("ba,bap,baq->pq", probs, scores, scores) / obs.shape[0]
    else:
        # Diagonal Gaussian: F = J_μᵀ diag(σ⁻²) J_μ + 2 J_logσᵀ J_logσ (per state).
        mean_jac = np.asarray(jax.jit(jax.jacobian(lambda v: policy_at(v).loc))(theta), np.float64)
        log_std_jac = np.asarray(
            jax.jit(jax.jacobian(lambda v: jnp.log(policy_at(v).scale_diag)))(theta), np.float64
        )
        var = np.asarray(policy_at(theta).scale_diag, np.float64) ** 2
        fisher = (
            np.einsum("bdp,bd,bdq->pq", mean_jac, 1.0 / var, mean_jac)
            + 2.0 * np.einsum("bdp,bdq->pq", log_std_jac, log_std_jac)
        ) / obs.shape[0]
    hessian = np.asarray(jax.jit(jax.hessian(mean_kl))(theta), np.float64)
    np.testing.assert_allclose(hessian, fisher, atol=2e-5)  # the two references agree

    damping = 0.1
    fvp = jax.jit(tr.fisher_vector_product(mean_kl, theta, damping))
    for seed in range(3):
        v = jax.random.normal(jax.random.PRNGKey(10 + seed), theta.shape)
        expected = fisher @ np.asarray(v, np.float64) + damping * np.asarray(v, np.float64)
        np.testing.assert_allclose(fvp(v), expected, rtol=1e-4, atol=1e-5)


def test_step_scale_formula_and_guard():
    beta, ok = tr.step_scale(jnp.float32(0.5), 0.01)
    np.testing.assert_allclose(beta, np.sqrt(2 * 0.01 / 0.5), rtol=1e-6)
    assert bool(ok)
    for bad in (0.0, -1.0, np.nan, np.inf):
        beta, ok = tr.step_scale(jnp.float32(bad), 0.01)
        assert float(beta) == 0.0 and not bool(ok)


def quadratic_problem(theta0, direction_sign):
    """improvement(θ) = sign·Σ(θ − θ₀), KL(θ) = ½‖θ − θ₀‖²; the full step is ones."""

    def evaluate(theta):
        delta = theta - theta0
        return direction_sign * jnp.sum(delta), 0.5 * jnp.sum(delta**2)

    return evaluate


def test_line_search_accepts_largest_step_within_kl():
    theta0 = jnp.zeros(2)
    step = jnp.ones(2)
    # KL(c^k·1) = c^{2k}; with δ = 0.2 the largest admissible c^k = 0.8^k is 0.8^4 = 0.4096
    # (0.8^3 = 0.512 gives KL 0.262 > 0.2).
    result = tr.backtracking_line_search(quadratic_problem(theta0, 1.0), theta0, step, 0.2, 0.8, 10)
    assert bool(result.success)
    np.testing.assert_allclose(result.step_fraction, 0.8**4, rtol=1e-6)
    np.testing.assert_allclose(result.params, 0.8**4 * np.ones(2), rtol=1e-6)
    np.testing.assert_allclose(result.kl, 0.8**8, rtol=1e-5)
    np.testing.assert_allclose(result.improvement, 2 * 0.8**4, rtol=1e-6)


def test_failing_line_search_keeps_parameters():
    theta0 = jnp.array([0.3, -1.2])
    step = jnp.ones(2)
    # The surrogate decreases along the step: no candidate may be accepted.
    result = tr.backtracking_line_search(quadratic_problem(theta0, -1.0), theta0, step, 10.0, 0.8, 10)
    assert not bool(result.success)
    np.testing.assert_array_equal(result.params, theta0)
    assert float(result.step_fraction) == 0.0
    # KL too tight for every candidate (smallest step 0.8^2 = 0.64 has KL > δ): unchanged too.
    result = tr.backtracking_line_search(quadratic_problem(theta0, 1.0), theta0, step, 1e-3, 0.8, 3)
    assert not bool(result.success)
    np.testing.assert_array_equal(result.params, theta0)
