"""Critic or no critic: REINFORCE's baselines, tuned, on a dense and a sparse reward.
`python -m experiments.baselines [scale=full|ci|paper|smoke] [rebuild=true]`

- Learning: REINFORCE without a baseline, with a critic (G − V) that gets one Adam step per
  update at the actor's learning rate (the classic joint step), with a critic trained on its
  own (several epochs, its own learning rate), and with the critic-free group baseline at
  several group sizes G. One compiled program per (env, method): the actor's learning-rate
  grid × (tuning seeds + fresh seeds) vmapped. Each method's learning rate is picked on the
  tuning seeds (IQM AUC), then every method is compared on the fresh seeds, paired by seed.
- Gradient estimates at fixed parameters (experiments.pg_estimators), CartPole-v1: the
  checkpoints are PPO's final policy and critic after training at several learning rates;
  at each, the agreement between independent batches (spread) and the cosine to a
  large-batch reference gradient (bias).

Per-seed numbers are kept beside the report; `rebuild=true` remakes it from them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab
from experiments import pg_estimators as pg

NAME = "baselines"
ESTIMATOR_LABELS = {
    "none": "G_t (no baseline)",
    "standardised": "G_t standardised over the batch",
    "value": "G_t − V(s_t)",
    "gae": "GAE, standardised",
    "group": "group-relative",
}
UNBIASED = "value"  # the reference gradient's estimator (a fixed critic is an unbiased baseline)
CURVE_POINTS = 50
BOOTSTRAP = 1000


# ---------------------------------------------------------------- learning jobs
def method_label(plan: DictConfig, method: str) -> str:
    return str(plan.methods[method].label)


def job_names(plan: DictConfig) -> dict[str, tuple[str, str]]:
    return {f"{env}__{method}": (env, method) for env in plan.envs for method in plan.methods}


def jobs(plan: DictConfig) -> dict[str, list[str]]:
    """job -> its purerl-train overrides on top of the preset (the env's, then the method's)."""
    return {job: [*plan.envs[env].overrides, *plan.methods[method].overrides]
            for job, (env, method) in job_names(plan).items()}


def tuning_seeds(plan: DictConfig) -> list[int]:
    return list(range(int(plan.first_tuning_seed), int(plan.first_tuning_seed) + int(plan.tuning_seeds)))


def fresh_seeds(plan: DictConfig) -> list[int]:
    return list(range(int(plan.seeds)))


def train_job(plan: DictConfig, env: str, method: str) -> dict[str, pd.DataFrame]:
    """One compiled program: the env's learning-rate grid × (tuning + fresh seeds)."""
    from purerl import sweep
    from purerl.algos import reinforce
    from purerl.cli.train import build_plan

    spec = plan.methods[method]
    built = build_plan(lab.compose_job(plan, [*plan.envs[env].overrides, *spec.overrides]))
    if not isinstance(built.config, reinforce.Config):
        raise lab.ExperimentError(f"methods.{method}: expected REINFORCE jobs; got {type(built.config).__name__}")
    tied = bool(spec.get("critic_lr_is_lr", False))
    settings = [{"lr": float(lr), **({"critic_lr": float(lr)} if tied else {})} for lr in plan.envs[env].lrs]
    seeds = tuning_seeds(plan) + fresh_seeds(plan)
    result = sweep.run(reinforce.make_train(built.config), sweep.from_settings(built.hyper, settings), seeds)
    return per_run(plan, env, method, result, built.config)


