"""Stale data, its batch-size confound and its correction.
`python -m experiments.stale_ppo [scale=full|ci|paper|smoke] [rebuild=true]`

PPO whose update batch is the fresh rollout plus the K most recent older rollouts
(purerl.algos.stale_ppo). Each update runs the same number of SGD steps whatever K, so K also
multiplies the minibatch size. Four arms per (K, ε), the same seeds in every arm:

- *behaviour*: the stored data as collected, ratio π_θ / μ against the policy that collected it;
- *naive*: the same data, ratio π_θ / π_start against the policy at the update's start;
- *V-trace*: advantages and critic targets recomputed at each update's start from the current
  critic with truncated importance weights (Espeholt et al. 2018), ratio against π_start;
- *fresh control*: K + 1 fresh rollouts per update (K + 1 times the envs), no buffer — the same
  batch, minibatch size and SGD steps as the stale arms, with none of the data stale.

One compiled program per (env, K) for the three stale arms (the buffer holds exactly K older
rollouts) and one per (env, K) for the control. Per-seed numbers are kept beside the report;
`rebuild=true` remakes it from them without training.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab
from purerl.algos import stale_ppo as agent

NAME = "stale_ppo"
FRESH = "fresh control"
ARM_ORDER = ("behaviour", "naive", "V-trace", FRESH)
DIAGNOSTICS = ("behaviour_kl", "zero_gradient_frac", "ratio_p05", "ratio_p95", "clip_frac_first_epoch",
               "rho_truncated_frac", "update_kl")
CURVE_POINTS = 50  # points per kept mean learning curve


# ---------------------------------------------------------------- jobs
def job_names(plan: DictConfig) -> dict[str, tuple[str, int, str]]:
    """job -> (env, K, kind): per env and K, the stale arms ("stale", K > 0) and the control ("fresh")."""
    out = {}
    for env in plan.envs:
        for k in plan.stale_rollouts:
            if k > 0:
                out[f"{env}__stale_k{k}"] = (env, int(k), "stale")
            out[f"{env}__fresh_k{k}"] = (env, int(k), "fresh")
    return out


def _override(overrides: list[str], key: str) -> str:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    if not found:
        raise lab.ExperimentError(f"envs: each env's overrides must set {key}; got {overrides}")
    return found[-1]


def train_job(plan: DictConfig, env: str, k: int, kind: str) -> dict[str, pd.DataFrame]:
    """One compiled program: the stale arms at K (buffer of exactly K rollouts), or the fresh
    control at K (K + 1 times the envs and the env steps, no buffer)."""
    from purerl import results, sweep
    from purerl.cli.train import build_plan

    overrides = list(plan.envs[env])
    if kind == "fresh":
        envs, total = int(_override(overrides, "algo.config.num_envs")), int(
            _override(overrides, "algo.config.total_timesteps"))
        overrides += [f"algo.config.num_envs={envs * (k + 1)}", f"algo.config.total_timesteps={total * (k + 1)}"]
    base = build_plan(lab.compose_job(plan, overrides))  # validates the PPO settings
    config = agent.Config(**{f.name: getattr(base.config, f.name) for f in dataclasses.fields(base.config)},
                          max_stale=k if kind == "stale" else 0, max_staleness=0)
    hyper = agent.Hyper(**{f.name: getattr(base.hyper, f.name) for f in dataclasses.fields(base.hyper)})
    if kind == "stale":
        settings = [{"stale_rollouts": float(k), "correction": float(agent.correction_code(arm.correction)),
                     "naive_ratio": float(arm.naive_ratio), "clip_eps": float(eps)}
                    for arm in plan.arms.values() for eps in plan.clip_eps]
    else:
        settings = [{"clip_eps": float(eps)} for eps in plan.clip_eps]
    result = sweep.run(agent.make_train(config), sweep.from_settings(hyper, settings), base.seeds)
    ids = dict(experiment=NAME, algo="stale_ppo", config=config, base_hyper=hyper)
    return {"results": results.tidy(result, **ids), "summary": results.summarize(result, **ids)}


def arm_of(plan: DictConfig, row: Any) -> str:
    for name, arm in plan.arms.items():
        if (agent.correction_code(arm.correction), float(arm.naive_ratio)) == (row.correction, row.naive_ratio):
            return name
    raise lab.ExperimentError(f"no arm with correction {row.correction:g}, naive_ratio {row.naive_ratio:g}")


def per_seed(plan: DictConfig, env: str, k: int, kind: str, tables: dict[str, pd.DataFrame]
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(seeds, curves) of one job: per arm × ε × seed, the final return, the AUC and each
    diagnostic's mean over the second half of the updates (buffer full); per arm × ε, the mean
    learning curve (return against update) with its 95% CI band."""
    summary, curves = tables["summary"].copy(), tables["results"]
    summary["arm"] = [arm_of(plan, r) if kind == "stale" else FRESH for r in summary.itertuples()]
    late = curves[curves["update"] >= curves["update"].max() / 2]
    diagnostics = late.groupby(["setting", "seed"])[list(DIAGNOSTICS)].mean().reset_index()
    seeds = summary[["setting", "seed", "arm", "clip_eps", "final_return", "auc"]].merge(diagnostics,
                                                                                      on=["setting", "seed"])
    seeds = seeds.assign(env=env, K=k).drop(columns="setting")
    out = []
    for setting, group in curves.groupby("setting"):
        # An update in which no episode of a seed ended has no return: carry that seed's last one.
        matrix = group.pivot(index="seed", columns="update", values="episode_return").ffill(axis=1)
        matrix = matrix.loc[:, matrix.notna().all(axis=0)]
        keep = np.unique(np.linspace(0, matrix.shape[1] - 1, CURVE_POINTS).round().astype(int))
        mean, low, high = lab.curve_ci(matrix.to_numpy()[:, keep])
        first = summary[summary.setting == setting].iloc[0]
        out.append(pd.DataFrame({"env": env, "K": k, "arm": first.arm, "clip_eps": first.clip_eps,
                                 "update": matrix.columns.to_numpy()[keep], "mean": mean, "low": low, "high": high}))
    return seeds, pd.concat(out, ignore_index=True)


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    seeds, curves = [], []
    for job, (env, k, kind) in job_names(plan).items():
        tables = lab.measured(plan, job, {"overrides": list(plan.envs[env]), "K": k, "kind": kind,
                                          "arms": plan.arms, "clip_eps": plan.clip_eps, "seeds": plan.seeds},
                              lambda env=env, k=k, kind=kind: train_job(plan, env, k, kind),
                              code=[agent, train_job])
        s, c = per_seed(plan, env, k, kind, tables)
        seeds.append(s)
        curves.append(c)
    return {"seeds": pd.concat(seeds, ignore_index=True), "curves": pd.concat(curves, ignore_index=True)}


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    import purerl.rl.off_policy_corrections as corrections

    return [agent, corrections, train_job, per_seed]


