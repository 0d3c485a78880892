"""Off-policy corrections (purerl.rl.off_policy_corrections) against plain NumPy loops written from
the papers' sum forms, independently of the scan code, on a tiny trajectory with a termination, a
truncation and a rollout end mid-episode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.rl import advantages as adv
from purerl.rl import off_policy_corrections as opc

T, N = 7, 3


@pytest.fixture(scope="module")
def trajectory():
    """[T, N]: env 0 terminates at t = 2, env 1 is truncated at t = 4 (V(final obs) differs from
    V(s_5)), env 2 runs past the rollout's end; log ρ spread around 0 so truncation bites."""
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    next_values = np.concatenate([values[1:], rng.normal(size=(1, N))]).astype(np.float32)
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[2, 0] = True
    truncated[4, 1] = True
    next_values[2, 0] = 123.0  # masked by the termination: must not matter
    next_values[4, 1] = rng.normal()  # V(final observation), not V(s_5)
    log_rhos = rng.normal(scale=0.8, size=(T, N)).astype(np.float32)
    return dict(rewards=rewards, values=values, next_values=next_values, terminated=terminated,
                truncated=truncated, log_rhos=log_rhos)


def reference_vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam, rho_bar, c_bar):
    """v_s = V(x_s) + Σ_{t=s}^{end} γ^{t−s} (Π_{i=s}^{t−1} c_i) ρ_t δ_t with c_i = λ min(c̄, ρ_i),
    ρ_t = min(ρ̄, ρ_t), δ_t = r_t + γ V(x'_t) − V(x_t) (no bootstrap after a termination), the sum
    ending at the episode's or the rollout's last step; and the policy-gradient advantage
    ρ_s (r_s + γ q_{s+1} − V(x_s)), q_{s+1} = λ v_{s+1} + (1 − λ) V(x_{s+1}) inside the episode and
    the rollout, else the bootstrap V(x'_s) (0 after a termination)."""
    ratio = np.exp(log_rhos.astype(np.float64))
    rho, c = np.minimum(rho_bar, ratio), lam * np.minimum(c_bar, ratio)
    targets = np.zeros((T, N))
    pg = np.zeros((T, N))
    def delta(t, b):
        bootstrap = 0.0 if terminated[t, b] else next_values[t, b]
        return rewards[t, b] + gamma * bootstrap - values[t, b]

    for b in range(N):
        for s in range(T):
            total, trace = 0.0, 1.0
            for t in range(s, T):
                total += gamma ** (t - s) * trace * rho[t, b] * delta(t, b)
                if terminated[t, b] or truncated[t, b]:
                    break
                trace *= c[t, b]
            targets[s, b] = values[s, b] + total
        for s in range(T):
            if terminated[s, b]:
                q = 0.0
            elif truncated[s, b] or s == T - 1:
                q = next_values[s, b]
            else:
                q = lam * targets[s + 1, b] + (1 - lam) * values[s + 1, b]
            pg[s, b] = rho[s, b] * (rewards[s, b] + gamma * q - values[s, b])
    return targets, pg


CASES = [  # (gamma, lam, rho_bar, c_bar)
    (0.9, 1.0, 1.0, 1.0),  # the paper's default
    (0.99, 0.95, 1.0, 1.0),
    (0.8, 0.7, 2.0, 0.5),  # c̄ < 1 < ρ̄
    (0.9, 0.5, 0.6, 1.5),
]


