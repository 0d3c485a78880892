"""Critic or no critic. `python -m experiments.baselines [scale=ci|paper]`

- Learning speed: REINFORCE without a baseline, with a learned critic (G − V) and with
  the group-relative baseline (critic-free, GRPO-style), one `purerl-train` job each;
  PPO with GAE for reference.
- Variance of the policy-gradient estimate over independent batches at fixed parameters
  (experiments.pg_estimators): the checkpoints are PPO's final policy and critic after
  training at three learning rates (≈ untrained, partly trained, trained), one compiled
  program vmapped over learning rates × seeds.
"""

from __future__ import annotations

import sys

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab
from experiments import pg_estimators as pg

NAME = "baselines"
LABELS = {
    "none": "REINFORCE, no baseline",
    "standardised": "REINFORCE, standardised G",
    "value": "REINFORCE, critic (G − V)",
    "group": "REINFORCE, group baseline",
    "gae": "PPO-GAE advantage",
}
METHODS = {"reinforce_none": "none", "reinforce_value": "value", "reinforce_group": "group"}


# ---------------------------------------------------------------- PPO checkpoints + gradient variance
def ppo_and_gradients(plan: DictConfig) -> dict[str, pd.DataFrame]:
    from purerl import results, sweep
    from purerl.algos import reinforce
    from purerl.cli.train import build_plan

    built = build_plan(lab.compose_job(plan, plan.ppo.overrides, preset=False))
    result = sweep.run(built.module.make_train(built.config), built.sweep, built.seeds, return_state=True)
    ids = dict(experiment=NAME, algo="ppo", config=built.config, base_hyper=built.hyper)
    curves, summary = results.tidy(result, **ids), results.summarize(result, **ids)

    spec = plan.gradients
    batch_config = reinforce.Config(env=built.config.env, num_envs=spec.episodes, num_steps=spec.horizon,
                                    actor_hidden=built.config.actor_hidden, critic_hidden=built.config.critic_hidden,
                                    activation=built.config.activation)
    sample = pg.make_sampler(batch_config, spec.horizon, spec.group_size)

    def measure(args):
        params, key = args
        grads, returns = jax.vmap(lambda k: sample(params, k, spec.gamma, spec.gae_lambda))(
            jax.random.split(key, spec.batches)
        )
        return {name: pg.gradient_statistics(g) for name, g in grads.items()}, returns.mean()

    params = result.final_state.params
    num_settings, num_seeds = len(built.sweep), len(built.seeds)
    flat = jax.tree.map(lambda x: x.reshape((num_settings * num_seeds,) + x.shape[2:]), params)
    keys = jax.random.split(jax.random.PRNGKey(12345), num_settings * num_seeds)
    # One checkpoint at a time (lax.map), its batches vmapped.
    stats, returns = jax.jit(lambda p, k: jax.lax.map(measure, (p, k)))(flat, keys)
    rows = []
    for i in range(num_settings * num_seeds):
        lr, seed = built.sweep.settings[i // num_seeds]["lr"], built.seeds[i % num_seeds]
        for name in pg.ESTIMATORS:
            rows.append({"checkpoint_lr": lr, "seed": seed, "estimator": name, "checkpoint_return": float(returns[i]),
                         **{k: float(v[i]) for k, v in stats[name].items()}})
    return {"gradients": pd.DataFrame(rows), "ppo_results": curves, "ppo_summary": summary}


# ---------------------------------------------------------------- tables
def return_at(curves: pd.DataFrame, samples: float, window: int = 5) -> pd.Series:
    """Per run (job, setting, seed): the mean training return over the last `window` updates
    that end at or before `samples` samples used (NaN-aware)."""

    def one(run: pd.DataFrame) -> float:
        if run.samples.max() < samples:  # this run never used that many samples
            return np.nan
        before = run[run.samples <= samples].episode_return.to_numpy()[-window:]
        return float(np.nanmean(before)) if np.isfinite(before).any() else np.nan

    return curves.groupby(["job", "setting", "seed"]).apply(one, include_groups=False)


def learning_table(summary: pd.DataFrame, at_samples: pd.Series, budget: float) -> pd.DataFrame:
    """Per method × lr: IQM final return, AUC and return at `budget` samples, 95% CIs."""
    from analysis import aggregate

    summary = summary.merge(at_samples.rename("at_budget").reset_index(), on=["job", "setting", "seed"])
    tables = {m: aggregate(summary, by=["method", "lr"], metric=m, stat="iqm").set_index(["method", "lr"])
              for m in ("final_return", "auc", "at_budget")}
    samples = summary.groupby(["method", "lr"])["samples"].median()
    rows = []
    for key in tables["final_return"].index:
        cell = {m: lab.fmt_ci(*t.loc[key, ["iqm", "ci_low", "ci_high"]]) for m, t in tables.items()}
        reached = int(tables["at_budget"].loc[key, "n_runs"] - tables["at_budget"].loc[key, "n_no_episode"])
        if reached < tables["at_budget"].loc[key, "n_runs"]:
            cell["at_budget"] += f" ({reached} runs got there)"
        rows.append({
            "method": key[0], "lr": f"{key[1]:g}",
            f"IQM return at {budget:.0f} samples [95% CI]": cell["at_budget"],
            "IQM final return [95% CI]": cell["final_return"],
            "IQM AUC [95% CI]": cell["auc"],
            "samples used (median)": f"{samples.loc[key]:.0f}",
            "n": str(int(tables["final_return"].loc[key, "n_runs"])),
            "diverged": str(int(tables["final_return"].loc[key, "n_diverged"])),
        })
    return pd.DataFrame(rows)


def gradient_table(gradients: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint × estimator: mean cosine and median SNR over seeds, 95% bootstrap CIs."""
    rows = []
    for (lr, name), group in gradients.groupby(["checkpoint_lr", "estimator"], sort=True):
        returns = gradients[gradients.checkpoint_lr == lr].groupby("seed").checkpoint_return.first().to_numpy()
        rows.append({
            "checkpoint (PPO lr)": f"{lr:g}",
            "its return (mean)": lab.fmt(float(np.mean(returns))),
            "estimator": LABELS[name],
            "cosine between batches [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.cosine.to_numpy())),
            "SNR, median [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.snr.to_numpy(), stat="median")),
            "seeds with a nonzero gradient": str(int(np.isfinite(group.snr).sum())),
        })
    return pd.DataFrame(rows)


def cosine_table(gradients: pd.DataFrame) -> pd.DataFrame:
    """Estimators × checkpoints: mean cosine between batch gradients [95% CI]."""
    returns = gradients.groupby("checkpoint_lr").checkpoint_return.mean()
    columns = {"estimator": [LABELS[n] for n in pg.ESTIMATORS]}
    for lr in sorted(gradients.checkpoint_lr.unique()):
        part = gradients[gradients.checkpoint_lr == lr]
        columns[f"PPO lr {lr:g} (return {returns[lr]:.0f})"] = [
            lab.fmt_ci(*lab.bootstrap_ci(part[part.estimator == n].cosine.to_numpy()), digits=2) for n in pg.ESTIMATORS
        ]
    return pd.DataFrame(columns)


# ---------------------------------------------------------------- plots
def plot_gradients(gradients: pd.DataFrame):
    levels = sorted(gradients.checkpoint_lr.unique())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    width = 0.8 / len(pg.ESTIMATORS)
    for k, name in enumerate(pg.ESTIMATORS):
        for ax, metric, stat in ((axes[0], "cosine", "mean"), (axes[1], "snr", "median")):
            est, lo, hi = (np.asarray(v) for v in zip(*(
                lab.bootstrap_ci(gradients[(gradients.checkpoint_lr == lr) & (gradients.estimator == name)][metric]
                                 .to_numpy(), stat)
                for lr in levels)))
            x = np.arange(len(levels)) + (k - (len(pg.ESTIMATORS) - 1) / 2) * width
            ax.bar(x, np.nan_to_num(est), width, color=f"C{k}", label=LABELS[name])
            ax.errorbar(x, np.nan_to_num(est), yerr=[np.nan_to_num(est - lo), np.nan_to_num(hi - est)], fmt="none",
                        ecolor="k", lw=0.8)
    returns = gradients.groupby("checkpoint_lr").checkpoint_return.mean()
    ticks = [f"PPO lr {lr:g}\nreturn {returns[lr]:.0f}" for lr in levels]
    for ax, title in ((axes[0], "mean cosine between two batch gradients"),
                      (axes[1], "SNR = ‖E ĝ‖² / E‖ĝ − E ĝ‖² (median over seeds; symlog)")):
        ax.set_xticks(range(len(levels)), ticks, fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_yscale("symlog", linthresh=0.01)
    axes[0].legend(fontsize="x-small", loc="upper right")
    n_seeds = gradients.seed.nunique()
    fig.suptitle(f"Policy-gradient estimators at fixed parameters, CartPole-v1: {n_seeds} seeds per checkpoint, "
                 "95% bootstrap CIs (a missing bar: every batch gradient is zero)", fontsize="medium")
    return fig


def plot_learning(curves: pd.DataFrame, summary: pd.DataFrame, keep: pd.DataFrame):
    from analysis import plots

    fig = plots.learning_curves(curves.merge(keep), "method", x="samples", summary=summary.merge(keep))
    fig.set_size_inches(8, 4.8)
    ax = fig.axes[0]
    ax.set_xlabel("samples used (environment steps inside the episodes learned from)")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    return fig


# ---------------------------------------------------------------- report
def answer(learning_all: pd.DataFrame, learning_runs: pd.DataFrame, gradients: pd.DataFrame, budget: float) -> str:
    from analysis import aggregate

    lines = []
    for lr in sorted(gradients.checkpoint_lr.unique()):
        part = gradients[gradients.checkpoint_lr == lr]
        stats = {n: lab.bootstrap_ci(g.cosine.to_numpy()) for n, g in part.groupby("estimator")}
        ranked = sorted(stats, key=lambda n: -np.nan_to_num(stats[n][0], nan=-9))
        top = ranked[0]
        clear = [n for n in ranked[1:] if stats[n][2] < stats[top][1]]
        ret = part.groupby("seed").checkpoint_return.first().mean()
        zero = [LABELS[n] for n in pg.ESTIMATORS if not np.isfinite(part[part.estimator == n].snr).any()]
        text = (
            f"- **Checkpoint PPO lr {lr:g} (return {ret:.0f}):** mean cosine between batch gradients "
            + ", ".join(f"{LABELS[n]} {stats[n][0]:.2f}" for n in ranked)
            + f". {LABELS[top]} is ahead of {len(clear)} of the other {len(ranked) - 1} with non-overlapping CIs"
            + (f" ({', '.join(LABELS[n] for n in clear)})" if clear else "")
            + "."
        )
        if zero:
            text += (f" {', '.join(zero)}: every batch gradient is exactly zero (all episodes of a group have the "
                     f"same return, so the group-relative advantages vanish).")
        lines.append(text)
    auc = aggregate(learning_all, by=["method", "lr"], metric="auc", stat="iqm").set_index(["method", "lr"])
    critic, free = LABELS["value"], LABELS["group"]
    for lr in sorted(learning_all.lr.unique()):
        if (critic, lr) in auc.index and (free, lr) in auc.index:
            a, b = auc.loc[(critic, lr)], auc.loc[(free, lr)]
            verdict = ("the group baseline is ahead" if b.ci_low > a.ci_high else
                       "the critic is ahead" if a.ci_low > b.ci_high else "the CIs overlap: not resolved")
            lines.append(f"- **Critic vs group baseline, REINFORCE lr {lr:g} (IQM AUC):** critic "
                         f"{lab.fmt_ci(a.iqm, a.ci_low, a.ci_high)}, group {lab.fmt_ci(b.iqm, b.ci_low, b.ci_high)}: "
                         f"{verdict}.")
    table = aggregate(learning_runs, by=["method"], metric="at_budget", stat="iqm").sort_values("iqm", ascending=False)
    rows = list(table.itertuples())
    resolved = [f"{a.method} > {b.method}" for i, a in enumerate(rows) for b in rows[i + 1:] if a.ci_low > b.ci_high]
    lines.append(
        f"- **Learning speed at equal samples ({budget:.0f} steps learned from; each method at its better lr):** "
        + ", ".join(f"{r.method} {lab.fmt_ci(r.iqm, r.ci_low, r.ci_high)}" for r in rows)
        + ". Resolved (non-overlapping CIs): " + ("; ".join(resolved) if resolved else "none") + "."
    )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    folders = lab.train_jobs(plan)
    identity = {"ppo": plan.ppo, "gradients": plan.gradients, "seeds": plan.seeds}
    measured = lab.measured(plan, "ppo_and_gradients", identity, lambda: ppo_and_gradients(plan),
                            code=[pg, ppo_and_gradients])
    gradients = measured["gradients"]

    summary, curves = lab.load_jobs(folders), lab.load_jobs(folders, table="results")
    ppo_summary, ppo_curves = measured["ppo_summary"].assign(job="ppo"), measured["ppo_results"].assign(job="ppo")
    trained_lr = ppo_summary.lr.max()  # the reference learning curve: PPO at its own learning rate
    summary = pd.concat([summary, ppo_summary[ppo_summary.lr == trained_lr]], ignore_index=True)
    curves = pd.concat([curves, ppo_curves[ppo_curves.lr == trained_lr]], ignore_index=True)
    for frame in (summary, curves):
        frame["method"] = [LABELS[METHODS[job]] if job != "ppo" else "PPO-GAE" for job in frame.job]
    # Samples used: REINFORCE simulates num_envs × horizon steps per update but learns only
    # from the steps inside the episodes; PPO learns from every step it simulates.
    curves["samples"] = curves.env_steps.where(curves.job == "ppo", curves.get("episode_steps"))
    summary = summary.merge(curves.groupby(["job", "setting", "seed"]).samples.max().reset_index(),
                            on=["job", "setting", "seed"])
    # Each method at its better learning rate (median AUC); equal-samples budget: the fewest
    # samples any of those runs used.
    best = summary.groupby(["method", "lr"]).auc.median().reset_index()
    keep = best.loc[best.groupby("method").auc.idxmax(), ["method", "lr"]]
    budget = float(summary.merge(keep).samples.min())  # every kept run gets there
    at_budget = return_at(curves, budget)
    learning = learning_table(summary, at_budget, budget)
    learning_runs = summary.merge(keep).merge(at_budget.rename("at_budget").reset_index(),
                                              on=["job", "setting", "seed"])

    report = lab.Report(plan, "Critic or no critic: REINFORCE baselines vs PPO-GAE")
    report.add(
        "**Question.** What does a baseline buy a policy-gradient method: a learned critic, a critic-free group "
        "baseline, or none? How much variance does each remove at fixed parameters, and how fast does each learn? "
        "When does dropping the critic pay?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {plan.seeds} seeds per setting. Presets: `conf/experiment/{NAME}.yaml` (the "
        f"REINFORCE jobs) and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(summary, learning_runs, gradients, budget),
    )
    report.headline("Headline: agreement of independent batch gradients (mean cosine, 95% CI) per checkpoint",
                    lab.markdown_table(cosine_table(gradients)))
    report.add(
        "## Variance of the gradient estimate at fixed parameters",
        f"Each checkpoint is PPO's final actor and critic after "
        f"{int(measured['ppo_summary'].env_steps.max())} steps at one learning rate (the smallest leaves it at its "
        f"initialisation, critic included). At each, {plan.gradients.batches} independent batches of "
        f"{plan.gradients.episodes} complete episodes (horizon {plan.gradients.horizon}) give one gradient of the "
        f"actor per estimator (γ = {plan.gradients.gamma:g}, GAE λ = {plan.gradients.gae_lambda:g}, group size "
        f"{plan.gradients.group_size}); `experiments/pg_estimators.py` defines them. *Cosine*: mean cosine "
        "similarity between two batches' gradients (scale-free: 1 = every batch points the same way). *SNR*: "
        "‖E ĝ‖² / E‖ĝ − E ĝ‖² of one batch's gradient (with an unbiased estimate of ‖E ĝ‖², so it can be "
        "negative when the noise dominates). CIs: bootstrap over seeds (one checkpoint per seed).",
        lab.markdown_table(gradient_table(gradients)),
    )
    report.figure(plot_gradients(gradients), "gradient_variance.png",
                  "Agreement (cosine) and signal-to-noise of batch gradients per estimator and checkpoint")
    report.add(
        "## Learning speed",
        "REINFORCE: one Adam step per batch of 8 complete episodes, no return standardisation (the group "
        "baseline is standardised by construction); the critic of `value` is a separate network regressed on "
        "G_t. It simulates 8 × 500 steps per update and learns from the steps inside the episodes (*samples "
        "used*). PPO-GAE: gymnax-blines' CartPole settings (8 envs × 32 steps, lr 5e-4). Return at N samples: "
        "mean training return over the last 5 updates that end by N samples used; final return: over the last 10% "
        "of updates; AUC: over all updates. IQM over seeds, 95% stratified bootstrap CIs.",
        lab.markdown_table(learning),
    )
    report.figure(plot_learning(curves, summary, keep), "learning_curves.png",
                  "Training return against the samples used, each method at its better learning rate (IQM, 95% CI)")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