# ---------------------------------------------------------------- statistics
def cell(seeds: pd.DataFrame, env: str, k: int, arm: str, eps: float) -> pd.Series:
    """Final return per seed of one (env, K, arm, ε); K = 0 is the plain PPO baseline whatever the arm."""
    if k == 0:
        arm = FRESH
    part = seeds[(seeds.env == env) & (seeds.K == k) & (seeds.arm == arm) & np.isclose(seeds.clip_eps, eps)]
    return part.set_index("seed").final_return.sort_index()


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Mean over seeds of a − b, the same seed in both, with a 95% bootstrap CI."""
    both = pd.concat([a, b], axis=1, join="inner")
    return lab.bootstrap_ci(both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy())


COMPARISONS = (  # (label, A, B, what a difference means), A and B as (arm, K or 0)
    ("stale − K=0", ("behaviour", "K"), (FRESH, 0), "the effect as the old report measured it"),
    ("control − K=0", (FRESH, "K"), (FRESH, 0), "the batch-size effect (fresh data, K + 1 times the batch)"),
    ("stale − control", ("behaviour", "K"), (FRESH, "K"), "the staleness effect at equal batch size"),
    ("naive − behaviour", ("naive", "K"), ("behaviour", "K"), "ratio against π_start instead of μ"),
    ("V-trace − behaviour", ("V-trace", "K"), ("behaviour", "K"), "advantages recomputed with the current critic"),
)


def comparisons(plan: DictConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for env in plan.envs:
        for eps in plan.clip_eps:
            for k in [int(k) for k in plan.stale_rollouts if k > 0]:
                for label, (arm_a, ka), (arm_b, kb), meaning in COMPARISONS:
                    a = cell(seeds, env, k if ka == "K" else 0, arm_a, eps)
                    b = cell(seeds, env, k if kb == "K" else 0, arm_b, eps)
                    diff = paired(a, b)
                    n = len(a.index.intersection(b.index))
                    rows.append({"env": env, "clip_eps": float(eps), "K": k, "comparison": label, "meaning": meaning,
                                 "seeds": n, "diff": diff,
                                 "verdict": lab.verdict(diff, f"{label.split(' − ')[1]} higher",
                                                    f"{label.split(' − ')[0]} higher", n)})
    return pd.DataFrame(rows)


def settings_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per (env, K, ε, arm): mean final return and the diagnostics' medians over seeds, with CIs."""
    rows = []
    order = {arm: i for i, arm in enumerate(ARM_ORDER)}
    keys = ["env", "K", "clip_eps", "arm"]
    for (env, k, eps, arm), group in sorted(seeds.groupby(keys), key=lambda g: (g[0][0], g[0][1], g[0][2],
                                                                                   order.get(g[0][3], 9))):
        median = {d: lab.bootstrap_ci(group[d].to_numpy(), "median") for d in DIAGNOSTICS}
        rows.append({
            "env": env, "K": k, "ε": f"{eps:g}", "arm": "PPO (K = 0)" if k == 0 else arm,
            "final return [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(group.final_return)),
            "KL(μ ‖ π_start)": lab.fmt_ci(*median["behaviour_kl"], digits=2),
            "zero-gradient share": lab.fmt_ci(*median["zero_gradient_frac"], digits=2),
            "ratio 5–95%": f"{median['ratio_p05'][0]:.2f}–{median['ratio_p95'][0]:.2f}",
            "seeds": len(group),
        })
    return pd.DataFrame(rows)


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"env": comp.env, "ε": comp.clip_eps.map("{:g}".format), "K": comp.K,
                         "comparison (A − B)": comp.comparison,
                         "final return difference [95% CI]": comp["diff"].map(lambda d: lab.fmt_ci(*d)),
                         "verdict": comp.verdict})