@pytest.mark.parametrize("gamma,lam,rho_bar,c_bar", CASES)
def test_vtrace_matches_the_numpy_loop(trajectory, gamma, lam, rho_bar, c_bar):
    out = opc.vtrace(**trajectory, gamma=gamma, lam=lam, rho_bar=rho_bar, c_bar=c_bar)
    targets, pg = reference_vtrace(**trajectory, gamma=gamma, lam=lam, rho_bar=rho_bar, c_bar=c_bar)
    np.testing.assert_allclose(out.targets, targets, **tol())
    np.testing.assert_allclose(out.advantages, pg, **tol())
    np.testing.assert_allclose(out.clipped_rhos, np.minimum(rho_bar, np.exp(trajectory["log_rhos"])), **tol())


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
def test_on_policy_vtrace_is_gae(trajectory, lam):
    """ρ = 1: V-trace's targets are the λ-returns and its advantages GAE(λ)."""
    on_policy = {**trajectory, "log_rhos": np.zeros((T, N), np.float32)}
    out = opc.vtrace(**on_policy, gamma=0.9, lam=lam)
    args = [trajectory[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    gae, returns = adv.gae(*args, 0.9, lam)
    np.testing.assert_allclose(out.targets, returns, **tol())
    np.testing.assert_allclose(out.advantages, gae, **tol())


def test_on_policy_vtrace_with_lambda_1_is_the_n_step_return_to_the_rollout_end(trajectory):
    """The paper's on-policy limit: v_s = Σ_t γ^{t−s} r_t + γ^n V(x_{s+n}), to the episode's or the
    rollout's end (n-step targets with n ≥ T)."""
    on_policy = {**trajectory, "log_rhos": np.zeros((T, N), np.float32)}
    args = [trajectory[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    np.testing.assert_allclose(opc.vtrace(**on_policy, gamma=0.9).targets, adv.n_step_targets(*args, 0.9, T),
                               **tol())


def test_truncated_weights_do_not_overflow():
    w = opc.truncated_importance_weights(jnp.asarray([-1.0, 0.0, 0.5, 200.0]), 1.5)
    np.testing.assert_allclose(w, [np.exp(-1.0), 1.0, 1.5, 1.5], **tol())


def correct_all(trajectory, log_prob, gamma=0.9, lam=0.8, rho_bar=1.2, c_bar=1.0):
    """`correct` for every code at once, the code traced (vmapped)."""
    behaviour = log_prob - trajectory["log_rhos"]
    steps = adv.Trajectory(*(trajectory[k] for k in adv.Trajectory._fields))
    codes = jnp.arange(len(opc.CORRECTIONS), dtype=jnp.float32)
    fn = jax.vmap(lambda code: opc.correct(code, log_prob, behaviour, steps, gamma, lam, rho_bar, c_bar))
    return jax.device_get(fn(codes)), behaviour


def test_each_correction_is_its_closed_form(trajectory):
    log_prob = np.random.default_rng(1).normal(size=(T, N)).astype(np.float32) - 1.0
    out, behaviour = correct_all(trajectory, log_prob)
    args = [trajectory[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    gae, returns = (np.asarray(x) for x in adv.gae(*args, 0.9, 0.8))
    weights = np.minimum(1.2, np.exp(trajectory["log_rhos"]))
    targets, pg = reference_vtrace(**trajectory, gamma=0.9, lam=0.8, rho_bar=1.2, c_bar=1.0)
    expected = {  # (advantages, targets, weights, reference log-prob)
        "none": (gae, returns, 1.0, behaviour),
        "truncated_is": (weights * gae, returns, 1.0, log_prob),
        "vtrace": (pg, targets, 1.0, log_prob),
        "decoupled": (gae, returns, weights, log_prob),
    }
    for i, name in enumerate(opc.CORRECTIONS):
        for got, want in zip(out, expected[name], strict=True):
            np.testing.assert_allclose(got[i], np.broadcast_to(want, (T, N)), **tol(), err_msg=name)


def test_on_policy_every_correction_is_none(trajectory):
    """ρ = 1 (and ρ̄, c̄ ≥ 1): all four give `none`'s numbers, the reference log-probs included."""
    on_policy = {**trajectory, "log_rhos": np.zeros((T, N), np.float32)}
    out, _ = correct_all(on_policy, np.full((T, N), -0.7, np.float32), rho_bar=1.0, c_bar=1.3)
    for field in out:
        for i in range(1, len(opc.CORRECTIONS)):
            np.testing.assert_allclose(field[i], field[0], **tol(), err_msg=opc.CORRECTIONS[i])


def test_correction_code_names_the_choices():
    assert [opc.correction_code(n) for n in opc.CORRECTIONS] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"correction: got 'retrace'; allowed: 'none', 'truncated_is', 'vtrace'"):
        opc.correction_code("retrace")
