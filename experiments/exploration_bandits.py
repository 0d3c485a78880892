"""Exploration and regret on bandits.
`python -m experiments.exploration_bandits [scale=full|ci|paper|smoke] [rebuild=true]`

ε-greedy (fixed ε, and the 1/(1 + decay·t) schedule kept as the counter-example), Auer et al.'s
ε_n-greedy (ε_t = min(1, cK/(d²t))), UCB1, KL-UCB and Thompson sampling on K-armed Bernoulli and
Gaussian bandits (`purerl.bandit_envs.KArmed*Bandit`: one arm at μ*, K − 1 at μ* − Δ), and LinUCB
vs ε-greedy on the linear contextual bandit. One `purerl-train` job per instance × strategy
(`algo=bandit`), its knob an in-job grid vmapped with the seeds; every job of an instance uses
the same seeds, so seed s is the same instance (arm order) in every arm and comparisons are paired.

Every seed is classified, not only the mean: a seed is *locked* when a worse arm took at least
half of its pulls in (T/2, T] (it then pays at least Δ/2 per pull: linear regret). Growth has one
definition, the doubling ratio ρ = [R(T) − R(T/2)] / [R(T/2) − R(T/4)] (1 for C·ln t, √2 for √t,
2 for linear). The per-seed numbers are kept beside the report; `rebuild=true` remakes it from them.
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

NAME = "exploration_bandits"
THOMPSON = {"KArmedBernoulliBandit": "thompson_beta", "KArmedGaussianBandit": "thompson_gaussian"}
FAMILY_COLOURS = {"ε-greedy": "Blues", "ε_n-greedy": "Greys", "UCB1": "Oranges", "KL-UCB": "Reds",
                  "Thompson": "Greens", "LinUCB": "Purples"}
LOCKED = 0.5  # a seed is locked when worse arms took at least this share of its pulls in (T/2, T]
LINEAR_RATIO = 1.5  # ρ: 1 for C·ln t, √2 for √t, 2 for linear; a CI above 1.5 is "linear"
CURVE_POINTS = 60  # points per kept mean curve (log-spaced blocks)


# ---------------------------------------------------------------- jobs
def horizon(plan: DictConfig, instance: str) -> int:
    """Pulls per run of an instance (its own `total_timesteps`, else the plan's)."""
    if instance == "contextual":
        return int(plan.contextual_timesteps)
    return int(plan.instances[instance].get("total_timesteps", plan.total_timesteps))


def jobs(plan: DictConfig) -> dict[str, list[str]]:
    """instance × strategy -> purerl-train overrides (Thompson: the instance's reward model;
    ε_n-greedy's d: the instance's gap; KL-UCB and Gaussian Thompson: its noise σ), then the
    contextual jobs. Each run is recorded in `plan.blocks` blocks."""
    out = {}
    for name, inst in plan.instances.items():
        total = horizon(plan, name)
        noise = inst.get("noise_std", 1.0)
        base = [f"algo.config.env={inst.env}", f"algo.config.env_kwargs.num_arms={inst.num_arms}",
                f"algo.config.env_params.best_mean={inst.best_mean}", f"algo.config.env_params.gap={inst.gap}",
                f"algo.config.env_params.noise_std={noise}", f"algo.hyper.epsilon_d={inst.gap}",
                f"algo.hyper.noise_std={noise}",
                f"algo.config.total_timesteps={total}", f"algo.config.num_steps={total // plan.blocks}"]
        for strategy, overrides in plan.strategies.items():
            if strategy.startswith("thompson") and strategy != THOMPSON[inst.env]:
                continue
            out[f"{name}__{strategy}"] = [*base, *overrides]
    total = horizon(plan, "contextual")
    for strategy, overrides in plan.contextual.items():
        out[f"contextual__{strategy}"] = [*overrides, f"algo.config.total_timesteps={total}",
                                          f"algo.config.num_steps={total // plan.blocks}"]
    # The preset's grid is over ucb_c: other strategies drop it. Bandits have no policy to save.
    return {job: ["save_policies=false", *([] if any(x.startswith("grid.ucb_c=") for x in o) else ["grid.ucb_c=null"]),
                  *o] for job, o in out.items()}


# ---------------------------------------------------------------- theory
def bernoulli_kl(p: np.ndarray, q: float) -> np.ndarray:
    """KL(Bernoulli(p) ‖ Bernoulli(q)), 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b


def lai_robbins_constant(inst: DictConfig) -> float:
    """Σ_a Δ_a / KL(ν_a, ν*) over the suboptimal arms: lim inf R(T) / ln T ≥ this for any
    consistent strategy (Gaussian arms with known σ: KL = Δ² / 2σ²)."""
    gap, suboptimal = float(inst.gap), int(inst.num_arms) - 1
    if inst.env == "KArmedBernoulliBandit":
        return suboptimal * gap / float(bernoulli_kl(inst.best_mean - gap, inst.best_mean))
    return suboptimal * gap / (gap**2 / (2 * float(inst.get("noise_std", 1.0)) ** 2))


def instance_label(plan: DictConfig, name: str) -> str:
    if name == "contextual":
        return "Linear contextual bandit"
    inst = plan.instances[name]
    family = "Bernoulli" if inst.env == "KArmedBernoulliBandit" else "Gaussian"
    noise = f", σ={inst.noise_std:g}" if family == "Gaussian" else ""
    return f"{family} K={inst.num_arms}, Δ={inst.gap:g}{noise}" + (" (hard)" if "hard" in name else "")


def short_instance(plan: DictConfig, name: str) -> str:
    if name == "contextual":
        return "contextual"
    inst = plan.instances[name]
    return f"{'Bern' if inst.env == 'KArmedBernoulliBandit' else 'Gauss'} K={inst.num_arms} Δ={inst.gap:g}"


# ---------------------------------------------------------------- per-seed numbers (kept)
def setting_label(row: Any) -> tuple[str, str]:
    """(family, label) of one run's strategy and knob."""
    if row.strategy == "epsilon_greedy":
        if row.epsilon_decay > 0:
            return "ε-greedy", f"ε-greedy ε_t={row.epsilon:g}/(1+{row.epsilon_decay:g}t)"
        return "ε-greedy", ("greedy (ε=0)" if row.epsilon == 0 else f"ε-greedy ε={row.epsilon:g}")
    if row.strategy == "epsilon_decreasing":
        return "ε_n-greedy", f"ε_n-greedy c={row.epsilon_c:g}, d=Δ"
    if row.strategy == "ucb1":
        return "UCB1", f"UCB1 c={row.ucb_c:g}"
    if row.strategy == "kl_ucb":
        return "KL-UCB", "KL-UCB" + (f" c={row.klucb_c:g}" if row.klucb_c else "")
    if row.strategy == "linucb":
        return "LinUCB", f"LinUCB α={row.linucb_alpha:g}"
    return "Thompson", "Thompson"


def per_seed(plan: DictConfig, results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(seeds, curves): per instance × setting × seed, R(T/4), R(T/2), R(T) and the share of pulls
    in (T/2, T] on a worse arm; per instance × setting, the mean regret curve with its 95% CI band
    at up to CURVE_POINTS log-spaced block ends."""
    results = results.copy()
    results["instance"] = results.job.str.split("__").str[0]
    labels = results.drop_duplicates(["job", "setting"]).copy()
    labels[["family", "label"]] = [setting_label(row) for row in labels.itertuples()]
    results = results.merge(labels[["job", "setting", "family", "label"]], on=["job", "setting"])
    seeds, curves = [], []
    for (instance, job, setting), group in results.groupby(["instance", "job", "setting"], sort=False):
        total = horizon(plan, instance)
        regret = group.pivot_table(index="seed", columns="env_steps", values="regret")
        optimal = group.pivot_table(index="seed", columns="env_steps", values="optimal_arm_fraction")
        steps = regret.columns.to_numpy()
        for point in (total // 4, total // 2, total):
            if point not in steps:
                raise lab.ExperimentError(f"{job}: no regret recorded at {point} pulls; allowed: blocks that divide "
                                          f"T/4 (blocks={plan.blocks}, T={total})")
        late = optimal.loc[:, steps > total // 2]  # blocks of equal size: their mean is the share of pulls
        first = group.iloc[0]
        seeds.append(pd.DataFrame({
            "instance": instance, "job": job, "setting": setting, "family": first.family, "label": first.label,
            "strategy": first.strategy, "horizon": total, "seed": regret.index.to_numpy(),
            "regret_quarter": regret[total // 4].to_numpy(), "regret_half": regret[total // 2].to_numpy(),
            "regret_T": regret[total].to_numpy(), "late_suboptimal": 1.0 - late.mean(axis=1).to_numpy(),
        }))
        keep = np.unique(np.geomspace(1, len(steps), CURVE_POINTS).round().astype(int) - 1)
        mean, low, high = lab.curve_ci(regret.to_numpy()[:, keep])
        curves.append(pd.DataFrame({"instance": instance, "family": first.family, "label": first.label,
                                    "env_steps": steps[keep], "mean": mean, "low": low, "high": high}))
    return pd.concat(seeds, ignore_index=True), pd.concat(curves, ignore_index=True)


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    folders = lab.train_jobs(plan, jobs(plan))
    results = lab.load_jobs(folders, table="results")
    seeds, curves = per_seed(plan, results)
    return {"seeds": seeds, "curves": curves}


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    import purerl.algos.bandits as bandits
    import purerl.bandit_envs as bandit_envs

    return [bandits, bandit_envs, jobs, per_seed, setting_label]


# ---------------------------------------------------------------- statistics
def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """(Σ numerator / Σ denominator, 95% percentile bootstrap CI over seeds, resampled in pairs)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    index = np.random.default_rng(seed).integers(0, len(numerator), (resamples, len(numerator)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = numerator[index].sum(1) / denominator[index].sum(1)
        estimate = numerator.sum() / denominator.sum()
    boot = boot[np.isfinite(boot)]
    if boot.size < resamples // 2:
        return float(estimate), np.nan, np.nan
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(estimate), float(low), float(high)


def share_ci(flags: np.ndarray) -> tuple[int, int, float, float, float]:
    """(k, n, k/n, Wilson 95% CI) of a 0/1 sample (exact at 0 and n, unlike a bootstrap)."""
    from scipy.stats import binomtest

    k, n = int(np.sum(flags)), len(flags)
    interval = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return k, n, k / n, float(interval.low), float(interval.high)


def growth(ratio: tuple[float, float, float]) -> str:
    _, low, high = ratio
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no regret to grow"
    if low > LINEAR_RATIO:
        return "linear"
    if high < LINEAR_RATIO:
        return "sub-linear"
    return "not resolved"


verdict = lab.verdict


def settings(plan: DictConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per instance × setting: R(T) and friends with CIs, ρ, the locked share, and the
    paired difference to the instance's best (lowest mean R(T)) setting."""
    rows = []
    for (instance, label), group in seeds.groupby(["instance", "label"], sort=False):
        group = group.sort_values("seed")
        total = int(group.horizon.iloc[0])
        constant = lai_robbins_constant(plan.instances[instance]) if instance in plan.instances else np.nan
        ratio = ratio_ci(group.regret_T - group.regret_half, group.regret_half - group.regret_quarter)
        k, n, share, low, high = share_ci(group.late_suboptimal.to_numpy() >= LOCKED)
        rows.append({
            "instance": instance, "family": group.family.iloc[0], "label": label, "strategy": group.strategy.iloc[0],
            "seeds": n, "horizon": total, "regret_T": lab.bootstrap_ci(group.regret_T),
            "regret_half": lab.bootstrap_ci(group.regret_half), "ratio": ratio, "growth": growth(ratio),
            "locked": (k, n, share, low, high),
            "late_suboptimal": lab.bootstrap_ci(group.late_suboptimal),
            "slope_over_c": lab.bootstrap_ci((group.regret_T - group.regret_half) / (np.log(2) * constant)),
            "over_bound": lab.bootstrap_ci(group.regret_T / (constant * np.log(total))),
        })
    table = pd.DataFrame(rows)
    best, to_best = [], []
    for _, row in table.iterrows():
        part = table[table.instance == row.instance]
        top = part.loc[part.regret_T.map(lambda r: r[0]).idxmin()]
        best.append(top.label)
        to_best.append(paired(seeds, row.instance, row.label, top.label, "regret_T"))
    table["best"], table["minus_best"] = best, to_best
    return table


def paired(seeds: pd.DataFrame, instance: str, a: str, b: str, column: str) -> tuple[float, float, float]:
    """Mean over seeds of column(a) − column(b), the same seed in both, with a bootstrap CI."""
    part = seeds[seeds.instance == instance]
    wide = part.pivot_table(index="seed", columns="label", values=column)
    return lab.bootstrap_ci(wide[a].to_numpy() - wide[b].to_numpy())


def comparisons(plan: DictConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    """The comparisons the report makes on purpose (`plan.comparisons`: label A vs label B on every
    instance that has both): paired differences of R(T) and of the locked indicator."""
    rows = []
    for instance in dict.fromkeys(seeds.instance):
        part = seeds[seeds.instance == instance].assign(
            is_locked=lambda d: (d.late_suboptimal >= LOCKED).astype(float))
        labels = set(part.label)
        pairs = [(a, b) for a, b in plan.comparisons if a in labels and b in labels]
        if instance == "contextual":
            means = part.groupby("label").regret_T.mean()
            families = part.drop_duplicates("label").set_index("label").family
            pairs = [(means[families == "LinUCB"].idxmin(), means[families == "ε-greedy"].idxmin())]
        for a, b in pairs:
            n = part[part.label == a].seed.nunique()
            diff = paired(part, instance, a, b, "regret_T")
            rows.append({"instance": instance, "a": a, "b": b, "seeds": n, "regret_diff": diff,
                         "ratio_T": ratio_ci(part[part.label == a].sort_values("seed").regret_T,
                                             part[part.label == b].sort_values("seed").regret_T),
                         "locked_diff": paired(part, instance, a, b, "is_locked"),
                         "verdict": verdict(diff, f"{a} lower", f"{b} lower", n)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- tables
def locked_cell(locked: tuple) -> str:
    k, n, share, low, high = locked
    return f"{k}/{n} [{100 * low:.0f}, {100 * high:.0f}]%"


GROWTH_MARK = {"linear": "↗lin", "sub-linear": "sub", "not resolved": "?", "no regret to grow": ""}


def headline(runs: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """Rows: settings; columns: instances; cells: mean R(T) [95% CI], growth mark, locked seeds."""
    names = list(plan.instances)
    table = {}
    for _, r in runs[runs.instance.isin(names)].iterrows():
        row = table.setdefault(r.label, {"strategy": r.label, **{short_instance(plan, n): "–" for n in names}})
        row[short_instance(plan, r.instance)] = (f"{lab.fmt_ci(*r.regret_T)} {GROWTH_MARK[r.growth]}, "
                                                 f"locked {r.locked[0]}/{r.locked[1]}")
    bound = {"strategy": "Lai–Robbins C·ln T"}
    for name in names:
        bound[short_instance(plan, name)] = lab.fmt(lai_robbins_constant(plan.instances[name])
                                                    * np.log(horizon(plan, name)))
    return pd.DataFrame([*table.values(), bound])


def detail(runs: pd.DataFrame, plan: DictConfig, instance: str) -> pd.DataFrame:
    part = runs[runs.instance == instance]
    rows = []
    for _, r in part.iterrows():
        row = {
            "strategy": r.label,
            f"R(T), T={r.horizon:.3g}": lab.fmt_ci(*r.regret_T),
            "ρ [95% CI]": lab.fmt_ci(*r.ratio),
            "growth": r.growth,
            "locked seeds [Wilson 95%]": locked_cell(r.locked),
            "late worse-arm share": lab.fmt_ci(*r.late_suboptimal),
        }
        if instance in plan.instances:
            row["late dR/d ln t ÷ C"] = lab.fmt_ci(*r.slope_over_c)
            row["R(T) / (C ln T)"] = lab.fmt_ci(*r.over_bound)
        row["R(T) − best [paired CI]"] = "best" if r.label == r.best else lab.fmt_ci(*r.minus_best)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(comp: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    return pd.DataFrame([{
        "instance": short_instance(plan, r.instance), "A": r.a, "B": r.b,
        "R_A(T) − R_B(T) [paired CI]": lab.fmt_ci(*r.regret_diff),
        "R_A(T) / R_B(T) [CI]": lab.fmt_ci(*r.ratio_T),
        "locked share A − B [paired CI]": lab.fmt_ci(*r.locked_diff),
        "verdict": r.verdict,
    } for r in comp.itertuples()])


# ---------------------------------------------------------------- plots
def colours(labels: list[str], families: list[str]) -> dict[str, tuple]:
    out = {}
    for family in dict.fromkeys(families):
        members = [label for label, f in zip(labels, families) if f == family]
        cmap = plt.get_cmap(FAMILY_COLOURS[family])
        for i, label in enumerate(members):
            out[label] = cmap(0.45 + 0.5 * i / max(len(members) - 1, 1)) if len(members) > 1 else cmap(0.75)
    return out


def plot_curves(curves: pd.DataFrame, plan: DictConfig, names: list[str], log_x: bool, n: int):
    cols = min(2, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols if cols > 1 else 8.0, 4.2 * rows + 1.2),
                             layout="constrained", squeeze=False)
    handles = {}
    for ax, name in zip(axes.flat, names):
        part = curves[curves.instance == name]
        labels = list(dict.fromkeys(part.label))
        palette = colours(labels, [part[part.label == lb].family.iloc[0] for lb in labels])
        for label in labels:
            line = part[part.label == label]
            style = "-." if "ε_t" in label else ("--" if "ε_n" in label else "-")
            (handle,) = ax.plot(line.env_steps, line["mean"], color=palette[label], lw=1.6, ls=style)
            ax.fill_between(line.env_steps, line.low, line.high, color=palette[label], alpha=0.25, lw=0)
            handles[label] = handle
        xs = part.env_steps.to_numpy()
        top = max(part["mean"].max() * 1.05, 1e-9)
        if name in plan.instances:
            constant = lai_robbins_constant(plan.instances[name])
            ts = np.geomspace(xs.min(), xs.max(), 100)
            (handle,) = ax.plot(ts, constant * np.log(ts), "k:", lw=1.4)
            handles["Lai–Robbins bound C·ln t"] = handle
        if log_x:
            ax.set_xscale("log")
        ax.set_yscale("log" if log_x else "linear")
        if not log_x:
            ax.set_ylim(0, top)
        ax.set_title(instance_label(plan, name), fontsize="medium")
        ax.set_xlabel("pulls t" + (" (log scale)" if log_x else ""))
        ax.set_ylabel("cumulative regret R(t)" + (" (log scale)" if log_x else ""))
        ax.grid(alpha=0.3, which="both" if log_x else "major")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(4 if cols > 1 else 3, len(handles)), fontsize="small")
    fig.suptitle(f"Cumulative regret, mean over {n} seeds with 95% bootstrap CI bands"
                 + ("\nlog–log axes: slope 1 is linear growth, C·ln t flattens" if log_x else ""), fontsize="medium")
    return fig


def plot_classification(runs: pd.DataFrame, plan: DictConfig, names: list[str]):
    """Top: the share of locked seeds with Wilson CIs; bottom: the doubling ratio ρ with its CI."""
    labels = list(dict.fromkeys(runs[runs.instance.isin(names)].label))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10.5, 7.8), layout="constrained", sharex=True)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        part = runs[runs.instance == name].set_index("label")
        x = np.arange(len(labels)) + (i - (len(names) - 1) / 2) * width
        colour = plt.get_cmap("tab10")(i)
        for ax, key in ((top, "locked"), (bottom, "ratio")):
            values = [part.loc[lb, key] if lb in part.index else None for lb in labels]
            if key == "locked":
                mid = np.array([v[2] if v else np.nan for v in values])
                low = np.array([v[3] if v else np.nan for v in values])
                high = np.array([v[4] if v else np.nan for v in values])
            else:
                mid, low, high = (np.array([v[j] if v else np.nan for v in values]) for j in range(3))
            ax.errorbar(x, mid, yerr=[mid - low, high - mid], fmt="o", ms=4, color=colour, capsize=2, lw=1,
                        label=short_instance(plan, name) if key == "locked" else None)
    top.set_ylabel("share of seeds locked\n(worse arms ≥ 50% of late pulls)")
    top.set_ylim(-0.03, 1.03)
    top.grid(axis="y", alpha=0.3)
    top.legend(fontsize="small", ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    references = {1.0: "C·ln t", float(np.sqrt(2)): "√t", 2.0: "linear"}
    for value in references:
        bottom.axhline(value, color="k", lw=0.8, ls=":")
    side = bottom.secondary_yaxis("right")
    side.set_yticks(list(references), list(references.values()), fontsize="small")
    bottom.set_ylabel("doubling ratio ρ\n[R(T) − R(T/2)] / [R(T/2) − R(T/4)]")
    bottom.set_ylim(0, 2.6)
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    fig.suptitle("Per-seed classification and growth, 95% CIs (Wilson for shares, bootstrap over seeds for ρ)",
                 fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def names_of(rows: pd.DataFrame) -> str:
    return ", ".join(rows.label) if len(rows) else "none"


def answer(runs: pd.DataFrame, comp: pd.DataFrame, plan: DictConfig) -> str:
    lines = []
    for name in [*plan.instances, *(["contextual"] if "contextual" in set(runs.instance) else [])]:
        part = runs[runs.instance == name]
        n = int(part.seeds.min())
        best = part[part.label == part.best.iloc[0]].iloc[0]
        others = part[part.label != best.label]
        above = others[others.minus_best.map(lambda d: d[1] > 0)]
        unresolved = others.drop(above.index)
        locked = part[part.locked.map(lambda r: r[0] > 0)]
        locked_text = "; ".join(f"{r.label} {locked_cell(r.locked)}" for r in locked.itertuples()) or "none"
        sentence = (f"- **{instance_label(plan, name)}, T = {best.horizon:.3g}:** lowest mean R(T) by {best.label}, "
                    f"{lab.fmt_ci(*best.regret_T)}; {len(above)} of {len(others)} other settings have a higher "
                    f"R(T) (paired CI of the difference above 0)")
        sentence += (f", {len(unresolved)} not resolved at {n} seeds ({names_of(unresolved)})." if len(unresolved)
                     else ".")
        sentence += (f" Linear growth (ρ's CI above {LINEAR_RATIO}): {names_of(part[part.growth == 'linear'])}. "
                     f"Seeds locked on worse arms: {locked_text}.")
        if name in plan.instances:
            gap = float(plan.instances[name].gap)
            bound = lai_robbins_constant(plan.instances[name]) * np.log(best.horizon)
            started = part[part.locked.map(lambda r: r[4] < LOCKED)]
            if bound >= gap * best.horizon * 0.5:
                sentence += (f" Here C·ln T = {bound:.3g} is at least half of Δ·T = {gap * best.horizon:.3g}: this "
                             "T is still the start-up phase for a strategy that attains the bound.")
            stuck = part.drop(started.index)
            sentence += (f" Left the start-up phase (locked share's CI below {LOCKED:g}): {names_of(started)}; "
                         f"not: {names_of(stuck)}.")
        lines.append(sentence)
    for r in comp.itertuples():
        lines.append(f"- {short_instance(plan, r.instance)}: {r.a} vs {r.b}: R(T) difference "
                     f"{lab.fmt_ci(*r.regret_diff)} → **{r.verdict}**; locked share difference "
                     f"{lab.fmt_ci(*r.locked_diff)}.")
    return "\n".join(lines)


def headline_line(runs: pd.DataFrame, comp: pd.DataFrame, plan: DictConfig) -> str:
    """The one-line headline: plan.headline = [instance, A, B], a comparison of `plan.comparisons`."""
    instance, a, b = plan.headline
    row = comp[(comp.instance == instance) & (comp.a == a) & (comp.b == b)]
    if row.empty:
        return ""
    row = row.iloc[0]
    la, lb = (runs[(runs.instance == instance) & (runs.label == x)].iloc[0].locked for x in (a, b))
    return (f"**Headline.** {instance_label(plan, instance)}, T = {horizon(plan, instance):.3g}, {row.seeds} paired "
            f"seeds: seeds locked on worse arms (linear regret) {locked_cell(la)} with {a} vs {locked_cell(lb)} with "
            f"{b}, paired difference {lab.fmt_ci(*row.locked_diff)}; R(T) of {a} minus {b} = "
            f"{lab.fmt_ci(*row.regret_diff)} ({row.verdict}).")


DISCUSSION = """\
Fixed ε pays at least ε(K−1)Δ/K per pull forever (Sutton & Barto 2018, §2.3), so its regret is
asymptotically linear on every seed, locked or not: at ε = 0.1, ρ ≈ 2 on every instance; at ε = 0.01 the
floor (0.0009 per pull on K = 10) is still hidden under the regret of seeds that find the best arm late,
and ρ does not reach the linear band there — ρ measures growth over the last doubling before T, not in
the limit. A 1/(1 + decay·t) schedule looks like Auer,
Cesa-Bianchi & Fischer (2002)'s ε_n-greedy, but their logarithmic bound needs ε_t = min(1, cK/(d²t)) with
c > 5 and d no larger than the smallest gap, and 1/(1 + decay·t) ≈ cK/(d²t) only for c = d²/(K·decay):
decay 0.01 and 0.001 mean c = 0.1 and 1 on the K = 10, Δ = 0.1 instance, 0.004 and 0.04 on the hard one
(Δ = 0.02), 0.5 and 5 on K = 2, and 2.5 and 25 on the Gaussian one. Where c is far below 5, exploration
dies out before the greedy arm is reliably the best, and the seeds whose greedy arm is then a worse one
stay locked there — their regret is linear while the mean over seeds can still look sub-linear, which is
why the seeds are classified one by one. The guaranteed schedule locked no seed anywhere, but buys that
with a long uniform start (ε_t = 1 until t = cK/d², 125,000 pulls on the hard instance) and a constant of
order cK/d²: at these horizons its mean regret is higher than the decay-0.01 schedule's on every instance
but the hard one, where that schedule locks 35 of 64 seeds. UCB1's guarantee (Auer et al. 2002) comes
with the constant 8Σ_a 1/Δ_a, several times the Lai–Robbins C; KL-UCB (Garivier & Cappé 2011; Cappé et
al. 2013) replaces the Hoeffding width by the KL of the reward model and attains C asymptotically, as does
Thompson sampling (Agrawal & Goyal 2012; Kaufmann, Korda & Munos 2012). On the Bernoulli instances KL-UCB
has about 0.3 times UCB1 (c = 2)'s regret; on the Gaussian instance with σ = 1 its index
μ̂ + σ√(2 ln t / n) is exactly UCB1's with c = 2σ² = 2, so the two runs coincide seed for seed (difference
0 [0, 0]): the "variance-correct constant" for unit-variance Gaussian rewards is UCB1's own. Thompson
sampling has the lowest regret on every K-armed instance here, in line with the empirical comparisons of
Chapelle & Li (2011) and Kaufmann et al. (2012). The Lai–Robbins bound (Lai & Robbins 1985) constrains
lim inf R(T)/ln T: at finite T a strategy can sit below C·ln T, and Thompson's late slope dR/d ln t is
still below C (point estimates 0.79–0.87·C; CIs below 1 on three of the four instances) — the asymptotic
regime is approached from below, and these horizons cannot show the constant being attained. At T = 10⁶
the hard instance's C·ln T (3,110) is well below Δ·T (20,000), and every strategy but the decay-0.01
schedule has left its start-up phase."""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    seeds, curves = kept.tables["seeds"], kept.tables["curves"]
    runs = settings(plan, seeds)
    comp = comparisons(plan, seeds)
    names = list(plan.instances)
    n = int(seeds.groupby(["instance", "label"]).seed.nunique().min())

    report = lab.Report(plan, "Exploration and regret on bandits", kept=kept)
    horizons = ", ".join(f"{short_instance(plan, name)}: T = {horizon(plan, name):,}" for name in names)
    report.add(
        "**Question.** On K-armed bandits, which exploration strategies have regret that grows linearly — on every "
        "seed, or only on the seeds locked on a worse arm — and which logarithmically: ε-greedy with fixed ε and "
        "with a 1/(1 + decay·t) schedule, Auer et al.'s ε_n-greedy schedule with its guarantee, UCB1, KL-UCB and "
        "Thompson sampling; and how do the measured curves compare with each other (paired over seeds) and with "
        "the Lai–Robbins lower bound? On a contextual bandit: LinUCB vs ε-greedy.",
        "**Command** (trains what is missing, then writes this report from the results; `rebuild=true` remakes "
        "it from the kept per-seed numbers without training):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds per setting (the same seeds, hence the same instances, in every "
        f"setting); horizons {horizons}"
        + (f", contextual: T = {horizon(plan, 'contextual'):,}" if plan.contextual else "")
        + f"; regret recorded in {plan.blocks} blocks per run. Instances: one arm at μ*, K − 1 arms at μ* − Δ, arm "
        "order drawn per seed (`purerl.bandit_envs.KArmedBernoulliBandit` / `KArmedGaussianBandit`). Presets: "
        f"`conf/experiment/{NAME}.yaml` and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
    )
    line = headline_line(runs, comp, plan)
    if line:
        report.add(line)
    report.add(
        "**Definitions.** Regret: the exact pseudo-regret R(t) = Σ_s (μ* − μ_{a_s}). *Growth* has one "
        "definition, the doubling ratio ρ = [R(T) − R(T/2)] / [R(T/2) − R(T/4)] (ratio of the seeds' summed "
        f"increments, bootstrap CI over seeds): 1 for C·ln t, √2 for √t, 2 for linear; *linear* when its CI lies "
        f"above {LINEAR_RATIO}, *sub-linear* when below, else *not resolved*. *Locked* (linear) seed: worse arms took "
        f"at least {LOCKED:.0%} of its pulls in (T/2, T] (from the per-block optimal-arm fraction), so its regret "
        "grows by at least Δ/2 per pull — linearly. Such a seed is locked on a worse arm, or still exploring "
        "uniformly (ε_n-greedy before t = cK/d²; on K = 2 uniform exploration sits at 50%, so there the class is a "
        "coin flip per seed). The share of locked seeds has a Wilson 95% CI. A strategy has *left "
        f"its start-up phase* when that CI lies below {LOCKED:g}. Lai–Robbins constant C = Σ_a Δ_a / KL(ν_a, ν*) "
        "(Bernoulli KL; Gaussian with known σ: Δ²/2σ²); late dR/d ln t = [R(T) − R(T/2)] / ln 2. Comparisons are "
        "paired: per seed, then a bootstrap CI of the mean difference; a claim is made only when that CI excludes "
        "0. Thompson is Beta–Bernoulli (uniform prior) on Bernoulli instances and Gaussian (prior N(0, 1), known σ) "
        "on Gaussian ones; KL-UCB uses the Bernoulli KL on 0/1 rewards and the Gaussian KL (known σ) otherwise, "
        "with exploration level ln t; ε_n-greedy uses c = 5 and d = Δ of the instance (Auer et al.'s theorem is "
        "for rewards in [0, 1]; on the Gaussian instance it is the same schedule without the guarantee).",
        "## Answer\n\n" + answer(runs, comp, plan),
    )
    report.headline(f"Headline: mean regret at T [95% CI], growth (sub: sub-linear, ↗lin: linear, ?: not "
                    f"resolved) and locked seeds of {n}", lab.markdown_table(headline(runs, plan)))
    per_instance = len(runs[runs.instance.isin(names)]) - len(names)
    report.add(
        f"## Comparisons (paired over seeds)\n\n{len(comp)} comparisons chosen before the run (the schedule with "
        "the guarantee against the old one, KL-UCB against UCB1 and Thompson, LinUCB against ε-greedy), each "
        "with the paired 95% CI of the R(T) difference, the ratio of mean regrets, and the paired difference in "
        f"the share of locked seeds. The per-instance tables below add each setting's paired difference to the "
        f"instance's best setting ({per_instance} more comparisons on the K-armed instances); with this many, "
        "expect about one in twenty 95% CIs to miss by chance.",
        lab.markdown_table(comparison_table(comp, plan)),
    )
    for name in [*names, *(["contextual"] if "contextual" in set(runs.instance) else [])]:
        constant = f", C = {lai_robbins_constant(plan.instances[name]):.3g}" if name in plan.instances else ""
        report.add(f"### {instance_label(plan, name)}{constant}", lab.markdown_table(detail(runs, plan, name)))
    report.figure(plot_curves(curves, plan, names, log_x=False, n=n), "regret_curves.png",
                  "Cumulative regret against pulls, per instance (dotted: Lai–Robbins C·ln t)")
    report.figure(plot_curves(curves, plan, names, log_x=True, n=n), "regret_vs_log_t.png",
                  "The same curves on log–log axes: linear regret has slope 1, logarithmic regret flattens")
    report.figure(plot_classification(runs, plan, names), "classification.png",
                  "Share of locked seeds and the doubling ratio ρ per setting and instance")
    if "contextual" in set(curves.instance):
        report.figure(plot_curves(curves, plan, ["contextual"], log_x=True, n=n), "contextual.png",
                      "LinUCB vs ε-greedy on the linear contextual bandit (log–log axes)")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