# ---------------------------------------------------------------- plots
def plot_returns(seeds: pd.DataFrame, plan: DictConfig):
    envs, eps_values = list(plan.envs), list(plan.clip_eps)
    fig, axes = plt.subplots(len(envs), len(eps_values), figsize=(4.6 * len(eps_values), 3.6 * len(envs)),
                             layout="constrained", squeeze=False, sharey="row")
    ks = sorted(seeds.K.unique())
    for row, env in zip(axes, envs):
        for ax, eps in zip(row, eps_values):
            for i, arm in enumerate(ARM_ORDER):
                stats = [lab.bootstrap_ci(cell(seeds, env, k, arm, eps)) for k in ks]
                style = "--" if arm == FRESH else "-"
                ax.plot(ks, [s[0] for s in stats], style, marker="o", markersize=3, color=f"C{i}", label=arm)
                ax.fill_between(ks, [s[1] for s in stats], [s[2] for s in stats], color=f"C{i}", alpha=0.12)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xticks(ks, [f"{k:g}" for k in ks])
            ax.set_xlabel("K (older rollouts; control: K + 1 fresh rollouts)")
            ax.set_title(f"{env}, ε = {eps:g}", fontsize="small")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("final return (mean, 95% CI)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small")
    return fig


def plot_diagnostics(seeds: pd.DataFrame, plan: DictConfig):
    panels = [("behaviour_kl", "KL(μ ‖ π_start), off-policy samples", "log"),
              ("zero_gradient_frac", "share of samples with zero gradient at the start", "linear"),
              ("ratio_spread", "ratio spread π_start / μ (95th − 5th percentile)", "linear")]
    seeds = seeds.assign(ratio_spread=seeds.ratio_p95 - seeds.ratio_p05)
    stale = seeds[seeds.arm != FRESH]
    ks = sorted(stale.K.unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.7), layout="constrained")
    for ax, (metric, title, scale) in zip(axes, panels):
        for i, arm in enumerate(ARM_ORDER[:3]):
            for eps, style in zip(plan.clip_eps, ("-", "--", ":")):
                part = stale[(stale.arm == arm) & np.isclose(stale.clip_eps, eps)]
                stats = [lab.bootstrap_ci(part[part.K == k][metric].to_numpy(), "median") for k in ks]
                ax.plot(ks, [s[0] for s in stats], style, marker="o", markersize=3, color=f"C{i}",
                        label=f"{arm}, ε = {eps:g}")
                ax.fill_between(ks, [s[1] for s in stats], [s[2] for s in stats], color=f"C{i}", alpha=0.1)
        ax.set_xlabel("K (older rollouts in the batch)")
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.set_title(title, fontsize="small")
        if scale == "log":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="x-small")
    fig.suptitle(f"Stale-data diagnostics over the second half of training (median over "
                 f"{seeds.seed.nunique()} seeds, 95% CI)", fontsize="medium")
    return fig


