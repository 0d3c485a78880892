"""Step-size control: vanilla PG vs PPO vs TRPO.
`python -m experiments.step_size_control [scale=ci|paper]`

Same budget, same networks, same batch per update (8 envs × 128 steps); only the update
rule differs: A2C (one Adam step on the policy gradient) over learning rates, PPO (clipped
surrogate, 4 epochs × 4 minibatches) over the clip range ε, TRPO (natural gradient with a
KL line search) over the trust-region radius δ. One `purerl-train` job per method, its
step-size knob an in-job grid. Per update: KL(π_old ‖ π_new), exact over the batch's
states (A2C/PPO `update_kl`, TRPO `kl`), and whether the return dropped after the update.
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import stats as sps

from experiments import lab

NAME = "step_size_control"
KNOBS = {"a2c": ("lr", "lr"), "ppo": ("clip_eps", "ε"), "trpo": ("max_kl", "δ")}
KL_METRIC = {"a2c": "update_kl", "ppo": "update_kl", "trpo": "kl"}
SMOOTH = 5  # updates in the moving average of the return for drawdowns
COLLAPSE = 0.25  # a run collapsed if its smoothed return fell this share of the range below its best


# ---------------------------------------------------------------- per-update measures
def per_update(curves: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """One row per run × update: method, knob value, KL of the update, the return before
    (episodes finished in this update's rollout) and after (the next update's), and whether
    it dropped by more than `drop_fraction` of the env's return range."""
    frames = []
    for algo, group in curves.groupby("algo"):
        knob, symbol = KNOBS[algo]
        frame = group[["job", "env", "seed", "setting", "update", "env_steps", knob, KL_METRIC[algo],
                       "episode_return"]].rename(columns={knob: "knob", KL_METRIC[algo]: "kl"})
        frame = frame.sort_values(["job", "setting", "seed", "update"])
        frame["after"] = frame.groupby(["job", "setting", "seed"]).episode_return.shift(-1)
        low, high = (float(v) for v in plan.return_range[group.env.iloc[0]])
        frame["change"] = (frame.after - frame.episode_return) / (high - low)
        frame["measured"] = frame.episode_return.notna() & frame.after.notna()
        frame["destructive"] = frame.change < -plan.drop_fraction
        # Drawdown: the fall of the smoothed return (5-update mean) below its best so far.
        smooth = frame.groupby(["job", "setting", "seed"]).episode_return.transform(
            lambda r: r.ffill().rolling(SMOOTH, min_periods=1).mean())
        best = smooth.groupby([frame.job, frame.setting, frame.seed]).cummax()
        frame["drawdown"] = (best - smooth) / (high - low)
        frame["method"] = algo.upper()
        frame["step_size"] = [f"{symbol} = {v:g}" for v in frame.knob]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def per_run(updates: pd.DataFrame) -> pd.DataFrame:
    """One row per run: median and 90th-percentile update KL, fraction of destructive updates."""
    measured = updates[updates.measured]
    runs = updates.groupby(["method", "knob", "step_size", "seed"]).kl.agg(
        kl_median="median", kl_p90=lambda x: np.quantile(x, 0.9), kl_max="max"
    )
    runs["destructive"] = measured.groupby(["method", "knob", "step_size", "seed"]).destructive.mean()
    runs["drawdown"] = updates.groupby(["method", "knob", "step_size", "seed"]).drawdown.max()
    runs["measured_updates"] = measured.groupby(["method", "knob", "step_size", "seed"]).size()
    return runs.reset_index()


