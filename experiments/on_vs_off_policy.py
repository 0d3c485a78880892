"""On- vs off-policy: PPO and A2C vs DQN and SAC.
`python -m experiments.on_vs_off_policy [scale=ci|paper]`

One `purerl-train` job per env × algorithm (8 vmapped seeds at `scale=ci`): PPO and A2C
(on-policy) against DQN (discrete actions) and SAC (discrete on CartPole/Acrobot,
continuous on Pendulum). Two axes: return against environment steps (sample efficiency)
and return against wall-clock seconds. A job's seeds train together in one vmapped
program, so wall-clock is measured per job (`purerl-train` records compile and run
seconds); an update's time is its share of the job's run time (every update of a job
does the same work, except off-policy updates before `learning_starts`, which do no
gradient steps and so are drawn later than they happened).
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab

NAME = "on_vs_off_policy"
FAMILY = {"ppo": "on-policy", "a2c": "on-policy", "dqn": "off-policy", "sac": "off-policy"}
ALGO_ORDER = ("ppo", "a2c", "dqn", "sac")
COLOURS = {"ppo": "C0", "a2c": "C9", "dqn": "C3", "sac": "C1"}
ENV_ORDER = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")
WINDOW = 0.1  # "return at budget B": mean training return over the updates in ((1 − WINDOW)·B, B]


# ---------------------------------------------------------------- curves
def load(folders: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-update curves, per-run summary): algo label, family, seconds into the run."""
    summary = lab.load_jobs(folders)
    curves = lab.load_jobs(folders, table="results")
    curves = curves[["job", "algo", "env", "seed", "setting", "update", "env_steps", "episode_return"]].copy()
    jobs = summary.groupby("job").agg(run_seconds=("wall_seconds", "first"),
                                      compile_seconds=("compile_seconds", "first"),
                                      num_updates=("num_updates", "first"))
    curves = curves.sort_values(["job", "setting", "seed", "update"])
    # An update in which no episode finished reports NaN: carry the last finished episode's return.
    curves["episode_return"] = curves.groupby(["job", "setting", "seed"]).episode_return.ffill()
    curves = curves.join(jobs, on="job")
    curves["seconds"] = curves.run_seconds * (curves["update"] + 1) / curves.num_updates
    for frame in (summary, curves):
        frame["method"] = [label(a, e) for a, e in zip(frame.algo, frame.env)]
        frame["family"] = frame.algo.map(FAMILY)
    return curves, summary


def label(algo: str, env: str) -> str:
    if algo == "sac":
        return "SAC (continuous)" if env == "Pendulum-v1" else "SAC (discrete)"
    return algo.upper()


def returns_at(curves: pd.DataFrame, axis: str, budget: float) -> pd.Series:
    """Per (job, seed): mean training return over the updates in ((1 − WINDOW)·budget, budget]
    of `axis` (env_steps or seconds), or of the last update before it when that window holds
    none; NaN if the run is shorter than the budget or no update is that early."""
    runs = pd.MultiIndex.from_frame(curves[["job", "seed"]].drop_duplicates())
    before = curves[curves[axis] <= budget * (1 + 1e-9)]
    last = before.groupby(["job", "seed"])[axis].transform("max")
    inside = before[(before[axis] > (1 - WINDOW) * budget) | (before[axis] == last)]
    values = inside.groupby(["job", "seed"]).episode_return.mean().reindex(runs)
    reached = curves.groupby(["job", "seed"])[axis].max().reindex(runs) >= budget * (1 - 1e-9)
    return values.where(reached)


