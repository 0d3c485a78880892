"""Synchronous vs asynchronous actor–learner: throughput, idle shares, staleness and the learning cost.
`python -m experiments.sync_vs_async [scale=full|ci|paper|smoke] [rebuild=true]`

`purerl.rl.async_runner` runs an actor program (rollouts) and a learner program (updates) on two
XLA devices (on CPU, lab exposes one device per core), either alternating (sync) or on a thread
each with a bounded queue (async; the actor collects with parameters at most S updates old,
blocking for fresher ones, or the learner drops too-stale rollouts). Arms: sync and the async
modes of the plan; PPO on CartPole once per off-policy correction (stale PPO's learner), GRPO on
the tiny LM (its ratio is against the behaviour log-probs the rollout carries): on the preference
task, and on the Repeat task with power-law (heavy-tailed) and with uniform completion lengths
(`grpo_tail`, `grpo_uniform`), where decoding stops once the batch's longest completion ends, so
each update's generation time follows the longest of its prompts' lengths. Every seed runs
every arm, so comparisons are paired; both programs are compiled (and a 2-update run of each
mode made, once per process) before the clock starts. One measurement per algorithm × seed (every arm of that seed,
run back to back), resumable one by one; the per-seed numbers and per-update curves are kept beside the report and
`rebuild=true` remakes it from them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab

NAME = "sync_vs_async"
# algo (a key of the plan) -> its learner, the row label and the learning figure
LEARNER = {"ppo": "ppo", "grpo": "grpo", "grpo_tail": "grpo", "grpo_uniform": "grpo"}
TASK = {"ppo": "PPO, CartPole", "grpo": "GRPO, tiny LM", "grpo_tail": "GRPO, Repeat, power law",
        "grpo_uniform": "GRPO, Repeat, uniform"}
LEARNING = {algo: "return" if learner == "ppo" else "accuracy" for algo, learner in LEARNER.items()}
WINDOW = 1 / 3  # learning figure: the mean over the last third of the updates (of the run, or before a wall time)


# ---------------------------------------------------------------- measurement
_PROGRAMS: dict[str, Any] = {}  # built once per process, so the runner's compiled programs are shared
_WARMED: set[tuple[str, str]] = set()  # (algo, mode) whose 2-update warm-up run this process has made


def setup(plan: DictConfig, algo: str) -> tuple[Any, Any]:
    """(programs, hyper factory correction -> Hyper) of an algorithm at the plan's sizes."""
    from purerl.rl import async_runner as ar

    if algo not in LEARNER:
        raise lab.ExperimentError(f"algos: got {algo!r}; allowed: {', '.join(LEARNER)}")
    spec = plan[algo]
    config_kwargs = OmegaConf.to_container(spec.config, resolve=True)
    if LEARNER[algo] == "ppo":
        from purerl.algos import stale_ppo

        if algo not in _PROGRAMS or _PROGRAMS[algo][0] != config_kwargs:
            tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in config_kwargs.items()}
            config = stale_ppo.Config(**tuples, total_timesteps=config_kwargs["num_envs"]
                                      * config_kwargs["num_steps"] * int(spec.updates), max_stale=0, max_staleness=0)
            _PROGRAMS[algo] = (config_kwargs, ar.ppo_programs(config))
            _WARMED.difference_update({w for w in _WARMED if w[0] == algo})

        def hyper(correction: str) -> Any:
            return stale_ppo.Hyper(lr=float(spec.lr), correction=float(stale_ppo.correction_code(correction)))
    else:
        from purerl.llm import grpo

        if algo not in _PROGRAMS or _PROGRAMS[algo][0] != config_kwargs:
            config = grpo.Config(**config_kwargs, num_updates=int(spec.updates))
            _PROGRAMS[algo] = (config_kwargs, ar.grpo_programs(config, stop_early=True))
            _WARMED.difference_update({w for w in _WARMED if w[0] == algo})

        def hyper(correction: str) -> Any:
            return grpo.Hyper(**OmegaConf.to_container(spec.hyper, resolve=True))
    return _PROGRAMS[algo][1], hyper


def settings_of(plan: DictConfig, mode: str) -> Any:
    from purerl.rl import async_runner as ar

    if mode not in plan.modes:
        raise lab.ExperimentError(f"mode: got {mode!r}; allowed: {', '.join(plan.modes)}")
    return ar.Settings(**OmegaConf.to_container(plan.modes[mode], resolve=True))


