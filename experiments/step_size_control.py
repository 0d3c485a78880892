"""Step-size control: what one update does to the objective, for A2C, PPO and TRPO.
`python -m experiments.step_size_control [scale=full|ci|paper|smoke] [rebuild=true]`

Same budget, same networks, same batch per update (8 envs × 128 steps); only the update rule
differs: A2C (one Adam step on the policy gradient) over learning rates, PPO (clipped
surrogate, 4 epochs × 4 minibatches) over the clip range ε, TRPO (natural gradient with a KL
line search) over the trust-region radius δ. One `purerl-train` job per method, its step-size
knob an in-job grid vmapped with the seeds; every job uses the same seeds.

The measurement runs inside the training program (`algo.config.update_eval_every`,
`purerl.rl.evaluation.with_update_evaluation`): on every k-th update, the policy before and
after the update plays the same evaluation episodes (sampled actions, common random numbers),
so ΔJ = J(π_new) − J(π_old) is a paired estimate, and the policy before plays a second,
independent set: the lr = 0 control, the ΔJ an update of size zero would show on unpaired
episodes. A run's noise floor is the 90th percentile of |control| over its measured updates; an
update is destructive when ΔJ < −floor (an update of size zero is, at most about 5% of the
time). Per-run statistics first, then seeds as the unit; the per-update numbers are kept beside
the report and `rebuild=true` remakes it from them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy import stats as sps

from experiments import lab

NAME = "step_size_control"
METHODS = ("A2C", "PPO", "TRPO")
KNOBS = {"a2c": ("lr", "lr"), "ppo": ("clip_eps", "ε"), "trpo": ("max_kl", "δ")}
KL_METRIC = {"a2c": "update_kl", "ppo": "update_kl", "trpo": "kl"}
FLOOR_QUANTILE = 0.9  # of |control ΔJ|: the control is symmetric, so −floor is its 5th percentile
COLOURS = {"A2C": "C0", "PPO": "C1", "TRPO": "C2"}


# ---------------------------------------------------------------- jobs and the kept numbers
def jobs(plan: DictConfig) -> DictConfig:
    """The plan's jobs with the update evaluation switched on in each."""
    extra = [f"algo.config.update_eval_every={int(plan.update_eval_every)}",
             f"algo.config.eval_episodes={int(plan.eval_episodes)}", "save_policies=false"]
    out = {}
    for job, spec in plan.jobs.items():
        overrides, preset = lab.job_spec(spec)
        out[job] = {"overrides": [*overrides, *extra], "preset": preset}
    return OmegaConf.create(out)


