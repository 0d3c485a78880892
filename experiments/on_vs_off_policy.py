"""On- vs off-policy: PPO and A2C vs DQN and SAC at equal environment-step budgets.
`python -m experiments.on_vs_off_policy [scale=full|ci|paper|smoke] [rebuild=true]`

Each method runs a literature configuration (the scale file names the source of each) for the
env's env-step budget, its seeds (the same seeds for every method) vmapped in one program, in
timed segments (`purerl.rl.timed`): the host times every segment around its compiled program,
so per-update wall time is measured, not interpolated, and compile time is measured apart.
After each segment, and before the first, every seed's greedy policy (exploration off) plays
separate evaluation episodes from fresh resets, outside the timed segments; all methods on an
env meet the same start states at a given evaluation. One job per (env, method), resumable job
by job; the per-seed evaluation returns, segment times and compile times are kept beside the
report, and `rebuild=true` remakes it from them without training.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab

NAME = "on_vs_off_policy"
FAMILY = {"ppo": "on-policy", "a2c": "on-policy", "dqn": "off-policy", "sac": "off-policy"}
ALGO_ORDER = ("ppo", "a2c", "dqn", "sac")
COLOURS = {"PPO": "#1f77b4", "A2C": "#2ca02c", "DQN": "#d62728", "SAC (discrete)": "#ff7f0e",
           "SAC (continuous)": "#8c564b"}  # per method
EXTENDED_COLOUR = "#9467bd"  # a method run beyond the env's budget
LATE = 0.5  # stability: drawdowns over the evaluations in the last half of the budget
RESAMPLES = 2000


# ---------------------------------------------------------------- jobs
def _algo(spec: Any) -> str:
    return next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("algo="))


def method_label(algo: str, env: str) -> str:
    if algo == "sac":
        return "SAC (continuous)" if env.startswith("Pendulum") else "SAC (discrete)"
    return algo.upper()


def jobs(plan: DictConfig) -> dict[str, DictConfig]:
    """job -> its purerl-train overrides (without the experiment's preset), with its budget: the env's,
    times the job's `budget_factor` (default 1; a longer run is shown apart, not compared)."""
    def budget(spec: Any) -> int:
        return int(plan.budgets[spec.env].budget * spec.get("budget_factor", 1))

    return {job: DictConfig({"overrides": [*spec.overrides, f"algo.config.total_timesteps={budget(spec)}",
                                           "save_policies=false"], "preset": False})
            for job, spec in plan.jobs.items()}


def with_extended(jobs: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """The jobs table with `extended` (a budget beyond the env's, not in the paired comparisons),
    such a job's method named with its factor, and a colour per method."""
    env_budget = jobs.env.map(lambda e: float(plan.budgets[e].budget))
    factor = jobs.budget / env_budget
    extended = factor > 1.5  # the env's budget rounded down to whole updates is still factor 1
    method = [f"{m} ({f:.0f}× budget)" if x else m for m, f, x in zip(jobs.method, factor, extended)]
    colour = [EXTENDED_COLOUR if x else COLOURS.get(m, "#7f7f7f") for m, x in zip(jobs.method, extended)]
    return jobs.assign(extended=extended, method=method, colour=colour)


def train_job(plan: DictConfig, job: str) -> dict[str, pd.DataFrame]:
    """One (env, method): its seeds trained in timed segments with greedy evaluations."""
    from purerl.algos import get_algorithm
    from purerl.cli.train import build_plan
    from purerl.rl import timed

    spec = plan.jobs[job]
    env = plan.budgets[spec.env]
    algo = _algo(spec)
    base = build_plan(lab.compose_job(plan, list(jobs(plan)[job].overrides), preset=False))
    config, hyper = base.config, base.hyper
    if config.env != spec.env:
        raise lab.ExperimentError(f"jobs.{job}: its overrides train {config.env}; env says {spec.env}")
    seeds = int(plan.seed_offset) + np.arange(int(plan.seeds))
    segment = max(1, config.num_updates // int(plan.eval_points))
    run = timed.run_timed(get_algorithm(algo).make_train(config), hyper, seeds, segment, config=config,
                          greedy=timed.greedy_policy(algo, config), episodes=int(plan.eval_episodes))
    per_update = config.num_envs * config.num_steps
    learning_from = getattr(config, "collect_only_updates", 0)
    ends = np.cumsum(run.segment_updates)
    train_seconds = np.concatenate([[0.0], np.cumsum(run.segment_seconds)])
    # Training episode return (exploration on) over each segment: mean of the updates' returns.
    train_return = run.metrics["episode_return"]  # [seed, update]
    rows = []
    for point, done in enumerate(run.eval_updates):
        start = 0 if point == 0 else ends[point - 1] - run.segment_updates[point - 1]
        with np.errstate(all="ignore"):
            segment_return = (np.full(len(seeds), np.nan) if point == 0
                              else np.nanmean(train_return[:, start:done], axis=1))
        for i, seed in enumerate(seeds):
            rows.append({"job": job, "seed": int(seed), "point": point, "updates": int(done),
                         "env_steps": int(done) * per_update, "train_seconds": float(train_seconds[point]),
                         "greedy_return": float(run.eval_returns[point, i]),
                         "train_return": float(segment_return[i])})
    segments = pd.DataFrame({"job": job, "segment": np.arange(len(ends)), "updates": run.segment_updates,
                             "first_update": ends - run.segment_updates, "seconds": run.segment_seconds,
                             "learning": (ends - run.segment_updates) >= learning_from})
    info = pd.DataFrame([{"job": job, "env": spec.env, "algo": algo, "method": method_label(algo, spec.env),
                          "family": FAMILY[algo], "source": str(spec.source), "seeds": len(seeds),
                          "env_steps_per_update": per_update, "num_updates": int(config.num_updates),
                          "budget": int(config.num_updates) * per_update, "threshold": float(env.threshold),
                          "compile_init": run.compile_seconds["init"],
                          "compile_segment": run.compile_seconds["segment"],
                          "compile_evaluation": run.compile_seconds["evaluation"],
                          "init_seconds": run.init_seconds, "eval_seconds": run.eval_seconds}])
    return {"evals": pd.DataFrame(rows), "segments": segments, "jobs": info}


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    from purerl.rl import evaluation, offpolicy, timed

    parts: dict[str, list[pd.DataFrame]] = {"evals": [], "segments": [], "jobs": []}
    for job in plan.jobs:
        spec = plan.jobs[job]
        identity = {"spec": spec, "env": plan.budgets[spec.env], "seeds": plan.seeds, "seed_offset": plan.seed_offset,
                    "eval_episodes": plan.eval_episodes, "eval_points": plan.eval_points}
        tables = lab.measured(plan, job, identity, lambda job=job: train_job(plan, job),
                              code=[timed, evaluation, offpolicy, train_job])
        for key in parts:
            parts[key].append(tables[key])
    return {key: pd.concat(frames, ignore_index=True) for key, frames in parts.items()}


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    from purerl.algos import a2c, dqn, ppo, sac
    from purerl.rl import evaluation, offpolicy, timed

    return [timed, evaluation, offpolicy, ppo, a2c, dqn, sac, train_job]


# ---------------------------------------------------------------- per-seed measures
def _drawdown(values: np.ndarray) -> float:
    """Largest fall of the greedy return from its running maximum within `values`."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.nan
    return float(np.max(np.maximum.accumulate(values) - values))


def per_seed(evals: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per (job, seed): final greedy return (at the budget), its area (mean greedy return over the
    budget, trapezoid over env steps), the late drawdown, and env steps and training seconds
    until the greedy return first reaches R* (inf if it never does)."""
    rows = []
    for job, group in evals.groupby("job", sort=False):
        meta = jobs.set_index("job").loc[job]
        for seed, run in group.groupby("seed"):
            run = run.sort_values("point")
            steps, ret = run.env_steps.to_numpy(float), run.greedy_return.to_numpy(float)
            late = ret[steps >= LATE * meta.budget]
            hit = np.flatnonzero(ret >= meta.threshold)
            rows.append({
                "job": job, "env": meta.env, "algo": meta.algo, "method": meta.method, "family": meta.family,
                "seed": int(seed), "final": ret[-1],
                "area": float(np.trapezoid(np.nan_to_num(ret, nan=ret[~np.isnan(ret)].min() if (~np.isnan(ret)).any()
                                                         else 0.0), steps) / steps[-1]),
                "drawdown": _drawdown(late),
                "steps_to": float(steps[hit[0]]) if hit.size else np.inf,
                "seconds_to": float(run.train_seconds.to_numpy()[hit[0]]) if hit.size else np.inf,
            })
    return pd.DataFrame(rows)


def _median_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Median (inf allowed: not reached) with a percentile bootstrap CI over seeds."""
    values = np.asarray(values, float)
    index = np.random.default_rng(seed).integers(0, values.size, (RESAMPLES, values.size))
    boot = np.median(values[index], axis=1)
    # No interpolation between quantiles: a resample's median may be inf (not reached).
    low, high = np.quantile(boot, [0.025, 0.975], method="inverted_cdf")
    return float(np.median(values)), float(low), float(high)


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Mean over seeds of a − b (the same seed in both), with a 95% bootstrap CI."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return lab.bootstrap_ci(both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy())


MEASURES = (("final", "final greedy return", "higher"), ("area", "mean greedy return over the budget", "higher"),
            ("drawdown", "late drawdown of the greedy return", "lower"))


def comparisons(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per env, every on-policy method against every off-policy method, on each measure."""
    rows = []
    for env, part in seeds.groupby("env", sort=False):
        methods = part.drop_duplicates("method").set_index("method").family
        for on in methods[methods == "on-policy"].index:
            for off in methods[methods == "off-policy"].index:
                for measure, what, better in MEASURES:
                    a = part[part.method == on].set_index("seed")[measure]
                    b = part[part.method == off].set_index("seed")[measure]
                    diff = paired(a, b)
                    n = len(pd.concat([a, b], axis=1, join="inner").dropna())
                    high, low = (f"{on} better", f"{off} better") if better == "higher" else (
                        f"{off} better", f"{on} better")
                    rows.append({"env": env, "on": on, "off": off, "measure": what, "seeds": n, "diff": diff,
                                 "verdict": lab.verdict(diff, low, high, n)})
    return pd.DataFrame(rows)


def best_share(seeds: pd.DataFrame, measure: str = "final") -> pd.DataFrame:
    """Per env and method: how often it has the highest mean `measure` when the seeds are
    resampled (the same seeds for every method)."""
    rows = []
    for env, part in seeds.groupby("env", sort=False):
        table = part.pivot(index="seed", columns="method", values=measure)
        values = table.to_numpy()
        index = np.random.default_rng(0).integers(0, len(table), (RESAMPLES, len(table)))
        means = np.nanmean(values[index], axis=1)  # [resample, method]
        wins = np.bincount(np.argmax(means, axis=1), minlength=values.shape[1]) / RESAMPLES
        rows += [{"env": env, "method": m, "share": float(w)} for m, w in zip(table.columns, wins)]
    return pd.DataFrame(rows)


def _learning(segments: pd.DataFrame, job: str) -> pd.DataFrame:
    """A job's timed segments after learning starts (all of them if none is)."""
    part = segments[segments.job == job]
    return part[part.learning] if part.learning.any() else part


def timing(segments: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per job: training seconds per update and per env step (the batch of seeds), median over the
    segments after learning starts with a bootstrap CI over segments; compile seconds apart."""
    rows = []
    for meta in jobs.itertuples():
        learning = _learning(segments, meta.job)
        stat = _median_ci((learning.seconds / learning.updates).to_numpy())
        rows.append({"job": meta.job, "env": meta.env, "method": meta.method, "algo": meta.algo,
                     "family": meta.family, "colour": meta.colour, "per_update": stat,
                     "per_env_step": tuple(v / meta.env_steps_per_update for v in stat), "segments": len(learning),
                     "train_seconds": float(segments[segments.job == meta.job].seconds.sum()),
                     "compile_seconds": float(meta.compile_init + meta.compile_segment + meta.compile_evaluation),
                     "eval_seconds": float(meta.eval_seconds), "seeds": int(meta.seeds),
                     "env_steps_per_update": int(meta.env_steps_per_update)})
    return pd.DataFrame(rows)


def cost_ratios(segments: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per env, every off-policy method's training seconds per env step over every on-policy
    method's: the ratio of the two medians over segments, with a 95% CI from resampling each
    job's segments."""
    rows = []
    rng = np.random.default_rng(0)
    for env, part in jobs.groupby("env", sort=False):
        for on in part[part.family == "on-policy"].itertuples():
            for off in part[part.family == "off-policy"].itertuples():
                a, b = (_learning(segments, m.job).pipe(lambda p, m=m: p.seconds / (p.updates * m.env_steps_per_update))
                        .to_numpy() for m in (off, on))
                boot = (np.median(a[rng.integers(0, a.size, (RESAMPLES, a.size))], axis=1)
                        / np.median(b[rng.integers(0, b.size, (RESAMPLES, b.size))], axis=1))
                rows.append({"env": env, "off": off.method, "on": on.method,
                             "ratio": (float(np.median(a) / np.median(b)), *np.quantile(boot, [0.025, 0.975]))})
    return pd.DataFrame(rows)


def repeats(evals: pd.DataFrame, jobs: pd.DataFrame) -> list[tuple[str, str]]:
    """(longer method, method) pairs of the same env and algorithm whose greedy returns coincide at
    every evaluation they share: the longer run repeats the shorter one over its budget."""
    pairs = []
    for ext in jobs[jobs.extended].itertuples():
        for base in jobs[~jobs.extended & (jobs.env == ext.env) & (jobs.algo == ext.algo)].itertuples():
            a = evals[evals.job == base.job].set_index(["seed", "updates"]).greedy_return
            b = evals[evals.job == ext.job].set_index(["seed", "updates"]).greedy_return.reindex(a.index)
            if np.allclose(a, b, equal_nan=True):
                pairs.append((ext.method, base.method))
    return pairs


# ---------------------------------------------------------------- tables
def headline(seeds: pd.DataFrame, times: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for job, part in seeds.groupby("job", sort=False):
        meta = jobs.set_index("job").loc[job]
        t = times.set_index("job").loc[job]
        reached = np.isfinite(part.steps_to.to_numpy())
        share = lab.bootstrap_ci(reached.astype(float))
        steps = _median_ci(part.steps_to.to_numpy())
        secs = _median_ci(part.seconds_to.to_numpy())
        rows.append({
            "env (budget, R*)": f"{meta.env} ({meta.budget:,}, {meta.threshold:g})", "method": meta.method,
            "family": meta.family,
            "final greedy return [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(part.final.to_numpy())),
            "mean over budget": lab.fmt_ci(*lab.bootstrap_ci(part.area.to_numpy())),
            "seeds reaching R*": lab.fmt_ci(*share, digits=2),
            "env steps to R* (median)": _fmt_steps(steps),
            "training s to R* (median)": _fmt_steps(secs, seconds=True),
            "late drawdown": lab.fmt_ci(*lab.bootstrap_ci(part.drawdown.to_numpy())),
            "ms per update": lab.fmt_ci(*(1e3 * v for v in t.per_update)),
            "compile s": lab.fmt(t.compile_seconds),
        })
    return pd.DataFrame(rows)


def _fmt_steps(stat: tuple[float, float, float], seconds: bool = False) -> str:
    def one(v: float) -> str:
        if not np.isfinite(v):
            return "not reached"
        return lab.fmt(v) if seconds else f"{v:,.0f}"

    value, low, high = stat
    return f"{one(value)} [{one(low)}, {one(high)}]"


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"env": comp.env, "on-policy": comp.on, "off-policy": comp.off, "measure": comp.measure,
                         "on − off [95% CI]": comp["diff"].map(lambda d: lab.fmt_ci(*d)), "verdict": comp.verdict})


def stability_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Spread across seeds of the final greedy return (std with a bootstrap CI) per method."""
    rows = []
    for _job, part in seeds.groupby("job", sort=False):
        values = part.final.to_numpy(float)
        index = np.random.default_rng(0).integers(0, values.size, (RESAMPLES, values.size))
        boot = np.std(values[index], axis=1, ddof=1)
        rows.append({"env": part.env.iloc[0], "method": part.method.iloc[0],
                     "std of final greedy return across seeds [95% CI]": lab.fmt_ci(
                         float(np.std(values, ddof=1)), *np.quantile(boot, [0.025, 0.975])),
                     "late drawdown, median [95% CI]": lab.fmt_ci(*_median_ci(part.drawdown.to_numpy()))})
    return pd.DataFrame(rows)


def timing_table(times: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "env": times.env, "method": times.method,
        "env steps per update": times.env_steps_per_update.map("{:,}".format),
        "ms per update, median [95% CI]": times.per_update.map(lambda v: lab.fmt_ci(*(1e3 * x for x in v))),
        "µs per env step (all seeds), median [95% CI]": times.per_env_step.map(
            lambda v: lab.fmt_ci(*(1e6 * x for x in v))),
        "segments timed": times.segments.astype(str),
        "training s": times.train_seconds.map(lab.fmt), "compile s": times.compile_seconds.map(lab.fmt),
        "evaluation s": times.eval_seconds.map(lab.fmt)})


# ---------------------------------------------------------------- plots
def _legend_below(fig, axes) -> None:
    handles, labels = {}, {}
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
            labels[label] = label
    fig.legend(list(handles.values()), list(labels), loc="outside lower center", ncol=len(labels), fontsize="small")


def plot_curves(evals: pd.DataFrame, jobs: pd.DataFrame, axis: str):
    envs = list(dict.fromkeys(jobs.env))
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4.0), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        for meta in jobs[jobs.env == env].itertuples():
            part = evals[evals.job == meta.job]
            matrix = part.pivot(index="seed", columns="point", values="greedy_return")
            xs = part.groupby("point")[axis].first().reindex(matrix.columns).to_numpy(float)
            keep = xs > 0 if axis == "train_seconds" else np.ones_like(xs, bool)  # log axis: no 0
            mean, low, high = lab.curve_ci(matrix.to_numpy()[:, keep])
            # A longer run dashed: where it repeats a method's run at the env's budget, both stay visible.
            ax.plot(xs[keep], mean, color=meta.colour, marker=".", lw=1.5, label=meta.method,
                    ls="--" if meta.extended else "-", zorder=1 if meta.extended else 2)
            ax.fill_between(xs[keep], low, high, color=meta.colour, alpha=0.18, lw=0)
        threshold = jobs[jobs.env == env].threshold.iloc[0]
        ax.axhline(threshold, color="grey", ls=":", lw=1)
        ax.set_title(f"{env} (dotted: R* = {threshold:g})", fontsize="medium")
        if axis == "train_seconds":
            ax.set_xscale("log")
            ax.set_xlabel("training seconds (measured per segment; log)")
        else:
            ax.set_xlabel("environment steps per seed")
        ax.set_ylabel("greedy evaluation return")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    n = evals.groupby("job").seed.nunique().min()
    fig.suptitle(f"Greedy return (exploration off): mean over {n} seeds, 95% bootstrap band", fontsize="medium")
    return fig


def plot_timing(times: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    labels = [f"{e.split('-')[0]}\n{m.replace(' (', chr(10) + '(')}" for e, m in zip(times.env, times.method)]
    xs = np.arange(len(times))
    for ax, (column, scale, title) in zip(axes, (("per_env_step", 1e6, "training µs per env step (all seeds; log)"),
                                                 ("compile_seconds", 1.0, "compile seconds, all programs"))):
        for x, row in zip(xs, times.itertuples()):
            value = getattr(row, column)
            if isinstance(value, tuple):
                v, lo, hi = (scale * u for u in value)
                ax.errorbar([x], [v], yerr=[[v - lo], [hi - v]], fmt="o", color=row.colour, capsize=3)
            else:
                ax.plot([x], [scale * value], "s", color=row.colour)
        ax.set_xticks(xs, labels, fontsize="x-small")
        if column == "per_env_step":  # spans decades between the families
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    return fig


def plot_final(seeds: pd.DataFrame, jobs: pd.DataFrame):
    """Final greedy return per seed (dots) and its mean with a 95% CI, per env and method."""
    envs = list(dict.fromkeys(jobs.env))
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.6), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        metas = list(jobs[jobs.env == env].itertuples())
        for x, meta in enumerate(metas):
            values = seeds[seeds.job == meta.job].final.to_numpy()
            jitter = np.random.default_rng(x).uniform(-0.15, 0.15, values.size)
            ax.scatter(x + jitter, values, s=10, color=meta.colour, alpha=0.6)
            v, lo, hi = lab.bootstrap_ci(values)
            ax.errorbar([x + 0.3], [v], yerr=[[v - lo], [hi - v]], fmt="D", color="black", capsize=3, ms=4)
        ax.axhline(metas[0].threshold, color="grey", ls=":", lw=1)
        ax.set_xticks(range(len(metas)), [m.method for m in metas], fontsize="small")
        ax.set_title(f"{env}: final greedy return per seed", fontsize="medium")
        ax.set_ylabel("final greedy return")
        ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------- report
def answer(comp: pd.DataFrame, shares: pd.DataFrame, seeds: pd.DataFrame, ratios: pd.DataFrame) -> str:
    lines = []
    for env, part in comp.groupby("env", sort=False):
        resolved = part[~part.verdict.str.startswith("not resolved")]
        text = "; ".join(f"{r.on} vs {r.off}, {r.measure}: {lab.fmt_ci(*r['diff'])} → {r.verdict}"
                         for _, r in resolved.iterrows())
        lines.append(f"- **{env}:** {len(resolved)} of {len(part)} paired comparisons resolved"
                     + (f": {text}." if text else "."))
        share = shares[shares.env == env].sort_values("share", ascending=False)
        top = share.iloc[0]
        lines.append(f"  Highest mean final greedy return: {top.method} in {top.share:.0%} of {RESAMPLES} bootstrap "
                     "resamples of the seeds (" + ", ".join(f"{r.method} {r.share:.0%}" for r in share.itertuples())
                     + ").")
        reach = seeds[seeds.env == env].groupby("method", sort=False).steps_to.apply(
            lambda s: float(np.isfinite(s).mean()))
        lines.append("  Share of seeds whose greedy return reaches R* within the budget: "
                     + ", ".join(f"{m} {v:.0%}" for m, v in reach.items()) + ".")
    if len(ratios):
        lines.append("- **Training time per env step, off-policy over on-policy** (ratio of the medians over "
                     "segments, 95% CI): " + "; ".join(f"{r.env} {r.off} / {r.on} {lab.fmt_ci(*r.ratio)}"
                                                      for r in ratios.itertuples()) + ".")
    return "\n".join(lines)


DISCUSSION = """\
*Sample efficiency.* The common picture is that off-policy methods, which replay each transition
many times, need fewer env steps, and on-policy methods less compute per step. Pendulum fits it:
SAC learns it within about 1e4 env steps (Haarnoja et al. 2018; CleanRL's benchmarks), while
rl-baselines3-zoo's tuned PPO budgets 1e5 steps and adds gSDE exploration, which purerl does not
have. Here PPO with those settings but without gSDE is far from R* at the equal budget (five
updates) and still at 5 times it, rl-baselines3-zoo's own budget: on Pendulum, PPO's time to R*
needs gSDE or the `paper` scale's longer budgets, and cannot be compared with SAC's at this cost.
CartPole fits the picture only in part. Discrete SAC (CleanRL's settings) ends highest and with
the smallest spread across seeds, but PPO (PureJaxRL's settings) reaches R* at the same number of
env steps and is ahead early (its mean greedy return over the budget is higher). DQN with CleanRL's
schedule is last: it collects for 1e4 steps and explores with ε decaying over half the budget, so
its greedy policy starts to improve late; CleanRL's own DQN curves on CartPole also take 1e5 steps
and more. That is a statement about these literature schedules at a 5e4-step budget, not about DQN
at its own budget (Henderson et al. 2018 and Patterson et al. 2023: comparisons follow the tuning
protocol; nothing was tuned per budget here).

*Greedy against training returns.* Discrete SAC is where the two differ most: its target entropy
(0.89 of the uniform policy's, as in CleanRL's discrete SAC after Christodoulou 2019) keeps its
behaviour policy close to uniform, so its training return (`train_return` in the kept results)
stays far below the return of its most likely action. The earlier edition of this report ranked
methods by training returns with exploration on, which penalises the methods that explore most;
the greedy policy on separate episodes does not.

*Wall-clock.* Cost per env step follows gradient steps per env step more than the family: DQN (one
gradient step per 10 env steps) costs about 1.2 times PPO's time per env step here, SAC (one per 4 env
steps on CartPole, one per env step with 4 times the batch on Pendulum) several to dozens of times
more, so on CartPole PPO and A2C reach R* in fewer training seconds than either off-policy method.
The times are for 16 vmapped seeds on a shared 2-core CPU. On a GPU the vmapped rollouts of the
on-policy methods parallelise and the sequential gradient steps do not, so the ratios are
expected to grow; that, and the literature budgets (PPO on Pendulum to 1e5 steps with gSDE, DQN on
CartPole to 5e5), are what the `paper` scale is for.\
"""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    evals, segments = kept.tables["evals"], kept.tables["segments"]
    jobs = with_extended(kept.tables["jobs"], plan)
    seeds = per_seed(evals, jobs)
    equal = seeds[seeds.job.isin(jobs.job[~jobs.extended])]  # the methods at the env's budget
    comp = comparisons(equal)
    shares = best_share(equal)
    times = timing(segments, jobs)
    n = int(seeds.groupby("job").seed.nunique().min())

    report = lab.Report(plan, "On- vs off-policy at equal env-step budgets: PPO and A2C vs DQN and SAC", kept=kept)
    report.add(
        "**Question.** At equal environment-step budgets, with literature configurations, how do on-policy "
        "methods (PPO, A2C) compare with off-policy ones (DQN, SAC) on greedy evaluation return, on how fast they "
        "reach a return a tuned agent reaches, on stability late in training, and on measured wall-clock per "
        "update?",
        "**Command** (trains what is missing, then writes this report; `rebuild=true` remakes it from the kept "
        "per-seed numbers without training):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds per method (seeds {int(plan.seed_offset)}–"
        f"{int(plan.seed_offset) + int(plan.seeds) - 1}, the same for every method), {int(plan.eval_episodes)} "
        f"greedy evaluation episodes after each of about {int(plan.eval_points)} segments per run; jobs and "
        f"budgets in `conf/experiment/{NAME}/{plan.scale}.yaml`.",
    )
    config_rows = pd.DataFrame({"env": jobs.env, "method": jobs.method, "configuration (source)": jobs.source,
                                "env steps per update": jobs.env_steps_per_update.map("{:,}".format),
                                "budget (env steps)": jobs.budget.map("{:,}".format)})
    report.add(
        "## Setup",
        "Each method runs the configuration named below at the env's budget; every network is 64x64. Greedy "
        "return: after every segment (and before the first), each seed's policy with exploration off (PPO and A2C: "
        "the distribution's mode; DQN: argmax Q; SAC: the most likely action, or tanh of the Gaussian mean) plays "
        f"{int(plan.eval_episodes)} separate episodes from fresh resets; the mean of their returns is one "
        "evaluation. All methods on an env meet the same start states at the same evaluation index. *Final*: the "
        "evaluation at the budget. *Mean over budget*: the greedy return averaged over env steps (trapezoid). "
        "*R\\**: a greedy return a tuned agent reaches within the budget, fixed before the run (`threshold` in the "
        "scale file: CartPole 195, the solved level of CartPole-v0; Pendulum −250); env steps and training "
        "seconds to R* are those of the first evaluation at or "
        "above it (resolution: one segment), a seed that never reaches it counts as not reached (infinite), so "
        "a median is finite only when more than half the seeds reach R*. *Late drawdown*: per seed, the largest "
        f"fall of the greedy return from its running maximum over the evaluations in the last {LATE:.0%} of the "
        "budget; a method that has not learnt (a flat curve) has a small drawdown too, so read it with the share of "
        "seeds reaching R*. *Per-update wall time*: the host times each segment around its compiled program; ms "
        "per update is the median over the segments after learning starts (off-policy methods only collect before "
        "`learning_starts`), 95% CI by bootstrap over segments, for the whole batch of vmapped seeds. Compile "
        "time (ahead of time, all programs) and evaluation time are measured apart and are not in it. "
        "CIs: 95% percentile bootstrap over seeds; comparisons are paired by seed."
        + (" A method named with a budget factor (" + ", ".join(jobs.method[jobs.extended]) + ") ran beyond the "
           "env's budget, to show what it needs where the equal budget is too small; it is in the headline, the "
           "plots and the timing, not in the paired comparisons." if jobs.extended.any() else ""),
        lab.markdown_table(config_rows),
        "## Answer\n\n" + answer(comp, shares, equal, cost_ratios(segments, jobs[~jobs.extended])),
    )
    report.headline(f"Headline: greedy return, time to R*, stability and cost per method, {n} seeds",
                    lab.markdown_table(headline(seeds, times, jobs)))
    report.add(
        f"## Paired comparisons\n\n{len(comp)} comparisons: per env, every on-policy method against every "
        f"off-policy one on {len(MEASURES)} measures, chosen before the run. A verdict only where the 95% CI of "
        "the mean paired difference excludes 0; with this many CIs, about one in twenty excludes 0 by chance.",
        lab.markdown_table(comparison_table(comp)),
        "## Stability across seeds\n\nThe spread of the final greedy return across seeds (standard deviation, CI by "
        "bootstrap over seeds) and the late drawdown within runs.",
        lab.markdown_table(stability_table(seeds)),
        "## Measured wall time\n\nShared 2-core CPU; one job's seeds train together (vmapped), so these times are "
        "for all of its seeds at once.",
        lab.markdown_table(timing_table(times)),
    )
    same = "".join(f"; {a} (dashed) repeats {b}'s runs exactly over the env's budget (same seeds, same settings)"
                   for a, b in repeats(evals, jobs))
    report.figure(plot_curves(evals, jobs, "env_steps"), "greedy_vs_env_steps.png",
                  f"Greedy return against environment steps (sample efficiency){same}")
    report.figure(plot_curves(evals, jobs, "train_seconds"), "greedy_vs_seconds.png",
                  "Greedy return against measured training seconds (log axis)")
    report.figure(plot_final(seeds, jobs), "final_per_seed.png",
                  "Final greedy return per seed, mean with 95% CI (black)")
    report.figure(plot_timing(times), "wall_time.png",
                  "Measured training time per env step (median over segments, 95% CI) and compile time per job")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
