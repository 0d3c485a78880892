"""Stale data and the clip range ε. `python -m experiments.stale_ppo [scale=ci|paper]`

PPO whose update batch is the fresh rollout plus the K most recent older rollouts
(purerl.algos.stale_ppo), with the ratio taken against each sample's behaviour policy
or, naively, against the policy at the start of the update. The base settings are the
`purerl-train` preset `conf/experiment/stale_ppo.yaml`; K, the ratio choice and ε are
traced, so each env is one compiled program vmapped over the whole grid × seeds.
"""

from __future__ import annotations

import dataclasses
import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab
from purerl.algos import stale_ppo as agent

NAME = "stale_ppo"
RATIO = {0.0: "behaviour μ (stored)", 1.0: "naive: π at update start"}
DIAGNOSTICS = ("clip_frac_first_epoch", "behaviour_kl", "ratio_p05", "ratio_p95", "zero_gradient_frac", "update_kl")


def train_env(plan: DictConfig, overrides: list[str]) -> dict[str, pd.DataFrame]:
    """The stale-PPO grid on one env: tidy per-update results and per-run summaries."""
    from purerl import results, sweep
    from purerl.cli.train import build_plan

    base = build_plan(lab.compose_job(plan, overrides))  # validates the PPO settings
    config = agent.Config(**{f.name: getattr(base.config, f.name) for f in dataclasses.fields(base.config)},
                          max_stale=plan.max_stale)
    hyper = agent.Hyper(**{f.name: getattr(base.hyper, f.name) for f in dataclasses.fields(base.hyper)})
    if max(plan.grid.stale_rollouts) > plan.max_stale:
        raise lab.ExperimentError(f"grid.stale_rollouts: got {max(plan.grid.stale_rollouts)}; allowed: at most "
                                  f"max_stale = {plan.max_stale}")
    grid = sweep.grid(hyper, **{k: list(v) for k, v in plan.grid.items()})
    result = sweep.run(agent.make_train(config), grid, base.seeds)
    ids = dict(experiment=NAME, algo="stale_ppo", config=config, base_hyper=hyper)
    summary = results.summarize(result, **ids, wall_seconds=result.run_seconds)
    return {"results": results.tidy(result, **ids), "summary": summary}


def per_run(curves: pd.DataFrame) -> pd.DataFrame:
    """Each run's diagnostics, averaged over the second half of its updates (buffer full)."""
    late = curves[curves["update"] >= curves["update"].max() / 2]
    keys = ["env", "stale_rollouts", "naive_ratio", "clip_eps", "seed"]
    return late.groupby(keys)[list(DIAGNOSTICS)].mean().reset_index()


def headline(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    from analysis import aggregate

    keys = ["env", "stale_rollouts", "naive_ratio", "clip_eps"]
    finals = aggregate(summary, by=keys, metric="final_return", stat="iqm").set_index(keys)
    aucs = aggregate(summary, by=keys, metric="auc", stat="iqm").set_index(keys)
    rows = []
    for key, group in runs.groupby(keys):
        median = {d: float(np.median(group[d])) for d in DIAGNOSTICS}
        rows.append({
            "env": key[0], "K": f"{key[1]:g}", "ratio against": RATIO[key[2]], "ε": f"{key[3]:g}",
            "IQM final return [95% CI]": lab.fmt_ci(*finals.loc[key, ["iqm", "ci_low", "ci_high"]]),
            "IQM AUC [95% CI]": lab.fmt_ci(*aucs.loc[key, ["iqm", "ci_low", "ci_high"]]),
            "clip frac (1st epoch)": lab.fmt(median["clip_frac_first_epoch"], 2),
            "KL(μ ‖ π_start)": lab.fmt(median["behaviour_kl"], 2),
            "ratio 5–95%": f"{median['ratio_p05']:.2f}–{median['ratio_p95']:.2f}",
            "zero-gradient frac": lab.fmt(median["zero_gradient_frac"], 2),
        })
    return pd.DataFrame(rows)


def plot_diagnostics(runs: pd.DataFrame):
    panels = [("behaviour_kl", "KL(μ ‖ π_start) of the stale samples", "log"),
              ("zero_gradient_frac", "share of samples with zero gradient at the start", "linear"),
              ("clip_frac_first_epoch", "clip fraction, first epoch", "linear"),
              ("ratio_p95", "95th percentile of π_start / μ (stale samples)", "linear")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), layout="constrained")
    eps_values = sorted(runs.clip_eps.unique())
    for ax, (metric, title, scale) in zip(axes, panels):
        for i, eps in enumerate(eps_values):
            for naive, style in ((0.0, "-"), (1.0, "--")):
                part = runs[(runs.clip_eps == eps) & (runs.naive_ratio == naive)]
                ks = sorted(part.stale_rollouts.unique())
                stats = [lab.bootstrap_ci(part[part.stale_rollouts == k][metric].to_numpy(), "median") for k in ks]
                est = np.array([s[0] for s in stats])
                ax.plot(ks, est, style, marker="o", markersize=3, color=f"C{i}",
                        label=f"ε = {eps:g}, {'naive' if naive else 'behaviour'}")
                ax.fill_between(ks, [s[1] for s in stats], [s[2] for s in stats], color=f"C{i}", alpha=0.1)
        ax.set_xlabel("K (older rollouts in the batch)")
        ax.set_title(title, fontsize="small")
        if scale == "log":
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="x-small")
    fig.suptitle(f"Stale-data diagnostics, mean over the second half of training (median over {runs.seed.nunique()} "
                 "seeds, 95% CI); solid: ratio against the behaviour policy, dashed: naive", fontsize="medium")
    return fig