def plot_curves(curves: pd.DataFrame, plan: DictConfig):
    envs, eps_values = list(plan.envs), list(plan.clip_eps)
    ks = sorted(curves.K.unique())
    fig, axes = plt.subplots(len(envs) * len(eps_values), len(ARM_ORDER), figsize=(3.6 * len(ARM_ORDER),
                             2.8 * len(envs) * len(eps_values)), layout="constrained", squeeze=False, sharey=True)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks)))
    for r, (env, eps) in enumerate([(e, x) for e in envs for x in eps_values]):
        for c, arm in enumerate(ARM_ORDER):
            ax = axes[r, c]
            for colour, k in zip(colours, ks):
                part = curves[(curves.env == env) & (curves.K == k) & np.isclose(curves.clip_eps, eps)
                              & (curves.arm == (FRESH if k == 0 else arm))]
                ax.plot(part["update"], part["mean"], color=colour, label=f"K = {k:g}")
                ax.fill_between(part["update"], part["low"], part["high"], color=colour, alpha=0.12)
            ax.set_title(f"{env}, ε = {eps:g}, {arm}", fontsize="small")
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("return (mean, 95% CI)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small")
    return fig


# ---------------------------------------------------------------- report
def find(comp: pd.DataFrame, env: str, eps: float, k: int, label: str) -> pd.Series:
    return comp[(comp.env == env) & np.isclose(comp.clip_eps, eps) & (comp.K == k)
                & (comp.comparison == label)].iloc[0]


