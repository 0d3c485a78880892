"""RL for language models on the tiny LM, measured: PPO (critic) vs GRPO (group mean) vs RLOO
(leave-one-out) vs GSPO (sequence ratio) vs DPO at equal budgets, and reward over-optimisation of
PPO on a learned reward model over a β sweep (the reward model's score next to the true reward,
both against KL to the reference).

`python -m experiments.llm_rl [scale=ci|full|paper|smoke] [rebuild=true] [key=value ...]`

Every arm trains `seeds` seeds vmapped in one program (`purerl.sweep.run`), each arm one
resumable measurement (`lab.measured`). The same seed gives every arm the same SFT start and the
same held-out problems, which the policy never trains on (the task's `heldout` split). Per-seed,
per-update numbers are kept beside the report; `rebuild=true` remakes it from them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab

NAME = "llm_rl"
METRICS = ("accuracy", "greedy_accuracy", "kl_to_ref", "sample_reward", "proxy_reward", "zero_std_groups",
           "clip_frac", "approx_kl", "sft_accuracy", "sft_greedy_accuracy", "rm_true_accuracy", "env_steps",
           "token_ratio_var", "sequence_ratio_var", "entropy")


# ---------------------------------------------------------------- measurement
def arm_config(plan: DictConfig, arm: DictConfig) -> tuple[Any, Any, Any]:
    """(algorithm module, Config, Hyper or Sweep) of one arm: the plan's shared model, task and
    budget (PPO and GRPO: `prompts` × `group_size` completions per update; DPO: the same number
    of completions as prompts × group_size / 2 pairs), then the arm's own settings."""
    from purerl import sweep
    from purerl.algos import get_algorithm

    module = get_algorithm(arm.algo)

    def part(key: str) -> dict[str, Any]:
        return OmegaConf.to_container(arm[key], resolve=True) if key in arm else {}

    shared = OmegaConf.to_container(plan.model, resolve=True) | {
        "task": plan.task.name, "task_kwargs": OmegaConf.to_container(plan.task.kwargs, resolve=True),
        **OmegaConf.to_container(plan.counts, resolve=True)}
    completions = plan.budget.prompts * plan.budget.group_size
    if arm.algo == "dpo":
        shared |= {"num_prompts": completions // 2, "num_minibatches": plan.budget.minibatches}
    else:
        shared |= {"num_prompts": plan.budget.prompts, "group_size": plan.budget.group_size,
                   "num_minibatches": plan.budget.minibatches, "update_epochs": plan.budget.epochs}
    config = module.Config(**(shared | part("config")))
    hyper = module.Hyper(**(OmegaConf.to_container(plan.hyper, resolve=True) | part("hyper")))
    grid = part("grid")
    return module, config, sweep.grid(hyper, **grid) if grid else hyper


def train_arm(plan: DictConfig, name: str) -> pd.DataFrame:
    """One row per (setting, seed, update) of an arm, with its per-update metrics."""
    from purerl import sweep

    arm = plan.arms[name]
    module, config, hypers = arm_config(plan, arm)
    result = sweep.run(module.make_train(config), hypers, seeds=int(plan.seeds))
    settings = result.settings if isinstance(hypers, sweep.Sweep) else ({},)
    frames = []
    for s, setting in enumerate(settings):
        label = name + "".join(f" {k}={v:g}" for k, v in setting.items())
        first = next(iter(result.metrics.values()))
        seeds, updates = first.shape[1], first.shape[2]
        frame = pd.DataFrame({"arm": name, "label": label, "seed": np.repeat(np.arange(seeds), updates),
                              "update": np.tile(np.arange(1, updates + 1), seeds)})
        for key, value in setting.items():
            frame[key] = value
        for metric in METRICS:
            if metric in result.metrics:
                frame[metric] = np.asarray(result.metrics[metric][s], np.float64).reshape(-1)
        frame["compile_seconds"] = result.compile_seconds
        frame["run_seconds"] = result.run_seconds
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    from purerl.llm import common, dpo, grpo, losses, ppo, reward_model, rollout, tasks

    return [common, dpo, grpo, losses, ppo, reward_model, rollout, tasks, arm_config, train_arm]


SHARED = ("seeds", "task", "model", "counts", "budget", "hyper")


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    """Every arm, each its own resumable measurement: its identity is the shared settings and its
    own, so adding or changing one arm leaves the others' results valid."""
    code = measuring_code()
    shared = {key: OmegaConf.to_container(plan[key], resolve=True) if OmegaConf.is_config(plan[key]) else plan[key]
              for key in SHARED}
    curves = [lab.measured(plan, "arm_" + "".join(c if c.isalnum() else "_" for c in name),
                           {**shared, "arm": name, "spec": OmegaConf.to_container(plan.arms[name], resolve=True)},
                           lambda name=name: train_arm(plan, name), code=code)
              for name in plan.arms]
    return {"curves": pd.concat(curves, ignore_index=True)}


# ---------------------------------------------------------------- per-seed summaries
def per_seed(plan: DictConfig, curves: pd.DataFrame) -> pd.DataFrame:
    """Per label and seed: the SFT start, the final numbers (mean over the last `final_updates`
    updates), the gain over the start, and run-mean zero-std groups and clip fraction."""
    last = curves[curves["update"] > curves["update"].max() - int(plan.final_updates)]
    final = last.groupby(["label", "seed"]).mean(numeric_only=True)
    whole = curves.groupby(["label", "seed"]).mean(numeric_only=True)
    first = curves[curves["update"] == curves["update"].min()].groupby(["label", "seed"]).mean(numeric_only=True)
    out = pd.DataFrame({
        "start": whole.sft_accuracy, "greedy_start": whole.get("sft_greedy_accuracy", np.nan),
        "accuracy": final.accuracy, "greedy_accuracy": final.greedy_accuracy,
        "kl_to_ref": final.kl_to_ref, "true_reward": final.sample_reward, "proxy_reward": final.proxy_reward,
        "zero_std_groups": whole.get("zero_std_groups", np.nan), "clip_frac": whole.get("clip_frac", np.nan),
        "rm_true_accuracy": whole.get("rm_true_accuracy", np.nan),
        "token_ratio_var": whole.get("token_ratio_var", np.nan),
        "sequence_ratio_var": whole.get("sequence_ratio_var", np.nan),
    }).reset_index()
    out["gain"] = out.accuracy - out.start
    # the training samples' true and proxy rewards, from the first update to the final ones
    out["true_change"] = (final.sample_reward - first.sample_reward).to_numpy()
    out["proxy_change"] = (final.proxy_reward - first.proxy_reward).to_numpy()
    return out


def ci_cell(values: np.ndarray, digits: int = 3) -> str:
    return lab.fmt_ci(*lab.bootstrap_ci(np.asarray(values, np.float64)), digits=digits)


def paired(seeds: pd.DataFrame, a: str, b: str, column: str = "gain") -> tuple[float, float, float, int]:
    """Mean of the per-seed difference a − b (same seeds: same SFT start and held-out problems),
    its 95% bootstrap CI, and the number of paired seeds."""
    left = seeds[seeds.label == a].set_index("seed")[column]
    right = seeds[seeds.label == b].set_index("seed")[column]
    both = left.index.intersection(right.index)
    diff = (left[both] - right[both]).to_numpy()
    return (*lab.bootstrap_ci(diff), len(both))


def verdict(ci: tuple[float, float, float, int], a: str, b: str) -> str:
    return lab.verdict(ci[:3], f"{b} higher", f"{a} higher", ci[3])


def summary_table(seeds: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    rows = []
    for label in labels:
        s = seeds[seeds.label == label]
        rows.append({"method": label, "SFT start": ci_cell(s.start), "final accuracy": ci_cell(s.accuracy),
                     "gain over start": ci_cell(s.gain),
                     "greedy: SFT start": ci_cell(s.greedy_start) if s.greedy_start.notna().any() else "-",
                     "greedy: final": ci_cell(s.greedy_accuracy),
                     "Δ training-sample reward": ci_cell(s.true_change) if s.true_change.notna().any() else "-",
                     "KL to ref (nats)": ci_cell(s.kl_to_ref, 2),
                     "zero-std groups": ci_cell(s.zero_std_groups, 2) if s.zero_std_groups.notna().any() else "-",
                     "clip fraction": ci_cell(s.clip_frac, 2) if s.clip_frac.notna().any() else "-"})
    return pd.DataFrame(rows)


def ratio_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per arm with a group baseline: the run-mean variance of the per-token ratios π/π_old and of
    GSPO's sequence ratios s_i over the same minibatches, and their quotient per seed."""
    rows = []
    for label in dict.fromkeys(seeds.label):
        s = seeds[seeds.label == label]
        if not s.token_ratio_var.notna().any():
            continue
        rows.append({"method": label, "Var token ratio": ci_cell(s.token_ratio_var, 2),
                     "Var sequence ratio": ci_cell(s.sequence_ratio_var, 2),
                     "token / sequence": ci_cell(s.token_ratio_var / s.sequence_ratio_var, 2)})
    return pd.DataFrame(rows)


def run_seconds(curves: pd.DataFrame) -> tuple[float, float]:
    """(compile, run) seconds summed over the arms, as each arm's measurement recorded them."""
    per_arm = curves.groupby("arm")[["compile_seconds", "run_seconds"]].first()
    return float(per_arm.compile_seconds.sum()), float(per_arm.run_seconds.sum())


def comparison_rows(plan: DictConfig, seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for a, b in plan.comparisons:
        if a in set(seeds.label) and b in set(seeds.label):
            ci = paired(seeds, a, b)
            rows.append({"A": a, "B": b, "gain A − B [95% CI]": lab.fmt_ci(*ci[:3]), "seeds": ci[3],
                         "verdict": verdict(ci, a, b)})
    return pd.DataFrame(rows)


def overoptimisation(seeds: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per β of the reward-model arm: final KL, true reward, proxy score, and the paired change of
    each against the smallest β (the one left furthest from the reference)."""
    labels = sorted({lab_ for lab_ in seeds.label if lab_.startswith(arm + " ")},
                    key=lambda s: float(s.split("=")[-1]))
    rows = []
    for label in labels:
        s = seeds[seeds.label == label]
        rows.append({"β": label.split("=")[-1], "KL to ref": ci_cell(s.kl_to_ref, 2),
                     "true reward (task)": ci_cell(s.true_reward), "proxy (RM score)": ci_cell(s.proxy_reward),
                     "Δ true since update 1": ci_cell(s.true_change), "Δ proxy since update 1": ci_cell(s.proxy_change),
                     "held-out accuracy": ci_cell(s.accuracy), "held-out gain": ci_cell(s.gain)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- plots
def plot_curves(curves: pd.DataFrame, labels: list[str], n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, label in enumerate(labels):
        c = curves[curves.label == label]
        start = c[c["update"] == 1].set_index("seed").sft_accuracy
        acc = c.pivot(index="seed", columns="update", values="accuracy")
        matrix = np.concatenate([start.loc[acc.index].to_numpy()[:, None], acc.to_numpy()], axis=1)
        steps = np.concatenate([[0], c[c.seed == c.seed.min()].sort_values("update").env_steps.to_numpy()])
        point, low, high = lab.curve_ci(matrix)
        axes[0].plot(steps, point, color=f"C{i}", label=label)
        axes[0].fill_between(steps, low, high, color=f"C{i}", alpha=0.2)
        kl = c.pivot(index="seed", columns="update", values="kl_to_ref").to_numpy()
        point, low, high = lab.curve_ci(kl)
        axes[1].plot(steps[1:], point, color=f"C{i}", label=label)
        axes[1].fill_between(steps[1:], low, high, color=f"C{i}", alpha=0.2)
    axes[0].set(xlabel="completions sampled (DPO: completions of its pairs, from the reference)",
                ylabel=f"held-out accuracy (mean of {n} seeds, 95% CI)")
    axes[1].set(xlabel="completions sampled", ylabel="KL(π ‖ π_ref) per completion (k3)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(labels), 8), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_overoptimisation(curves: pd.DataFrame, arm: str):
    """True task reward and the reward model's score of the training samples against KL to the
    reference, every update of every β (means over seeds): Gao et al. 2022's picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = curves[curves.arm == arm]
    betas = sorted(c.kl_coef.unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, beta in enumerate(betas):
        mean = c[c.kl_coef == beta].groupby("update").mean(numeric_only=True)
        colour = cmap(i / max(len(betas) - 1, 1))
        axes[0].plot(mean.kl_to_ref, mean.sample_reward, "o-", ms=3, color=colour, label=f"β = {beta:g}")
        axes[1].plot(mean.kl_to_ref, mean.proxy_reward, "o-", ms=3, color=colour, label=f"β = {beta:g}")
    # KL spans two decades over the β sweep: a log axis keeps the small-β start and the large-β
    # runs both readable
    axes[0].set(xlabel="KL(π ‖ π_ref) per completion (log)", ylabel="true reward of the samples (task)",
                title="True reward vs KL", xscale="log")
    axes[1].set(xlabel="KL(π ‖ π_ref) per completion (log)", ylabel="reward model's score of the samples (proxy)",
                title="Proxy reward vs KL", xscale="log")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(betas), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ---------------------------------------------------------------- report
DISCUSSION = """\
**The task.** Reversing 8 digits (9-token completions, 10^8 problems, a fifth held out by a hash of
the prompt) is a task the 2-layer model learns as an algorithm, so held-out problems measure the
policy, not memorised answers: on 1-digit addition (100 problems, the earlier edition) no method
raised held-out accuracy at all while the training-sample reward rose (docs/llm.md has those
numbers and how the 80 SFT steps were chosen). After 80 SFT steps the greedy answer is already
right on almost every held-out prompt while one sample at T = 1 is right about a third of the time:
the RL gains above are the policy putting its mass on the answer it already ranks first —
sharpening, the effect Yue et al. (2025) find behind most RL-with-verifiable-reward gains — not a
capability SFT lacked.

**Critic vs group baseline.** PPO with a learned critic and GRPO's group mean end level (the paired
difference's CI covers 0): with one terminal reward per completion and 8 completions per prompt,
the group mean is already a good estimate of V(prompt), which is GRPO's case for dropping the
critic (Shao et al. 2024). The group mean contains the sample itself, shrinking every advantage by
(G − 1)/G = 7/8; RLOO's leave-one-out mean undoes exactly that factor (Ahmadian et al. 2024), a
constant that Adam's per-parameter normalisation all but cancels. The small, resolved edge of GRPO
over RLOO therefore comes from the other difference between the two arms: GRPO divides by the
group's reward std and RLOO (as Dr. GRPO, Liu et al. 2025) does not. With 0/1 rewards the std
division up-weights groups where one or two of eight samples differ from the rest (nearly solved or
nearly failed prompts); Liu et al. call that weighting a bias, and on this task it helps a little —
which of the two kinds of group it helps with is not measured here.

**GSPO.** At its paper's clip range (Zheng et al. 2025: 3e-4 / 4e-4 on the length-normalised
sequence ratio) GSPO gains less than GRPO, and 10× that range recovers over half of the gap. The clip
fraction says why: about 0.8 of GSPO's completions are clipped (zero gradient) against about 0.02
of GRPO's tokens. Zheng et al. report GSPO clipping far more than GRPO too (by about two orders of
magnitude), but not most completions: with the small learning rates of large-model RL a minibatch
step moves a sequence's mean log-ratio by little, while the 1e-3 learning rate this tiny model needs
moves most past 3e-4 within the 8 minibatch steps of an update, so the later steps learn from few
completions. Their clip range is tied to the step size, not a property of the sequence ratio. The measured
variances do bear out GSPO's premise: over the same minibatches the per-token ratios vary about
three times as much as the sequence ratios (the table above); at 9 tokens and a dense model that
variance does not destabilise GRPO, which is where the paper's argument (long responses, MoE
routing) would bite.

**DPO.** DPO on pairs sampled once from the reference (Rafailov et al. 2023) gains resolvably but
about a quarter of what the online methods gain, at a quarter of their KL. Its pairs never come
from the improving policy, and at a start of about 0.34 over half of them are ties (both right or
both wrong: 0.34² + 0.66² ≈ 0.55), which `drop_ties` leaves out. That online, on-policy samples
matter more than the loss is what Xu et al. (2024) and Tajwar et al. (2024) find on larger models.

**Over-optimisation.** Gao et al. (2022) found the proxy reward model's score rising with KL while
the gold reward rises, peaks and falls, the peak coming at smaller KL for smaller reward models
and less preference data. Here the reward model is small, trained on 150 × 64 pairs, and orders
pairs of different true reward correctly only about 70 % of the time; its score of the samples
rises at every β, while without a KL penalty (β = 0) the true reward falls from the first update
to almost 0 at a KL of about 13 nats: the peak sits at the reference itself, the far end of Gao's
trend with reward-model size, so the rise of their curve is not seen. With β ≥ 0.1 the runs first
slide down the same falling curve, then the penalty pulls them back towards the reference (KL falls
again while the proxy stays high) and their true reward recovers, at β = 0.5 to above the start.
So the β runs do not trace one gold-vs-KL curve: the late β = 0.5 points sit well above the early
points at the same KL (the plot; means over seeds, not a tested claim). Gao et al. found a KL
penalty acting much like early stopping, not moving that frontier; here it does more, plausibly
because the reward model, trained on the reference's own samples, is most accurate near the
reference, where the penalty keeps the policy."""


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    curves = kept.tables["curves"]
    seeds = per_seed(plan, curves)
    n = int(seeds.groupby("label").seed.nunique().min())
    labels = list(dict.fromkeys(curves.label))
    rm_arm = plan.overoptimisation_arm
    main_labels = [label for label in labels if not label.startswith(rm_arm + " ")]

    report = lab.Report(plan, "RL for language models: PPO vs GRPO vs RLOO vs GSPO vs DPO, and reward "
                        "over-optimisation", kept=kept)
    task = f"{plan.task.name} {OmegaConf.to_container(plan.task.kwargs)}"
    report.add(
        "**Question.** At equal budgets (the same prompts and completions per update), how much do PPO (critic), "
        "GRPO (group mean), RLOO (leave-one-out baseline), GSPO (sequence-level ratio at its paper's clip range) "
        "and DPO (pairs from the reference) raise held-out accuracy over the same SFT start — and does PPO on a "
        "learned reward model over-optimise it: the proxy score rising while the true reward does not?",
        "**Command** (trains what is missing, then writes this report; `rebuild=true` remakes it from the kept "
        f"per-seed numbers without training):\n\n```bash\n{report.command()}\n{report.command()} rebuild=true\n```\n\n"
        f"Scale `{plan.scale}`: {n} seeds per row (the same seeds in every row: the same SFT start and held-out "
        f"problems per seed). Task: {task}; the held-out split ({plan.task.kwargs.heldout:.0%} of the problems, "
        "by a hash of the prompt) is never sampled for training, and accuracy is one completion sampled at T = 1 "
        f"per held-out prompt ({plan.counts.eval_prompts} prompts) after each update. Model: "
        f"{OmegaConf.to_container(plan.model)}; SFT {plan.counts.sft_steps} steps; {plan.counts.num_updates} "
        f"updates of {plan.budget.prompts} prompts × {plan.budget.group_size} completions (DPO: "
        f"{plan.budget.prompts * plan.budget.group_size // 2} pairs); final = mean of the last "
        f"{plan.final_updates} updates. CIs: 95% percentile bootstrap over seeds of the mean; comparisons are "
        f"paired per seed. Preset: `conf/experiment/{NAME}/{plan.scale}.yaml`.",
    )
    comp = comparison_rows(plan, seeds)
    report.add("## Answer\n\n" + answer(plan, seeds, comp, n))
    report.headline(f"Headline: final held-out accuracy and gain over the SFT start, mean [95% CI] of {n} seeds",
                    lab.markdown_table(summary_table(seeds, main_labels)))
    report.add(f"## Comparisons (paired over seeds)\n\n{len(comp)} comparisons of the gain over the start, chosen "
               "before the run; with this many 95% CIs, about one in twenty misses by chance.",
               lab.markdown_table(comp) if len(comp) else "(none at this scale)")
    report.figure(plot_curves(curves, main_labels, n), "curves.png",
                  "Held-out sampled accuracy and KL to the reference against completions sampled")
    if rm_arm in set(curves.arm):
        over = overoptimisation(seeds, rm_arm)
        rm = seeds[seeds.label.str.startswith(rm_arm + " ")].rm_true_accuracy
        report.add("## Reward over-optimisation: PPO on a learned reward model over β",
                   f"The reward model (Bradley-Terry on {plan.counts.rm_steps} × {plan.counts.rm_batch} pairs "
                   "sampled from the SFT policy, labels from the true reward) orders pairs with different true "
                   f"rewards correctly {ci_cell(rm)} of the time. Final numbers of the training samples (true and "
                   "proxy) and of the held-out evaluation, per β:",
                   lab.markdown_table(over))
        report.figure(plot_overoptimisation(curves, rm_arm), "overoptimisation.png",
                      "True reward and reward-model score of the training samples against KL to the reference, "
                      "one point per update (mean over seeds), one line per β")
    ratios = ratio_table(seeds)
    if len(ratios):
        report.add("## Token vs sequence importance ratios",
                   "Variance of the per-token ratios π/π_old over each minibatch's completion tokens, and of GSPO's "
                   "length-normalised sequence ratio s_i = exp(mean_t log π/π_old) over its completions, measured "
                   "on the same minibatches whichever ratio the arm optimises (run means per seed, then mean "
                   "[95% CI] over seeds; the last column is the per-seed quotient):",
                   lab.markdown_table(ratios))
    compile_s, run_s = run_seconds(curves)
    report.add("## Discussion", DISCUSSION,
               f"**Cost.** The {curves.arm.nunique()} arms' measurements recorded {compile_s:.0f} s of compilation "
               f"and {run_s:.0f} s of training ({(compile_s + run_s) / 60:.1f} min in all) on "
               f"{kept.provenance.get('machine', {}).get('cpus', '?')} CPU cores, as each arm recorded it (on a "
               "machine shared with other work these are upper bounds).")
    report.write()


def answer(plan: DictConfig, seeds: pd.DataFrame, comp: pd.DataFrame, n: int) -> str:
    """Sentences generated from the computed tests only."""
    lines = []
    for label in dict.fromkeys(seeds.label):
        s = seeds[seeds.label == label]
        lines.append(f"- {label}: gain over the SFT start {ci_cell(s.gain)} "
                     + ("(CI excludes 0)." if lab.bootstrap_ci(s.gain.to_numpy())[1] > 0
                        or lab.bootstrap_ci(s.gain.to_numpy())[2] < 0 else f"(not resolved at {n} seeds)."))
    for row in comp.itertuples():
        lines.append(f"- {row.A} vs {row.B}: {row.verdict} (gain difference {row._3}).")
    for label in dict.fromkeys(seeds.label):
        s = seeds[seeds.label == label]
        if label.startswith(plan.overoptimisation_arm + " "):
            true, proxy = (lab.bootstrap_ci(s[c].to_numpy()) for c in ("true_change", "proxy_change"))
            lines.append(f"- {label}: from the first update to the last, the reward model's score of the samples "
                         f"{direction(proxy, n)} ({lab.fmt_ci(*proxy)}) and their true reward {direction(true, n)} "
                         f"({lab.fmt_ci(*true)})" + ("; over-optimisation: the proxy rose while the true reward fell."
                                                      if proxy[1] > 0 and true[2] < 0 else "."))
            continue
        train = lab.bootstrap_ci(s.true_change.to_numpy())
        if np.isfinite(train[0]):
            lines.append(f"- {label}: the true reward of its training samples (problems outside the held-out split) "
                         f"{direction(train, n)} from the first update to the last ({lab.fmt_ci(*train)}).")
        if s.zero_std_groups.notna().any():
            lines.append(f"- {label}: {ci_cell(s.zero_std_groups, 2)} of its groups per update had all-equal rewards "
                         "(no learning signal), mean over updates.")
    return "\n".join(lines)


def direction(ci: tuple[float, float, float], n: int) -> str:
    if ci[1] > 0:
        return "rose"
    if ci[2] < 0:
        return "fell"
    return f"did not change resolvably at {n} seeds"


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