# ---------------------------------------------------------------- tables
def headline(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    from analysis import aggregate

    rows = []
    finals = aggregate(summary, by=["method", "knob"], metric="final_return", stat="iqm").set_index(["method", "knob"])
    for (method, knob), group in runs.groupby(["method", "knob"], sort=False):
        final = finals.loc[(method, knob)]
        rows.append({
            "method": method,
            "step size": group.step_size.iloc[0],
            "median KL per update [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.kl_median.to_numpy(), "median")),
            "90th pct KL (median)": lab.fmt(float(np.median(group.kl_p90))),
            "destructive updates [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.destructive.to_numpy())),
            "max drawdown, median [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.drawdown.to_numpy(), "median")),
            f"runs collapsed (> {COLLAPSE:.0%})": f"{int((group.drawdown > COLLAPSE).sum())}/{len(group)}",
            "IQM final return [95% CI]": lab.fmt_ci(final.iqm, final.ci_low, final.ci_high),
            "n": str(len(group)),
        })
    return pd.DataFrame(rows)


def order(runs: pd.DataFrame) -> pd.DataFrame:
    method_rank = {m.upper(): i for i, m in enumerate(KNOBS)}
    return runs.sort_values(["method", "knob"], key=lambda c: c.map(method_rank) if c.name == "method" else c)


# ---------------------------------------------------------------- plots
def plot_kl(updates: pd.DataFrame):
    """Distribution of the per-update KL, one box per method × step size (log scale)."""
    groups = [(m, k, g) for (m, k), g in order(updates).groupby(["method", "knob"], sort=False)]
    fig, ax = plt.subplots(figsize=(max(7, 0.75 * len(groups) + 2), 4.2), layout="constrained")
    colours = {m.upper(): f"C{i}" for i, m in enumerate(KNOBS)}
    data = [np.maximum(g.kl.to_numpy(), 1e-8) for _, _, g in groups]
    boxes = ax.boxplot(data, whis=(5, 95), showfliers=False, patch_artist=True, medianprops={"color": "black"})
    for patch, (method, _, _) in zip(boxes["boxes"], groups):
        patch.set_facecolor(colours[method])
        patch.set_alpha(0.6)
    ax.set_xticks(range(1, len(groups) + 1), [f"{m}\n{g.step_size.iloc[0]}" for m, _, g in groups],
                  fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("KL(π_old ‖ π_new) per update (exact, batch states)")
    ax.grid(axis="y", alpha=0.3)
    for method, colour in colours.items():
        ax.plot([], [], "s", color=colour, alpha=0.6, label=method)
    ax.legend(fontsize="small", loc="upper left")
    n = updates.groupby(["method", "knob"]).seed.nunique().min()
    ax.set_title(f"Per-update KL, all updates of {n} seeds\n(box: quartiles and median, whiskers: 5–95%; "
                 "KL < 1e-8 drawn at 1e-8)", fontsize="medium")
    return fig


def plot_destructive_vs_kl(runs: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.4), layout="constrained")
    for i, method in enumerate(m.upper() for m in KNOBS):
        part = order(runs[runs.method == method])
        xs, ys, lows, highs = [], [], [], []
        for _, group in part.groupby("knob", sort=True):
            xs.append(float(np.median(group.kl_median)))
            y, lo, hi = lab.bootstrap_ci(group.destructive.to_numpy())
            ys.append(y), lows.append(y - lo), highs.append(hi - y)
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="-o", color=f"C{i}", label=method, capsize=3)
        for x, y, label in zip(xs, ys, part.drop_duplicates("knob").step_size):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small", color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("median KL(π_old ‖ π_new) per update")
    ax.set_ylabel("fraction of destructive updates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Bigger steps, more destructive updates? (mean over seeds, 95% bootstrap CI)", fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def answer(summary: pd.DataFrame, runs: pd.DataFrame, updates: pd.DataFrame, plan: DictConfig) -> str:
    from analysis import aggregate

    finals = aggregate(summary, by=["method", "knob"], metric="final_return", stat="iqm")
    lines = []
    for method in (m.upper() for m in KNOBS):
        part = runs[runs.method == method]
        kl = part.groupby("knob").kl_median.median()
        destructive = part.groupby("knob").destructive.mean()  # NaN-aware: runs without a measured update
        best = finals[finals.method == method].sort_values("iqm").iloc[-1]
        symbol = KNOBS[method.lower()][1]
        collapsed = part.groupby("knob").drawdown.apply(lambda d: f"{int((d > COLLAPSE).sum())}/{len(d)}")
        lines.append(
            f"- **{method}:** over {symbol} = {', '.join(f'{k:g}' for k in kl.index)} the median per-update KL is "
            f"{', '.join(lab.fmt(v, 2) for v in kl)}, the fraction of destructive updates "
            f"{', '.join(f'{v:.2f}' for v in destructive)}, and the runs that collapsed (smoothed return "
            f"> {COLLAPSE:.0%} of the range below its best) {', '.join(collapsed)}; best IQM final return at "
            f"{symbol} = {best.knob:g}: {lab.fmt_ci(best.iqm, best.ci_low, best.ci_high)}."
        )
    trpo = updates[updates.method == "TRPO"]
    if len(trpo):
        ratio = (trpo.kl / trpo.knob).max()
        rejected = (trpo.kl == 0).mean()
        holds = "holds" if ratio <= 1 + 1e-3 else "is VIOLATED"
        ppo = runs[runs.method == "PPO"]
        lines.append(
            f"- **TRPO's trust region {holds}:** its largest KL / δ over all updates is {ratio:.3f} (the line "
            f"search accepts only steps inside the region); {rejected:.1%} of its updates were rejected outright "
            f"(KL 0, parameters kept). PPO's clip bounds nothing directly: the largest update KL of any PPO run is "
            f"{lab.fmt(ppo.kl_max.max(), 2)} (ε = {ppo.loc[ppo.kl_max.idxmax()].knob:g})."
        )
    valid = runs.dropna(subset=["kl_median", "destructive"])
    varies = len(valid) > 2 and valid.kl_median.nunique() > 1 and valid.destructive.nunique() > 1
    rho, p = sps.spearmanr(valid.kl_median, valid.destructive) if varies else (np.nan, np.nan)
    lines.append(
        f"- **Step size and destruction:** across the {len(valid)} runs the Spearman correlation between a run's "
        f"median KL per update and its fraction of destructive updates is {rho:.2f} (p = {p:.2g}). A destructive "
        f"update here means the training return of the next rollout is lower than this one's by more than "
        f"{plan.drop_fraction:.0%} of the env's return range; with few episodes per rollout this is a noisy "
        f"measure (a frozen policy would also show drops), so compare methods with each other rather than with 0. "
        f"Collapses over a run (the drawdown) separate the methods more clearly: "
        f"{int((runs.drawdown > COLLAPSE).sum())} of {len(runs)} runs collapsed, "
        + ", ".join(f"{m} {int((g.drawdown > COLLAPSE).sum())}/{len(g)}" for m, g in runs.groupby("method", sort=False))
        + "."
    )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    folders = lab.train_jobs(plan)
    summary = lab.load_jobs(folders)
    curves = lab.load_jobs(folders, table="results")
    updates = per_update(curves, plan)
    runs = order(per_run(updates))
    summary["method"] = summary.algo.str.upper()
    summary["knob"] = [row[KNOBS[row.algo][0]] for _, row in summary.iterrows()]
    curves = curves.merge(updates[["job", "setting", "seed", "update", "method", "step_size"]],
                          on=["job", "setting", "seed", "update"])

    report = lab.Report(plan, "Step-size control: vanilla PG vs PPO vs TRPO")
    report.add(
        "**Question.** How far does one update move the policy under each kind of step-size control — a "
        "learning rate (A2C: one Adam step on the policy gradient), a clipped surrogate (PPO, ε), a trust region "
        "(TRPO, δ) — and how often does an update make things worse?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {plan.seeds} seeds per setting, {int(summary.env_steps.max())} environment steps per "
        f"run on {', '.join(sorted(summary.env.unique()))}. Presets: `conf/experiment/{NAME}.yaml` (A2C) and "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml` (the PPO and TRPO jobs).",
        "## Answer\n\n" + answer(summary, runs, updates, plan),
        "## Per method and step size",
        "Every method: 64×64 tanh actor and critic, 8 envs × 128 steps = 1024 transitions per update, no learning-"
        "rate annealing. A2C: one Adam step per update (λ = 0.95 GAE, global-norm clip 0.5). PPO: lr 5e-4, 4 epochs "
        "× 4 minibatches, per-minibatch advantage normalisation, clipped value loss. TRPO: 10 CG iterations, "
        "backtracking 0.8^k (k < 10), critic Adam 1e-3 × 10 epochs. KL per update: exact mean KL(π_old ‖ π_new) over "
        "the update's batch states (A2C/PPO metric `update_kl`, TRPO `kl`); median over a run's updates, then "
        "median over seeds with a 95% bootstrap CI. Destructive updates: share of updates (with an episode finished "
        "in this and the next rollout) after which the training return fell by more than "
        f"{plan.drop_fraction:.0%} of the env's range; mean over seeds. Max drawdown: the largest fall of the "
        f"return (moving average over {SMOOTH} updates) below its best so far, as a share of the env's range; a "
        f"run collapsed if it exceeds {COLLAPSE:.0%}. Final return: IQM over seeds, 95% stratified bootstrap CI.",
    )
    report.headline("Headline: per-update KL, destructive updates and final return",
                    lab.markdown_table(headline(summary, runs)))
    report.figure(plot_kl(updates), "kl_per_update.png",
                  "How far each update moves the policy, per method and step size")
    report.figure(plot_destructive_vs_kl(runs), "destructive_vs_kl.png",
                  "Fraction of destructive updates against the typical update KL, per method")
    from analysis import plots

    fig = plots.learning_curves(curves, ["method", "step_size"],
                                summary=summary.merge(curves[["job", "setting", "seed", "method", "step_size"]]
                                                      .drop_duplicates(), on=["job", "setting", "seed", "method"]))
    report.figure(fig, "learning_curves.png", "Training return per method, one line per step size (IQM, 95% CI)")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
