"""Exploration and regret on bandits.
`python -m experiments.exploration_bandits [scale=ci|paper]`

ε-greedy (fixed and decaying ε), UCB1 (over its constant c) and Thompson sampling on
K-armed Bernoulli and Gaussian bandits (`purerl.bandit_envs.KArmed*Bandit`: one arm at
μ*, K − 1 at μ* − Δ), and LinUCB vs ε-greedy on the linear contextual bandit. One
`purerl-train` job per instance × strategy (`algo=bandit`), its knob an in-job grid
vmapped with the seeds. Regret is the exact pseudo-regret Σ_t (μ* − μ_{a_t}), recorded
every `num_steps` pulls; the Lai–Robbins constant of each instance is closed form.
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab

NAME = "exploration_bandits"
THOMPSON = {"KArmedBernoulliBandit": "thompson_beta", "KArmedGaussianBandit": "thompson_gaussian"}
FAMILY_COLOURS = {"ε-greedy": "Blues", "UCB1": "Oranges", "Thompson": "Greens", "LinUCB": "Purples"}
LINEAR, LOGARITHMIC = 1.8, 1.25  # R(T)/R(T/2): 2 for linear growth, ln T / ln(T/2) ≈ 1.08 for logarithmic


# ---------------------------------------------------------------- jobs
def jobs(plan: DictConfig) -> dict[str, list[str]]:
    """instance × strategy -> purerl-train overrides (Thompson: the instance's reward model),
    then the contextual jobs."""
    out = {}
    for name, inst in plan.instances.items():
        base = [f"algo.config.env={inst.env}", f"algo.config.env_kwargs.num_arms={inst.num_arms}",
                f"algo.config.env_params.best_mean={inst.best_mean}", f"algo.config.env_params.gap={inst.gap}",
                f"algo.config.env_params.noise_std={inst.get('noise_std', 1.0)}",
                f"algo.config.total_timesteps={plan.total_timesteps}", f"algo.config.num_steps={plan.num_steps}"]
        for strategy, overrides in plan.strategies.items():
            if strategy.startswith("thompson") and strategy != THOMPSON[inst.env]:
                continue
            out[f"{name}__{strategy}"] = [*base, *overrides]
    for strategy, overrides in plan.contextual.items():
        out[f"contextual__{strategy}"] = [*overrides, f"algo.config.total_timesteps={plan.total_timesteps}",
                                          f"algo.config.num_steps={plan.num_steps}"]
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


def instance_label(inst: DictConfig, hard: bool) -> str:
    family = "Bernoulli" if inst.env == "KArmedBernoulliBandit" else "Gaussian"
    noise = f", σ={inst.noise_std:g}" if family == "Gaussian" else ""
    return f"{family} K={inst.num_arms}, Δ={inst.gap:g}{noise}" + (" (hard)" if hard else "")


# ---------------------------------------------------------------- results
def setting_label(row: pd.Series) -> tuple[str, str]:
    """(family, label) of one run's strategy and knob."""
    if row.strategy == "epsilon_greedy":
        if row.epsilon_decay > 0:
            return "ε-greedy", f"ε-greedy ε_t={row.epsilon:g}/(1+{row.epsilon_decay:g}t)"
        return "ε-greedy", ("greedy (ε=0)" if row.epsilon == 0 else f"ε-greedy ε={row.epsilon:g}")
    if row.strategy == "ucb1":
        return "UCB1", f"UCB1 c={row.ucb_c:g}"
    if row.strategy == "linucb":
        return "LinUCB", f"LinUCB α={row.linucb_alpha:g}"
    return "Thompson", "Thompson" + (" (Beta)" if row.strategy == "thompson_beta" else " (Gaussian)")


def load_curves(plan: DictConfig, folders: dict) -> pd.DataFrame:
    curves = lab.load_jobs(folders, table="results")
    curves["instance"] = curves.job.str.split("__").str[0]
    labels = curves.drop_duplicates(["job", "setting"]).copy()
    labels[["family", "label"]] = [setting_label(row) for _, row in labels.iterrows()]
    curves = curves.merge(labels[["job", "setting", "family", "label"]], on=["job", "setting"])
    return curves[["instance", "job", "family", "label", "setting", "seed", "epsilon", "epsilon_decay", "env_steps",
                   "regret"]]


def per_setting(curves: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """One row per instance × setting: R(T) and R(T/2) with CIs, growth ratio, late slope."""
    total = int(curves.env_steps.max())
    half = int(curves.env_steps[curves.env_steps <= total / 2].max())
    rows = []
    for (instance, label), group in curves.groupby(["instance", "label"], sort=False):
        at = group.pivot_table(index="seed", columns="env_steps", values="regret")
        end, mid = at[total].to_numpy(), at[half].to_numpy()
        ratio = end.mean() / mid.mean() if mid.mean() > 0 else np.nan
        rows.append({
            "instance": instance, "family": group.family.iloc[0], "label": label, "seeds": len(at),
            "horizon": total, "regret_T": lab.bootstrap_ci(end), "regret_half": lab.bootstrap_ci(mid),
            "ratio": ratio, "ratio_ci": lab.bootstrap_ci(end / np.where(mid > 0, mid, np.nan)),
            "slope_log": (end.mean() - mid.mean()) / np.log(total / half),  # dR / d ln t, late
            "per_pull": (end.mean() - mid.mean()) / (total - half),  # dR / dt, late
            "floor": exploration_floor(plan, instance, group.iloc[0]),
            "fixed_epsilon": group.family.iloc[0] == "ε-greedy" and group.epsilon_decay.iloc[0] == 0,
        })
    runs = pd.DataFrame(rows)
    runs["growth"] = [growth(r) for r in runs.ratio]
    runs["short"] = runs.label.str.replace(r"Thompson.*", "Thompson", regex=True)
    return runs


def exploration_floor(plan: DictConfig, instance: str, row: pd.Series) -> float:
    """Regret per pull that fixed-ε exploration alone costs forever on a K-armed instance:
    ε · (K − 1)/K · Δ (a uniformly random arm is suboptimal with probability (K − 1)/K)."""
    if row.family != "ε-greedy" or row.epsilon_decay > 0 or instance not in plan.instances:
        return np.nan
    inst = plan.instances[instance]
    return row.epsilon * (inst.num_arms - 1) / inst.num_arms * inst.gap


def growth(ratio: float) -> str:
    if not np.isfinite(ratio):
        return "none (zero regret)"
    if ratio >= LINEAR:
        return "linear"
    if ratio <= LOGARITHMIC:
        return "logarithmic"
    return "sub-linear"


# ---------------------------------------------------------------- tables
def headline(runs: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """Rows: strategy settings (one Thompson row for both reward models); columns: instances;
    cells: mean R(T) [95% CI] and the growth."""
    names = list(plan.instances)
    main = runs[runs.instance.isin(names)]
    table = {}
    for _, r in main.iterrows():
        row = table.setdefault(r.short, {"strategy": r.short, **{short_instance(plan, n): "–" for n in names}})
        row[short_instance(plan, r.instance)] = f"{lab.fmt_ci(*r.regret_T)} {GROWTH_MARK[r.growth]}"
    bound = {"strategy": "Lai–Robbins C·ln T"}
    for name in names:
        total = main[main.instance == name]["horizon"].iloc[0]
        bound[short_instance(plan, name)] = lab.fmt(lai_robbins_constant(plan.instances[name]) * np.log(total))
    return pd.DataFrame([*table.values(), bound])


GROWTH_MARK = {"linear": "↗lin", "logarithmic": "log", "sub-linear": "sub", "none (zero regret)": ""}


def short_instance(plan: DictConfig, name: str) -> str:
    inst = plan.instances[name]
    return f"{'Bern' if inst.env == 'KArmedBernoulliBandit' else 'Gauss'} K={inst.num_arms} Δ={inst.gap:g}"


def detail(runs: pd.DataFrame, plan: DictConfig, instance: str) -> pd.DataFrame:
    part = runs[runs.instance == instance]
    constant = lai_robbins_constant(plan.instances[instance]) if instance in plan.instances else np.nan
    rows = []
    for _, r in part.iterrows():
        row = {
            "strategy": r.label,
            "R(T/2)": lab.fmt_ci(*r.regret_half),
            f"R(T), T={r.horizon}": lab.fmt_ci(*r.regret_T),
            "R(T)/R(T/2) [95% CI]": lab.fmt_ci(*r.ratio_ci),
            "growth": r.growth,
            "late dR/dt": lab.fmt(r.per_pull),
        }
        if np.isfinite(constant):
            row["fixed-ε floor ε(K−1)Δ/K"] = lab.fmt(r.floor) if np.isfinite(r.floor) else "–"
            row["late dR/d ln t ÷ C"] = lab.fmt(r.slope_log / constant)
            row["R(T) / (C ln T)"] = lab.fmt(r.regret_T[0] / (constant * np.log(r.horizon)))
        else:
            row["late dR/d ln t"] = lab.fmt(r.slope_log)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- plots
def colours(labels: list[str], families: list[str]) -> dict[str, tuple]:
    out = {}
    for family in dict.fromkeys(families):
        members = [label for label, f in zip(labels, families) if f == family]
        cmap = plt.get_cmap(FAMILY_COLOURS[family])
        for i, label in enumerate(members):
            out[label] = cmap(0.45 + 0.5 * i / max(len(members) - 1, 1)) if len(members) > 1 else cmap(0.75)
    return out


def plot_curves(curves: pd.DataFrame, plan: DictConfig, names: list[str], log_x: bool, constants: dict):
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    width = 5.2 * cols if cols > 1 else 8.0
    fig, axes = plt.subplots(rows, cols, figsize=(width, 4.0 * rows + 0.9 + 0.4 * (cols == 1)), layout="constrained",
                             squeeze=False)
    handles = {}
    for ax, name in zip(axes.flat, names):
        part = curves[curves.instance == name]
        labels = list(dict.fromkeys(part.label))
        palette = colours(labels, [part[part.label == lb].family.iloc[0] for lb in labels])
        for label in labels:
            matrix = part[part.label == label].pivot_table(index="seed", columns="env_steps", values="regret")
            xs = matrix.columns.to_numpy()
            mean, low, high = lab.curve_ci(matrix.to_numpy())
            style = "-." if "ε_t" in label else "-"  # decaying ε
            (line,) = ax.plot(xs, mean, color=palette[label], lw=1.6, ls=style)
            ax.fill_between(xs, low, high, color=palette[label], alpha=0.25, lw=0)
            handles[label.replace(" (Beta)", "").replace(" (Gaussian)", "")] = line
        if name in constants:
            ts = np.geomspace(xs[0], xs[-1], 100)
            (line,) = ax.plot(ts, constants[name] * np.log(ts), "k--", lw=1.2)
            handles["Lai–Robbins bound C·ln t"] = line
        if log_x:
            ax.set_xscale("log")
        ax.set_title(instance_label(plan.instances[name], "hard" in name) if name in plan.instances
                     else "Linear contextual bandit", fontsize="medium")
        ax.set_xlabel("pulls t" + (" (log scale)" if log_x else ""))
        ax.set_ylabel("cumulative regret R(t)")
        ax.grid(alpha=0.3)
        # The bound may exceed every curve at small T: keep the curves readable.
        top = max(part.groupby(["label", "env_steps"]).regret.mean().max() * 1.05, 1e-9)
        ax.set_ylim(0, top)
        if name in constants and constants[name] * np.log(xs[0]) > top:
            ax.text(0.03, 0.95, f"C·ln t ≥ {constants[name] * np.log(xs[0]):.3g}: above this axis", fontsize="small",
                    transform=ax.transAxes, va="top")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    n = curves.groupby(["job", "setting"]).seed.nunique().min()
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(6 if cols > 1 else 3, len(handles)), fontsize="small")
    fig.suptitle(f"Cumulative regret, mean over {n} seeds with 95% bootstrap CI bands"
                 + ("\nx on a log scale: a straight line is logarithmic growth" if log_x else ""),
                 fontsize="medium")
    return fig


def plot_growth(runs: pd.DataFrame, plan: DictConfig):
    """R(T)/(C ln T) per setting and instance: ≥ 1 asymptotically for every consistent strategy."""
    names = list(plan.instances)
    labels = list(dict.fromkeys(runs[runs.instance.isin(names)].short))
    fig, ax = plt.subplots(figsize=(9.5, 4.6), layout="constrained")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        part = runs[runs.instance == name].set_index("short")
        scale = lai_robbins_constant(plan.instances[name]) * np.log(part["horizon"].iloc[0])
        values = [part.loc[lb].regret_T[0] / scale if lb in part.index else np.nan for lb in labels]
        ax.bar(np.arange(len(labels)) + (i - (len(names) - 1) / 2) * width, values, width,
               label=short_instance(plan, name), color=plt.get_cmap("tab10")(i))
    ax.axhline(1.0, color="k", ls="--", lw=1, label="Lai–Robbins C·ln T")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("R(T) / (C·ln T)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title("Measured regret at T relative to the Lai–Robbins bound (mean over seeds)", fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def answer(runs: pd.DataFrame, plan: DictConfig) -> str:
    names = list(plan.instances)
    main = runs[runs.instance.isin(names)]
    lines = []
    for kind in ("linear", "sub-linear", "logarithmic"):
        part = main[main.growth == kind]
        by_label = part.groupby("label", sort=False).instance.apply(
            lambda s: ", ".join(short_instance(plan, n) for n in s))
        listed = "; ".join(f"{label} ({where})" for label, where in by_label.items()) or "none"
        rule = {"linear": f"≥ {LINEAR}", "logarithmic": f"≤ {LOGARITHMIC}", "sub-linear": "in between"}[kind]
        lines.append(f"- **{kind.capitalize()} growth** (R(T)/R(T/2) {rule}): {listed}.")
    fixed = main[np.isfinite(main.floor)]
    at_floor = fixed[fixed.per_pull >= 0.9 * fixed.floor]
    below = [f"{r.label} on {short_instance(plan, r.instance)}" for _, r in fixed.drop(at_floor.index).iterrows()]
    other = f" (below it: {', '.join(below)}, where the greedy arm is not yet the best one)" if below else ""
    lines.append(
        f"  These labels describe growth between T/2 and T = {plan.total_timesteps} only. The asymptotic picture is "
        f"clearer from the late regret per pull dR/dt: **fixed ε is linear** — exploring costs ε(K−1)Δ/K per pull "
        f"forever, and in {len(at_floor)} of {len(fixed)} fixed-ε cells the measured late dR/dt is at least 90% of "
        f"that floor{other}. **Decaying ε, UCB1 and Thompson sampling are "
        f"logarithmic** where they have finished exploring (R(T)/R(T/2) near ln T / ln(T/2) = "
        f"{np.log(plan.total_timesteps) / np.log(plan.total_timesteps / 2):.2f}, the value for C·ln t); where they "
        f"have not (the hard instance, UCB1 with large c, K = 100) their curves are still in the linear burn-in "
        f"phase at this T, which the log-t plot shows as upward bends that flatten later."
    )
    for name in names:
        part = main[main.instance == name]
        constant = lai_robbins_constant(plan.instances[name])
        total = int(part["horizon"].iloc[0])
        best = part.loc[part.regret_T.map(lambda r: r[0]).idxmin()]
        bound = constant * np.log(total)
        gap = float(plan.instances[name].gap)
        note = ""
        if bound >= gap * total:
            note = (f" Here C·ln T ≥ Δ·T = {gap * total:g} (the regret of always pulling a suboptimal arm): T is "
                    f"far too short for the asymptotic bound to bind, so no strategy can be compared with it yet — "
                    f"inconclusive at this T.")
        thompson = part[part.family == "Thompson"]
        slope = (f" Thompson's late slope dR/d ln t is {thompson.slope_log.iloc[0] / constant:.2f}·C."
                 if len(thompson) else "")
        lines.append(
            f"- **{instance_label(plan.instances[name], 'hard' in name)}:** lowest R(T) by {best.label}, "
            f"{lab.fmt_ci(*best.regret_T)} against the Lai–Robbins C·ln T = {constant:.3g} × ln {total} = "
            f"{bound:.3g} ({best.regret_T[0] / bound:.2f}×).{slope}{note}"
        )
    lines.append(
        "  The Lai–Robbins bound is asymptotic (lim inf R(T)/ln T ≥ C): at finite T a strategy may sit below C·ln T "
        "(its lower-order terms and the ln T factor are not yet comparable), but a logarithmic strategy's late slope "
        "dR/d ln t (tables below) should approach at least C as T grows; Thompson sampling and KL-UCB attain C, "
        "UCB1 with c = 2 is only guaranteed 8·Σ_a 1/Δ_a ≥ C. All measured curves lie below C·ln T at this T, so the "
        "data here cannot confirm the bound's constant; the `scale=paper` run (T = 1e5) is the one to compare."
    )
    ctx = runs[runs.instance == "contextual"]
    if ctx.family.nunique() == 2:
        lin, eps = ctx[ctx.family == "LinUCB"], ctx[ctx.family == "ε-greedy"]
        bl = lin.loc[lin.regret_T.map(lambda r: r[0]).idxmin()]
        be = eps.loc[eps.regret_T.map(lambda r: r[0]).idxmin()]
        fixed_growth = [f"{r.label} {r.growth}" for _, r in eps.iterrows() if r.label.startswith("ε-greedy ε=")]
        lines.append(
            f"- **Contextual bandit:** best LinUCB ({bl.label}) reaches R(T) = {lab.fmt_ci(*bl.regret_T)} "
            f"({bl.growth}), best ε-greedy on ridge estimates ({be.label}) {lab.fmt_ci(*be.regret_T)} ({be.growth}); "
            f"fixed ε > 0: {', '.join(fixed_growth)}. "
            "Contexts spread over the sphere make even the greedy ridge estimate explore, so ε adds only cost here."
        )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    folders = lab.train_jobs(plan, jobs(plan))
    curves = load_curves(plan, folders)
    runs = per_setting(curves, plan)
    names = list(plan.instances)
    constants = {name: lai_robbins_constant(plan.instances[name]) for name in names}

    report = lab.Report(plan, "Exploration and regret on bandits")
    report.add(
        "**Question.** How does the regret of ε-greedy (fixed and decaying ε), UCB1 and Thompson sampling grow with "
        "the number of pulls on multi-armed bandits, and of LinUCB vs ε-greedy on a contextual bandit — which grow "
        "linearly, which logarithmically — and where do the measured curves sit against the Lai–Robbins lower bound?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`: {plan.seeds} vmapped seeds per setting, T = {plan.total_timesteps} pulls, regret "
        f"recorded every {plan.num_steps} pulls. Instances: one arm at μ*, K − 1 arms at μ* − Δ, arm order drawn per "
        f"seed (`purerl.bandit_envs.KArmedBernoulliBandit` / `KArmedGaussianBandit`). Presets: "
        f"`conf/experiment/{NAME}.yaml` and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(runs, plan),
        "## Regret at T per instance",
        "Regret: exact pseudo-regret Σ_t (μ* − μ_{a_t}), mean over seeds with a 95% bootstrap CI. Growth from "
        f"R(T)/R(T/2): linear (≥ {LINEAR}, 2 for a constant rate), logarithmic (≤ {LOGARITHMIC}; C·ln t gives "
        f"{np.log(plan.total_timesteps) / np.log(plan.total_timesteps / 2):.2f}), sub-linear in between. "
        "Lai–Robbins constant C = Σ_a Δ_a / KL(ν_a, ν*) (Bernoulli KL; Gaussian with known σ: Δ²/2σ²). "
        "Thompson is Beta–Bernoulli (uniform prior) on Bernoulli instances and Gaussian (prior N(0, 1), known "
        "σ = 1) on Gaussian ones. UCB1's index √(c ln t / n) is tuned for rewards in [0, 1]; Gaussian rewards are "
        "not bounded.",
    )
    report.headline(f"Headline: mean regret at T = {plan.total_timesteps} [95% CI] and growth "
                    "(log: logarithmic, sub: sub-linear, ↗lin: linear)", lab.markdown_table(headline(runs, plan)))
    for name in names:
        report.add(f"### {instance_label(plan.instances[name], 'hard' in name)}, "
                   f"C = {constants[name]:.3g}", lab.markdown_table(detail(runs, plan, name)))
    if "contextual" in set(runs.instance):
        report.add("### Linear contextual bandit: LinUCB vs ε-greedy on ridge estimates",
                   lab.markdown_table(detail(runs, plan, "contextual")))
    report.figure(plot_curves(curves, plan, names, log_x=False, constants=constants), "regret_curves.png",
                  "Cumulative regret against pulls, per instance (dashed: Lai–Robbins C·ln t)")
    report.figure(plot_curves(curves, plan, names, log_x=True, constants=constants), "regret_vs_log_t.png",
                  "The same curves against log t: logarithmic regret is a straight line, linear regret bends upwards")
    report.figure(plot_growth(runs, plan), "regret_vs_lai_robbins.png",
                  "Regret at T divided by the Lai–Robbins C·ln T, per strategy and instance")
    if "contextual" in set(curves.instance):
        report.figure(plot_curves(curves, plan, ["contextual"], log_x=True, constants={}), "contextual.png",
                      "LinUCB vs ε-greedy on the linear contextual bandit (log t axis)")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