def learning_curve(algo: str, metrics: dict[str, np.ndarray]) -> np.ndarray:
    """Per update: PPO the mean return of the episodes that ended in the rollout (NaN if none),
    GRPO the held-out accuracy after the update."""
    return np.asarray(metrics["episode_return" if LEARNER[algo] == "ppo" else "accuracy"], np.float64)


def measure_seed(plan: DictConfig, algo: str, seed: int) -> dict[str, pd.DataFrame]:
    """Every arm of one algorithm on one seed, one after the other (arms of a seed run close in time,
    so a change of the machine's load between seeds does not bias the paired comparisons): each
    run's summary and its per-update curve, with each update's generation time (the actor's
    seconds for the rollout it learnt) and, for GRPO, its longest and mean completion length."""
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
        lengths = generation(algo, result)
        arm = {"algo": algo, "mode": mode, "correction": correction, "seed": seed}
        rows.append({**arm, **result.summary(), "staleness_bound": 0 if settings.mode == "sync"
                     else settings.max_staleness,
                     "final": float(np.nanmean(window)) if np.isfinite(window).any() else np.nan,
                     **generation_summary(lengths)})
        curves.append(pd.DataFrame({**arm, "update": np.arange(1, updates + 1),
                                    "samples": np.cumsum(result.metrics["samples"]),
                                    "wall_s": result.metrics["wall_s"], "value": curve,
                                    "lag": result.metrics["behaviour_lag"], **lengths}))
    return {"seeds": pd.DataFrame(rows), "curves": pd.concat(curves, ignore_index=True)}


def generation(algo: str, result: Any) -> dict[str, np.ndarray]:
    """Per update: `gen_s`, the actor's seconds for the rollout learnt (under stop_early a GRPO
    batch decodes until its longest completion ends), and for GRPO `longest` and `mean_length`
    (completion tokens, EOS included; NaN for PPO)."""
    m = result.metrics
    gen_s = np.asarray(result.rollouts["act_s"], np.float64)[np.asarray(m["rollout_index"], np.int64)]
    if LEARNER[algo] != "grpo":
        return {"gen_s": gen_s, "longest": np.full_like(gen_s, np.nan), "mean_length": np.full_like(gen_s, np.nan)}
    return {"gen_s": gen_s, "longest": np.asarray(m["completion_length_max"], np.float64),
            "mean_length": np.asarray(m["completion_length"], np.float64)}


def generation_summary(lengths: dict[str, np.ndarray]) -> dict[str, float]:
    """One run's generation figures: mean and coefficient of variation (sd / mean over updates) of
    the generation time; mean and sd of the longest completion; the decode waste 1 − mean length /
    longest (the share of the batch's decode slots spent after a completion had ended); and the
    correlation between generation time and longest completion over the updates."""
    gen, longest, mean = lengths["gen_s"], lengths["longest"], lengths["mean_length"]
    grpo = bool(np.isfinite(longest).all())
    varies = grpo and np.std(longest) > 0 and np.std(gen) > 0
    return {"gen_mean_s": float(np.mean(gen)), "gen_cv": float(np.std(gen) / np.mean(gen)),
            "longest_mean": float(np.mean(longest)) if grpo else np.nan,
            "longest_sd": float(np.std(longest)) if grpo else np.nan,
            "decode_waste": float(np.mean(1 - mean / longest)) if grpo else np.nan,
            "gen_longest_corr": float(np.corrcoef(gen, longest)[0, 1]) if varies else np.nan}


def arms(plan: DictConfig, algos: Any = None) -> list[tuple[str, str, str]]:
    """(algo, mode, correction) of every arm: PPO per correction, GRPO once."""
    out = []
    for algo in plan.algos if algos is None else algos:
        corrections = list(plan[algo].corrections) if LEARNER[algo] == "ppo" else ["behaviour"]
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

    return [async_runner, stale_ppo, corrections, setup, measure_seed, learning_curve, generation,
            generation_summary, at_equal_wall]


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


