"""GAE: λ versus γ. `python -m experiments.gae_lambda_gamma [scale=ci|paper]`

(a) Exact, no networks (experiments.tabular_gae): bias², variance and MSE of GAE(γ, λ)
    against the γ-discounted advantage and against the long-horizon advantage, on random
    tabular MDPs and a chain, for a critic with controlled error; checked by Monte Carlo.
(b) Learning: PPO over the same λ × γ grid (one compiled program per env) on CartPole-v1
    and Acrobot-v1; heatmaps of the final return (IQM, 95% bootstrap CI).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab
from experiments import tabular_gae as tg

NAME = "gae_lambda_gamma"
METRICS = ("bias2_gamma", "variance", "mse_gamma", "bias2_long", "mse_long", "raw_bias2_gamma", "horizon_bias2")
FAMILIES = {"random": "random MDPs", "chain": "chain"}
TARGETS = ("gamma", "long")
# Estimates averaged over a batch: bias stays, variance shrinks as 1 / n (independent samples).
BATCH = 100
FLOOR = 1e-6  # plots only: floor of the log axis


# ---------------------------------------------------------------- (a) exact tabular part
def tabular_table(spec: DictConfig) -> pd.DataFrame:
    """One row per MDP family × MDP × γ × λ × noise × critic-noise draw."""
    key = jax.random.PRNGKey(spec.seed)
    mdp_key, z_key = jax.random.split(key)
    random_mdps = jax.vmap(lambda k: tg.random_mdp(k, spec.num_states, spec.num_actions, spec.concentration))(
        jax.random.split(mdp_key, spec.num_mdps)
    )
    chain = jax.tree.map(lambda x: x[None], tg.chain_mdp(spec.chain_states, spec.chain_p_right))
    grid = [np.asarray(spec[k], np.float64) for k in ("gammas", "lambdas", "noises")]
    frames = []
    for family, mdps in (("random", random_mdps), ("chain", chain)):
        num_mdps, num_states = mdps.rewards.shape[:2]
        z = jax.random.normal(jax.random.fold_in(z_key, len(frames)), (num_mdps, spec.draws, num_states))
        out = tg.error_grid(mdps, *grid, z)
        index = pd.MultiIndex.from_product(
            [range(num_mdps), *grid, range(spec.draws)], names=["mdp", "gamma", "lambda", "noise", "draw"]
        )
        frames.append(pd.DataFrame({k: v.reshape(-1) for k, v in out.items()}, index=index)
                      .reset_index().assign(family=family))
    return pd.concat(frames, ignore_index=True)


def monte_carlo_table(spec: DictConfig, check: DictConfig) -> pd.DataFrame:
    """Sampled GAE estimates (purerl.rl.advantages.gae on rollouts of `horizon` steps)
    against the closed form for the same horizon: one row per MDP × γ × λ."""
    rows = []
    keys = jax.random.split(jax.random.PRNGKey(spec.seed + 1), check.num_mdps)
    for i, key in enumerate(keys):
        mdp_key, z_key, sample_key = jax.random.split(key, 3)
        mdp = tg.random_mdp(mdp_key, spec.num_states, spec.num_actions, spec.concentration)
        z = jax.random.normal(z_key, (spec.num_states,))
        rollouts = tg.sample_rollouts(mdp, check.horizon, check.samples, sample_key)
        for gamma in check.gammas:
            with jax.enable_x64(True):
                mdp64 = tg.as_float64(mdp)
                t = tg.truth(mdp64, gamma)
                sd = np.sqrt(np.cov(np.asarray(t.values), aweights=np.asarray(t.weights.sum(-1)), bias=True))
                critic = t.values + check.noise * sd * jnp.asarray(z, jnp.float64)
                exact = {lam: tg.gae_moments(mdp64, t.rewards, critic, gamma, lam, check.horizon)
                         for lam in check.lambdas}
                weights = np.asarray(t.weights)
            for lam in check.lambdas:
                samples = np.asarray(tg.sampled_gae(
                    rollouts, jnp.asarray(t.rewards, jnp.float32), jnp.asarray(critic, jnp.float32), gamma, lam
                ), np.float64)
                mean, variance = (np.asarray(x) for x in exact[lam])
                standard_error = np.sqrt(variance / check.samples)
                rows.append({
                    "mdp": i, "gamma": gamma, "lambda": lam,
                    "exact_variance": float(np.sum(weights * variance)),
                    "sampled_variance": float(np.sum(weights * samples.var(-1))),
                    "max_abs_z_mean": float(np.max(np.abs(samples.mean(-1) - mean) / standard_error)),
                    "pairs": int(mean.size),
                })
    return pd.DataFrame(rows)


def summarise_tabular(table: pd.DataFrame) -> pd.DataFrame:
    """Per family × γ × λ × noise: each metric's mean over instances with a 95% bootstrap CI
    (instances: MDPs for the random family, averaged over their draws; draws for the chain).
    Adds `mse_*_batch`: the MSE of the mean of BATCH independent estimates, bias² + variance / BATCH."""
    table = table.assign(**{f"mse_{t}_batch": table[f"bias2_{t}"] + table["variance"] / BATCH for t in TARGETS})
    metrics = [*METRICS, *(f"mse_{t}_batch" for t in TARGETS)]
    rows = []
    for (family, gamma, lam, noise), group in table.groupby(["family", "gamma", "lambda", "noise"]):
        per_instance = group.groupby("mdp")[metrics].mean() if family == "random" else group[metrics]
        row = {"family": family, "gamma": gamma, "lambda": lam, "noise": noise}
        for metric in metrics:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = lab.bootstrap_ci(per_instance[metric].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def tabular_markdown(summary: pd.DataFrame, family: str, noise: float) -> str:
    part = summary[(summary.family == family) & np.isclose(summary.noise, noise)].sort_values(["gamma", "lambda"])
    columns = {
        "bias2_gamma": "bias² vs A_γ", "bias2_long": "bias² vs A_long", "variance": "variance",
        "mse_long": "MSE vs A_long", "mse_long_batch": f"MSE vs A_long, mean of {BATCH}",
    }
    cells = {"γ": [f"{g:g}" for g in part.gamma], "λ": [f"{v:g}" for v in part["lambda"]]}
    for metric, header in columns.items():
        cells[header] = [lab.fmt_ci(r[metric], r[f"{metric}_low"], r[f"{metric}_high"]) for _, r in part.iterrows()]
    return lab.markdown_table(pd.DataFrame(cells))


def best_cells(summary: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """The row with the smallest `metric` in each group of `by`."""
    return summary.loc[summary.groupby(by)[metric].idxmin()]


def best_lambda_markdown(summary: pd.DataFrame) -> str:
    """Per family × noise × γ: the λ with the smallest MSE, per target, for one estimate and
    for the mean of BATCH."""
    rows = []
    for (family, noise, gamma), group in summary.groupby(["family", "noise", "gamma"]):
        row = {"family": FAMILIES[family], "critic noise": f"{noise:g}", "γ": f"{gamma:g}",
               "horizon bias² of A_γ": lab.fmt(group["horizon_bias2"].iloc[0])}
        for metric, label in (("mse_gamma", "A_γ, n = 1"), ("mse_long", "A_long, n = 1"),
                              ("mse_long_batch", f"A_long, n = {BATCH}")):
            best = group.loc[group[metric].idxmin()]
            row[f"best λ ({label})"] = f"{best['lambda']:g} ({lab.fmt(best[metric], 2)})"
        rows.append(row)
    return lab.markdown_table(pd.DataFrame(rows))


def plot_errors_vs_lambda(summary: pd.DataFrame, family: str, noise: float):
    part = summary[(summary.family == family) & np.isclose(summary.noise, noise)]
    gammas = sorted(part.gamma.unique())
    fig, axes = plt.subplots(1, len(gammas), figsize=(4.4 * len(gammas), 4.2), sharey=True, layout="constrained")
    styles = [("bias2_gamma", "bias² vs A_γ", "C0", "-", 2.0), ("bias2_long", "bias² vs A_long", "C4", "--", 1.5),
              ("variance", "variance", "C1", "-", 3.5), ("mse_long", "MSE vs A_long (one estimate)", "C2", "--", 1.5),
              ("mse_long_batch", f"MSE vs A_long, mean of {BATCH}", "C3", "-", 1.5)]
    for ax, gamma in zip(np.atleast_1d(axes), gammas):
        rows = part[part.gamma == gamma].sort_values("lambda")
        x = np.arange(len(rows))
        for metric, label, colour, style, width in styles:
            # Bias² that is zero up to round-off (1e-30) would stretch the log axis: floor it.
            values = np.maximum(rows[metric].to_numpy(), FLOOR)
            ax.plot(x, values, style, color=colour, lw=width, marker="o", markersize=3, label=label)
            ax.fill_between(x, np.maximum(rows[f"{metric}_low"], FLOOR), np.maximum(rows[f"{metric}_high"], FLOOR),
                            color=colour, alpha=0.15)
        ax.set_xticks(x, [f"{v:g}" for v in rows["lambda"]])
        ax.set_yscale("log")
        ax.set_xlabel("λ")
        ax.set_title(f"γ = {gamma:g}", fontsize="medium")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"error / mean square of A_long\n(zero is drawn at {FLOOR:g})")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(styles), fontsize="small")
    fig.suptitle(f"GAE(γ, λ) errors, {FAMILIES[family]}, critic noise {noise:g}·sd(V_γ) "
                 f"(mean, 95% bootstrap CI)", fontsize="medium")
    return fig


def plot_mse_heatmaps(summary: pd.DataFrame, family: str, target: str):
    """log10 MSE over λ × γ: one column per critic-noise level; rows: one estimate, mean of BATCH."""
    noises = sorted(summary.noise.unique())
    part = summary[summary.family == family]
    rows = [(f"mse_{target}", "one estimate"), (f"mse_{target}_batch", f"mean of {BATCH}")]
    fig, axes = plt.subplots(len(rows), len(noises), figsize=(3.2 * len(noises) + 1, 3.0 * len(rows)),
                             layout="constrained", squeeze=False)
    for r, (metric, row_label) in enumerate(rows):
        values = np.log10(np.maximum(part[metric].to_numpy(), FLOOR))
        vmin, vmax = np.nanmin(values), np.nanmax(values)
        for ax, noise in zip(axes[r], noises):
            cell = part[np.isclose(part.noise, noise)].pivot(index="gamma", columns="lambda", values=metric)
            cell = cell.sort_index(ascending=False)
            grid = cell.to_numpy()
            image = ax.imshow(np.log10(np.maximum(grid, FLOOR)), cmap="viridis_r", vmin=vmin, vmax=vmax,
                              aspect="auto")
            ax.set_xticks(range(cell.shape[1]), [f"{v:g}" for v in cell.columns])
            ax.set_yticks(range(cell.shape[0]), [f"{v:g}" for v in cell.index])
            best = np.unravel_index(np.nanargmin(grid), grid.shape)
            ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    light = (np.log10(max(grid[i, j], FLOOR)) - vmin) / max(vmax - vmin, 1e-12) < 0.45
                    ax.text(j, i, lab.fmt(grid[i, j], 2), ha="center", va="center", fontsize=6.5,
                            color="black" if light else "white", fontweight="bold" if (i, j) == best else None)
            ax.set_xlabel("λ")
            ax.set_ylabel("γ")
            ax.set_title(f"noise {noise:g}, {row_label}", fontsize="small")
        fig.colorbar(image, ax=axes[r].tolist(), label="log10 MSE", shrink=0.9)
    label = "A_γ (the discounted advantage)" if target == "gamma" else "A_long (the long-horizon advantage)"
    fig.suptitle(f"{FAMILIES[family]}: MSE of GAE(γ, λ) vs {label}; lowest per panel boxed in red", fontsize="medium")
    return fig


# ---------------------------------------------------------------- (b) learning part
def learning_table(summary: pd.DataFrame, metric: str = "final_return") -> pd.DataFrame:
    from analysis import aggregate

    return aggregate(summary, by=["env", "gamma", "gae_lambda"], metric=metric, stat="iqm")


def describe_learning(cells: pd.DataFrame, what: str) -> str:
    """Best cell, the cells whose CI overlaps its CI, the worst cell, the best and worst λ per γ."""
    best = cells.loc[cells["iqm"].idxmax()]
    worst = cells.loc[cells["iqm"].idxmin()]
    overlapping = cells[(cells.ci_high >= best.ci_low) & (cells.index != best.name)]
    name = "(γ {:g}, λ {:g})".format
    per_gamma = ", ".join(
        "γ {:g}: λ {:g} / {:g}".format(g, group.loc[group["iqm"].idxmax()].gae_lambda,
                                       group.loc[group["iqm"].idxmin()].gae_lambda)
        for g, group in cells.groupby("gamma")
    )
    close = ", ".join(name(r.gamma, r.gae_lambda) for r in overlapping.itertuples()) or "none"
    return (
        f"best cell {name(best.gamma, best.gae_lambda)}, IQM {what} "
        f"{lab.fmt_ci(best.iqm, best.ci_low, best.ci_high)}; {len(overlapping)} of the other {len(cells) - 1} cells "
        f"have a CI that reaches its CI ({close}), so their order is not resolved at this scale; worst "
        f"{name(worst.gamma, worst.gae_lambda)}, {lab.fmt_ci(worst.iqm, worst.ci_low, worst.ci_high)}. "
        f"Best / worst λ per γ: {per_gamma}."
    )


# ---------------------------------------------------------------- the report
def answer(
    summary: pd.DataFrame, learning: pd.DataFrame, learning_auc: pd.DataFrame, noise: float, spec: DictConfig
) -> str:
    """The findings, each number computed from the tables (the wording checks what it claims)."""

    def part(family: str, level: float) -> pd.DataFrame:
        return summary[(summary.family == family) & np.isclose(summary.noise, level)]

    def at(df: pd.DataFrame, gamma: float, lam: float, metric: str) -> float:
        return float(df[np.isclose(df.gamma, gamma) & np.isclose(df["lambda"], lam)][metric].iloc[0])

    def over_gammas(df: pd.DataFrame, lam: float, metric: str, sep: str = ", ") -> str:
        return sep.join(lab.fmt(at(df, g, lam, metric)) for g in gammas)

    rnd, chain, exact = part("random", noise), part("chain", noise), part("random", 0.0)
    gammas, lams = sorted(rnd.gamma.unique()), sorted(rnd["lambda"].unique())
    gamma_list = ", ".join(f"{g:g}" for g in gammas)
    lo, hi = lams[0], lams[-1]
    noises = sorted(summary.noise.unique())
    random_all = summary[summary.family == "random"]
    rising = [n for n in noises if _monotone(random_all[np.isclose(random_all.noise, n)], "variance")]
    not_rising = [n for n in noises if n not in rising]
    noisy = random_all[random_all.noise > 0]
    falls = "falls monotonically" if _monotone(noisy, "bias2_gamma", increasing=False) else "does NOT fall"
    growth = at(rnd, gammas[-1], hi, "variance") / at(rnd, gammas[-1], lo, "variance")
    raw = [at(rnd, g, hi, "raw_bias2_gamma") for g in gammas]
    distance = (spec.chain_states - 1) / (2 * spec.chain_p_right - 1)
    lowest = all(at(rnd, g, lo, "variance") <= rnd[np.isclose(rnd.gamma, g)]["variance"].min() for g in gammas)
    variance_text = f"rises monotonically with λ at every γ for critic noise {', '.join(f'{n:g}' for n in rising)}"
    if not_rising:
        n = not_rising[0]
        worst = part("random", n)
        variance_text += (
            f"; at noise {', '.join(f'{n:g}' for n in not_rising)} it does not: λ = {lo:g} has more variance than "
            f"λ = {lams[1]:g} ({lab.fmt(at(worst, gammas[0], lo, 'variance'))} vs "
            f"{lab.fmt(at(worst, gammas[0], lams[1], 'variance'))} at γ = {gammas[0]:g}, noise {n:g}). The critic's "
            f"error at s_1 enters δ_0 as +γ·error and δ_1 as −error with weight γλ, so in the sum it has weight "
            f"γ(1 − λ): TD carries a noisy critic's error in full, larger λ cancels it"
        )
    lines = [
        f"- **λ is the estimator's bias–variance knob; γ is part of the objective.** On the random MDPs the "
        f"variance {variance_text}. The critic-induced bias {falls} with λ, to zero at λ = {hi:g}. Against the "
        f"long-horizon advantage a second bias remains at every λ: the horizon bias of A_γ itself, which only γ "
        f"moves.",
        f"- **λ = {lo:g} (TD): low variance, biased by the critic.** With an exact critic its bias² is "
        f"{lab.fmt(max(at(exact, g, lo, 'bias2_gamma') for g in gammas))} (round-off); at noise {noise:g} its "
        f"variance ({over_gammas(rnd, lo, 'variance')} for γ = {gamma_list}) is "
        f"{'the lowest of all λ' if lowest else 'NOT the lowest of all λ'} and its bias² vs A_γ "
        f"({over_gammas(rnd, lo, 'bias2_gamma')}) the highest, all of it from the critic.",
        f"- **λ = {hi:g} (Monte Carlo): unbiased for the gradient, high variance.** Its centred bias² is "
        f"{lab.fmt(max(at(rnd, g, hi, 'bias2_gamma') for g in gammas))} at any critic noise: Σ γ^l r_l − V̂(s_0) is "
        f"off only by the critic's error at s_0, a function of the state, i.e. a baseline (the raw bias², which "
        f"counts it, is {lab.fmt(min(raw))}–{lab.fmt(max(raw))}). Its variance is {over_gammas(rnd, hi, 'variance')} "
        f"for γ = {gamma_list}: {growth:.0f}× that of λ = {lo:g} at γ = {gammas[-1]:g}. The estimator sums TD "
        f"errors over an effective horizon 1/(1 − γλ).",
        f"- **γ: horizon bias even at λ = {hi:g}.** The centred squared distance between A_γ and the long-horizon "
        f"advantage, relative to the signal, is {over_gammas(rnd, hi, 'horizon_bias2')} for γ = {gamma_list} on "
        f"the random MDPs (they mix fast) and {over_gammas(chain, hi, 'horizon_bias2')} on the chain, whose only "
        f"reward is ~{distance:.0f} steps from the start. No λ and no critic removes it. Raising γ removes it but "
        f"costs variance mainly where λ is large: over γ = {gamma_list} the variance goes "
        f"{over_gammas(rnd, lo, 'variance', ' → ')} at λ = {lo:g} and {over_gammas(rnd, hi, 'variance', ' → ')} "
        f"at λ = {hi:g}.",
    ]
    best_one = best_cells(summary, ["family", "noise"], "mse_long")
    best_batch = best_cells(summary, ["family", "noise"], "mse_long_batch")

    def describe(best: pd.DataFrame, family: str) -> str:
        rows = best[best.family == family].sort_values("noise")
        return ", ".join(f"noise {r.noise:g}: (γ {r.gamma:g}, λ {r['lambda']:g})" for _, r in rows.iterrows())

    lines.append(
        f"- **Why tune them separately.** The best λ moves with the critic's error and with how many estimates "
        f"are averaged (variance shrinks as 1/n, bias does not); the best γ moves with how far away the rewards "
        f"are. Best (γ, λ) against the long-horizon advantage for one estimate — random MDPs: "
        f"{describe(best_one, 'random')}; chain: {describe(best_one, 'chain')}. For the mean of {BATCH} "
        f"estimates — random MDPs: {describe(best_batch, 'random')}; chain: {describe(best_batch, 'chain')}. "
        f"At noise {noise:g} with {BATCH} estimates the best γ is {best_gamma(best_batch, 'random', noise):g} on "
        f"the fast-mixing random MDPs but {best_gamma(best_batch, 'chain', noise):g} on the chain (delayed reward), "
        f"while the best λ follows the critic's noise in both."
    )
    for env, cells in learning.groupby("env"):
        lines.append(f"- **PPO, {env}, final return:** {describe_learning(cells, 'final return')}")
    for env, cells in learning_auc.groupby("env"):
        lines.append(f"- **PPO, {env}, AUC (mean return over training):** {describe_learning(cells, 'AUC')}")
    return "\n".join(lines)


def best_gamma(best: pd.DataFrame, family: str, noise: float) -> float:
    return float(best[(best.family == family) & np.isclose(best.noise, noise)].gamma.iloc[0])


def _monotone(df: pd.DataFrame, metric: str, increasing: bool = True) -> bool:
    """`metric` is monotone in λ within every family × γ × noise group of `df`."""
    for _, group in df.groupby(["family", "gamma", "noise"]):
        steps = np.diff(group.sort_values("lambda")[metric].to_numpy())
        scale = 1e-9 * np.max(np.abs(group[metric].to_numpy()))
        if not (np.all(steps >= -scale) if increasing else np.all(steps <= scale)):
            return False
    return True


def run(plan: DictConfig) -> None:
    spec, check = plan.tabular, plan.check
    table = lab.measured(plan, "tabular", {"tabular": spec}, lambda: tabular_table(spec), code=[tg, tabular_table])
    mc = lab.measured(plan, "monte_carlo", {"tabular": spec, "check": check},
                      lambda: monte_carlo_table(spec, check), code=[tg, monte_carlo_table])
    folders = lab.train_jobs(plan)
    learning_summary = lab.load_jobs(folders)

    summary = summarise_tabular(table)
    learning = learning_table(learning_summary)
    learning_auc = learning_table(learning_summary, "auc")
    noise = float(spec.headline_noise)
    report = lab.Report(plan, "GAE: λ versus γ")
    report.add(
        "**Question.** GAE(γ, λ) has two knobs that both down-weight the future. How do their roles differ, "
        "and why tune them separately?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {spec.num_mdps} random MDPs ({spec.num_states} states, {spec.num_actions} actions) "
        f"and a {spec.chain_states}-state chain, {spec.draws} critic-noise draws each; PPO with {plan.seeds} seeds "
        f"per cell. Presets: `conf/experiment/{NAME}.yaml` (the PPO grid) and "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(summary, learning, learning_auc, noise, spec),
    )
    report.add(
        "## (a) Exact bias and variance on tabular MDPs",
        "Fixed stochastic policy π; continuing MDPs. V_γ, A_γ and the long-horizon (average-reward) "
        "advantage A_long = lim_{γ→1} A_γ are exact linear solves; so are the mean and variance of the "
        "GAE(γ, λ) estimate from (s_0, a_0) (infinite rollout, closed form in `experiments/tabular_gae.py`). "
        "Critic: V̂ = V_γ + noise · sd(V_γ) · z, z ~ N(0, I). Errors are averaged over (s, a) ~ d_π(s) π(a|s) and "
        "divided by the mean square of A_long. *Bias²* is the centred bias (what the policy gradient sees: a "
        "function of the state alone is a baseline); MSE = bias² + variance. Random MDPs: Dirichlet("
        f"{spec.concentration:g}) transition rows, N(0, 1) rewards, Dirichlet(1) policy; 95% bootstrap CIs over MDPs. "
        f"Chain: reward 1 only at the right end, π(right) = {spec.chain_p_right:g}; CIs over critic-noise draws.",
    )
    report.headline(f"Headline: random MDPs, critic noise {noise:g}", tabular_markdown(summary, "random", noise))
    report.add(
        f"### Chain, critic noise {noise:g}\n\n" + tabular_markdown(summary, "chain", noise),
        "### Best λ per γ and critic noise\n\n" + best_lambda_markdown(summary),
    )
    for family in FAMILIES:
        report.figure(plot_errors_vs_lambda(summary, family, noise), f"errors_vs_lambda_{family}.png",
                      f"{FAMILIES[family]}: bias², variance and MSE against λ, one panel per γ "
                      f"(critic noise {noise:g})")
        report.figure(plot_mse_heatmaps(summary, family, "long"), f"mse_long_{family}.png",
                      f"{FAMILIES[family]}: MSE against the long-horizon advantage over λ × γ, per critic noise")
    report.figure(plot_mse_heatmaps(summary, "random", "gamma"), "mse_gamma_random.png",
                  "random MDPs: MSE against A_γ over λ × γ, per critic noise")
    other = [n for n in sorted(summary.noise.unique()) if not np.isclose(n, noise)]
    report.add("<details><summary>Random MDPs, the other critic-noise levels</summary>\n\n" + "\n".join(
        f"#### Critic noise {n:g}\n\n" + tabular_markdown(summary, "random", n) for n in other) + "\n</details>")
    report.add(
        "### Monte Carlo check of the closed form",
        f"Sampled rollouts of {check.horizon} steps from every (s_0, a_0) ({check.samples} each), GAE computed by "
        "`purerl.rl.advantages.gae` (bootstrapping from V̂ at the end of the rollout), against the closed form for "
        "the same horizon. |z| is the largest standardised difference of a per-(s_0, a_0) mean over all pairs "
        "(about 3–4 is expected from chance with this many pairs).",
        lab.markdown_table(pd.DataFrame({
            "MDP": mc.mdp.astype(str), "γ": mc.gamma.map("{:g}".format), "λ": mc["lambda"].map("{:g}".format),
            "variance, closed form": mc.exact_variance, "variance, sampled": mc.sampled_variance,
            "max |z| of the means": mc.max_abs_z_mean, "(s_0, a_0) pairs": mc.pairs.astype(str),
        })),
    )

    from analysis import plots, to_markdown

    report.add(
        "## (b) PPO over λ × γ",
        f"PPO (gymnax-blines' CartPole settings: 8 envs × 32 steps, lr 5e-4, 4 epochs × 4 minibatches), "
        f"{int(learning_summary.env_steps.max())} environment steps, {plan.seeds} seeds per cell, every cell of an "
        "env in one compiled program. Final return = mean training return over the last 10% of updates, AUC = "
        "over all updates; IQM over seeds with a 95% stratified bootstrap CI.",
        "Final return:", to_markdown(learning),
        "AUC (mean training return over all updates: learning speed):", to_markdown(learning_auc),
    )
    fig = plots.heatmap(learning_summary, x="gae_lambda", y="gamma", facets=["env"], show_ci=True)
    report.figure(fig, "ppo_heatmap.png", "PPO: IQM final return per (γ, λ) cell, one panel per env")
    curves = lab.load_jobs(folders, table="results")
    fig = plots.learning_curves(curves, ["env", "gamma", "gae_lambda"], summary=learning_summary)
    report.figure(fig, "ppo_curves.png", "PPO learning curves per env and γ, one line per λ (IQM, 95% CI)")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
