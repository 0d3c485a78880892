"""Synchronous vs asynchronous actor–learner: throughput, idle shares, staleness and the learning cost.
`python -m experiments.sync_vs_async [scale=full|ci|paper|smoke] [rebuild=true]`

`purerl.rl.async_runner` runs an actor program (rollouts) and a learner program (updates) on two
XLA devices (on CPU, lab exposes one device per core), either alternating (sync) or on a thread
each with a bounded queue (async; the actor collects with parameters at most S updates old,
blocking for fresher ones, or the learner drops too-stale rollouts). Arms: sync and the async
modes of the plan; PPO on CartPole once per off-policy correction (stale PPO's learner), GRPO on
the tiny LM (its ratio is against the behaviour log-probs the rollout carries). Every seed runs
every arm, so comparisons are paired; both programs are compiled (and a 2-update run of each
mode made, once per process) before the clock starts. One measurement per algorithm × seed (every arm of that seed,
run back to back), resumable one by one; the per-seed numbers and per-update curves are kept beside the report and
`rebuild=true` remakes it from them.
"""

from __future__ import annotations

import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab

NAME = "sync_vs_async"
LEARNING = {"ppo": "return", "grpo": "accuracy"}
TASK = {"ppo": "PPO, CartPole", "grpo": "GRPO, tiny LM"}
WINDOW = 1 / 3  # learning figure: the mean over the last third of the updates (of the run, or before a wall time)


# ---------------------------------------------------------------- measurement
_PROGRAMS: dict[str, Any] = {}  # built once per process, so the runner's compiled programs are shared
_WARMED: set[tuple[str, str]] = set()  # (algo, mode) whose 2-update warm-up run this process has made


def setup(plan: DictConfig, algo: str) -> tuple[Any, Any]:
    """(programs, hyper factory correction -> Hyper) of an algorithm at the plan's sizes."""
    from purerl.rl import async_runner as ar

    spec = plan[algo]
    config_kwargs = OmegaConf.to_container(spec.config, resolve=True)
    if algo == "ppo":
        from purerl.algos import stale_ppo

        if algo not in _PROGRAMS or _PROGRAMS[algo][0] != config_kwargs:
            tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in config_kwargs.items()}
            config = stale_ppo.Config(**tuples, total_timesteps=config_kwargs["num_envs"]
                                      * config_kwargs["num_steps"] * int(spec.updates), max_stale=0, max_staleness=0)
            _PROGRAMS[algo] = (config_kwargs, ar.ppo_programs(config))
            _WARMED.difference_update({w for w in _WARMED if w[0] == algo})

        def hyper(correction: str) -> Any:
            return stale_ppo.Hyper(lr=float(spec.lr), correction=float(stale_ppo.correction_code(correction)))
    elif algo == "grpo":
        from purerl.llm import grpo

        if algo not in _PROGRAMS or _PROGRAMS[algo][0] != config_kwargs:
            config = grpo.Config(**config_kwargs, num_updates=int(spec.updates))
            _PROGRAMS[algo] = (config_kwargs, ar.grpo_programs(config, stop_early=True))
            _WARMED.difference_update({w for w in _WARMED if w[0] == algo})

        def hyper(correction: str) -> Any:
            return grpo.Hyper(**OmegaConf.to_container(spec.hyper, resolve=True))
    else:
        raise lab.ExperimentError(f"algos: got {algo!r}; allowed: ppo, grpo")
    return _PROGRAMS[algo][1], hyper


def settings_of(plan: DictConfig, mode: str) -> Any:
    from purerl.rl import async_runner as ar

    if mode not in plan.modes:
        raise lab.ExperimentError(f"mode: got {mode!r}; allowed: {', '.join(plan.modes)}")
    return ar.Settings(**OmegaConf.to_container(plan.modes[mode], resolve=True))