def per_run(plan: DictConfig, env: str, method: str, result: Any, config: Any) -> dict[str, pd.DataFrame]:
    """(runs, curves): per lr × seed, the AUC (mean training return over all updates), the final
    return (last 10% of updates), the episodes learned from and, for a critic, its explained
    variance over the second half; per lr, the mean curve over the fresh seeds with a 95% CI."""
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in result.metrics.items()}
    returns = metrics["episode_return"]
    updates = returns.shape[-1]
    window = max(1, int(np.ceil(0.1 * updates)))
    tuning = set(tuning_seeds(plan))
    ev = metrics.get("explained_variance")
    rows, curves = [], []
    for i, setting in enumerate(result.settings):
        for j, seed in enumerate(result.seeds):
            rows.append({
                "env": env, "method": method, "lr": float(setting["lr"]), "seed": int(seed),
                "role": "tuning" if int(seed) in tuning else "fresh",
                "auc": float(np.nanmean(returns[i, j])), "final_return": float(np.nanmean(returns[i, j, -window:])),
                "explained_variance": float(np.nanmean(ev[i, j, updates // 2:])) if ev is not None else np.nan,
            })
        fresh = [j for j, s in enumerate(result.seeds) if int(s) not in tuning]
        keep = np.unique(np.linspace(0, updates - 1, min(CURVE_POINTS, updates)).round().astype(int))
        matrix = pd.DataFrame(returns[i, fresh]).ffill(axis=1).to_numpy()[:, keep]
        mean, low, high = lab.curve_ci(matrix)
        part = {"env": env, "method": method, "lr": float(setting["lr"]), "update": keep,
                "episodes": (keep + 1) * config.num_envs, "mean": mean, "low": low, "high": high}
        if ev is not None:
            part["ev_mean"], part["ev_low"], part["ev_high"] = lab.curve_ci(ev[i, fresh][:, keep])
        curves.append(pd.DataFrame(part))
    return {"runs": pd.DataFrame(rows), "curves": pd.concat(curves, ignore_index=True)}


# ---------------------------------------------------------------- gradient estimates (CartPole)
def ppo_and_gradients(plan: DictConfig) -> dict[str, pd.DataFrame]:
    """PPO trained at each checkpoint lr (fresh seeds); at each final policy and critic, every
    estimator's spread over independent batches and its cosine to a reference gradient (the
    unbiased estimator's mean over `reference_batches` other batches)."""
    from purerl import sweep
    from purerl.algos import reinforce
    from purerl.cli.train import build_plan

    built = build_plan(lab.compose_job(plan, plan.ppo.overrides, preset=False))
    result = sweep.run(built.module.make_train(built.config), built.sweep, fresh_seeds(plan), return_state=True)
    spec = plan.gradients
    batch_config = reinforce.Config(env=built.config.env, num_envs=spec.episodes, num_steps=spec.horizon,
                                    actor_hidden=built.config.actor_hidden, critic_hidden=built.config.critic_hidden,
                                    activation=built.config.activation)
    sample = pg.make_sampler(batch_config, spec.horizon, spec.group_size)

    def measure(args):
        params, key = args
        batch_key, reference_key = jax.random.split(key)

        def draw(k):
            return sample(params, k, spec.gamma, spec.gae_lambda)

        grads, returns = jax.vmap(draw)(jax.random.split(batch_key, spec.batches))
        reference_grads, _ = jax.vmap(draw)(jax.random.split(reference_key, spec.reference_batches))
        reference = reference_grads[UNBIASED].mean(axis=0)
        stats = {name: {**pg.gradient_statistics(g), **pg.reference_statistics(g, reference)}
                 for name, g in grads.items()}
        return stats, returns.mean()

    params = result.final_state.params
    num_settings, num_seeds = len(built.sweep), len(result.seeds)
    flat = jax.tree.map(lambda x: x.reshape((num_settings * num_seeds,) + x.shape[2:]), params)
    keys = jax.random.split(jax.random.PRNGKey(12345), num_settings * num_seeds)
    # One checkpoint at a time (lax.map), its batches vmapped.
    stats, returns = jax.jit(lambda p, k: jax.lax.map(measure, (p, k)))(flat, keys)
    rows = []
    for i in range(num_settings * num_seeds):
        lr, seed = built.sweep.settings[i // num_seeds]["lr"], int(result.seeds[i % num_seeds])
        for name in pg.ESTIMATORS:
            rows.append({"checkpoint_lr": float(lr), "seed": seed, "estimator": name,
                         "checkpoint_return": float(returns[i]), **{k: float(v[i]) for k, v in stats[name].items()}})
    return {"gradients": pd.DataFrame(rows)}


# ---------------------------------------------------------------- compute (kept)
def measuring_code() -> list[Any]:
    from purerl.algos import reinforce
    from purerl.rl import group

    return [reinforce, group, pg, train_job, per_run, ppo_and_gradients]


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    runs, curves = [], []
    for job, (env, method) in job_names(plan).items():
        identity = {"env": OmegaConf.to_container(plan.envs[env]),
                    "method": OmegaConf.to_container(plan.methods[method]), "seeds": plan.seeds,
                    "tuning_seeds": plan.tuning_seeds, "first_tuning_seed": plan.first_tuning_seed}
        tables = lab.measured(plan, job, identity, lambda env=env, method=method: train_job(plan, env, method),
                              code=[train_job, per_run])
        runs.append(tables["runs"])
        curves.append(tables["curves"])
    identity = {"ppo": plan.ppo, "gradients": plan.gradients, "seeds": plan.seeds}
    gradients = lab.measured(plan, "ppo_and_gradients", identity, lambda: ppo_and_gradients(plan),
                             code=[pg, ppo_and_gradients])["gradients"]
    return {"runs": pd.concat(runs, ignore_index=True), "curves": pd.concat(curves, ignore_index=True),
            "gradients": gradients}


# ---------------------------------------------------------------- statistics
def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from analysis.aggregate import iqm as interquartile_mean

    return interquartile_mean(x, axis=axis)


def pick_lr(runs: pd.DataFrame, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, pd.Series]:
    """On the tuning seeds of one (env, method): the lr with the highest IQM AUC, how often it
    is the argmax when the tuning seeds are resampled, and the IQM AUC per lr."""
    table = runs[runs.role == "tuning"].pivot(index="seed", columns="lr", values="auc").sort_index(axis=1)
    values = table.to_numpy()
    score = pd.Series(iqm(values, axis=0), index=table.columns)
    best = float(score.idxmax())
    index = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    argmax = np.nanargmax(iqm(values[index], axis=1), axis=1)
    share = float(np.mean(table.columns.to_numpy()[argmax] == best))
    return best, share, score


def tuned(plan: DictConfig, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (env, method): the tuned lr, its bootstrap share, and the fresh-seed runs at that lr."""
    rows = []
    for (env, method), part in runs.groupby(["env", "method"], sort=False):
        lr, share, _ = pick_lr(part)
        rows.append({"env": env, "method": method, "lr": lr, "share": share})
    return pd.DataFrame(rows)


def fresh_at(runs: pd.DataFrame, picks: pd.DataFrame, env: str, method: str) -> pd.Series:
    lr = picks[(picks.env == env) & (picks.method == method)].lr.iloc[0]
    part = runs[(runs.env == env) & (runs.method == method) & (runs.role == "fresh") & np.isclose(runs.lr, lr)]
    return part.set_index("seed").sort_index()


def paired(a: pd.Series, b: pd.Series) -> tuple[tuple[float, float, float], int]:
    """Mean over seeds of a − b (the same seed in both) with a 95% bootstrap CI, and n."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return lab.bootstrap_ci(both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy()), len(both)


def comparisons(plan: DictConfig, runs: pd.DataFrame, picks: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for env in plan.envs:
        for a, b in plan.comparisons:
            diff, n = paired(fresh_at(runs, picks, env, a).auc, fresh_at(runs, picks, env, b).auc)
            la, lb = method_label(plan, a), method_label(plan, b)
            rows.append({"env": env, "a": a, "b": b, "comparison": f"{la} − {lb}", "seeds": n, "delta": diff,
                         "verdict": lab.verdict(diff, f"{lb} higher", f"{la} higher", n)})
    return pd.DataFrame(rows)


def method_table(plan: DictConfig, runs: pd.DataFrame, picks: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in picks.itertuples():
        fresh = fresh_at(runs, picks, r.env, r.method)
        ev = fresh.explained_variance.to_numpy()
        rows.append({
            "env": r.env, "method": method_label(plan, r.method),
            "tuned lr (share of resamples)": f"{r.lr:g} ({r.share:.2f})" + (
                ", grid edge" if r.lr in (min(plan.envs[r.env].lrs), max(plan.envs[r.env].lrs)) else ""),
            "IQM AUC [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(fresh.auc.to_numpy(), "iqm")),
            "IQM final return [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(fresh.final_return.to_numpy(), "iqm")),
            "critic's explained variance, 2nd half [95% CI]": (
                lab.fmt_ci(*lab.bootstrap_ci(ev), digits=2) if np.isfinite(ev).any() else "—"),
            "seeds": len(fresh),
        })
    return pd.DataFrame(rows)


def comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"env": comp.env, "comparison (A − B)": comp.comparison,
                         "AUC difference, mean [95% CI]": comp["delta"].map(lambda d: lab.fmt_ci(*d)),
                         "verdict": comp.verdict})


def group_methods(plan: DictConfig) -> dict[str, int]:
    """{method: G} of the group-baseline methods."""
    out = {}
    for method, spec in plan.methods.items():
        sizes = [o.split("=", 1)[1] for o in spec.overrides if o.startswith("algo.config.group_size=")]
        if any(o == "algo.config.baseline=group" for o in spec.overrides):
            out[method] = int(sizes[-1]) if sizes else 8
    return out


def best_group_size(plan: DictConfig, runs: pd.DataFrame, picks: pd.DataFrame, env: str,
                    resamples: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Per G (each at its tuned lr, fresh seeds): IQM AUC [CI] and how often it is the best G
    when the fresh seeds are resampled (the same resample for every G)."""
    groups = group_methods(plan)
    table = pd.concat({g: fresh_at(runs, picks, env, m).auc for m, g in groups.items()}, axis=1).dropna()
    values = table.to_numpy()
    index = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    wins = np.bincount(np.nanargmax(iqm(values[index], axis=1), axis=1), minlength=len(groups)) / resamples
    return pd.DataFrame([{"env": env, "G": g, **dict(zip(("iqm", "low", "high"),
                                                         lab.bootstrap_ci(table[g].to_numpy(), "iqm"))),
                          "best_share": wins[k]} for k, g in enumerate(table.columns)])


def gradient_table(gradients: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (lr, name), part in gradients.groupby(["checkpoint_lr", "estimator"], sort=True):
        rows.append({
            "checkpoint (PPO lr)": f"{lr:g}",
            "its return (mean)": lab.fmt(float(part.checkpoint_return.mean())),
            "estimator": ESTIMATOR_LABELS[name],
            "cosine between batches [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(part.cosine.to_numpy()), digits=2),
            "cosine of one batch to the reference [95% CI]": lab.fmt_ci(*lab.bootstrap_ci(part.ref_cosine.to_numpy()),
                                                                        digits=2),
            "cosine of the batches' mean to the reference [95% CI]": lab.fmt_ci(
                *lab.bootstrap_ci(part.mean_ref_cosine.to_numpy()), digits=2),
        })
    return pd.DataFrame(rows)


def bias_comparisons(gradients: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint, each estimator's cosine of its batches' mean to the reference minus the
    unbiased estimator's, paired by seed (checkpoint): below 0 = a direction the unbiased
    estimator does not have, i.e. bias."""
    rows = []
    for lr, part in gradients.groupby("checkpoint_lr", sort=True):
        wide = part.pivot(index="seed", columns="estimator", values="mean_ref_cosine")
        for name in pg.ESTIMATORS:
            if name == UNBIASED:
                continue
            diff, n = paired(wide[name], wide[UNBIASED])
            rows.append({"checkpoint_lr": lr, "estimator": name, "seeds": n, "delta": diff,
                         "verdict": lab.verdict(diff, f"further from the reference than {ESTIMATOR_LABELS[UNBIASED]}",
                                                f"closer to the reference than {ESTIMATOR_LABELS[UNBIASED]}", n)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- plots
def method_colours(plan: DictConfig) -> dict[str, Any]:
    return {m: f"C{i}" for i, m in enumerate(plan.methods)}


def plot_lr(plan: DictConfig, runs: pd.DataFrame, picks: pd.DataFrame):
    envs = list(plan.envs)
    colours = method_colours(plan)
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4.2), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        for method in plan.methods:
            part = runs[(runs.env == env) & (runs.method == method)]
            for role, style in (("tuning", ":"), ("fresh", "-")):
                stats = [lab.bootstrap_ci(g.auc.to_numpy(), "iqm") for _, g in part[part.role == role].groupby("lr")]
                lrs = sorted(part.lr.unique())
                ax.plot(lrs, [s[0] for s in stats], style, marker="o", markersize=3, color=colours[method],
                        label=method_label(plan, method) if role == "fresh" else None)
                if role == "fresh":
                    ax.fill_between(lrs, [s[1] for s in stats], [s[2] for s in stats], color=colours[method],
                                    alpha=0.1)
            pick = picks[(picks.env == env) & (picks.method == method)].lr.iloc[0]
            fresh = part[(part.role == "fresh") & np.isclose(part.lr, pick)].auc.to_numpy()
            ax.plot([pick], [iqm(fresh)], marker="*", markersize=11, color=colours[method], linestyle="none")
        ax.set_xscale("log")
        lrs = sorted(runs[runs.env == env].lr.unique())
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("actor learning rate")
        ax.set_ylabel("IQM AUC (mean training return)")
        ax.set_title(f"{env}: dotted = tuning seeds, solid = fresh seeds (95% CI), ★ tuned lr", fontsize="small")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
    return fig


def plot_curves(plan: DictConfig, curves: pd.DataFrame, picks: pd.DataFrame):
    envs = list(plan.envs)
    colours = method_colours(plan)
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4.2), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        for method in plan.methods:
            lr = picks[(picks.env == env) & (picks.method == method)].lr.iloc[0]
            part = curves[(curves.env == env) & (curves.method == method) & np.isclose(curves.lr, lr)]
            ax.plot(part.episodes, part["mean"], color=colours[method], label=method_label(plan, method))
            ax.fill_between(part.episodes, part.low, part.high, color=colours[method], alpha=0.12)
        ax.set_xlabel("episodes learned from")
        ax.set_ylabel("training return (mean over fresh seeds, 95% CI)")
        ax.set_title(f"{env}, each method at its tuned lr", fontsize="small")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
    return fig


def plot_critic(plan: DictConfig, curves: pd.DataFrame, picks: pd.DataFrame):
    envs = list(plan.envs)
    colours = method_colours(plan)
    critics = [m for m in plan.methods if any(o == "algo.config.baseline=value" for o in plan.methods[m].overrides)]
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 3.8), layout="constrained", squeeze=False,
                             sharey=True)
    for ax, env in zip(axes[0], envs):
        for method in critics:
            lr = picks[(picks.env == env) & (picks.method == method)].lr.iloc[0]
            part = curves[(curves.env == env) & (curves.method == method) & np.isclose(curves.lr, lr)]
            ax.plot(part.episodes, part.ev_mean, color=colours[method], label=method_label(plan, method))
            ax.fill_between(part.episodes, part.ev_low, part.ev_high, color=colours[method], alpha=0.15)
        ax.axhline(0, color="k", lw=0.6)
        # Below −1 a critic is far worse than a constant (early Catch batches whose returns barely
        # vary): the axis stops there so that the range that tells critics apart stays readable.
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("episodes learned from")
        ax.set_title(f"{env}: 1 − Var(G − V) / Var(G) before each update's critic fit (axis from −1)",
                     fontsize="small")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("explained variance (mean, 95% CI)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize="small")
    return fig


def plot_group(plan: DictConfig, sizes: pd.DataFrame):
    envs = list(plan.envs)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.4 * len(envs), 3.6), layout="constrained", squeeze=False)
    for ax, env in zip(axes[0], envs):
        part = sizes[sizes.env == env].sort_values("G")
        ax.errorbar(part.G, part.iqm, yerr=[part.iqm - part.low, part.high - part.iqm], marker="o", capsize=3,
                    color="C3")
        ax.set_xscale("log", base=2)
        ax.set_xticks(part.G, [f"{g:g}" for g in part.G])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("group size G (episodes sharing a start state)")
        ax.set_ylabel("IQM AUC, fresh seeds (95% CI)")
        ax.set_title(f"{env}: each G at its tuned lr", fontsize="small")
        ax.grid(alpha=0.3)
    return fig


def plot_gradients(gradients: pd.DataFrame):
    panels = [("cosine", "cosine between two batches (spread)"),
              ("ref_cosine", "cosine of one batch to the reference"),
              ("mean_ref_cosine", "cosine of the batches' mean to the reference (bias)")]
    lrs = sorted(gradients.checkpoint_lr.unique())
    returns = gradients.groupby("checkpoint_lr").checkpoint_return.mean()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained", sharey=True)
    for ax, (metric, title) in zip(axes, panels):
        for k, name in enumerate(pg.ESTIMATORS):
            stats = [lab.bootstrap_ci(gradients[(gradients.checkpoint_lr == lr) & (gradients.estimator == name)]
                                      [metric].to_numpy()) for lr in lrs]
            ax.plot(lrs, [s[0] for s in stats], marker="o", markersize=3, color=f"C{k}",
                    label=ESTIMATOR_LABELS[name])
            ax.fill_between(lrs, [s[1] for s in stats], [s[2] for s in stats], color=f"C{k}", alpha=0.12)
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}\n(return {returns[lr]:.0f})" for lr in lrs], fontsize="x-small")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("checkpoint: PPO's learning rate (its policy's return)")
        ax.set_title(title, fontsize="small")
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over seeds (95% CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5, fontsize="small")
    return fig


# ---------------------------------------------------------------- report
def answer(plan: DictConfig, picks: pd.DataFrame, comp: pd.DataFrame, sizes: pd.DataFrame, bias: pd.DataFrame,
           n: int) -> str:
    lines = []
    edge = [f"{r.env}: {method_label(plan, r.method)} ({r.lr:g})" for r in picks.itertuples()
            if r.lr in (min(plan.envs[r.env].lrs), max(plan.envs[r.env].lrs))]
    if edge:
        lines.append(f"- **Tuned at the edge of the lr grid:** {len(edge)} of {len(picks)} methods ("
                     + "; ".join(edge) + "): their best lr may lie outside the grid, so their numbers are lower "
                     "bounds of what tuning could give.")
    for r in comp.itertuples():
        lines.append(f"- **{r.env}, {r.comparison}** (AUC, {r.seeds} paired fresh seeds): {lab.fmt_ci(*r.delta)} → "
                     f"{r.verdict}.")
    unresolved = comp[comp.verdict.str.startswith("not resolved")]
    if len(unresolved):
        lines.append(f"- **Not resolved at {n} seeds:** {len(unresolved)} of {len(comp)} comparisons ("
                     + "; ".join(f"{r.env}: {r.comparison}" for r in unresolved.itertuples())
                     + "); the `paper` scale (32 fresh seeds, a 5-point lr grid, longer runs) is where they can "
                       "resolve.")
    for env, part in sizes.groupby("env", sort=False):
        top = part.loc[part.best_share.idxmax()]
        lines.append(f"- **{env}, group size:** G = {top.G:g} has the highest IQM AUC in {top.best_share:.0%} of "
                     f"{BOOTSTRAP} resamples of the {n} fresh seeds ("
                     + ", ".join(f"G = {g.G:g}: {g.best_share:.0%}" for g in part.itertuples()) + ")"
                     + ("." if top.best_share >= 0.95 else "; no size is best in 95% of them: not resolved."))
    resolved = bias[~bias.verdict.str.startswith("not resolved")]
    lines.append(
        f"- **Bias at fixed parameters (CartPole-v1):** {len(resolved)} of {len(bias)} estimator × checkpoint "
        f"cells differ from {ESTIMATOR_LABELS[UNBIASED]} in their mean's cosine to the reference: "
        + ("; ".join(f"{ESTIMATOR_LABELS[r.estimator]} at PPO lr {r.checkpoint_lr:g}: {lab.fmt_ci(*r.delta, digits=2)} "
                     f"({r.verdict})" for r in resolved.itertuples()) or "none")
        + ".")
    return "\n".join(lines)


DISCUSSION = """\
A state-value baseline leaves the REINFORCE gradient unbiased and lowers its variance only as far
as V(s) explains G_t (Williams 1992; Greensmith, Bartlett & Baxter 2004 for the optimal baseline);
the explained-variance column is that measurement, taken on each update's batch before the critic
is fitted to it. With one Adam step per update at the actor's rate — the joint step of many
textbook implementations and of this repository's default — the CartPole critic explains almost
nothing of G_t, so "REINFORCE with a critic" learns like REINFORCE without one; given its own
epochs and learning rate it explains about a third and the difference shows in the AUC. A third
is still modest: on CartPole-v1 the discounted return-to-go depends on the time left before the
500-step limit as much as on the state (Pardo et al. 2018, "Time limits in reinforcement
learning"), which a state-only critic cannot represent. The critic's own settings were one choice
(10 epochs × 4 minibatches at 1e-3), not tuned, so the critic arm is a lower bound of what a critic
can do here. On Catch the explained variance is meaningless late in training: once nearly every
episode is caught, G_t varies only through discounting and any critic error is large against that
tiny variance, so the ratio goes far below zero while the policy is already near-perfect; every
method but G = 8 ends near a return of 1, and the Catch comparisons of baseline kinds do not resolve.

The group baseline (GRPO, Shao et al. 2024; the leave-one-out baseline of Kool et al. 2019 is its
unstandardised cousin) needs G episodes from one start state, which a simulator grants for free.
On CartPole it beats the trained critic by a margin whose CI only just excludes 0, one of 12
comparisons (about 0.6 false positives expected at this many), and all three group sizes were
tuned at the top of the learning-rate grid: the group arms could do better still, which the
`paper` grid checks. Its weight is the whole episode's standardised return, not a per-step
return-to-go, and its standardisation makes it a biased estimator in principle; at fixed
parameters the bias tests do not separate it from the unbiased estimator (16 checkpoints each), and at
the trained checkpoint (return ≈ 460) every estimator's cosine to the 48-batch reference is low
enough that the reference itself is noisy — resolving bias there needs the `paper` scale's 512
reference batches. On Catch, where every episode ends in ±1, a group whose episodes all win or all
lose gives no gradient: with 16 episodes per update, pairs (G = 2) are often uninformative, and
G = 8 leaves only two start states per update; G = 4 is best in nearly every resample of the
fresh seeds. Learning rates were tuned per method on separate seeds, as Henderson et al. (2018)
and Andrychowicz et al. (2021) ask; with three learning rates per method the tuned value is itself
uncertain, and the headline table says how often each choice survives a resample of the tuning
seeds."""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    runs, curves, gradients = kept.tables["runs"], kept.tables["curves"], kept.tables["gradients"]
    picks = tuned(plan, runs)
    comp = comparisons(plan, runs, picks)
    sizes = pd.concat([best_group_size(plan, runs, picks, env) for env in plan.envs], ignore_index=True)
    bias = bias_comparisons(gradients)
    n = int(plan.seeds)

    report = lab.Report(plan, "Critic or no critic: REINFORCE baselines, tuned, on a dense and a sparse reward",
                        kept=kept)
    envs_text = "; ".join(f"{env}: " + ", ".join(o for o in spec.overrides if not o.startswith("env="))
                          + f", actor lr grid {{{', '.join(f'{lr:g}' for lr in spec.lrs)}}}"
                          for env, spec in plan.envs.items())
    report.add(
        "**Question.** What does a baseline buy REINFORCE — a learned critic (trained properly, or with the "
        "classic single joint step), the critic-free group baseline at which group size, or none — once each "
        "method's learning rate is tuned on its own seeds? On a dense and on a sparse reward. And at fixed "
        "parameters, how much spread and how much bias does each advantage estimator have?",
        "**Command** (trains what is missing, then writes this report from the results; `rebuild=true` remakes "
        "it from the kept per-seed numbers without training):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: learning rates picked on {plan.tuning_seeds} tuning seeds "
        f"({plan.first_tuning_seed}–{int(plan.first_tuning_seed) + int(plan.tuning_seeds) - 1}), every method then "
        f"compared on {n} fresh seeds (0–{n - 1}), the same in every method. {envs_text}. Presets: "
        f"`conf/experiment/{NAME}.yaml` (the REINFORCE base) and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
    )
    if plan.get("headline"):
        env, a, b = plan.headline
        r = comp[(comp.env == env) & (comp.a == a) & (comp.b == b)].iloc[0]
        report.add(f"**Headline.** {env}, {r.comparison}, AUC paired over {r.seeds} fresh seeds at each method's "
                   f"tuned learning rate: {lab.fmt_ci(*r.delta)} → {r.verdict}.")
    methods_text = "; ".join(f"*{spec.label}* — `{' '.join(spec.overrides)}`"
                             + (" with the critic's lr = the actor's" if spec.get("critic_lr_is_lr") else "")
                             for spec in plan.methods.values())
    report.add(
        "## Setup",
        "REINFORCE (`purerl/algos/reinforce.py`): each update plays one complete episode in each env (horizon "
        "`num_steps`) and takes one Adam step of the actor on −E[log π(a_t|s_t) · w_t] over the steps inside the "
        "episodes, returns not standardised. Methods: " + methods_text + ". The critic is fitted after the actor's "
        "step, so the weights of an update always come from a critic that has not seen its batch. *Sparse reward*: "
        "Catch-bsuite (gymnax): a ball falls for 9 steps, the reward is 0 on every step but the last, which is +1 "
        "if the paddle is under the ball and −1 otherwise — one nonzero reward per episode, so every action's "
        "credit comes from the episode's end. CartPole-v1 is the dense one (+1 per step). "
        "AUC: mean training return over all updates (equal episodes for every method); final return: over the "
        "last 10% of updates. Tuning: per method, the lr with the highest IQM AUC on the tuning seeds; the "
        "share says how often the same lr wins when the tuning seeds are resampled (1000 bootstrap resamples). "
        "Comparisons: on the fresh seeds at each method's tuned lr, the mean paired difference with a 95% "
        "bootstrap CI; a claim only when it excludes 0.",
        "## Answer\n\n" + answer(plan, picks, comp, sizes, bias, n),
    )
    report.headline(f"Headline: each method at its tuned learning rate, {n} fresh seeds",
                    lab.markdown_table(method_table(plan, runs, picks)))
    report.add(
        f"## Comparisons (paired over seeds)\n\n{len(comp)} comparisons ({len(plan.comparisons)} per env), chosen "
        "before the run. With this many 95% CIs, expect about one in twenty to exclude 0 by chance.",
        lab.markdown_table(comparison_table(comp)),
    )
    report.figure(plot_curves(plan, curves, picks), "learning_curves.png",
                  "Training return against episodes, each method at its tuned learning rate (fresh seeds)")
    report.figure(plot_lr(plan, runs, picks), "lr_sensitivity.png",
                  "IQM AUC against the actor's learning rate, tuning and fresh seeds")
    report.figure(plot_critic(plan, curves, picks), "explained_variance.png",
                  "How much of G_t the critic explains, one joint step vs its own epochs and learning rate")
    report.add(
        "## Group size",
        "Each G at its own tuned lr on the fresh seeds; *best share*: how often that G has the highest IQM AUC "
        f"when the {n} fresh seeds are resampled ({BOOTSTRAP} resamples, the same for every G).",
        lab.markdown_table(pd.DataFrame({
            "env": sizes.env, "G": sizes.G.map("{:g}".format),
            "IQM AUC [95% CI]": [lab.fmt_ci(r.iqm, r.low, r.high) for r in sizes.itertuples()],
            "best share": sizes.best_share.map("{:.2f}".format)})),
    )
    report.figure(plot_group(plan, sizes), "group_size.png", "IQM AUC against the group size G")
    spec = plan.gradients
    report.add(
        "## Spread and bias of the gradient estimate at fixed parameters (CartPole-v1)",
        f"Each checkpoint is PPO's final actor and critic after training at one learning rate (the smallest "
        f"leaves it at its initialisation), one per fresh seed. At each, {spec.batches} independent batches of "
        f"{spec.episodes} complete episodes (horizon {spec.horizon}) give one gradient of the actor per estimator "
        f"(γ = {spec.gamma:g}, GAE λ = {spec.gae_lambda:g}, group size {spec.group_size}; "
        "`experiments/pg_estimators.py`). *Reference*: the mean of the "
        f"{ESTIMATOR_LABELS[UNBIASED]} estimator (unbiased: a fixed critic is a state-only baseline) over "
        f"{spec.reference_batches} further batches. *Cosine between batches*: spread (1 = every batch points the "
        "same way). *Cosine of one batch to the reference*: what one update's direction shares with the true one. "
        "*Cosine of the batches' mean to the reference*: the estimator's expectation against the true direction — "
        "lower than the unbiased estimator's only through bias (up to the noise left in a mean of "
        f"{spec.batches}). CIs: bootstrap over seeds.",
        lab.markdown_table(gradient_table(gradients)),
        f"Bias tests: {len(bias)} comparisons (each other estimator against {ESTIMATOR_LABELS[UNBIASED]} at each "
        "checkpoint, paired by seed), the cosine of the batches' mean to the reference:",
        lab.markdown_table(pd.DataFrame({
            "checkpoint (PPO lr)": bias.checkpoint_lr.map("{:g}".format),
            "estimator": bias.estimator.map(ESTIMATOR_LABELS),
            f"minus {ESTIMATOR_LABELS[UNBIASED]} [95% CI]": bias["delta"].map(lambda d: lab.fmt_ci(*d, digits=2)),
            "verdict": bias.verdict})),
    )
    report.figure(plot_gradients(gradients), "gradients.png",
                  "Spread (left) and bias (right) of each estimator per checkpoint")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