def answer(plan: DictConfig, seeds: pd.DataFrame, comp: pd.DataFrame) -> str:
    lines = []
    for r in comp.itertuples():
        if r.comparison == "stale − K=0":
            control = find(comp, r.env, r.clip_eps, r.K, "control − K=0")
            net = find(comp, r.env, r.clip_eps, r.K, "stale − control")
            lines.append(
                f"- **{r.env}, ε = {r.clip_eps:g}, K = {r.K}:** stale data (behaviour ratio) minus PPO at K = 0: "
                f"{lab.fmt_ci(*r.diff)} → {r.verdict}; the fresh control at the same batch size minus K = 0: "
                f"{lab.fmt_ci(*control['diff'])} → {control.verdict}; stale minus control: "
                f"{lab.fmt_ci(*net['diff'])} → **{net.verdict}**.")
    for label in ("naive − behaviour", "V-trace − behaviour"):
        part = comp[comp.comparison == label]
        resolved = part[~part.verdict.str.startswith("not resolved")]
        text = "; ".join(f"{r.env} ε = {r.clip_eps:g} K = {r.K}: {lab.fmt_ci(*r.diff)} ({r.verdict})"
                         for r in resolved.itertuples()) or "none"
        lines.append(f"- **{label}:** {len(resolved)} of {len(part)} (env, ε, K) cells resolved: {text}.")
    stale = seeds[(seeds.arm != FRESH) & (seeds.K > 0)]
    k_max = int(stale.K.max())
    top = stale[stale.K == k_max]
    for eps in plan.clip_eps:
        at = top[np.isclose(top.clip_eps, eps)]
        kl = {arm: lab.bootstrap_ci(at[at.arm == arm].behaviour_kl.to_numpy(), "median") for arm in ARM_ORDER[:3]}
        zero = lab.bootstrap_ci(at[at.arm == "behaviour"].zero_gradient_frac.to_numpy(), "median")
        lines.append(
            f"- **What staleness does at K = {k_max}, ε = {eps:g}** (medians over seeds): KL(μ ‖ π_start) "
            + ", ".join(f"{arm} {lab.fmt_ci(*v, digits=2)}" for arm, v in kl.items())
            + f"; with the behaviour ratio, a share {lab.fmt_ci(*zero, digits=2)} of the samples has zero gradient "
            "from the start (its ratio already outside the clip band on the side the advantage pushes to).")
    return "\n".join(lines)


def headline_line(plan: DictConfig, comp: pd.DataFrame) -> str:
    """plan.headline = [env, ε, K]: the stale-vs-control comparison there, and the effect it explains."""
    env, eps, k = plan.headline
    net = find(comp, env, eps, k, "stale − control")
    raw = find(comp, env, eps, k, "stale − K=0")
    control = find(comp, env, eps, k, "control − K=0")
    return (f"**Headline.** {env}, ε = {eps:g}, K = {k}, {net.seeds} paired seeds: final return of PPO on K stale "
            f"rollouts minus the fresh control at the same batch size = {lab.fmt_ci(*net['diff'])} "
            f"({net.verdict}); the stale arm's gain over PPO at K = 0, {lab.fmt_ci(*raw['diff'])}, compares with "
            f"the control's {lab.fmt_ci(*control['diff'])} from batch size alone.")