def learning_curve(algo: str, metrics: dict[str, np.ndarray]) -> np.ndarray:
    """Per update: PPO the mean return of the episodes that ended in the rollout (NaN if none),
    GRPO the held-out accuracy after the update."""
    return np.asarray(metrics["episode_return" if algo == "ppo" else "accuracy"], np.float64)


def measure_seed(plan: DictConfig, algo: str, seed: int) -> dict[str, pd.DataFrame]:
    """Every arm of one algorithm on one seed, one after the other (arms of a seed run close in time,
    so a change of the machine's load between seeds does not bias the paired comparisons): each
    run's summary and its per-update curve."""
    import jax

    from purerl.rl import async_runner as ar

    programs, hyper_of = setup(plan, algo)
    options = OmegaConf.to_container(plan.compiler_options, resolve=True) or None
    updates = int(plan[algo].updates)
    rows, curves = [], []
    for _, mode, correction in arms(plan, [algo]):
        hyper, settings = hyper_of(correction), settings_of(plan, mode)
        if (algo, mode) not in _WARMED:  # compiles and the mode's first calls, off the clock, once per process
            ar.run(programs, settings, jax.random.PRNGKey(10_000), hyper, 2, compiler_options=options)
            _WARMED.add((algo, mode))
        result = ar.run(programs, settings, jax.random.PRNGKey(seed), hyper, updates, compiler_options=options)
        curve = learning_curve(algo, result.metrics)
        window = curve[-max(1, round(updates * WINDOW)):]
        arm = {"algo": algo, "mode": mode, "correction": correction, "seed": seed}
        rows.append({**arm, **result.summary(), "staleness_bound": 0 if settings.mode == "sync"
                     else settings.max_staleness,
                     "final": float(np.nanmean(window)) if np.isfinite(window).any() else np.nan})
        curves.append(pd.DataFrame({**arm, "update": np.arange(1, updates + 1),
                                    "samples": np.cumsum(result.metrics["samples"]),
                                    "wall_s": result.metrics["wall_s"], "value": curve,
                                    "lag": result.metrics["behaviour_lag"]}))
    return {"seeds": pd.DataFrame(rows), "curves": pd.concat(curves, ignore_index=True)}


def arms(plan: DictConfig, algos: Any = None) -> list[tuple[str, str, str]]:
    """(algo, mode, correction) of every arm: PPO per correction, GRPO once."""
    out = []
    for algo in plan.algos if algos is None else algos:
        corrections = list(plan[algo].corrections) if algo == "ppo" else ["behaviour"]
        out += [(algo, mode, correction) for correction in corrections for mode in plan.modes]
    return out


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    identity = {key: plan[key] for key in ("modes", "compiler_options")}
    parts = [lab.measured(plan, f"{algo}__seed{seed}", {**identity, "algo": plan[algo], "seed": seed},
                          lambda a=algo, s=seed: measure_seed(plan, a, s), measuring_code())
             for algo in plan.algos for seed in range(int(plan.seeds))]
    seeds = pd.concat([p["seeds"] for p in parts], ignore_index=True)
    curves = pd.concat([p["curves"] for p in parts], ignore_index=True)
    return {"seeds": seeds.assign(at_equal_wall=at_equal_wall(seeds, curves)), "curves": curves}


def at_equal_wall(seeds: pd.DataFrame, curves: pd.DataFrame) -> np.ndarray:
    """Per seed row: the learning figure at the wall time W every arm of its algorithm, correction and
    seed reached (the shortest of their runs): the mean over the updates finished in ((1 − WINDOW)·W, W],
    or the last update before W when none finished in that window."""
    out = []
    walls = seeds.groupby(["algo", "correction", "seed"]).wall_s.min()
    for row in seeds.itertuples():
        budget = walls[(row.algo, row.correction, row.seed)]
        curve = curves[(curves.algo == row.algo) & (curves["mode"] == row.mode)
                       & (curves.correction == row.correction) & (curves.seed == row.seed)]
        done = curve[curve.wall_s <= budget * (1 + 1e-9)]
        window = done[done.wall_s > (1 - WINDOW) * budget].value.to_numpy()
        if not np.isfinite(window).any():
            window = done.value.to_numpy()[-1:]
        out.append(float(np.nanmean(window)) if np.isfinite(window).any() else np.nan)
    return np.asarray(out)


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    import purerl.algos.stale_ppo as stale_ppo
    import purerl.rl.async_runner as async_runner
    import purerl.rl.off_policy_corrections as corrections

    return [async_runner, stale_ppo, corrections, setup, measure_seed, learning_curve, at_equal_wall]