def longest_closed_form(plan: DictConfig, algo: str) -> tuple[float, float] | None:
    """Repeat: the mean and sd of a batch's longest reference completion (the largest of the
    update's num_prompts counts, plus EOS) from the task's closed form; None for other tasks."""
    from purerl.llm.tasks import TASKS

    config = plan[algo].config
    if config.task != "repeat":
        return None
    task = TASKS["repeat"](**OmegaConf.to_container(config.get("task_kwargs", {}), resolve=True))
    pmf = task.longest_pmf(int(config.num_prompts))
    tokens = np.arange(1, task.max_len + 1) + 1.0
    mean = float(pmf @ tokens)
    return mean, float(np.sqrt(max(pmf @ tokens**2 - mean**2, 0.0)))


def grpo_algos(seeds: pd.DataFrame) -> list[str]:
    return [a for a in dict.fromkeys(seeds.algo) if LEARNER[a] == "grpo"]


def token_slopes(curves: pd.DataFrame, algo: str) -> np.ndarray:
    """Per seed, in the sync arm: the least-squares slope of generation time (ms) on the update's
    longest completion (tokens); NaN where the longest did not vary."""
    out = []
    for _, run in curves[(curves.algo == algo) & (curves["mode"] == "sync")].groupby("seed"):
        varies = np.ptp(run.longest) > 0
        out.append(float(np.polyfit(run.longest, 1e3 * run.gen_s, 1)[0]) if varies else np.nan)
    return np.asarray(out)