def reach(curves: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per job: the env steps and seconds at which the IQM-over-seeds training return first
    reaches `threshold` (NaN if it never does)."""
    from analysis.aggregate import statistic

    rows = {}
    for job, group in curves.groupby("job"):
        matrix = group.pivot_table(index="seed", columns="update", values="episode_return", dropna=False)
        iqm = statistic("iqm")(matrix.to_numpy(), axis=0)
        hit = np.flatnonzero(iqm >= threshold)
        at = group.groupby("update")[["env_steps", "seconds"]].first().reindex(matrix.columns)
        rows[job] = at.iloc[hit[0]] if hit.size else pd.Series({"env_steps": np.nan, "seconds": np.nan})
    return pd.DataFrame(rows).T


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    env_rank = {e: i for i, e in enumerate(ENV_ORDER)}
    algo_rank = {a: i for i, a in enumerate(ALGO_ORDER)}
    return frame.assign(_e=frame.env.map(env_rank), _a=frame.algo.map(algo_rank)).sort_values(["_e", "_a"]).drop(
        columns=["_e", "_a"])


# ---------------------------------------------------------------- tables
def per_job(curves: pd.DataFrame, summary: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """One row per env × algorithm: budgets, final return, return at the env's common step
    budget and common wall-clock budget (IQM over seeds, 95% CI), run and compile seconds."""
    rows = []
    for env, part in curves.groupby("env"):
        jobs = part.groupby("job").agg(steps=("env_steps", "max"), seconds=("seconds", "max"))
        common_steps, common_seconds = float(jobs.steps.min()), float(jobs.seconds.min())
        at_steps = returns_at(part, "env_steps", common_steps)
        at_seconds = returns_at(part, "seconds", common_seconds)
        threshold = float(plan.thresholds[env])
        reached = reach(part, threshold)
        for job in jobs.index:
            runs = summary[summary.job == job]
            first = runs.iloc[0]
            rows.append({
                "env": env, "algo": first.algo, "method": first.method, "family": first.family, "job": job,
                "env_steps": int(jobs.steps[job]), "run_seconds": float(first.wall_seconds),
                "compile_seconds": float(first.compile_seconds),
                "final": lab.bootstrap_ci(runs.final_return.to_numpy(), "iqm"),
                "common_steps": common_steps, "at_steps": lab.bootstrap_ci(at_steps.loc[job].to_numpy(), "iqm"),
                "common_seconds": common_seconds,
                "at_seconds": lab.bootstrap_ci(at_seconds.loc[job].to_numpy(), "iqm"),
                "seeds": len(runs), "threshold": threshold,
                "steps_to": float(reached.env_steps[job]), "seconds_to": float(reached.seconds[job]),
            })
    return ordered(pd.DataFrame(rows)).reset_index(drop=True)


def headline(jobs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "env": [f"{e} (R* = {t:g})" for e, t in zip(jobs.env, jobs.threshold)],
        "method": jobs.method,
        "family": jobs.family,
        "env steps": [f"{s:,}" for s in jobs.env_steps],
        "IQM final return [95% CI]": [lab.fmt_ci(*v) for v in jobs.final],
        "at equal env steps [95% CI]": [f"{lab.fmt_ci(*v)} @ {s:,.0f}" for v, s in
                                        zip(jobs.at_steps, jobs.common_steps)],
        "at equal wall-clock [95% CI]": [f"{lab.fmt_ci(*v)} @ {s:.3g} s" for v, s in
                                         zip(jobs.at_seconds, jobs.common_seconds)],
        "to reach R*: env steps": ["not reached" if np.isnan(v) else f"{v:,.0f}" for v in jobs.steps_to],
        "to reach R*: seconds": ["not reached" if np.isnan(v) else lab.fmt(v) for v in jobs.seconds_to],
        "run s (all seeds)": [lab.fmt(v) for v in jobs.run_seconds],
        "compile s": [lab.fmt(v) for v in jobs.compile_seconds],
        "env steps/s": [f"{s * n / t:,.0f}" for s, n, t in zip(jobs.env_steps, jobs.seeds, jobs.run_seconds)],
    })


def winners(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per env and axis: the best method of each family (IQM), and which family wins —
    'inconclusive' when the two best methods' 95% CIs overlap."""
    rows = []
    for env, part in jobs.groupby("env", sort=False):
        for axis, column, budget in (("env steps", "at_steps", "common_steps"),
                                     ("wall-clock", "at_seconds", "common_seconds")):
            best = {}
            for family, group in part.groupby("family"):
                scores = group[column].map(lambda v: v[0])
                if scores.notna().any():
                    best[family] = group.loc[scores.idxmax()]
            if len(best) < 2:
                continue
            on, off = best["on-policy"], best["off-policy"]
            (on_v, on_lo, on_hi), (off_v, off_lo, off_hi) = on[column], off[column]
            if on_lo > off_hi:
                verdict = "on-policy"
            elif off_lo > on_hi:
                verdict = "off-policy"
            else:
                verdict = "inconclusive (CIs overlap)"
            value = part[budget].iloc[0]
            rows.append({
                "env": env, "axis": f"equal {axis}",
                "budget": f"{value:,.0f} env steps" if axis == "env steps" else f"{value:.3g} s",
                "best on-policy": f"{on.method} {lab.fmt_ci(on_v, on_lo, on_hi)}",
                "best off-policy": f"{off.method} {lab.fmt_ci(off_v, off_lo, off_hi)}",
                "winner": verdict,
            })
        for axis, column, unit in (("env steps to R*", "steps_to", "env steps"), ("seconds to R*", "seconds_to", "s")):
            fastest = {family: group.loc[group[column].idxmin()] for family, group in part.groupby("family")
                       if group[column].notna().any()}
            text = {f: f"{r.method} {r[column]:,.0f} {unit}" if unit != "s" else f"{r.method} {lab.fmt(r[column])} s"
                    for f, r in fastest.items()}
            if len(fastest) == 2:
                verdict = min(fastest, key=lambda f: fastest[f][column]) + " (point estimate, no CI)"
            else:
                verdict = (f"{next(iter(fastest))} (only it reaches R*)" if fastest else "neither reaches R*")
            rows.append({
                "env": env, "axis": axis, "budget": f"R* = {part.threshold.iloc[0]:g}",
                "best on-policy": text.get("on-policy", "not reached"),
                "best off-policy": text.get("off-policy", "not reached"), "winner": verdict,
            })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- plots
def plot_curves(curves: pd.DataFrame, axis: str):
    envs = [e for e in ENV_ORDER if e in set(curves.env)]
    fig, axes = plt.subplots(1, len(envs), figsize=(5.0 * len(envs), 4.2), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        part = ordered(curves[curves.env == env])
        for _, group in part.groupby("job", sort=False):
            matrix = group.pivot_table(index="seed", columns="update", values="episode_return", dropna=False)
            matrix = matrix.ffill(axis=1).bfill(axis=1)  # updates without a finished episode: last return
            xs = group.groupby("update")[axis].first().reindex(matrix.columns).to_numpy()
            iqm, low, high = lab.curve_ci(matrix.to_numpy(), "iqm")
            algo = group.algo.iloc[0]
            ax.plot(xs, iqm, color=COLOURS[algo], lw=1.6, label=f"{group.method.iloc[0]} ({FAMILY[algo]})")
            ax.fill_between(xs, low, high, color=COLOURS[algo], alpha=0.2, lw=0)
        ax.set_title(env, fontsize="medium")
        if axis == "seconds":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("wall-clock seconds of training (log scale)")
        else:
            ax.set_xlabel("environment steps per seed")
        ax.set_ylabel("training episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right")
    n = curves.groupby("job").seed.nunique().min()
    what = ("environment steps" if axis == "env_steps" else
            f"wall-clock (the job's {n} seeds train together, vmapped; compile time excluded)")
    fig.suptitle(f"Return against {what}: IQM over {n} seeds, 95% bootstrap CI bands", fontsize="medium")
    return fig


def plot_throughput(jobs: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    names = [f"{e.split('-')[0]}\n{m}" for e, m in zip(jobs.env, jobs.method)]
    rate = jobs.env_steps * jobs.seeds / jobs.run_seconds
    ax.bar(range(len(jobs)), rate, color=[COLOURS[a] for a in jobs.algo])
    ax.set_xticks(range(len(jobs)), names, fontsize="x-small")
    ax.set_yscale("log")
    ax.set_ylabel("env steps per second (all seeds)")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLOURS[a], label=f"{a.upper()} ({FAMILY[a]})") for a in ALGO_ORDER
                       if a in set(jobs.algo)], fontsize="x-small")
    ax.set_title("Training throughput per job (run time, compile excluded; shared 2-core CPU)", fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def answer(jobs: pd.DataFrame, wins: pd.DataFrame, plan: DictConfig) -> str:
    lines = []
    for env, part in wins.groupby("env", sort=False):
        parts = [f"{r.axis} ({r.budget}): **{r.winner}** (on-policy {r['best on-policy']}, off-policy "
                 f"{r['best off-policy']})" for _, r in part.iterrows()]
        lines.append(f"- **{env}:** " + "; ".join(parts) + ".")
    summary = []
    for axes, name in ((("equal env steps", "env steps to R*"), "sample efficiency (env steps)"),
                       (("equal wall-clock", "seconds to R*"), "wall-clock")):
        part = wins[wins.axis.isin(axes)]
        by_family = {}
        for env, group in part.groupby("env", sort=False):
            for family in ("on-policy", "off-policy"):
                measures = [a for a, w in zip(group.axis, group.winner) if w.startswith(family)]
                if measures:
                    by_family.setdefault(family, []).append(f"{env} ({' and '.join(measures)})")
        summary.append(f"*{name}:* " + "; ".join(f"{f} wins on {', '.join(by_family.get(f, ['no env']))}"
                                                 for f in ("on-policy", "off-policy")))
    lines.insert(0, "- **Summary:** " + ". ".join(summary) + ". An env missing from a family's list is "
                 "inconclusive or won by the other family on both measures of that axis.")
    stuck = jobs[jobs.steps_to.isna()]
    if len(stuck):
        lines.append("- **Never reached R* within their budgets:** "
                     + ", ".join(f"{r.method} on {r.env} (final {lab.fmt_ci(*r.final)})" for _, r in stuck.iterrows())
                     + ".")
    rate = jobs.assign(rate=jobs.env_steps * jobs.seeds / jobs.run_seconds).groupby("family").rate.median()
    if len(rate) == 2:
        lines.append(
            f"- **Throughput:** the median on-policy job processes {rate['on-policy']:,.0f} env steps/s (all "
            f"seeds), the median off-policy job {rate['off-policy']:,.0f} (ratio "
            f"{rate['on-policy'] / rate['off-policy']:.2g}): "
            "off-policy methods take gradient steps per env step (SAC one per step, DQN one per 10 env steps), "
            "on-policy methods a few epochs per rollout of thousands of steps."
        )
    lines.append(
        f"- **Caveats:** one short budget per env, default hyperparameters (nothing tuned per env), {plan.seeds} "
        "seeds; wall-clock was measured on a shared CPU where other jobs ran (noisy, and a GPU changes the ratio: "
        "vmapped on-policy rollouts parallelise, sequential gradient steps do not), and it excludes compile time "
        "(listed separately; it is of the same order as the run time here). 'At equal wall-clock' compares at "
        "the shortest run time among the env's jobs, so methods are compared early in their runs there."
    )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    folders = lab.train_jobs(plan)
    curves, summary = load(folders)
    jobs = per_job(curves, summary, plan)
    wins = winners(jobs)

    report = lab.Report(plan, "On- vs off-policy: PPO and A2C vs DQN and SAC")
    report.add(
        "**Question.** Per environment step and per second of compute, how do on-policy methods (PPO, A2C) compare "
        "with off-policy ones (DQN for discrete actions, SAC: discrete on CartPole/Acrobot, continuous on Pendulum)? "
        "Which family wins on which axis here?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {plan.seeds} vmapped seeds per job; budgets and settings per job in "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml` (preset: `conf/experiment/{NAME}.yaml`, PPO on CartPole). "
        f"Of the jobs' {jobs.compile_seconds.sum() + jobs.run_seconds.sum():.0f} s, compiling the {len(jobs)} programs "
        f"took {jobs.compile_seconds.sum():.0f} s (a rerun reuses JAX's persistent compilation cache) and training "
        f"{jobs.run_seconds.sum():.0f} s, on a 2-core CPU shared with other jobs.",
        "## Answer\n\n" + answer(jobs, wins, plan),
        "## Who wins on which axis",
        "Each family's best method by IQM return at the env's common budget: the smallest env-step budget of its "
        "jobs (equal env steps) and the shortest run time of its jobs (equal wall-clock). Return at a budget B: "
        f"mean training return (episodes finished, exploration on) over the updates in ({1 - WINDOW:g}·B, B], then "
        "IQM over seeds with a 95% stratified bootstrap CI. A family wins when its CI lies above the other's. "
        "Time to R*: the env steps and run seconds at which the method's IQM training-return curve first reaches "
        "the env's target R* (`thresholds` in the scale file); the faster family wins (a point estimate).",
        lab.markdown_table(wins),
    )
    report.headline("Headline: return per method at its budget, at equal env steps and at equal wall-clock",
                    lab.markdown_table(headline(jobs)))
    report.figure(plot_curves(curves, "env_steps"), "return_vs_env_steps.png",
                  "Sample efficiency: training return against environment steps")
    report.figure(plot_curves(curves, "seconds"), "return_vs_wall_clock.png",
                  "Compute efficiency: training return against wall-clock seconds (log scale)")
    report.figure(plot_throughput(jobs), "throughput.png", "Environment steps per second of each job")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