# ---------------------------------------------------------------- statistics
def paired(seeds: pd.DataFrame, a: pd.Series, b: pd.Series, column: str, ratio: bool = False):
    """Mean over seeds of column(a) − column(b) (or a / b), the same seed in both, with a bootstrap CI."""
    def pick(arm: pd.Series) -> pd.Series:
        part = seeds[(seeds.algo == arm.algo) & (seeds["mode"] == arm["mode"]) & (seeds.correction == arm.correction)]
        return part.set_index("seed")[column]

    x, y = pick(a).align(pick(b), join="inner")
    return lab.bootstrap_ci((x / y if ratio else x - y).to_numpy())


def arm_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per arm: means with CIs, and its paired differences from sync (same algorithm, correction)."""
    rows = []
    for (algo, correction, mode), group in seeds.groupby(["algo", "correction", "mode"], sort=False):
        arm = group.iloc[0]
        sync = seeds[(seeds.algo == algo) & (seeds.correction == correction) & (seeds["mode"] == "sync")].iloc[0]
        n = group.seed.nunique()
        row = {"algo": algo, "correction": correction, "mode": mode, "seeds": n,
               "bound": int(arm.staleness_bound), "samples_per_s": lab.bootstrap_ci(group.samples_per_s),
               "learner_idle": lab.bootstrap_ci(group.learner_idle_share),
               "actor_idle": lab.bootstrap_ci(group.actor_idle_share),
               "mean_lag": lab.bootstrap_ci(group.mean_lag), "max_lag": float(group.max_lag.max()),
               "dropped": float(group.dropped.mean()), "final": lab.bootstrap_ci(group.final),
               "at_equal_wall": lab.bootstrap_ci(group.at_equal_wall)}
        if mode != "sync":
            row["gain"] = paired(seeds, arm, sync, "samples_per_s", ratio=True)
            row["idle_diff"] = paired(seeds, arm, sync, "learner_idle_share")
            row["cost"] = paired(seeds, arm, sync, "final")
            row["cost_wall"] = paired(seeds, arm, sync, "at_equal_wall")
            row["gain_verdict"] = lab.verdict((row["gain"][0] - 1, row["gain"][1] - 1, row["gain"][2] - 1),
                                              "slower", "faster", n)
            row["cost_verdict"] = lab.verdict(row["cost"], "learns less", "learns more", n)
            row["wall_verdict"] = lab.verdict(row["cost_wall"], "less at equal wall time",
                                              "more at equal wall time", n)
        rows.append(row)
    return pd.DataFrame(rows)


def correction_table(seeds: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """PPO: each correction other than the first against the first, per mode (paired final return)."""
    if "ppo" not in set(seeds.algo):
        return pd.DataFrame()
    corrections = list(plan.ppo.corrections)
    rows = []
    for correction in corrections[1:]:
        for mode in plan.modes:
            a = pd.Series({"algo": "ppo", "mode": mode, "correction": correction})
            b = pd.Series({"algo": "ppo", "mode": mode, "correction": corrections[0]})
            diff = paired(seeds, a, b, "final")
            n = int(plan.seeds)
            rows.append({"mode": mode, "a": correction, "b": corrections[0], "diff": diff,
                         "verdict": lab.verdict(diff, f"{correction} lower", f"{correction} higher", n)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- report
def ci(value: tuple[float, float, float], digits: int = 3) -> str:
    return lab.fmt_ci(*value, digits=digits)


def pct(value: tuple[float, float, float]) -> str:
    return lab.fmt_ci(*(100 * np.asarray(value, np.float64)), digits=2) + " %"


def label(row: Any) -> str:
    return f"{TASK[row.algo]}" + (f", {row.correction}" if row.algo == "ppo" else "")


def throughput_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in table.itertuples():
        rows.append({"task": label(row), "mode": row.mode, "S": row.bound,
                     "samples/s": ci(row.samples_per_s), "learner idle": pct(row.learner_idle),
                     "actor idle": pct(row.actor_idle), "mean lag [max]": f"{lab.fmt(row.mean_lag[0])} "
                     f"[{row.max_lag:g}]", "dropped / run": lab.fmt(row.dropped),
                     "throughput ÷ sync": "—" if row.mode == "sync" else "×" + ci(row.gain),
                     "verdict": "—" if row.mode == "sync" else row.gain_verdict})
    return pd.DataFrame(rows)


def learning_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in table.itertuples():
        sync = row.mode == "sync"
        rows.append({"task": label(row), "mode": row.mode, "final (return / accuracy)": ci(row.final),
                     "− sync (equal updates)": "—" if sync else ci(row.cost),
                     "verdict": "—" if sync else row.cost_verdict,
                     "− sync (equal wall time)": "—" if sync else ci(row.cost_wall),
                     "verdict (wall)": "—" if sync else row.wall_verdict})
    return pd.DataFrame(rows)


def answer(table: pd.DataFrame, corr: pd.DataFrame, n: int) -> str:
    """Generated from the computed tests only."""
    lines = []
    for (algo, _), part in table[table["mode"] != "sync"].groupby(["algo", "correction"], sort=False):
        task = label(part.iloc[0])
        faster = part[part.gain_verdict == "faster"]
        slower = part[part.gain_verdict == "slower"]
        gains = "; ".join(f"{r.mode} ×{ci(r.gain, 2)}" for r in part.itertuples())
        sentence = f"**{task}.** Throughput vs sync: {gains}"
        sentence += (f" — faster: {', '.join(faster['mode'])}" if len(faster) else "") + (
            f"; slower: {', '.join(slower['mode'])}" if len(slower) else "")
        unresolved = part[part.gain_verdict.str.startswith("not resolved")]
        if len(unresolved):
            sentence += f"; not resolved at {n} seeds: {', '.join(unresolved['mode'])}"
        costs = "; ".join(f"{r.mode} {ci(r.cost, 3)} ({r.cost_verdict})" for r in part.itertuples())
        sentence += f". Learning at equal updates, {LEARNING[algo]} − sync: {costs}."
        walls = "; ".join(f"{r.mode} {ci(r.cost_wall, 3)} ({r.wall_verdict})" for r in part.itertuples())
        sentence += f" At equal wall time: {walls}."
        lines.append(sentence)
    for row in corr.itertuples() if len(corr) else []:
        lines.append(f"PPO {row.mode}: final return {row.a} − {row.b} {ci(row.diff)} ({row.verdict}).")
    return "\n\n".join(lines)


def closing(table: pd.DataFrame, n: int) -> str:
    """The async throughput gain and its learning cost, per task: the async arm with the largest mean gain."""
    lines = []
    for (algo, _), part in table[table["mode"] != "sync"].groupby(["algo", "correction"], sort=False):
        best = part.loc[part.gain.map(lambda g: g[0]).idxmax()]
        lines.append(f"- {label(best)}: best async arm {best['mode']}, throughput ×{ci(best.gain, 2)} of sync "
                     f"({best.gain_verdict}), learning cost at equal updates {ci(best.cost)} {LEARNING[algo]} "
                     f"({best.cost_verdict}), at equal wall time {ci(best.cost_wall)} ({best.wall_verdict}).")
    return "\n".join(lines)


def plot_learning(curves: pd.DataFrame, plan: DictConfig, x: str) -> plt.Figure:
    """Mean learning curve per arm (x: cumulative samples, or the mean wall time at each update)."""
    groups = list(curves.groupby(["algo", "correction"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    colours = dict(zip(plan.modes, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(plan.modes))), strict=True))
    for ax, ((algo, correction), part) in zip(axes[0], groups, strict=True):
        for mode, arm in part.groupby("mode", sort=False):
            by_update = arm.groupby("update")
            mean = by_update.value.mean()
            ax.plot(by_update[x].mean(), mean, color=colours[mode], label=mode, lw=1.6,
                    ls="-" if mode == "sync" else "--")
        ax.set_title(f"{TASK[algo]}" + (f", {correction}" if algo == "ppo" else ""), fontsize=9)
        ax.set_xlabel("samples learnt" if x == "samples" else "wall time (s, mean over seeds)")
        ax.set_ylabel(f"mean {LEARNING[algo]} over seeds")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_throughput(table: pd.DataFrame) -> plt.Figure:
    """Throughput ÷ sync against the staleness bound S (sync at S = 0), with paired CIs."""
    groups = list(table.groupby(["algo", "correction"], sort=False))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    colours = plt.get_cmap("tab10")
    for i, ((algo, correction), part) in enumerate(groups):
        offset = 0.05 * (i - (len(groups) - 1) / 2)
        for row in part.itertuples():
            gain = (1.0, 1.0, 1.0) if row.mode == "sync" else row.gain
            marker = "v" if "drop" in row.mode else "o"
            ax.errorbar(row.bound + offset, gain[0], yerr=[[gain[0] - gain[1]], [gain[2] - gain[0]]],
                        fmt=marker, color=colours(i), capsize=3,
                        label=f"{TASK[algo]}" + (f", {correction}" if algo == "ppo" else "")
                        if row.mode == "sync" else None)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(sorted(set(table.bound)))
    ax.set_xlabel("staleness bound S (0: sync; ▼: drop, ●: block)")
    ax.set_ylabel("samples/s ÷ sync (paired, 95% CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


DISCUSSION = """\
IMPALA (Espeholt et al. 2018) decouples actors from the learner and corrects the lag with V-trace;
Sebulba (Hessel et al. 2021, Podracer) splits the cores of one TPU host into actor and learner
cores so that both run all the time; verl and other LLM-RL systems (Sheng et al. 2024, HybridFlow)
overlap generation with training, and one-step-off-policy variants let the learner train on the
previous step's completions. The throughput those systems report comes from *separate* hardware
for each side: an actor device that would otherwise wait while the learner updates, and the
reverse. Here both XLA "devices" are the same two CPU cores, so while the actor and the learner
run at once they compete for the cores, memory bandwidth and caches: what async can gain is at
most the sync learner's (and actor's) idle share, less the slowdown of running both programs at
once. The gain measured here is therefore a lower bound on what a GPU/TPU split gives: with the
actor and the learner on separate accelerators (or separate core sets, as Sebulba), the two
sides would not slow each other, async throughput would approach max(actor, learner) time per
update instead of their sum, and the staleness cost per update would stay what it is here (it
depends on the lag, not on the hardware). The learning cost at equal updates is the price of
training on θ_{u−lag}'s samples; at equal wall time it can be repaid by the extra samples when the
gain is large enough, which is the trade the tables measure.
"""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    seeds, curves = kept.tables["seeds"], kept.tables["curves"]
    n = int(seeds.seed.nunique())
    table = arm_table(seeds)
    corr = correction_table(seeds, plan)
    async_arms = table[table["mode"] != "sync"]
    count = 4 * len(async_arms) + len(corr)
    report = lab.Report(plan, "Synchronous vs asynchronous actor–learner: throughput against staleness, "
                              "and what the staleness costs in learning", kept=kept)
    modes = "; ".join(f"{mode} ({', '.join(f'{k}={v}' for k, v in spec.items())})" for mode, spec in plan.modes.items())
    report.add(
        "**Question.** How much throughput (samples learnt per second, learner idle share) does an "
        "asynchronous actor–learner gain over the synchronous loop, at which realised staleness, and what "
        "does that staleness cost in learning — per update and per second of wall time — with and without an "
        "off-policy correction; on gymnax (PPO, CartPole) and on the tiny LM (GRPO)?",
        "**Command** (writes this report and keeps its numbers beside it):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true   # from the kept results, computing "
        "nothing\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds, the same seeds in every arm; modes: {modes}. PPO: "
        f"{OmegaConf.to_container(plan.ppo.config)}, lr {plan.ppo.lr}, {plan.ppo.updates} updates, corrections "
        f"{', '.join(plan.ppo.corrections)}. GRPO: {OmegaConf.to_container(plan.grpo.config)}, "
        f"{OmegaConf.to_container(plan.grpo.hyper)}, {plan.grpo.updates} updates. Settings: "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "**Definitions.** *Samples/s*: samples learnt (a dropped rollout's do not count) over the run's wall "
        "time, compilation excluded. *Learner idle*: the share of the wall time the learner waited for a rollout; "
        "*actor idle*: the share the actor waited for parameters or queue space. *Lag*: the learner's update "
        "index minus the parameter version the rollout was collected with (≤ S under block and drop). *Final*: "
        f"PPO the mean episode return over the last third of the updates, GRPO the held-out accuracy averaged "
        f"over the last third of the updates. *Equal wall time*: the same figure over ((1 − 1/3)·W, W], W the "
        "shortest run among the arms of that seed. Every comparison is paired over seeds (ratio or difference "
        "per seed, then a 95% bootstrap CI of the mean); a claim only when the CI excludes 1 (ratios) or 0 "
        f"(differences), else *not resolved at {n} seeds*. The tables make {count} comparisons (4 per async "
        f"arm: throughput, learner idle, learning at equal updates and at equal wall time; plus "
        f"{len(corr)} correction comparisons): expect about one in twenty 95% CIs to miss by chance.",
        "## Answer\n\n" + answer(table, corr, n),
    )
    report.headline(f"Headline: throughput against staleness, paired vs sync ({n} seeds)",
                    lab.markdown_table(throughput_table(table)))
    report.add("## Learning: at equal updates and at equal wall time (paired vs sync)",
               lab.markdown_table(learning_table(table)))
    idle = pd.DataFrame([{"task": label(r), "mode": r.mode, "learner idle − sync": pct(r.idle_diff),
                          "verdict": lab.verdict(r.idle_diff, "idles less", "idles more", n)}
                         for r in async_arms.itertuples()])
    report.add("## Learner idle share, paired vs sync", lab.markdown_table(idle))
    if len(corr):
        rows = [{"mode": r.mode, "a − b": f"{r.a} − {r.b}", "difference": ci(r.diff), "verdict": r.verdict}
                for r in corr.itertuples()]
        report.add("## Off-policy correction (PPO, final return, paired)", lab.markdown_table(pd.DataFrame(rows)))
    report.figure(plot_throughput(table), "throughput_vs_staleness.png",
                  "Throughput ÷ sync against the staleness bound S, paired 95% CIs")
    report.figure(plot_learning(curves, plan, "samples"), "learning_vs_samples.png",
                  "Mean learning curve per arm against samples learnt")
    report.figure(plot_learning(curves, plan, "wall_s"), "learning_vs_wall.png",
                  "Mean learning curve per arm against wall time")
    report.add("## Discussion", DISCUSSION)
    report.add("## Closing note: the async throughput gain and its learning cost", closing(table, n))
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