DISCUSSION = """\
PPO's clipped ratio against the behaviour policy is what makes several epochs over slightly old data
safe (Schulman et al. 2017): a stale sample keeps its importance weight π_θ / μ, and once that ratio
has left [1 − ε, 1 + ε] on the side the advantage pushes to, its gradient is zero — the zero-gradient
share in the table, which only the behaviour arm has. The two arms whose ratio is taken against
π_start — the naive one, and V-trace here (its truncated weights enter the advantages and targets;
the clip is against π_start, the proximal policy of the decoupled objective of Hilton, Cobbe & Schulman 2022)
— start every sample inside the band, so the clip bounds each update's step from π_start but not the
distance to the data's behaviour policy, and that distance (KL(μ ‖ π_start), the ratio spread) is
several times the behaviour arm's. Correcting the advantages (Espeholt et al. 2018 designed V-trace
for an actor that lags the learner by a few updates, without a clipped surrogate) does not replace
the trust region with respect to μ that the behaviour ratio gives; the decoupled objective keeps
both, and is the arm to add next. The confound the earlier report had is the one Hilton et al. study
under the name batch-size invariance: with a fixed number of SGD steps, adding K old rollouts also
multiplies the minibatch, and on CartPole a larger minibatch of fresh data is itself a better
gradient estimate. The fresh control removes it at the price of K + 1 times the environment steps,
so it answers "is old data as good as new data at the same batch", not "is old data free"; the
stale-vs-K = 0 rows answer the second question, at equal environment steps."""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    seeds, curves = kept.tables["seeds"], kept.tables["curves"]
    comp = comparisons(plan, seeds)
    n = int(seeds.groupby(["env", "K", "arm", "clip_eps"]).seed.nunique().min())
    ks = [int(k) for k in plan.stale_rollouts]

    report = lab.Report(plan, "Stale data, batch size and the clip range ε", kept=kept)
    envs_text = ", ".join(f"{env} ({_override(list(o), 'algo.config.total_timesteps')} env steps per run at K = 0)"
                          for env, o in plan.envs.items())
    report.add(
        "**Question.** What does PPO gain or lose when each update's batch adds the K most recent older rollouts, "
        "once the larger batch that comes with them is controlled for; does the ratio against the behaviour policy, "
        "the naive ratio against π_start or V-trace-corrected advantages use the old data best; and how does ε "
        "interact with staleness?",
        "**Command** (trains what is missing, then writes this report from the results; `rebuild=true` remakes "
        "it from the kept per-seed numbers without training):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds per cell (the same seeds in every arm), K ∈ {{{', '.join(map(str, ks))}}}, "
        f"ε ∈ {{{', '.join(f'{e:g}' for e in plan.clip_eps)}}}; {envs_text}. Presets: `conf/experiment/{NAME}.yaml` "
        f"(the base PPO) and `conf/experiment/{NAME}/{plan.scale}.yaml`; the variant: `purerl/algos/stale_ppo.py`.",
    )
    if plan.get("headline"):
        report.add(headline_line(plan, comp))
    report.add(
        "## Setup",
        "Every update collects a fresh rollout (envs × 32 steps) and runs 4 epochs × 4 minibatches on it plus the "
        "K previous rollouts as stored when collected (behaviour log-probs, critic values, GAE advantages, "
        "λ-returns); the number of SGD steps does not depend on K, so the minibatch is K + 1 times larger. Arms: "
        "*behaviour* — ratio π_θ / μ, μ the policy that collected the sample; *naive* — ratio π_θ / π_start, the "
        "policy at the update's start; *V-trace* — at each update's start every rollout's advantages and critic "
        "targets are recomputed from the current critic with importance weights π_start / μ truncated at ρ̄ = c̄ = 1, "
        "ratio against π_start; *fresh control* — K + 1 fresh rollouts per update (K + 1 times the envs), no "
        "buffer: the same batch, minibatch and SGD steps with fresh data, at K + 1 times the environment steps. "
        "K = 0 is plain PPO (all arms coincide). All arms run the same number of updates; returns are compared at "
        "the end. Final return: mean episode return over the last updates of a run (`purerl.results.summarize`). "
        "Diagnostics at each update's start, averaged over the second half of training, median over seeds with a "
        "95% bootstrap CI: KL(μ ‖ π_start) over the stale samples, the 5–95% range of π_start / μ (the ratio "
        "spread), the share of samples whose clipped-surrogate gradient is zero from the start. "
        "Comparisons are paired by seed: a bootstrap CI of the mean difference; a "
        "claim only when it excludes 0.",
        "## Answer\n\n" + answer(plan, seeds, comp),
    )
    report.headline(f"Headline: final return and diagnostics per (K, ε, arm), {n} seeds",
                    lab.markdown_table(settings_table(seeds)))
    per_cell = len(COMPARISONS)
    report.add(
        f"## Comparisons (paired over seeds)\n\n{len(comp)} comparisons ({per_cell} per env, ε and K > 0), chosen "
        "before the run: " + "; ".join(f"*{label}* — {meaning}" for label, _, _, meaning in COMPARISONS)
        + ". With this many 95% CIs, expect about one in twenty to exclude 0 by chance.",
        lab.markdown_table(comparison_table(comp)),
    )
    report.figure(plot_returns(seeds, plan), "final_return.png",
                  "Final return against K per arm and ε (dashed: the fresh control at the same batch size)")
    report.figure(plot_diagnostics(seeds, plan), "diagnostics.png",
                  "What staleness does to the ratio and the gradient, per arm and ε")
    report.figure(plot_curves(curves, plan), "learning_curves.png",
                  "Learning curves per env, ε and arm; one line per K (mean, 95% CI)")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
