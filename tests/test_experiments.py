"""The RL experiments: their exact pieces against independent references, and a
smoke run of each (`scale=smoke`) that checks the generated report has the expected tables."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lab
from experiments import tabular_gae as tg


# ---------------------------------------------------------------- report parsing
def tables(report: str) -> dict[str, list[list[str]]]:
    """Every Markdown table of the report under the heading (or the paragraph) just above it."""
    found, title, rows = {}, None, None
    for line in report.splitlines():
        if line.startswith("|"):
            if rows is None:
                rows = []
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows is not None:
            found[title] = rows[2:]  # without the header and the rule
            rows = None
        if line.strip() and not line.startswith("<!--"):
            title = line.strip("#* ").strip()
    if rows is not None:
        found[title] = rows[2:]
    return found


def table_under(report: str, prefix: str) -> list[list[str]]:
    matches = [rows for title, rows in tables(report).items() if title.startswith(prefix)]
    assert matches, f"no table under a heading starting with {prefix!r}"
    return matches[0]


# ---------------------------------------------------------------- exact tabular GAE
def _numpy_gae_moments(P, r, pi, critic, gamma, lam, horizon):
    """Mean and variance of Σ_{l<T} (γλ)^l δ_l from each (s0, a0), by enumerating every path."""
    S, A = r.shape
    kappa = gamma * lam
    mean, var = np.zeros((S, A)), np.zeros((S, A))
    for s0, a0 in itertools.product(range(S), range(A)):
        values, probs = [], []
        # path: s1, a1, ..., s_{T-1}, a_{T-1}, s_T
        for path in itertools.product(*([range(S), range(A)] * (horizon - 1) + [range(S)])):
            states = [s0, *path[0::2]]
            actions = [a0, *path[1::2]]
            p, total = 1.0, 0.0
            for t in range(horizon):
                s, a, s_next = states[t], actions[t], states[t + 1]
                p *= P[s, a, s_next] * (pi[s_next, actions[t + 1]] if t + 1 < horizon else 1.0)
                total += kappa**t * (r[s, a] + gamma * critic[s_next] - critic[s])
            values.append(total)
            probs.append(p)
        values, probs = np.asarray(values), np.asarray(probs)
        mean[s0, a0] = probs @ values
        var[s0, a0] = probs @ (values - mean[s0, a0]) ** 2
    return mean, var


def _small_mdp():
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(2), size=(2, 2))
    r = rng.normal(size=(2, 2))
    pi = rng.dirichlet(np.ones(2), size=2)
    return P, r, pi


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_gae_moments_match_path_enumeration(lam):
    P, r, pi = _small_mdp()
    critic = np.array([0.3, -1.1])
    reference_mean, reference_var = _numpy_gae_moments(P, r, pi, critic, 0.9, lam, horizon=3)
    with jax.enable_x64(True):
        mdp = tg.MDP(*(jnp.asarray(x) for x in (P, r, pi)))
        mean, var = tg.gae_moments(mdp, jnp.asarray(r), jnp.asarray(critic), 0.9, lam, horizon=3)
    np.testing.assert_allclose(mean, reference_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, reference_var, rtol=1e-10, atol=1e-12)


def test_truth_against_numpy_and_the_long_horizon_limit():
    P, r, pi = _small_mdp()
    P_pi, r_pi = np.einsum("sa,sat->st", pi, P), (pi * r).sum(1)
    with jax.enable_x64(True):
        mdp = tg.MDP(*(jnp.asarray(x) for x in (P, r, pi)))
        t = tg.truth(mdp, 0.9)
        near_one = tg.truth(mdp, 1 - 1e-7)
        # The infinite-horizon closed form is the limit of long rollouts; with the exact
        # critic, TD(0) is unbiased for A_γ.
        m_inf, v_inf = tg.gae_moments(mdp, t.rewards, t.values, 0.9, 0.7)
        m_long, v_long = tg.gae_moments(mdp, t.rewards, t.values, 0.9, 0.7, horizon=400)
        m_td, _ = tg.gae_moments(mdp, t.rewards, t.values, 0.9, 0.0)
    V = np.linalg.solve(np.eye(2) - 0.9 * P_pi, r_pi)
    A = r + 0.9 * P @ V - V[:, None]
    np.testing.assert_allclose(t.advantage, A, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose((pi * np.asarray(t.long_horizon)).sum(1), 0.0, atol=1e-12)  # E_π[A] = 0 per state
    np.testing.assert_allclose(near_one.advantage, near_one.long_horizon, atol=1e-5)
    np.testing.assert_allclose(m_inf, m_long, atol=1e-12)
    np.testing.assert_allclose(v_inf, v_long, atol=1e-12)
    np.testing.assert_allclose(m_td, t.advantage, atol=1e-12)


def test_sampled_gae_agrees_with_the_closed_form():
    P, r, pi = _small_mdp()
    mdp = tg.MDP(*(jnp.asarray(x, jnp.float32) for x in (P, r, pi)))
    critic = jnp.asarray([0.5, -0.2])
    rollouts = tg.sample_rollouts(mdp, horizon=20, num_samples=4000, key=jax.random.PRNGKey(0))
    samples = np.asarray(tg.sampled_gae(rollouts, jnp.asarray(r, jnp.float32), critic, 0.9, 0.8), np.float64)
    with jax.enable_x64(True):
        mdp64 = tg.MDP(*(jnp.asarray(x) for x in (P, r, pi)))
        mean, var = (np.asarray(x) for x in tg.gae_moments(mdp64, jnp.asarray(r), jnp.asarray(critic, jnp.float64),
                                                           0.9, 0.8, horizon=20))
    z = (samples.mean(-1) - mean) / np.sqrt(var / samples.shape[-1])
    assert np.all(np.abs(z) < 4.5), z  # 4 pairs: |z| < 4.5 fails by chance with p ≈ 3e-5
    np.testing.assert_allclose(samples.var(-1), var, rtol=0.1)


# ---------------------------------------------------------------- update_kl (A2C, PPO)
def test_policy_kl_is_the_exact_mean_categorical_kl(highest_precision):
    from conftest import tol

    from purerl.algos import a2c
    from purerl.nets import ActorCritic
    from purerl.rl import on_policy
    from purerl.rl.agent import build_env_and_network, init_params

    env, env_params, network = build_env_and_network(a2c.Config(num_envs=2, num_steps=4, total_timesteps=8))
    old, new = (init_params(network, env, env_params, jax.random.PRNGKey(i)) for i in (0, 1))
    obs = jax.random.normal(jax.random.PRNGKey(2), (6, 4))

    def log_probs(params):
        logits = np.asarray(network.apply(params, obs, method=ActorCritic.policy).logits, np.float64)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    lp_old, lp_new = log_probs(old), log_probs(new)
    per_state = (np.exp(lp_old) * (lp_old - lp_new)).sum(-1)
    np.testing.assert_allclose(on_policy.policy_kl(network, old, new, obs), per_state.mean(), **tol())
    mask = jnp.asarray([1, 1, 0, 1, 0, 0], jnp.float32)
    np.testing.assert_allclose(on_policy.policy_kl(network, old, new, obs, mask), per_state[[0, 1, 3]].mean(), **tol())


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_update_kl_vanishes_with_the_learning_rate(algo):
    from purerl import sweep
    from purerl.algos import a2c, ppo

    module, config = {
        "a2c": (a2c, a2c.Config(num_envs=2, num_steps=8, total_timesteps=48, actor_hidden=(8,), critic_hidden=(8,))),
        "ppo": (ppo, ppo.Config(num_envs=2, num_steps=8, total_timesteps=48, num_minibatches=2, actor_hidden=(8,),
                                critic_hidden=(8,))),
    }[algo]
    result = sweep.run(module.make_train(config), sweep.grid(module.Hyper(), lr=[1e-9, 3e-2]), seeds=1)
    update_kl = result.metrics["update_kl"][:, 0]  # [lr, update]
    assert update_kl.shape == (2, config.num_updates)
    # Float32 round-off of the KL is ~1e-8; a step of lr 3e-2 moves the policy by far more.
    assert np.all(update_kl[0] < 1e-6) and np.all(update_kl[1] > 1e-4), update_kl


# ---------------------------------------------------------------- command line
def test_unknown_scale_and_key_are_one_line_errors(capsys):
    from experiments import gae_lambda_gamma

    assert gae_lambda_gamma.main(["scale=huge"]) == 2
    assert "scale: got 'huge'; allowed: ci, full, paper, smoke" in capsys.readouterr().err
    assert gae_lambda_gamma.main(["scale=smoke", "tabular.num_mdpz=3"]) == 2
    assert "tabular.num_mdpz: unknown key" in capsys.readouterr().err
    with pytest.raises(lab.ExperimentError, match="expected key=value"):
        lab.load_plan("gae_lambda_gamma", ["smoke"])


# ---------------------------------------------------------------- smoke runs
def _smoke(module, tmp_path):
    assert module.main(["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]) == 0
    return (tmp_path / "report" / f"{module.NAME}.md").read_text()


@pytest.mark.slow
def test_gae_lambda_gamma_smoke_and_rebuild_from_kept_results(tmp_path):
    import pandas as pd

    from experiments import gae_lambda_gamma

    report = _smoke(gae_lambda_gamma, tmp_path)
    plan = lab.load_plan("gae_lambda_gamma", ["scale=smoke"])
    spec = plan.tabular
    cells = len(spec.gammas) * len(spec.lambdas)
    headline = table_under(report, "Random MDPs, critic noise")
    assert [(row[0], row[1]) for row in headline] == [
        (f"{g:g}", f"{v:g}") for g in spec.gammas for v in spec.lambdas
    ]
    assert len(table_under(report, "Chain, critic noise")) == cells
    assert len(table_under(report, "The λ with the lowest mean MSE")) == 2 * len(spec.noises) * len(spec.gammas)
    assert len(table_under(report, "Sampled rollouts")) == plan.check.num_mdps * len(plan.check.gammas) * len(
        plan.check.lambdas
    )
    per_lambda = table_under(report, "Headline: PPO, CartPole-v1: per λ, 2 paired seeds")
    assert [r[0] for r in per_lambda] == ["0", "0.95", "1"]
    shares = [float(r[2].rstrip("%")) for r in per_lambda]
    assert abs(sum(shares) - 100) <= 2  # each resample has one best λ (rounded percentages)
    comparisons = table_under(report, "4 comparisons")  # 2 metrics × (3 λ − the best)
    assert all(r[-1].endswith("higher") or r[-1] == "not resolved at 2 seeds" for r in comparisons)
    assert "**Headline.** PPO on CartPole-v1, 2 paired seeds" in report
    assert re.search(r"^## Answer", report, re.M) and "python -m experiments.gae_lambda_gamma scale=smoke" in report
    kept = tmp_path / "report" / "gae_lambda_gamma"
    for png in ("errors_vs_lambda_random", "mse_long_chain", "ppo_lambda", "ppo_curves", "critic_link"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    # The PPO job recorded the critic diagnostics at every update.
    curves = pd.read_parquet(tmp_path / "out" / "cartpole" / "results.parquet")
    assert np.isfinite(curves[list(gae_lambda_gamma.DIAGNOSTICS)].to_numpy()).all()
    assert (curves.value_error_mc >= 0).all() and (curves.advantage_variance >= 0).all()

    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert gae_lambda_gamma.main(argv) == 0
    assert (tmp_path / "rebuilt" / "gae_lambda_gamma.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing computed


def test_argmax_frequency_against_a_hand_computed_case():
    from experiments import gae_lambda_gamma

    # Column 2 is the best in every seed: the best in every resample.
    matrix = np.array([[1.0, 2.0, 5.0], [0.0, 1.0, 3.0], [2.0, 0.0, 4.0]])
    np.testing.assert_array_equal(gae_lambda_gamma.argmax_frequency(matrix, resamples=200), [0.0, 0.0, 1.0])
    # Two seeds that disagree: column 1 is the best only in resamples that draw seed 1 twice (1/4);
    # seed 0 twice (means 4 vs 1) or one of each (2 vs 1.5) make column 0 the best (3/4).
    tie = np.array([[4.0, 1.0], [0.0, 2.0]])
    freq = gae_lambda_gamma.argmax_frequency(tie, resamples=20000, seed=1)
    np.testing.assert_allclose(freq, [0.75, 0.25], atol=0.015)
    assert freq.sum() == pytest.approx(1.0)


def test_critic_unexplained_against_a_numpy_second_moment():
    """E(G − V̂(s))² / Var G from the second-moment Bellman equation of the return, in NumPy."""
    P, r, pi = _small_mdp()
    gamma, critic_shift = 0.9, np.array([0.4, -0.7])
    with jax.enable_x64(True):
        mdp = tg.MDP(*(jnp.asarray(x) for x in (P, r, pi)))
        t = tg.truth(mdp, gamma)
        critic = t.values + jnp.asarray(critic_shift)
        got = float(tg.critic_unexplained(mdp, t, critic, gamma))
        rewards, weights, critic = (np.asarray(x) for x in (t.rewards, t.weights, critic))
    S, A = r.shape
    P_tilde = np.einsum("sat,tb->satb", P, pi).reshape(S * A, S * A)
    flat = rewards.reshape(-1)
    Q = np.linalg.solve(np.eye(S * A) - gamma * P_tilde, flat)
    # M = E[G²]: G = r + γ G', so M = r² + 2γ r E[G'] + γ² E[M'].
    M = np.linalg.solve(np.eye(S * A) - gamma**2 * P_tilde, flat**2 + 2 * gamma * flat * (P_tilde @ Q))
    w = weights.reshape(-1)
    v_hat = np.repeat(critic, A)
    want = (w @ (M - 2 * v_hat * Q + v_hat**2)) / (w @ M - (w @ Q) ** 2)
    assert got == pytest.approx(want, rel=1e-9)
    # An exact critic leaves only the return's own noise: E Var(G | s, a) + E Var_a Q over Var G, below 1.
    with jax.enable_x64(True):
        exact = float(tg.critic_unexplained(mdp, t, t.values, gamma))
    assert 0 < exact < got


@pytest.mark.slow
def test_baselines_smoke_and_rebuild_from_kept_results(tmp_path):
    import pandas as pd

    from experiments import baselines

    report = _smoke(baselines, tmp_path)
    plan = lab.load_plan("baselines", ["scale=smoke"])
    methods = table_under(report, "Headline: each method at its tuned learning rate")
    assert [(r[0], r[1]) for r in methods] == [("cartpole", spec.label) for spec in plan.methods.values()]
    # The critic's explained variance is reported for the critic only.
    assert [r[5] == "—" for r in methods] == [m != "critic" for m in plan.methods]
    comparisons = table_under(report, "2 comparisons")
    assert [r[1] for r in comparisons] == ["critic, 2x2 steps − no baseline", "group G=2 − no baseline"]
    assert all(r[-1].endswith("higher") or r[-1] == "not resolved at 3 seeds" for r in comparisons)
    estimators = table_under(report, "Each checkpoint is PPO's final actor")
    assert len(estimators) == 2 * len(baselines.pg.ESTIMATORS)  # 2 checkpoints (the smoke PPO grid)
    assert len(table_under(report, "Bias tests")) == 2 * (len(baselines.pg.ESTIMATORS) - 1)
    assert "python -m experiments.baselines scale=smoke" in report and "**Headline.**" in report
    assert "## Discussion" in report
    runs = pd.read_csv(tmp_path / "report" / "baselines" / "results" / "runs.csv")
    # Every method on the same seeds: 3 tuning seeds from 1000 and 3 fresh ones from 0, per lr.
    for _, part in runs.groupby("method"):
        assert sorted(part.seed.unique()) == [0, 1, 2, 1000, 1001, 1002]
        assert set(part[part.seed >= 1000].role) == {"tuning"} and set(part[part.seed < 1000].role) == {"fresh"}
    kept = tmp_path / "report" / "baselines"
    for png in ("learning_curves", "lr_sensitivity", "explained_variance", "group_size", "gradients"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert baselines.main(argv) == 0
    assert (tmp_path / "rebuilt" / "baselines.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing trained


def test_baselines_tuning_and_paired_comparisons_against_hand_computed_values():
    import pandas as pd

    from experiments import baselines

    plan = lab.load_plan("baselines", ["scale=smoke"])
    rows = []
    for seed in [*range(1000, 1006), *range(6)]:
        role = "tuning" if seed >= 1000 else "fresh"
        for method, lr, auc in (("none", 0.003, 10.0), ("none", 0.03, 20.0), ("critic", 0.003, 30.0),
                                ("critic", 0.03, 5.0), ("group_2", 0.003, 1.0), ("group_2", 0.03, 2.0)):
            shift = seed % 6 + (0.5 * (seed % 2) if method == "group_2" else 0.0)
            rows.append({"env": "cartpole", "method": method, "lr": lr, "seed": seed, "role": role,
                         "auc": auc + shift, "final_return": auc, "explained_variance": np.nan})
    runs = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # pairing is by seed, not by row order
    picks = baselines.tuned(plan, runs).set_index("method")
    # The lr with the higher IQM AUC on the tuning seeds, and it wins every resample (constant gap).
    assert picks.lr.to_dict() == {"none": 0.03, "critic": 0.003, "group_2": 0.03}
    assert (picks.share == 1.0).all()
    comp = baselines.comparisons(plan, runs, picks.reset_index()).set_index("comparison")
    np.testing.assert_allclose(comp.loc["critic, 2x2 steps − no baseline", "delta"][0], 10.0)
    np.testing.assert_allclose(comp.loc["group G=2 − no baseline", "delta"][0], 2.0 - 20.0 + 0.25)
    assert comp.loc["critic, 2x2 steps − no baseline", "verdict"] == "critic, 2x2 steps higher"
    assert comp.loc["group G=2 − no baseline", "verdict"] == "no baseline higher"
    assert (comp.seeds == 6).all()


def test_baselines_every_lr_is_picked_as_often_as_it_wins_the_resamples():
    import pandas as pd

    from analysis.aggregate import iqm
    from experiments import baselines

    # Two lrs whose tuning seeds interleave: the share is the bootstrap frequency of the argmax,
    # checked against a NumPy loop with the same resamples.
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 8), rng.normal(1.2, 1.0, 8)
    runs = pd.DataFrame([{"lr": lr, "seed": s, "role": "tuning", "auc": v}
                         for lr, values in ((0.01, a), (0.1, b)) for s, v in enumerate(values)])
    best, share, score = baselines.pick_lr(runs, resamples=500, seed=7)
    index = np.random.default_rng(7).integers(0, 8, (500, 8))
    wins = np.mean([iqm(b[i]) > iqm(a[i]) for i in index])
    assert best == (0.1 if iqm(b) > iqm(a) else 0.01)
    np.testing.assert_allclose(share, wins if best == 0.1 else 1 - wins)
    np.testing.assert_allclose(score.to_numpy(), [iqm(a), iqm(b)])


@pytest.mark.slow
def test_step_size_control_smoke_and_rebuild_from_kept_results(tmp_path):
    import pandas as pd

    from experiments import step_size_control as ssc

    report = _smoke(ssc, tmp_path)
    rows = table_under(report, "Headline: per method and step size")
    assert [(r[0], r[1]) for r in rows] == [
        ("A2C", "lr = 0.001"), ("A2C", "lr = 0.03"), ("PPO", "ε = 0.1"), ("PPO", "ε = 0.3"),
        ("TRPO", "δ = 0.01"), ("TRPO", "δ = 0.1"),
    ]
    assert len(table_under(report, "15 tests")) == 15  # 6 cells vs control, 3 trends, 6 correlations
    assert "**Headline.** A2C at lr = 0.03" in report and "## Discussion" in report
    # Every update of the smoke runs is measured (update_eval_every = 1), both policies on the same episodes.
    updates = pd.read_csv(tmp_path / "report" / "step_size_control" / "results" / "updates.csv")
    assert len(updates) == 3 * 2 * 2 * 4  # methods × step sizes × seeds × updates
    assert (updates[["before", "after", "repeat"]] >= 1).all().all()
    kept = tmp_path / "report" / "step_size_control"
    for png in ("shares", "delta_vs_kl", "learning_curves"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert ssc.main(argv) == 0
    assert (tmp_path / "rebuilt" / "step_size_control.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing trained


def test_step_size_control_per_run_statistics_against_a_loop_over_updates():
    import pandas as pd
    from scipy.stats import spearmanr

    from experiments import step_size_control as ssc

    rng = np.random.default_rng(0)
    rows = []
    for method, knob in (("A2C", 0.01), ("PPO", 0.2)):
        for seed in range(3):
            for update in range(0, 40, 2):
                before = rng.integers(10, 200)
                rows.append({"method": method, "knob": knob, "seed": seed, "update": update, "env_steps": update,
                             "kl": rng.exponential(1e-3), "train_return": 0.0, "before": before,
                             "after": before + rng.normal(0, 20), "repeat": before + rng.normal(0, 10)})
    updates = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # per run, whatever the row order
    runs = ssc.per_run(updates).set_index(["method", "knob", "seed"])
    for (method, knob, seed), run in pd.DataFrame(rows).groupby(["method", "knob", "seed"]):
        control = sorted(abs(r - b) for r, b in zip(run.repeat, run.before))
        # 90th percentile by linear interpolation between order statistics (numpy's default).
        position = 0.9 * (len(control) - 1)
        low = int(position)
        floor = control[low] + (position - low) * (control[low + 1] - control[low])
        got = runs.loc[(method, knob, seed)]
        np.testing.assert_allclose(got.floor, floor)
        deltas = [a - b for a, b in zip(run.after, run.before)]
        assert got.destructive == sum(d < -floor for d in deltas) / len(deltas)
        assert got.improving == sum(d > floor for d in deltas) / len(deltas)
        assert got.control_below == sum(r - b < -floor for r, b in zip(run.repeat, run.before)) / len(run)
        np.testing.assert_allclose(got.mean_delta, np.mean(deltas))
        np.testing.assert_allclose(got.kl_delta_rho, spearmanr(run.kl, deltas)[0])
    # Paired over seeds: a constant per-seed difference is resolved; the best setting in every resample.
    comp = ssc.comparisons(runs.reset_index().assign(control_below=lambda r: r.destructive - 0.1))
    row = comp[comp.comparison == "lr = 0.01: destructive − control"].iloc[0]
    np.testing.assert_allclose(row["diff"], (0.1, 0.1, 0.1), atol=1e-12)
    assert row.verdict == "more than the control"
    finals = pd.DataFrame({"method": "PPO", "knob": [0.1, 0.2] * 4, "seed": np.repeat(range(4), 2),
                           "final_return": [1.0, 2.0] * 4})
    assert ssc.best_share(finals, "PPO").to_dict() == {0.1: 0.0, 0.2: 1.0}


@pytest.mark.slow
def test_stale_ppo_smoke_its_diagnostics_and_rebuild_from_kept_results(tmp_path):
    import pandas as pd

    from experiments import stale_ppo

    report = _smoke(stale_ppo, tmp_path)
    plan = lab.load_plan("stale_ppo", ["scale=smoke"])
    rows = table_under(report, "Headline: final return and diagnostics")
    # K = 0 once (every arm is plain PPO), then the three stale arms and the control per K > 0.
    assert [(r[1], r[3]) for r in rows] == [("0", "PPO (K = 0)"), ("2", "behaviour"), ("2", "naive"),
                                            ("2", "V-trace"), ("2", "fresh control")]
    comparisons = table_under(report, "5 comparisons")
    assert [r[3] for r in comparisons] == [c[0] for c in stale_ppo.COMPARISONS]
    assert all(r[-1].endswith("higher") or r[-1] == "not resolved at 2 seeds" for r in comparisons)
    assert "python -m experiments.stale_ppo scale=smoke" in report and "**Headline.**" in report
    assert "## Discussion" in report

    curves = pd.read_parquet(tmp_path / "out" / "cartpole__stale_k2" / "results.parquet")
    overrides = dict(o.split("=", 1) for o in plan.envs.cartpole)
    num_steps, num_envs = int(overrides["algo.config.num_steps"]), int(overrides["algo.config.num_envs"])
    # The buffer fills one rollout per update, up to K = 2.
    for _, run in curves.groupby(["setting", "seed"]):
        np.testing.assert_array_equal(run.stale_samples, np.minimum(run["update"], 2) * num_steps * num_envs)
    # The naive ratio starts every sample at 1: nothing is clipped before the first step.
    assert (curves[(curves.naive_ratio == 1)].zero_gradient_frac == 0).all()
    assert (curves[curves["update"] > 0].behaviour_kl > 0).all()
    # The control: no stale sample, K + 1 times the envs, the same number of updates.
    control = pd.read_parquet(tmp_path / "out" / "cartpole__fresh_k2" / "results.parquet")
    assert (control.stale_samples == 0).all() and (control.behaviour_kl == 0).all()
    assert (control.num_envs == 3 * num_envs).all() and control["update"].max() == curves["update"].max()

    kept = tmp_path / "report" / "stale_ppo"
    for png in ("final_return", "diagnostics", "learning_curves"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert stale_ppo.main(argv) == 0
    assert (tmp_path / "rebuilt" / "stale_ppo.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing trained


def test_stale_ppo_paired_comparisons_against_a_hand_computed_difference():
    import pandas as pd

    from experiments import stale_ppo

    plan = lab.load_plan("stale_ppo", ["scale=smoke"])
    rows = []
    for seed in range(6):
        rows.append({"env": "cartpole", "K": 0, "arm": stale_ppo.FRESH, "clip_eps": 0.2, "seed": seed,
                     "final_return": 10.0 + seed})
        for arm, shift in (("behaviour", 5.0), ("naive", 5.0 + (seed % 2)), ("V-trace", -3.0),
                           (stale_ppo.FRESH, 4.0)):
            rows.append({"env": "cartpole", "K": 2, "arm": arm, "clip_eps": 0.2, "seed": seed,
                         "final_return": 10.0 + seed + shift})
    seeds = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # pairing is by seed, not by row order
    comp = stale_ppo.comparisons(plan, seeds).set_index("comparison")
    expected = {"stale − K=0": 5.0, "control − K=0": 4.0, "stale − control": 1.0, "naive − behaviour": 0.5,
                "V-trace − behaviour": -8.0}
    for label, value in expected.items():
        np.testing.assert_allclose(comp.loc[label, "diff"][0], value)
    # Constant paired differences have a zero-width CI: resolved, in the right direction.
    assert comp.loc["stale − control", "verdict"] == "stale higher"
    assert comp.loc["V-trace − behaviour", "verdict"] == "behaviour higher"
    assert comp.loc["naive − behaviour", "verdict"] in ("naive higher", "not resolved at 6 seeds")


def test_lai_robbins_constant_matches_scipy_kl():
    from omegaconf import OmegaConf
    from scipy.special import rel_entr
    from scipy.stats import entropy

    from experiments import exploration_bandits as eb

    for p, q in [(0.4, 0.5), (0.48, 0.5), (0.0, 0.3), (0.9, 0.95)]:
        np.testing.assert_allclose(eb.bernoulli_kl(p, q), entropy([p, 1 - p], [q, 1 - q]), rtol=1e-12, atol=1e-15)
    bern = OmegaConf.create({"env": "KArmedBernoulliBandit", "num_arms": 10, "best_mean": 0.5, "gap": 0.1})
    expected = 9 * 0.1 / (rel_entr(0.4, 0.5) + rel_entr(0.6, 0.5))
    np.testing.assert_allclose(eb.lai_robbins_constant(bern), expected, rtol=1e-12)
    gauss = OmegaConf.create({"env": "KArmedGaussianBandit", "num_arms": 3, "best_mean": 0.0, "gap": 0.5,
                              "noise_std": 2.0})
    np.testing.assert_allclose(eb.lai_robbins_constant(gauss), 2 * 2 * 2.0**2 / 0.5, rtol=1e-12)  # Σ 2σ²/Δ


def _toy_bandit_results():
    """Results rows of two fake jobs on the smoke instance (T = 400, blocks of 50): seed 0 pays Δ
    per pull throughout (locked), seed 1 pays Δ per pull until t = 100, then nothing."""
    import pandas as pd

    steps = np.arange(50, 401, 50)
    rows = []
    for job, strategy in (("bernoulli_k2__ucb1", "ucb1"), ("bernoulli_k2__kl_ucb", "kl_ucb")):
        for seed in (0, 1):
            regret = 0.1 * (steps if seed == 0 else np.minimum(steps, 100))
            optimal = np.where(steps <= 100, 0.0, 1.0) if seed else np.zeros(steps.size)
            rows.append(pd.DataFrame({"job": job, "setting": 0, "seed": seed, "env_steps": steps, "regret": regret,
                                      "optimal_arm_fraction": optimal, "strategy": strategy, "ucb_c": 2.0,
                                      "klucb_c": 0.0, "epsilon": 0.1, "epsilon_decay": 0.0, "epsilon_c": 5.0,
                                      "linucb_alpha": 1.0}))
    return pd.concat(rows, ignore_index=True)


def test_exploration_bandits_per_seed_numbers_and_classification():
    """R(T/4), R(T/2), R(T) and the late worse-arm share read off the curves; ρ = 2 for the locked
    seed and 0 for the one that stopped; the Wilson interval matches its closed form."""
    from experiments import exploration_bandits as eb

    plan = lab.load_plan("exploration_bandits", ["scale=smoke"])
    seeds, curves = eb.per_seed(plan, _toy_bandit_results())
    ucb = seeds[seeds.label == "UCB1 c=2"].set_index("seed")
    assert list(ucb.regret_quarter) == pytest.approx([10.0, 10.0]) and list(ucb.regret_T) == pytest.approx([40.0, 10.0])
    assert list(ucb.late_suboptimal) == [1.0, 0.0]
    assert set(seeds.label) == {"UCB1 c=2", "KL-UCB"} and set(curves.label) == {"UCB1 c=2", "KL-UCB"}
    locked = ucb.regret_T - ucb.regret_half, ucb.regret_half - ucb.regret_quarter
    assert eb.ratio_ci(locked[0][:1], locked[1][:1])[0] == pytest.approx(2.0)  # linear: 2
    runs = eb.settings(plan, seeds).set_index("label")
    assert runs.loc["UCB1 c=2", "locked"][:3] == (1, 2, 0.5)
    assert runs.loc["UCB1 c=2", "minus_best"][0] == pytest.approx(0.0)  # identical curves: tied with the best
    k, n, z = 3, 40, 1.959963984540054  # Wilson score interval
    centre, half = (k + z**2 / 2) / (n + z**2), z * np.sqrt(k * (n - k) / n + z**2 / 4) / (n + z**2)
    np.testing.assert_allclose(eb.share_ci(np.arange(n) < k)[3:], [centre - half, centre + half], rtol=1e-9)
    assert eb.verdict((-1.0, -2.0, -0.5), "A lower", "B lower", 8) == "A lower"
    assert eb.verdict((1.0, -0.1, 2.0), "A lower", "B lower", 8) == "not resolved at 8 seeds"


@pytest.mark.slow
def test_exploration_bandits_smoke_and_rebuild_from_kept_results(tmp_path):
    from experiments import exploration_bandits

    report = _smoke(exploration_bandits, tmp_path)
    rows = table_under(report, "Headline: mean regret at T")
    assert [r[0] for r in rows] == ["ε-greedy ε=0.1", "ε-greedy ε_t=1/(1+0.01t)", "ε_n-greedy c=5, d=Δ", "UCB1 c=1",
                                    "UCB1 c=2", "KL-UCB", "Thompson", "Lai–Robbins C·ln T"]
    assert rows[-1][1] == lab.fmt(exploration_bandits.lai_robbins_constant(
        lab.load_plan("exploration_bandits", ["scale=smoke"]).instances.bernoulli_k2) * np.log(400))
    assert all(re.search(r", locked \d/4$", r[1]) for r in rows[:-1])
    detail = table_under(report, "Bernoulli K=2, Δ=0.1")
    assert len(detail) == 7 and {r[3] for r in detail} <= {"linear", "sub-linear", "not resolved"}
    assert [r[0] for r in table_under(report, "Linear contextual bandit")] == ["LinUCB α=1", "ε-greedy ε=0.1"]
    comparisons = table_under(report, "4 comparisons chosen before the run")
    assert [(r[1], r[2]) for r in comparisons] == [("ε_n-greedy c=5, d=Δ", "ε-greedy ε_t=1/(1+0.01t)"),
                                                  ("KL-UCB", "UCB1 c=2"), ("KL-UCB", "Thompson"),
                                                  ("LinUCB α=1", "ε-greedy ε=0.1")]
    assert all(r[-1].endswith("lower") or r[-1] == "not resolved at 4 seeds" for r in comparisons)
    assert "python -m experiments.exploration_bandits scale=smoke" in report and re.search(r"^## Answer", report, re.M)
    assert "**Headline.**" in report and "## Discussion" in report
    kept = tmp_path / "report" / "exploration_bandits"
    for png in ("regret_curves", "regret_vs_log_t", "classification", "contextual"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert exploration_bandits.main(argv) == 0
    assert (tmp_path / "rebuilt" / "exploration_bandits.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing trained


@pytest.mark.slow
def test_on_vs_off_policy_smoke_and_rebuild_from_kept_results(tmp_path):
    import pandas as pd

    from experiments import on_vs_off_policy

    report = _smoke(on_vs_off_policy, tmp_path)
    rows = table_under(report, "Headline: greedy return")
    assert [(r[0], r[1], r[2]) for r in rows] == [("CartPole-v1 (256, 15)", "PPO", "on-policy"),
                                                  ("CartPole-v1 (256, 15)", "DQN", "off-policy")]
    comparisons = table_under(report, "3 comparisons")
    assert [(r[1], r[2]) for r in comparisons] == [("PPO", "DQN")] * 3
    assert all(r[-1].endswith("better") or r[-1] == "not resolved at 2 seeds" for r in comparisons)
    assert "python -m experiments.on_vs_off_policy scale=smoke" in report and "## Discussion" in report
    kept = tmp_path / "report" / "on_vs_off_policy"
    for png in ("greedy_vs_env_steps", "greedy_vs_seconds", "final_per_seed", "wall_time"):
        assert (kept / f"{png}.png").stat().st_size > 10_000
    # Measured, not interpolated: one timed segment per evaluation after the first, each > 0 s,
    # and the curve's training seconds are their running sums.
    evals = pd.read_csv(kept / "results" / "evals.csv")
    segments = pd.read_csv(kept / "results" / "segments.csv")
    for job, part in segments.groupby("job"):
        assert (part.seconds > 0).all()
        times = evals[(evals.job == job) & (evals.seed == 0)].sort_values("point").train_seconds.to_numpy()
        np.testing.assert_allclose(times, np.concatenate([[0.0], np.cumsum(part.seconds)]))
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert on_vs_off_policy.main(argv) == 0
    assert (tmp_path / "rebuilt" / "on_vs_off_policy.md").read_text() == report
    assert not (tmp_path / "nothing").exists()  # nothing trained


def test_on_vs_off_policy_per_seed_measures_against_hand_computed_values():
    import pandas as pd

    from experiments import on_vs_off_policy as oo

    jobs = pd.DataFrame([{"job": j, "env": "E", "algo": a, "method": a.upper(), "family": oo.FAMILY[a],
                          "budget": 40, "threshold": 5.0} for j, a in (("e_ppo", "ppo"), ("e_dqn", "dqn"))])
    curves = {("e_ppo", 0): [0, 6, 2, 7, 3], ("e_ppo", 1): [0, 1, 2, 3, 4],
              ("e_dqn", 0): [0, 1, 5, 5, 5], ("e_dqn", 1): [0, 1, 2, 3, 8]}
    evals = pd.DataFrame([{"job": j, "seed": s, "point": p, "env_steps": 10 * p, "train_seconds": 0.5 * p,
                           "greedy_return": float(v)} for (j, s), values in curves.items()
                          for p, v in enumerate(values)])
    seeds = oo.per_seed(evals, jobs).set_index(["job", "seed"])
    assert seeds.loc[("e_ppo", 0), "steps_to"] == 10 and seeds.loc[("e_ppo", 0), "seconds_to"] == 0.5
    assert np.isinf(seeds.loc[("e_ppo", 1), "steps_to"])  # never reaches 5
    assert seeds.loc[("e_dqn", 1), "steps_to"] == 40
    # Late drawdown: evaluations at >= 20 env steps: [2, 7, 3] falls 4 from 7; [5, 5, 5] never falls.
    assert seeds.loc[("e_ppo", 0), "drawdown"] == 4 and seeds.loc[("e_dqn", 0), "drawdown"] == 0
    # Mean over the budget: trapezoid of [0, 6, 2, 7, 3] over 0..40, divided by 40.
    np.testing.assert_allclose(seeds.loc[("e_ppo", 0), "area"], np.trapezoid([0, 6, 2, 7, 3], dx=10) / 40)
    comp = oo.comparisons(seeds.reset_index()).set_index("measure")
    np.testing.assert_allclose(comp.loc["final greedy return", "diff"][0], ((3 - 5) + (4 - 8)) / 2)
    np.testing.assert_allclose(comp.loc["late drawdown of the greedy return", "diff"][0], ((4 - 0) + (0 - 0)) / 2)
    shares = oo.best_share(seeds.reset_index())
    np.testing.assert_allclose(shares.share.sum(), 1.0)
    assert shares.set_index("method").share["DQN"] == 1.0  # DQN's final return is higher on every seed


EXPERIMENTS = ("gae_lambda_gamma", "baselines", "step_size_control", "stale_ppo", "exploration_bandits",
               "on_vs_off_policy")


# exploration_bandits (~40 jobs over its scales: instances × strategies) and on_vs_off_policy
# (~25): about 1 s per job to compose on the shared CPU.
SLOW_TO_BUILD = ("exploration_bandits", "on_vs_off_policy")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_BUILD else n
                                  for n in EXPERIMENTS])
def test_every_scale_of_every_experiment_builds(name):
    """Each scale's training jobs compose and validate (build_plan: no compilation), so the
    documented `scale=paper` presets are runnable as written (smoke: by the smoke tests)."""
    import importlib

    from omegaconf import DictConfig

    from purerl.cli.train import build_plan

    with_full = {"exploration_bandits", "stale_ppo", "on_vs_off_policy", "gae_lambda_gamma", "step_size_control",
                 "baselines"}
    assert lab.scales(name) == (["ci", "full", "paper", "smoke"] if name in with_full
                                else ["ci", "paper", "smoke"])
    module = importlib.import_module(f"experiments.{name}")
    # Every smoke job is composed and trained by the experiment's smoke test.
    for scale in [scale for scale in lab.scales(name) if scale != "smoke"]:
        plan = lab.load_plan(name, [f"scale={scale}"])
        jobs = {**plan.get("jobs", {}), **plan.get("envs", {})}
        if hasattr(module, "jobs"):  # jobs built from the plan (e.g. instances × strategies)
            jobs.update(module.jobs(plan))
        if "ppo" in plan and "overrides" in plan.ppo:
            jobs["ppo"] = DictConfig({"overrides": plan.ppo.overrides, "preset": False})
        assert jobs, (name, scale)
        for job, spec in jobs.items():
            overrides, preset = lab.job_spec(spec)
            built = build_plan(lab.compose_job(plan, overrides, preset=preset))
            assert len(built.seeds) == plan.seeds, (name, scale, job)
            if scale == "paper":
                assert plan.seeds >= 32
            if scale == "full":
                assert plan.seeds >= 16


def test_index_repeats_each_reports_command_and_headline_table():
    from experiments import index

    for name in EXPERIMENTS:
        text = (index.REPORTS / f"{name}.md").read_text()
        section = index.section(name, text)
        assert f"python -m experiments.{name}" in section
        headline = text.split(lab.HEADLINE_MARK, 1)[1].strip().splitlines()
        table = [line for line in headline[: next(i for i, s in enumerate(headline) if not s.startswith("|"))]]
        assert "\n".join(table) in section and len(table) > 2