def answer(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    from analysis import aggregate

    keys = ["env", "stale_rollouts", "naive_ratio", "clip_eps"]
    table = aggregate(summary, by=keys, metric="auc", stat="iqm")
    name = "(K {:g}, {}, ε {:g})".format
    lines = []
    for env, part in table.groupby("env"):
        fresh = part[part.stale_rollouts == 0]
        best_fresh = fresh.loc[fresh.iqm.idxmax()]
        stale = part[part.stale_rollouts > 0]
        below = stale[stale.ci_high < best_fresh.ci_low]
        above = stale[stale.ci_low > best_fresh.ci_high]
        worst = part.loc[part.iqm.idxmin()]

        def cells(df):
            return ", ".join(name(r.stale_rollouts, "naive" if r.naive_ratio else "behaviour", r.clip_eps)
                             for r in df.itertuples()) or "none"

        lines.append(
            f"- **{env}, return:** the best fresh-data cell (K = 0, ε = {best_fresh.clip_eps:g}) has IQM AUC "
            f"{lab.fmt_ci(best_fresh.iqm, best_fresh.ci_low, best_fresh.ci_high)}. Stale cells above it with "
            f"non-overlapping CIs: {cells(above)}; below it: {cells(below)}. The worst cell is "
            f"{name(worst.stale_rollouts, 'naive' if worst.naive_ratio else 'behaviour', worst.clip_eps)}, "
            f"{lab.fmt_ci(worst.iqm, worst.ci_low, worst.ci_high)}."
        )
        diag = runs[runs.env == env].groupby(["stale_rollouts", "naive_ratio", "clip_eps"])[list(DIAGNOSTICS)].median()
        k_values = sorted(runs[runs.env == env].stale_rollouts.unique())
        eps_values = sorted(runs[runs.env == env].clip_eps.unique())
        k_max = k_values[-1]

        def series(metric, naive, eps, diag=diag, k_values=k_values):
            return ", ".join(lab.fmt(diag.loc[(k, naive, eps), metric], 2) for k in k_values)

        grows = all(np.all(np.diff([diag.loc[(k, 0.0, e), "zero_gradient_frac"] for k in k_values]) >= 0)
                    for e in eps_values)
        lines.append(
            f"- **{env}, what staleness does (median over seeds; K = {', '.join(f'{k:g}' for k in k_values)}):** "
            f"with the behaviour ratio, the share of samples whose gradient is zero from the start "
            f"{'grows' if grows else 'goes'} "
            f"{series('zero_gradient_frac', 0.0, eps_values[0])} (ε = {eps_values[0]:g}) and "
            f"{series('zero_gradient_frac', 0.0, eps_values[-1])} (ε = {eps_values[-1]:g}): old samples that "
            f"already left the band are ignored, and a smaller ε ignores more. The naive ratio ignores nothing "
            f"(every sample starts at ratio 1), so the policy can drift further from the data's behaviour policy: "
            f"KL(μ ‖ π_start) at K = {k_max:g} is {lab.fmt(diag.loc[(k_max, 1.0, eps_values[-1]), 'behaviour_kl'], 2)} "
            f"naive vs {lab.fmt(diag.loc[(k_max, 0.0, eps_values[-1]), 'behaviour_kl'], 2)} behaviour at "
            f"ε = {eps_values[-1]:g} (ratio 5–95% {diag.loc[(k_max, 1.0, eps_values[-1]), 'ratio_p05']:.2f}–"
            f"{diag.loc[(k_max, 1.0, eps_values[-1]), 'ratio_p95']:.2f} vs "
            f"{diag.loc[(k_max, 0.0, eps_values[-1]), 'ratio_p05']:.2f}–"
            f"{diag.loc[(k_max, 0.0, eps_values[-1]), 'ratio_p95']:.2f}); ε sets how far: at ε = {eps_values[0]:g} "
            f"it is {lab.fmt(diag.loc[(k_max, 1.0, eps_values[0]), 'behaviour_kl'], 2)}."
        )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    tables = {env: lab.measured(plan, env, {"overrides": overrides, "grid": plan.grid, "seeds": plan.seeds,
                                            "max_stale": plan.max_stale},
                                lambda overrides=overrides: train_env(plan, list(overrides)),
                                code=[agent, train_env])
              for env, overrides in plan.envs.items()}
    summary = pd.concat([t["summary"].assign(job=env) for env, t in tables.items()], ignore_index=True)
    curves = pd.concat([t["results"].assign(job=env) for env, t in tables.items()], ignore_index=True)
    runs = per_run(curves)
    for frame in (summary, curves):
        frame["ratio"] = frame.naive_ratio.map(lambda v: "naive" if v else "behaviour")

    report = lab.Report(plan, "Stale data and the clip range ε")
    report.add(
        "**Question.** What breaks if PPO maximises its clipped objective on a buffer of old trajectories, and how "
        "does ε interact with staleness?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {plan.seeds} seeds per setting, {int(summary.env_steps.max())} environment steps per "
        f"run, K ≤ {plan.max_stale}. Presets: `conf/experiment/{NAME}.yaml` (the base PPO) and "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml`; the variant: `purerl/algos/stale_ppo.py`.",
        "## Answer\n\n" + answer(summary, runs),
        "## Setup",
        "Every update collects a fresh rollout (8 envs × 32 steps) and trains 4 epochs × 4 minibatches on it plus "
        "the K previous rollouts, as they were stored when collected (behaviour log-probs, critic values, GAE "
        "advantages, λ-returns); the number of SGD steps does not depend on K. *Behaviour* ratio: π_θ / μ with "
        "μ the policy that collected the sample; *naive*: π_θ / π_start, the policy at the start of the update. "
        "Diagnostics at the start of each update, averaged over the second half of training, median over seeds: "
        "KL(μ ‖ π_start) and the 5–95% range of π_start / μ over the stale samples; the share of samples whose "
        "clipped-surrogate gradient is zero from the start (ratio outside [1 − ε, 1 + ε] on the side the "
        "advantage pushes to); the clip fraction over the first epoch. Returns: IQM over seeds, 95% stratified "
        "bootstrap CIs.",
    )
    report.headline("Headline: return and diagnostics per K, ratio choice and ε", lab.markdown_table(headline(summary,
                                                                                                              runs)))
    from analysis import plots

    summary["K"] = summary.stale_rollouts
    fig = plots.heatmap(summary, x="clip_eps", y="K", metric="auc", facets=["env", "ratio"], show_ci=True)
    report.figure(fig, "auc_heatmap.png", "IQM AUC per (K, ε), one panel per env and ratio choice")
    report.figure(plot_diagnostics(runs), "diagnostics.png", "What staleness does to the ratio and the gradient")
    curves["K"] = curves.stale_rollouts
    fig = plots.learning_curves(curves, ["env", "ratio", "clip_eps", "K"], summary=summary)
    report.figure(fig, "learning_curves.png", "Learning curves per env, ratio choice and ε; one line per K "
                  "(IQM, 95% CI)")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