def generation_table(seeds: pd.DataFrame, curves: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """Per GRPO task, in the sync arm (generation alone on the cores): the longest completion per
    update (sampled; and the closed form of the reference lengths for Repeat), its spread within a
    run, the decode waste, the generation time per update with its spread, its correlation with
    and slope on the longest completion, and the learner's idle share. CIs over seeds."""
    rows = []
    for algo in grpo_algos(seeds):
        sync = seeds[(seeds.algo == algo) & (seeds["mode"] == "sync")]
        closed = longest_closed_form(plan, algo)
        rows.append({"task": TASK[algo],
                     "longest / update": ci(lab.bootstrap_ci(sync.longest_mean)),
                     "reference: closed form": "—" if closed is None else f"{closed[0]:.1f} (sd {closed[1]:.1f})",
                     "sd of longest in a run": ci(lab.bootstrap_ci(sync.longest_sd)),
                     "decode waste": pct(lab.bootstrap_ci(sync.decode_waste)),
                     "generation ms / update": ci(lab.bootstrap_ci(1e3 * sync.gen_mean_s)),
                     "its CV": ci(lab.bootstrap_ci(sync.gen_cv)),
                     "corr(generation, longest)": ci(lab.bootstrap_ci(sync.gen_longest_corr)),
                     "ms per token of longest": ci(lab.bootstrap_ci(token_slopes(curves, algo))),
                     "sync learner idle": pct(lab.bootstrap_ci(sync.learner_idle_share))})
    return pd.DataFrame(rows)


def per_seed(seeds: pd.DataFrame, algo: str, mode: str, column: str) -> pd.Series:
    part = seeds[(seeds.algo == algo) & (seeds["mode"] == mode)]
    return part.set_index("seed")[column]


def tail_table(seeds: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """Power-law vs uniform lengths on Repeat (the same seeds): generation time per update and the
    sync learner's idle share, then per async mode the throughput gain over sync and the learner
    idle share, each power law against uniform, paired by seed."""
    if not {"grpo_tail", "grpo_uniform"} <= set(seeds.algo):
        return pd.DataFrame()
    n = int(seeds.seed.nunique())

    def compare(what: str, tail: pd.Series, uniform: pd.Series, ratio: bool, unit: str) -> dict[str, Any]:
        a, b = tail.align(uniform, join="inner")
        value = lab.bootstrap_ci((a / b if ratio else a - b).to_numpy())
        diff = tuple(v - 1 for v in value) if ratio else value
        shown = "×" + ci(value) if ratio else (pct(value) if unit == "%" else ci(value))
        return {"figure": what, "power law vs uniform": shown,
                "verdict": lab.verdict(diff, "power law lower", "power law higher", n)}

    rows = [compare("generation s / update, sync (÷)", per_seed(seeds, "grpo_tail", "sync", "gen_mean_s"),
                    per_seed(seeds, "grpo_uniform", "sync", "gen_mean_s"), True, ""),
            compare("generation time CV, sync (−)", per_seed(seeds, "grpo_tail", "sync", "gen_cv"),
                    per_seed(seeds, "grpo_uniform", "sync", "gen_cv"), False, ""),
            compare("sync learner idle (−)", per_seed(seeds, "grpo_tail", "sync", "learner_idle_share"),
                    per_seed(seeds, "grpo_uniform", "sync", "learner_idle_share"), False, "%")]
    for mode in [m for m in plan.modes if plan.modes[m].mode != "sync"]:
        gains = [per_seed(seeds, algo, mode, "samples_per_s") / per_seed(seeds, algo, "sync", "samples_per_s")
                 for algo in ("grpo_tail", "grpo_uniform")]
        rows.append(compare(f"{mode}: throughput ÷ sync (÷)", *gains, True, ""))
        rows.append(compare(f"{mode}: learner idle (−)", per_seed(seeds, "grpo_tail", mode, "learner_idle_share"),
                            per_seed(seeds, "grpo_uniform", mode, "learner_idle_share"), False, "%"))
    return pd.DataFrame(rows)


def tail_answer(table: pd.DataFrame, gen: pd.DataFrame, tail: pd.DataFrame, n: int) -> str:
    """Generated from the computed tests only: the Repeat arms' idle shares and gains, and the
    power-law-vs-uniform comparisons."""
    if not len(tail):
        return ""
    lines = []
    for algo in ("grpo_tail", "grpo_uniform"):
        rows = table[table.algo == algo]
        sync = rows[rows["mode"] == "sync"].iloc[0]
        g = gen[gen.task == TASK[algo]].iloc[0]
        arms_text = "; ".join(f"{r.mode}: learner idle {pct(r.learner_idle)}, throughput ×{ci(r.gain)} "
                              f"({r.gain_verdict})" for r in rows[rows["mode"] != "sync"].itertuples())
        lines.append(f"**{TASK[algo]}.** Longest completion per update {g['longest / update']} tokens "
                     f"(sd within a run {g['sd of longest in a run']}), decode waste {g['decode waste']}, "
                     f"generation time CV {g['its CV']}; sync learner idle {pct(sync.learner_idle)}; {arms_text}.")
    pairs = "; ".join(f"{r['figure']} {r['power law vs uniform']} ({r['verdict']})" for _, r in tail.iterrows())
    lines.append(f"**Power law vs uniform lengths (paired, {n} seeds).** {pairs}.")
    return "\n\n".join(lines)


def plot_generation(curves: pd.DataFrame) -> plt.Figure:
    """Generation time of each update against its longest completion (sync arms: the actor alone)."""
    part = curves[(curves["mode"] == "sync") & curves.longest.notna()]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    colours = plt.get_cmap("tab10")
    for i, (algo, arm) in enumerate(part.groupby("algo", sort=False)):
        ax.scatter(arm.longest + 0.15 * (i - 1), 1e3 * arm.gen_s, s=8, alpha=0.5, color=colours(i + 2),
                   label=TASK[algo], edgecolors="none")
    ax.set_xlabel("longest completion of the update (tokens, EOS included)")
    ax.set_ylabel("generation time (ms, sync arm)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, markerscale=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- report
def ci(value: tuple[float, float, float], digits: int = 3) -> str:
    return lab.fmt_ci(*value, digits=digits)


def pct(value: tuple[float, float, float]) -> str:
    return lab.fmt_ci(*(100 * np.asarray(value, np.float64)), digits=2) + " %"


def label(row: Any) -> str:
    return f"{TASK[row.algo]}" + (f", {row.correction}" if LEARNER[row.algo] == "ppo" else "")


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
        gains = "; ".join(f"{r.mode} ×{ci(r.gain)}" for r in part.itertuples())
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
        lines.append(f"- {label(best)}: best async arm {best['mode']}, throughput ×{ci(best.gain)} of sync "
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
        ax.set_title(f"{TASK[algo]}" + (f", {correction}" if LEARNER[algo] == "ppo" else ""), fontsize=9)
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
                        label=f"{TASK[algo]}" + (f", {correction}" if LEARNER[algo] == "ppo" else "")
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

Long-tailed completion lengths are why LLM-RL systems go asynchronous: a synchronous step waits for
its longest generation, so most of the batch's decode slots (and, in sync, the whole learner) idle
while a few long completions finish. verl's one-step-off-policy and fully asynchronous modes and
AReaL (Fu et al. 2025) decouple generation from training for that reason, AReaL also interrupting
long generations when new weights arrive; the alternatives keep the step synchronous and attack
the tail itself — partial rollouts (Kimi k1.5: generate up to a token budget per step and resume the
unfinished completions in the next step) and length-aware batching or bucketing, which group
completions of similar expected length so a batch's max is close to its mean. The Repeat arms
isolate that effect on one task: the same model, learner and number of prompts per update, only the
law of the completion lengths differs (power law vs uniform), so the differences between the two
arms' decode waste and generation-time spread come from the lengths alone. On these two shared CPU cores generation is a
small share of an update next to the learner (whose evaluation decodes every held-out prompt to the
cap), so the lengths can move the sync learner's idle share and the async gain only by little, and
on a machine loaded by other jobs the timing noise is of the size of the length effect (compare the
generation-time CVs with the tiny-LM arm's); the decode waste, counted in tokens, does not depend on
the load. With an actor on its own accelerator, large batches and a long cap the tail dominates the
step, as it does in those systems.
"""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    seeds, curves = kept.tables["seeds"], kept.tables["curves"]
    n = int(seeds.seed.nunique())
    table = arm_table(seeds)
    corr = correction_table(seeds, plan)
    gen, tail = generation_table(seeds, curves, plan), tail_table(seeds, plan)
    async_arms = table[table["mode"] != "sync"]
    count = 4 * len(async_arms) + len(corr) + len(tail)
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
        f"{len(corr)} correction comparisons and {len(tail)} power-law-vs-uniform comparisons): expect "
        "about one in twenty 95% CIs to miss by chance.",
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
    if len(gen):
        report.add(
            "## Completion lengths: what the longest completion costs (GRPO)",
            "Decoding stops once every completion of the batch has ended, so an update's generation "
            "lasts as long as its longest completion: the max over its prompts. *Longest / update*: the "
            "sampled batch's longest completion (tokens, EOS included), mean over updates; *reference: "
            "closed form* (Repeat): the mean (sd) of the longest reference completion, the largest of "
            "num_prompts counts drawn from P(n) ∝ n^(−tail) on 1..max_len, plus EOS "
            "(`Repeat.longest_pmf`); *sd of longest in a run*: its spread over a run's updates; *decode "
            "waste*: 1 − mean length ÷ longest, the share of the batch's decode slots spent after a "
            "completion had ended; *generation ms / update* and *its CV* (sd ÷ mean over a run's updates) "
            "in the sync arm, where the actor runs alone; *corr*: the correlation over a run's updates "
            "between generation time and longest completion, and *ms per token*: the least-squares slope "
            "of one on the other. The tiny-LM arm's longest completion barely varies, so its generation-time "
            "CV is the machine's timing noise alone; what the Repeat arms' CVs add to it is the lengths' "
            "share. CIs over seeds. Repeat: "
            + "; ".join(f"{TASK[a]} {OmegaConf.to_container(plan[a].config.task_kwargs)}"
                        for a in ("grpo_tail", "grpo_uniform") if a in plan.algos) + ".",
            lab.markdown_table(gen))
        if len(tail):
            report.add("**Power-law vs uniform lengths on Repeat, paired by seed** (÷: ratio, a claim when its "
                       "CI excludes 1; −: difference, a claim when it excludes 0).", lab.markdown_table(tail),
                       tail_answer(table, gen, tail, n))
        report.figure(plot_generation(curves), "generation_vs_longest.png",
                      "Generation time per update against the update's longest completion (sync arms)")
    report.figure(plot_throughput(table), "throughput_vs_staleness.png",
                  "Throughput ÷ sync against the staleness bound S, paired 95% CIs")
    report.figure(plot_learning(curves, plan, "samples"), "learning_vs_samples.png",
                  "Mean learning curve per arm against samples learnt")
    report.figure(plot_learning(curves, plan, "wall_s"), "learning_vs_wall.png",
                  "Mean learning curve per arm against wall time")
    report.add("## Discussion", DISCUSSION)
    report.add("## Closing note: the async throughput gain and its learning cost", closing(table, n))
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