def measured_updates(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run × measured update: method, step size, seed, update, the update's KL, the
    training return, J before / after on the paired episodes and before on the repeat ones."""
    frames = []
    for algo, group in curves.groupby("algo"):
        knob, _ = KNOBS[algo]
        part = group[group.eval_before.notna()]
        frames.append(pd.DataFrame({
            "method": algo.upper(), "knob": part[knob].astype(float), "seed": part.seed, "update": part["update"],
            "env_steps": part.env_steps, "kl": part[KL_METRIC[algo]], "train_return": part.episode_return,
            "before": part.eval_before, "after": part.eval_after, "repeat": part.eval_before_repeat}))
    return pd.concat(frames, ignore_index=True).sort_values(["method", "knob", "seed", "update"],
                                                            ignore_index=True)


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    folders = lab.train_jobs(plan, jobs(plan))
    summary = lab.load_jobs(folders)
    updates = measured_updates(lab.load_jobs(folders, table="results"))
    finals = pd.DataFrame({"method": summary.algo.str.upper(), "seed": summary.seed,
                           "knob": [float(row[KNOBS[row.algo][0]]) for _, row in summary.iterrows()],
                           "final_return": summary.final_return, "env": summary.env})
    return {"updates": updates, "finals": finals}


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    from purerl.algos import a2c, ppo, trpo
    from purerl.rl import evaluation

    return [evaluation, a2c, ppo, trpo, jobs, measured_updates]


# ---------------------------------------------------------------- per run, then seeds
def per_run(updates: pd.DataFrame) -> pd.DataFrame:
    """One row per run (method, step size, seed): its noise floor, the shares of destructive and
    improving updates, the control's own share below −floor, mean ΔJ, median KL, and the
    within-run rank correlation of the update's KL with its ΔJ."""
    rows = []
    for (method, knob, seed), run in updates.groupby(["method", "knob", "seed"], sort=False):
        delta = (run.after - run.before).to_numpy()
        control = (run.repeat - run.before).to_numpy()
        floor = float(np.quantile(np.abs(control), FLOOR_QUANTILE))
        kl = run.kl.to_numpy()
        varies = np.ptp(kl) > 0 and np.ptp(delta) > 0
        rows.append({
            "method": method, "knob": knob, "seed": seed, "updates": len(run), "floor": floor,
            "destructive": float(np.mean(delta < -floor)), "improving": float(np.mean(delta > floor)),
            "control_below": float(np.mean(control < -floor)), "mean_delta": float(np.mean(delta)),
            "kl_median": float(np.median(kl)),
            "kl_delta_rho": float(sps.spearmanr(kl, delta)[0]) if varies else np.nan,
        })
    return pd.DataFrame(rows)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 < 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def symbol(method: str) -> str:
    return KNOBS[method.lower()][1]


def step_label(method: str, knob: float) -> str:
    return f"{symbol(method)} = {knob:g}"


def paired(a: pd.Series, b: pd.Series) -> tuple[tuple[float, float, float], int]:
    """(mean over seeds of a − b with its 95% bootstrap CI, seeds in both); a, b indexed by seed."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    # Shares are multiples of 1/updates: round away the float residue of their differences.
    diff = np.round(both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy(), 12)
    return lab.bootstrap_ci(diff), len(both)


def cells(runs: pd.DataFrame) -> list[tuple[str, float, pd.DataFrame]]:
    return [(m, k, g.set_index("seed")) for m in METHODS
            for k, g in sorted(runs[runs.method == m].groupby("knob"), key=lambda x: x[0])]


def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """The paired tests, chosen before the run: per method and step size, the destructive share
    minus the control's share below −floor (same runs); per method, the destructive share at the
    largest step minus at the smallest (same seeds); per method and step size, whether the
    within-run rank correlation of KL with ΔJ is away from 0 (one-sample, seeds as units)."""
    rows = []
    for method, knob, group in cells(runs):
        diff, n = paired(group.destructive, group.control_below)
        rows.append({"method": method, "comparison": f"{step_label(method, knob)}: destructive − control",
                     "diff": diff, "seeds": n,
                     "verdict": lab.verdict(diff, "fewer than the control", "more than the control", n)})
    for method in METHODS:
        part = [(k, g) for m, k, g in cells(runs) if m == method]
        if len(part) < 2:
            continue
        (k_low, low), (k_high, high) = part[0], part[-1]
        diff, n = paired(high.destructive, low.destructive)
        rows.append({"method": method, "comparison": f"destructive: {step_label(method, k_high)} − "
                     f"{symbol(method)} = {k_low:g}", "diff": diff, "seeds": n,
                     "verdict": lab.verdict(diff, "fewer at the largest step", "more at the largest step", n)})
    for method, knob, group in cells(runs):
        rho = group.kl_delta_rho.dropna()
        diff = lab.bootstrap_ci(rho.to_numpy())
        rows.append({"method": method, "comparison": f"{step_label(method, knob)}: within-run ρ(KL, ΔJ)",
                     "diff": diff, "seeds": len(rho),
                     "verdict": lab.verdict(diff, "larger steps lower J", "larger steps raise J", len(rho))})
    return pd.DataFrame(rows)


def best_share(finals: pd.DataFrame, method: str, resamples: int = 2000, seed: int = 0) -> pd.Series:
    """Per step size of `method`: the share of bootstrap resamples of the seeds (the same
    resample for every step size: the seeds are shared) in which it has the highest mean final
    return."""
    table = finals[finals.method == method].pivot(index="seed", columns="knob", values="final_return").dropna()
    values = table.to_numpy()
    index = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    winners = np.argmax(values[index].mean(axis=1), axis=1)
    return pd.Series(np.bincount(winners, minlength=values.shape[1]) / resamples, index=table.columns)


# ---------------------------------------------------------------- tables
def headline(runs: pd.DataFrame, finals: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for method, knob, group in cells(runs):
        final = finals[(finals.method == method) & np.isclose(finals.knob, knob)].final_return.to_numpy()
        best = best_share(finals, method)
        versus = comp[comp.comparison == f"{step_label(method, knob)}: destructive − control"].iloc[0]
        rows.append({
            "method": method, "step size": step_label(method, knob),
            "median KL per update [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.kl_median.to_numpy(), "median")),
            "mean ΔJ per update [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.mean_delta.to_numpy())),
            "noise floor [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.floor.to_numpy(), "median")),
            "destructive share [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.destructive.to_numpy())),
            "control share [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.control_below.to_numpy())),
            "destructive − control": versus.verdict,
            "improving share [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.improving.to_numpy())),
            "final return [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(final)),
            "best in method (bootstrap share)": f"{best.loc[knob]:.2f}",
            "seeds": str(len(group)),
        })
    return pd.DataFrame(rows)


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"method": comp.method, "comparison": comp.comparison,
                         "estimate [95% CI]": comp["diff"].map(lambda d: lab.fmt_ci(*d)),
                         "seeds": comp.seeds, "verdict": comp.verdict})


# ---------------------------------------------------------------- plots
def plot_shares(runs: pd.DataFrame):
    """Per method: destructive, improving and control shares against the (numeric, log) step size."""
    fig, axes = plt.subplots(1, len(METHODS), figsize=(13, 3.9), layout="constrained", sharey=True)
    series = (("destructive", "destructive (ΔJ < −floor)", "C3", "-"),
              ("improving", "improving (ΔJ > floor)", "C2", "-"),
              ("control_below", "lr = 0 control below −floor", "0.4", "--"))
    for ax, method in zip(axes, METHODS):
        part = [(k, g) for m, k, g in cells(runs) if m == method]
        knobs = [k for k, _ in part]
        for column, label, colour, style in series:
            stats = [lab.bootstrap_ci(g[column].to_numpy()) for _, g in part]
            ax.plot(knobs, [s[0] for s in stats], style, marker="o", color=colour, label=label)
            ax.fill_between(knobs, [s[1] for s in stats], [s[2] for s in stats], color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(knobs, [f"{k:g}" for k in knobs])
        ax.minorticks_off()
        ax.set_xlabel(f"{method} step size {symbol(method)}")
        ax.set_title(method, fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of a run's measured updates\n(mean over seeds, 95% CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
    return fig


def plot_delta_vs_kl(updates: pd.DataFrame, runs: pd.DataFrame):
    """Every measured update: ΔJ / the run's floor against the update's KL (log), one panel per
    method, colour = step size. Zero-KL updates (TRPO's rejected steps) cannot sit on a log axis:
    counted in the title."""
    floors = runs.set_index(["method", "knob", "seed"]).floor
    scaled = updates.assign(delta=updates.after - updates.before)
    scaled["floor"] = floors.reindex(pd.MultiIndex.from_frame(scaled[["method", "knob", "seed"]])).to_numpy()
    fig, axes = plt.subplots(1, len(METHODS), figsize=(13, 4.4), layout="constrained", sharey=True)
    for ax, method in zip(axes, METHODS):
        part = scaled[scaled.method == method]
        knobs = sorted(part.knob.unique())
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, max(len(knobs), 1)))
        positive = part[part.kl > 0]
        for colour, knob in zip(colours, knobs):
            at = positive[np.isclose(positive.knob, knob)]
            ax.scatter(at.kl, at.delta, s=5, alpha=0.45, color=colour, label=step_label(method, knob))
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        zero = int((part.kl <= 0).sum())
        ax.set_title(f"{method}" + (f" ({zero} updates with KL 0 not drawn)" if zero else ""), fontsize="medium")
        ax.set_xlabel("KL(π_old ‖ π_new) of the update")
        ax.grid(alpha=0.3)
        # Below the panel: the points fill every corner.
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, markerscale=3,
                  frameon=False)
    axes[0].set_ylabel("ΔJ = J(π_new) − J(π_old), paired episodes\n(symlog; one point per update)")
    fig.suptitle("What one update does to J, against how far it moves the policy (points are updates of "
                 f"{updates.seed.nunique()} seeds; the statistics use runs as units)", fontsize="medium")
    return fig


def plot_curves(updates: pd.DataFrame):
    """J before each measured update (sampled actions) against env steps, one line per step size."""
    fig, axes = plt.subplots(1, len(METHODS), figsize=(13, 3.8), layout="constrained", sharey=True)
    for ax, method in zip(axes, METHODS):
        part = updates[updates.method == method]
        knobs = sorted(part.knob.unique())
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, max(len(knobs), 1)))
        for colour, knob in zip(colours, knobs):
            matrix = part[np.isclose(part.knob, knob)].pivot(index="seed", columns="env_steps", values="before")
            mean, low, high = lab.curve_ci(matrix.to_numpy())
            ax.plot(matrix.columns, mean, color=colour, label=step_label(method, knob))
            ax.fill_between(matrix.columns, low, high, color=colour, alpha=0.15)
        ax.set_title(method, fontsize="medium")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left")
    axes[0].set_ylabel("J(π) on the evaluation episodes\n(mean over seeds, 95% CI)")
    return fig


# ---------------------------------------------------------------- report
def answer(runs: pd.DataFrame, finals: pd.DataFrame, comp: pd.DataFrame) -> str:
    lines = []
    for method in METHODS:
        part = comp[(comp.method == method) & comp.comparison.str.endswith("destructive − control")]
        above = part[part.verdict == "more than the control"]
        trend = comp[(comp.method == method) & comp.comparison.str.startswith("destructive:")]
        best = best_share(finals, method)
        text = (f"- **{method}:** destructive updates exceed the lr = 0 control's rate at {len(above)} of "
                f"{len(part)} step sizes"
                + (f" ({', '.join(c.split(':')[0] for c in above.comparison)})" if len(above) else "") + ".")
        if len(trend):
            t = trend.iloc[0]
            text += f" Largest minus smallest step, destructive share: {lab.fmt_ci(*t['diff'])} ({t.verdict})."
        text += (f" Highest mean final return at {step_label(method, best.idxmax())}, the argmax in "
                 f"{best.max():.0%} of bootstrap resamples of the seeds.")
        lines.append(text)
    rho = comp[comp.comparison.str.endswith("ρ(KL, ΔJ)")]
    resolved = rho[~rho.verdict.str.startswith("not resolved")]
    lines.append(
        f"- **Within a run, are the larger steps the harmful ones?** The rank correlation of an update's KL with "
        f"its ΔJ, per run, then over seeds: resolved at {len(resolved)} of {len(rho)} (method, step size) cells"
        + (": " + "; ".join(f"{r.comparison.split(':')[0]} ({r.method}) {lab.fmt_ci(*r.diff)}, {r.verdict}"
                           for r in resolved.itertuples()) if len(resolved) else "") + ".")
    return "\n".join(lines)


def headline_line(plan: DictConfig, comp: pd.DataFrame, runs: pd.DataFrame) -> str:
    """plan.headline = [method, knob]: that cell's destructive share against its control."""
    method, knob = plan.headline
    label = step_label(method, float(knob))
    row = comp[comp.comparison == f"{label}: destructive − control"].iloc[0]
    group = runs[(runs.method == method) & np.isclose(runs.knob, float(knob))]
    share = lab.bootstrap_ci(group.destructive.to_numpy())
    return (f"**Headline.** {method} at {label}, {row.seeds} seeds: a share {lab.fmt_ci(*share)} of the measured "
            f"updates lowered J by more than the run's noise floor; minus the lr = 0 control's share on the same "
            f"runs: {lab.fmt_ci(*row['diff'])} ({row.verdict}).")


DISCUSSION = """\
The motivation of trust-region methods is that a policy-gradient step that moves the policy too
far can lower the true objective even though it improves the local surrogate (Kakade & Langford
2002; Schulman et al. 2015); PPO's clip is a cheap stand-in for the KL constraint (Schulman et al.
2017), and Engstrom et al. (2020) and Ilyas et al. (2020) found that PPO's clip does not in fact
bound the KL and that its gains come in good part from code-level details. The usual evidence is a
learning curve or a drawdown of the training return, which mixes what the update did with the
noise of a handful of training episodes and with the return level. Here each update's effect on J
is measured directly, on episodes shared by the policy before and after (their difference has
no episode-sampling noise when the update is zero), and an update is only called destructive when
it falls below the noise that two independent evaluations of the same policy show (the lr = 0
control, taken at every measured update rather than in a separate frozen run: a frozen run would
only measure the noise of the untrained policy, and with shared episodes its ΔJ is exactly 0).

What the numbers say against that picture: in all three methods the share of destructive updates
grows with the step size (largest minus smallest step resolved in each), and it grows with the
update's KL rather than with the kind of control — A2C at lr = 0.01 and TRPO at δ = 0.01 move the
policy by a similar median KL (about 7e-3) and lose J on a similar share of updates (8% and 10%;
a cross-method difference this table does not test). The trust region does not make updates safe
on its own: TRPO at the common default δ = 0.01 has more destructive updates than the control,
and at δ = 0.1 a quarter of its updates lose J. This disagrees with reading TRPO as a monotonic-
improvement method: the guarantee of Schulman et al. (2015) holds for the KL-penalised surrogate
with a penalty far larger than any practical δ implies, and for the exact advantage, not for a
line search on 1024 noisy samples; the surrogate improvement the line search checks is the
sample's, not J's. PPO's clip keeps its median KL near 3e-3 even at ε = 0.5 (as Engstrom et al.
found, ε sets it only loosely), and at ε ≤ 0.3 its destructive share is not above the control's
(below it at ε = 0.1). Within a run, the larger updates are not the harmful ones: where the rank
correlation of KL with ΔJ is resolved (4 of 12 cells, against about 0.6 expected by chance) it is
positive — the bigger steps of a run tend to be its improving ones.

Limits: the floor is the unpaired noise, larger than the paired estimate's own noise, so the
destructive share is conservative — at the smallest steps it is below the control's share; and
with 16 evaluation episodes per measurement a single update's ΔJ is coarse, so small
degradations count as noise. The cells not resolved at 16 seeds (PPO at ε = 0.2 and 0.3 against
the control, most within-run correlations) need the `paper` preset (32 seeds, 5e5 steps, every
update measured with 64 episodes, on a GPU); CartPole's ceiling of 500 also hides drops of
policies that already balance, which Acrobot or a continuous-control task would show."""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    updates, finals = kept.tables["updates"], kept.tables["finals"]
    runs = per_run(updates)
    comp = comparisons(runs)
    n = int(runs.groupby(["method", "knob"]).seed.nunique().min())
    per_run_updates = int(runs.updates.median())

    report = lab.Report(plan, "Step-size control: what one update does to the objective", kept=kept)
    knobs = {m: ", ".join(f"{k:g}" for k in sorted(runs[runs.method == m].knob.unique())) for m in METHODS}
    grids = "; ".join(f"{m} {symbol(m)} ∈ {{{values}}}" for m, values in knobs.items() if values)
    every = int(plan.update_eval_every)
    report.add(
        "**Question.** How often does one update make the policy worse — J(π_new) < J(π_old) beyond evaluation "
        "noise — under each kind of step-size control: a learning rate (A2C: one Adam step on the policy "
        "gradient), a clipped surrogate (PPO, ε), a trust region (TRPO, δ)?",
        "**Command** (trains what is missing, then writes this report; `rebuild=true` remakes it from the kept "
        "per-update numbers without training):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds per setting (the same seeds in every method), "
        f"{int(updates.env_steps.max())} environment steps per run on {', '.join(sorted(finals.env.unique()))}; "
        f"{grids}; the update evaluation on {'every update' if every == 1 else f'every {ordinal(every)} update'} "
        f"({per_run_updates} per run) with {int(plan.eval_episodes)} episodes. Presets: "
        f"`conf/experiment/{NAME}.yaml` (A2C) and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
    )
    if plan.get("headline"):
        report.add(headline_line(plan, comp, runs))
    report.add(
        "## Setup",
        "Every method: 64×64 tanh actor and critic, 8 envs × 128 steps = 1024 transitions per update, no learning-"
        "rate annealing. A2C: one Adam step per update (λ = 0.95 GAE, global-norm clip 0.5). PPO: lr 5e-4, 4 epochs "
        "× 4 minibatches, per-minibatch advantage normalisation, clipped value loss. TRPO: 10 CG iterations, "
        "backtracking 0.8^k (k < 10), critic Adam 1e-3 × 10 epochs.",
        "**Measurement** (`purerl.rl.evaluation.with_update_evaluation`, inside the compiled training loop): on "
        "each measured update the policy before (π_old) and after (π_new) play the same "
        f"{int(plan.eval_episodes)} evaluation episodes — same start states, env randomness and action-sampling "
        "draws, actions sampled (J is the stochastic policy's expected return, the objective the update "
        "optimises) — and ΔJ = mean return of π_new − of π_old. The lr = 0 control: π_old again on "
        "independent episodes; control ΔJ = that − π_old's paired mean, the change an update of size zero shows "
        "when the two evaluations share nothing. Per run: the noise floor = the 90th percentile of |control ΔJ| "
        "over its measured updates (the control is symmetric, so −floor is its 5th percentile); an update is "
        "*destructive* when ΔJ < −floor, *improving* when ΔJ > floor; the control's own share below −floor is "
        "the false-alarm rate of that rule on the same run. KL: the exact mean KL(π_old ‖ π_new) over the update's "
        "batch states (A2C/PPO `update_kl`, TRPO `kl`). Every number is a per-run statistic first; seeds are the "
        "unit (mean or median over seeds with a 95% bootstrap CI); no correlation pools runs. Final return: mean "
        "training return over the last 10% of updates (`purerl.results.summarize`).",
        "## Answer\n\n" + answer(runs, finals, comp),
    )
    report.headline(f"Headline: per method and step size, {n} seeds",
                    lab.markdown_table(headline(runs, finals, comp)))
    report.add(
        f"## Comparisons (paired over seeds)\n\n{len(comp)} tests, chosen before the run: per method and step size "
        "the destructive share minus the control's share on the same runs; per method the destructive share at "
        "its largest minus its smallest step (same seeds); per method and step size the within-run rank "
        "correlation of the update's KL with its ΔJ against 0. With this many 95% CIs, expect about one in "
        "twenty to exclude 0 by chance.",
        lab.markdown_table(comparison_table(comp)),
    )
    report.figure(plot_shares(runs), "shares.png",
                  "Destructive and improving updates and the lr = 0 control, against the step size, per method")
    report.figure(plot_delta_vs_kl(updates, runs), "delta_vs_kl.png",
                  "ΔJ of every measured update against its KL, per method (colour: step size)")
    report.figure(plot_curves(updates), "learning_curves.png",
                  "J of the policy before each measured update, per method and step size (mean, 95% CI)")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
