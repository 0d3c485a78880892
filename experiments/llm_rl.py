"""RL for language models on the tiny LM, measured: one command writes experiments/reports/llm_rl.md.

    python -m experiments.llm_rl --scale ci        # ≤ 10 min on 2 quiet CPU cores
    python -m experiments.llm_rl --report-only     # rebuild the report from llm_rl.json

Every run starts from the same SFT policy per seed (1-digit addition, ~30% sampled accuracy) and
trains `seeds` seeds vmapped in one program (`purerl.sweep.run`). Sections:

1. PPO (critic, KL in the reward), PPO on a Bradley-Terry reward model, GRPO and DPO: sampled
   accuracy on held-out prompts vs completions sampled and vs wall-clock; KL to the reference.
2. Token-level gradient variance of the policy gradient with a critic vs with the group baseline
   (vs no baseline), at the policies PPO ended with, same number of completions per batch.
3. GRPO with token-level ratios vs GSPO's sequence-level ratio.
4. H_kv ∈ {4, 2, 1}: rollout time and final accuracy.
5. Peak memory XLA allocates for each set-up next to the model-count arithmetic.

Statistics: IQM over seeds with 95% stratified-bootstrap CIs (`analysis.aggregate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from analysis.aggregate import iqm

REPORTS = Path(__file__).resolve().parent / "reports"
DATA = REPORTS / "llm_rl.json"


@dataclasses.dataclass(frozen=True)
class Scale:
    seeds: int
    num_updates: int
    sft_steps: int
    eval_prompts: int
    rm_steps: int
    grad_batches: int  # independent batches per gradient-variance estimate
    rollout_batch: int
    memory_widths: tuple[int, ...]


SCALES = {
    "ci": Scale(seeds=8, num_updates=30, sft_steps=100, eval_prompts=64, rm_steps=150, grad_batches=16,
                rollout_batch=256, memory_widths=(256,)),
    "full": Scale(seeds=16, num_updates=80, sft_steps=100, eval_prompts=128, rm_steps=300, grad_batches=64,
                  rollout_batch=512, memory_widths=(32, 256)),
}

REPORTED_METRICS = ("accuracy", "greedy_accuracy", "sft_accuracy", "kl_to_ref", "env_steps", "clip_frac",
                    "approx_kl", "rm_true_accuracy", "sft_loss")
MODEL = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=4, task="addition", task_kwargs={"num_digits": 1})


def common(scale: Scale) -> dict[str, Any]:
    return dict(MODEL, sft_steps=scale.sft_steps, num_updates=scale.num_updates, eval_prompts=scale.eval_prompts,
                rm_steps=scale.rm_steps)


# ------------------------------------------------------------------------ 1, 3, 4: training runs
def run_specs(scale: Scale) -> list[dict[str, Any]]:
    """name, algorithm, static config, traced hyper (+ grid). Equal completions per update (128)."""
    base = common(scale)
    grpo_config = dict(base, num_prompts=16, group_size=8, num_minibatches=4, update_epochs=3)
    ppo_config = dict(base, num_prompts=128, num_minibatches=4, update_epochs=3)
    return [
        dict(name="GRPO", algo="grpo", config=grpo_config, hyper=dict(lr=1e-3)),
        dict(name="PPO", algo="llm_ppo", config=ppo_config, hyper=dict(lr=1e-3)),
        dict(name="PPO + reward model", algo="llm_ppo", config=dict(ppo_config, reward="model"), hyper=dict(lr=1e-3),
             extra_samples=2 * scale.rm_steps * base.get("rm_batch", 64)),
        dict(name="DPO", algo="dpo", config=dict(base, num_prompts=64, num_minibatches=4),
             hyper=dict(lr=3e-4), grid=dict(beta=[0.1, 0.5])),
        dict(name="GSPO", algo="grpo", config=dict(grpo_config, ratio="sequence"), hyper=dict(lr=1e-3),
             grid=dict(clip_eps=[0.2, 0.02])),
        dict(name="GRPO H_kv=2", algo="grpo", config=dict(grpo_config, num_kv_heads=2), hyper=dict(lr=1e-3)),
        dict(name="GRPO H_kv=1", algo="grpo", config=dict(grpo_config, num_kv_heads=1), hyper=dict(lr=1e-3)),
    ]


def train_runs(scale: Scale, keep_state: str) -> tuple[dict[str, Any], Any]:
    from purerl import sweep
    from purerl.algos import get_algorithm

    out, kept = {}, None
    for spec in run_specs(scale):
        module = get_algorithm(spec["algo"])
        config = module.Config(**spec["config"])
        hyper = module.Hyper(**spec["hyper"])
        grid = sweep.grid(hyper, **spec["grid"]) if "grid" in spec else hyper
        start = time.perf_counter()
        result = sweep.run(module.make_train(config), grid, seeds=scale.seeds, return_state=spec["name"] == keep_state)
        print(f"{spec['name']:22s} compile {result.compile_seconds:6.1f}s run {result.run_seconds:6.1f}s "
              f"(wall {time.perf_counter() - start:.0f}s)", flush=True)
        if spec["name"] == keep_state:
            kept = (config, result.final_state)
        settings = result.settings if "grid" in spec else [{}]
        for s, setting in enumerate(settings):
            label = spec["name"] + "".join(f" {k}={v:g}" for k, v in setting.items())
            out[label] = {
                "algo": spec["algo"], "config": repr(config), "hyper": {**spec["hyper"], **setting},
                "compile_seconds": result.compile_seconds, "run_seconds": result.run_seconds,
                "batch_runs": len(settings) * scale.seeds, "extra_samples": spec.get("extra_samples", 0),
                "metrics": {k: np.round(np.asarray(v[s]), 5).tolist() for k, v in result.metrics.items()
                            if k in REPORTED_METRICS},
            }
    return out, kept


# ------------------------------------------------------------------------ 2: gradient variance
ESTIMATORS = ("no baseline", "no baseline, 16 prompts × 8", "group mean (G=8)", "critic, λ=1",
              "critic, GAE λ=0.95")
GROUPED = ("group mean (G=8)", "no baseline, 16 prompts × 8")


def gradient_variance(scale: Scale, ppo_config: Any, states: Any) -> dict[str, Any]:
    """Per estimator and seed: E||g − ḡ||², ||ḡ||² over `grad_batches` batches of 128 completions,
    each g = ∇ −(1/N) Σ_i Σ_t A_it log π(y_it | ·) at the policy (and critic) PPO ended with."""
    import jax
    import jax.numpy as jnp

    from purerl.llm.common import LMSetup
    from purerl.llm.ppo import token_advantages

    setup = LMSetup(ppo_config)
    task, group, completions_per_batch = setup.task, 8, 128

    def flat_gradient(params, critic, key, estimator):
        prompts_key, sample_key = jax.random.split(key)
        if estimator in GROUPED:
            problems = task.sample(prompts_key, completions_per_batch // group)
            problems = jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), problems)
        else:
            problems = task.sample(prompts_key, completions_per_batch)
        completions = setup.sample(params, problems, sample_key, 1.0)
        sequences = setup.assemble(problems, completions)
        reward = task.reward(problems, completions.tokens)
        mask = sequences.target_mask
        if estimator.startswith("no baseline"):
            advantages = reward[:, None] * mask
        elif estimator == "group mean (G=8)":
            grouped = reward.reshape(-1, group)
            advantages = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)[:, None] * mask
        else:
            values = setup.scalar_values(critic, sequences.tokens)[:, :-1]
            rewards = reward[:, None] * sequences.last_target
            lam = 1.0 if estimator == "critic, λ=1" else 0.95
            advantages, _ = token_advantages(rewards, values, mask, 1.0, lam)
        advantages = jax.lax.stop_gradient(advantages)

        def objective(params):
            log_prob, _ = setup.log_probs(params, sequences.tokens, 1.0)
            return -jnp.sum(jnp.where(mask > 0, advantages * log_prob, 0.0)) / completions_per_batch

        grads = jax.grad(objective)(params)
        return jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])

    out = {}
    num_seeds = jax.tree.leaves(states.params)[0].shape[1]
    for estimator in ESTIMATORS:
        @jax.jit
        def stats(params, critic, key, estimator=estimator):
            keys = jax.random.split(key, scale.grad_batches)
            grads = jax.vmap(lambda k: flat_gradient(params, critic, k, estimator))(keys)
            mean = grads.mean(axis=0)
            variance = jnp.sum(jnp.square(grads - mean)) / (scale.grad_batches - 1)
            return variance, jnp.sum(jnp.square(mean))

        rows = []
        for seed in range(num_seeds):
            pick = lambda x, seed=seed: x[0, seed]  # noqa: E731
            params, critic = jax.tree.map(pick, states.params), jax.tree.map(pick, states.critic)
            variance, mean_sq = stats(params, critic, jax.random.PRNGKey(1000 + seed))
            rows.append((float(variance), float(mean_sq)))
        out[estimator] = {"variance": [r[0] for r in rows], "mean_sq": [r[1] for r in rows]}
        print(f"gradient variance {estimator:22s} IQM {iqm(np.array(out[estimator]['variance'])):.3g}", flush=True)
    return out


# ------------------------------------------------------------------------ 4: rollout time per H_kv
def rollout_times(scale: Scale) -> dict[str, Any]:
    import jax

    from purerl.llm import grpo
    from purerl.llm.common import LMSetup

    out = {}
    for kv_heads in (4, 2, 1):
        setup = LMSetup(grpo.Config(**dict(MODEL, num_kv_heads=kv_heads)))
        params = setup.init_policy(jax.random.PRNGKey(0))
        problems = setup.task.sample(jax.random.PRNGKey(1), scale.rollout_batch)
        run = jax.jit(lambda p, k, setup=setup, problems=problems: setup.sample(p, problems, k, 1.0).tokens)
        jax.block_until_ready(run(params, jax.random.PRNGKey(2)))
        times = []
        for i in range(30):
            start = time.perf_counter()
            jax.block_until_ready(run(params, jax.random.PRNGKey(3 + i)))
            times.append(time.perf_counter() - start)
        cache_bytes = sum(x.nbytes for x in jax.tree.leaves(
            setup.policy.init_cache(scale.rollout_batch, setup.seq_len)))
        out[str(kv_heads)] = {"median_ms": 1e3 * float(np.median(times)), "cache_bytes": int(cache_bytes)}
        print(f"rollout H_kv={kv_heads}: {out[str(kv_heads)]['median_ms']:.2f} ms", flush=True)
    return out


# ------------------------------------------------------------------------ 5: memory
MEMORY_SETUPS = [("DPO", "dpo", {}), ("GRPO", "grpo", {}), ("GRPO + RM", "grpo", {"reward": "model"}),
                 ("PPO", "llm_ppo", {}), ("PPO + RM", "llm_ppo", {"reward": "model"})]


def memory(scale: Scale) -> list[dict[str, Any]]:
    """What XLA allocates for one whole run (compiled, single seed) at small batches, the bytes of
    the state carried between updates, and the model-count arithmetic (fp32)."""
    import jax

    from purerl.algos import get_algorithm
    from purerl.llm.common import LMSetup
    from purerl.llm.memory import setup_memory
    from purerl.llm.models import count_params, init_lm

    rows = []
    for width in scale.memory_widths:
        layers = 2 if width <= 64 else 4
        for label, algo, extra in MEMORY_SETUPS:
            module = get_algorithm(algo)
            small = dict(MODEL, d_model=width, num_layers=layers, sft_steps=2, num_updates=2, eval_prompts=8,
                         rm_steps=2, rm_batch=8, sft_batch=8, num_minibatches=1, update_epochs=1, **extra)
            if algo == "grpo":
                small.update(num_prompts=4, group_size=2)
            else:
                small.update(num_prompts=8)
            config = module.Config(**small)
            train = module.make_train(config)
            key, hyper = jax.random.PRNGKey(0), module.Hyper()
            stats = jax.jit(train).lower(key, hyper).compile().memory_analysis()
            # Every buffer the executable is assigned: inputs, outputs (the final state) and the
            # temp arena (gradients, activations, rollouts, in-program models such as the reward
            # model), minus outputs aliased to inputs. (`peak_memory_in_bytes` on XLA:CPU leaves
            # the temp arena out, so it is not used.)
            allocated = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                         - stats.alias_size_in_bytes)
            state = jax.eval_shape(train, key, hyper)[0]
            state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
            setup = LMSetup(config)
            policy, scalar = (count_params(jax.eval_shape(partial(init_lm, model, seq_len=setup.seq_len), key))
                              for model in (setup.policy, setup.scalar))
            setup_name = {"llm_ppo": "ppo"}.get(algo, algo)
            arithmetic = setup_memory(setup_name, policy, scalar, reward_model=extra.get("reward") == "model")
            rows.append({"setup": label, "d_model": width, "layers": layers, "policy_params": policy,
                         **{f"arith_{k}": v for k, v in arithmetic.items()},
                         "state_bytes": state_bytes, "xla_temp_bytes": int(stats.temp_size_in_bytes),
                         "xla_bytes": int(allocated)})
            print(f"memory d={width} {label:10s} arithmetic {arithmetic['total'] / 2**20:7.2f} MiB  "
                  f"state {state_bytes / 2**20:7.2f} MiB  XLA {allocated / 2**20:7.2f} MiB", flush=True)
    return rows


# ------------------------------------------------------------------------ report
def iqm_ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over the first (seed) axis, with its 95% bootstrap CI; x [seeds, ...]."""
    from analysis.aggregate import stratified_bootstrap_ci

    samples = np.moveaxis(np.asarray(x, np.float64), 0, -1)
    low, high = stratified_bootstrap_ci([samples], "iqm", n_resamples=1000)
    return iqm(samples), low, high


def fmt_ci(x: np.ndarray, digits: int = 3) -> str:
    point, low, high = iqm_ci(np.asarray(x))
    return f"{float(point):.{digits}f} [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def final(run: dict[str, Any], metric: str = "accuracy", last: int = 5) -> np.ndarray:
    return np.asarray(run["metrics"][metric])[:, -last:].mean(axis=1)


def plot_curves(runs: dict[str, Any], names: list[str], seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        run = runs[name]
        accuracy = np.asarray(run["metrics"]["accuracy"])  # [seeds, updates]
        start = np.asarray(run["metrics"]["sft_accuracy"])[:, :1]
        curve = np.concatenate([start, accuracy], axis=1)
        point, low, high = iqm_ci(curve)
        samples = np.concatenate([[0], np.asarray(run["metrics"]["env_steps"])[0]])
        # One program trains the whole batch; a batch of 2 settings × seeds is scaled to one setting.
        seconds = np.arange(curve.shape[1]) * run["run_seconds"] * seeds / run["batch_runs"] / (curve.shape[1] - 1)
        kl_point, kl_low, kl_high = iqm_ci(np.asarray(run["metrics"]["kl_to_ref"]))
        label = name + (f" (+{run['extra_samples']:,} RM completions first)" if run["extra_samples"] else "")
        for ax, x in ((axes[0], samples), (axes[1], seconds)):
            (line,) = ax.plot(x, point, label=label)
            ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())
        updates = np.arange(1, len(kl_point) + 1)
        axes[2].plot(updates, kl_point, label=name, color=line.get_color())
        axes[2].fill_between(updates, kl_low, kl_high, alpha=0.2, color=line.get_color())
    axes[0].set(xlabel="completions sampled by the policy (DPO: pairs from the reference)",
                ylabel="sampled accuracy, held-out (IQM, 95% CI)", title="Accuracy vs samples")
    axes[1].set(xlabel=f"seconds of training ({seeds} seeds in one program, excl. compile)", ylabel="sampled accuracy",
                title="Accuracy vs wall-clock")
    axes[2].set(xlabel="update", ylabel="KL(π ‖ π_ref) per completion (k3)", title="KL to the reference")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def findings(data: dict[str, Any]) -> list[str]:
    """Headline sentences, every number computed from `data`."""
    runs, variance = data["runs"], data["gradient_variance"]
    point = lambda name, metric="accuracy": float(iqm(final(runs[name], metric)))  # noqa: E731
    start = float(iqm(np.asarray(runs["GRPO"]["metrics"]["sft_accuracy"])[:, 0]))
    dpo = max((n for n in runs if n.startswith("DPO")), key=point)
    rm = float(iqm(np.asarray(runs["PPO + reward model"]["metrics"]["rm_true_accuracy"])[:, 0]))
    var = {k: float(iqm(np.asarray(v["variance"]))) for k, v in variance.items()}
    timing = data["rollout"]
    mem = [row["xla_bytes"] / row["arith_total"] for row in data["memory"]]
    return [
        f"- From the same SFT start ({start:.2f} sampled accuracy), with 128 completions per update: PPO "
        f"reaches {point('PPO'):.2f}, GRPO {point('GRPO'):.2f}, the best DPO ({dpo}) {point(dpo):.2f}.",
        f"- PPO on the learned reward model collapses to {point('PPO + reward model'):.2f} while its KL to the "
        f"reference climbs to {point('PPO + reward model', 'kl_to_ref'):.1f} nats: the reward model orders only "
        f"{rm:.2f} of held-out pairs correctly (judging a sum is as hard as computing it), and PPO exploits it.",
        f"- Gradient variance at PPO's final policies, 128 completions per batch: no baseline "
        f"{var['no baseline']:.2g}, critic (λ = 1) {var['critic, λ=1']:.2g}, group mean "
        f"{var['group mean (G=8)']:.2g}. The group layout itself (16 prompts × 8) costs "
        f"{var['no baseline, 16 prompts × 8'] / var['no baseline']:.1f}× variance; on that layout the group "
        f"baseline changes it {var['group mean (G=8)'] / var['no baseline, 16 prompts × 8']:.2f}×. Neither "
        "baseline lowers the variance here. A likely reason (not isolated here): with 0/1 rewards a baseline "
        "gives the wrong, low-probability completions — whose ∇log π is large — non-zero weight; without a "
        "baseline they get none.",
        f"- Rollout time falls with H_kv: {timing['4']['median_ms']:.1f} ms (H_kv = 4) → "
        f"{timing['1']['median_ms']:.1f} ms (H_kv = 1); the final accuracies of H_kv = 4, 2, 1 lie within "
        "each other's seed CIs.",
        f"- The model-count arithmetic is within {min(mem):.2f}–{max(mem):.2f}× of the bytes XLA assigns to a "
        "whole run once weights dominate (d_model 256).",
    ]


def write_report(data: dict[str, Any]) -> str:
    runs, scale = data["runs"], data["scale"]
    cpu = f", {data['cpu_minutes']:.1f} CPU-min" if data.get("cpu_minutes") else data.get("timing_note", "")
    main = ["PPO", "PPO + reward model", "GRPO"] + [n for n in runs if n.startswith("DPO")]
    plot_curves(runs, main, scale["seeds"], REPORTS / "llm_rl_curves.png")
    plot_curves(runs, ["GRPO"] + [n for n in runs if n.startswith("GSPO")], scale["seeds"],
                REPORTS / "llm_rl_ratios.png")
    lines = [
        "# RL for language models on the tiny LM",
        "",
        f"Generated by `python -m experiments.llm_rl --scale {data['scale_name']}` in {data['wall_minutes']:.1f} min "
        f"wall{cpu} on {data['machine']} ({data['jax']}). Task: 1-digit addition (`a+b=` → the sum, reward 1 for the "
        f"exact answer). Tiny decoder LM: d_model 32, 2 layers, 4 heads. Every run of a seed starts from the "
        f"same SFT policy ({scale['sft_steps']} steps), which is also the frozen reference — in exact "
        "arithmetic: rows trained in batches of 16 runs (two settings: DPO, GSPO) round differently from "
        "batches of 8, 100 Adam steps amplify it, and their SFT starts differ (H_kv rows: another model); "
        "the gain column compares each run with its own start. "
        f"{scale['seeds']} seeds per row, vmapped in one program; {scale['num_updates']} updates of 128 completions "
        "(DPO: 64 pairs = 128 completions from the reference). Accuracy = mean reward of one completion "
        f"sampled at T = 1 for each of {scale['eval_prompts']} held-out prompts, after each update (IQM over "
        "seeds, 95% stratified-bootstrap CI; final = mean of the last 5 updates).",
        "",
        "## Findings (this run)",
        "",
        *findings(data),
        "",
        "## 1. PPO vs GRPO vs DPO (and PPO on a learned reward model)",
        "",
        "| method | SFT start | final accuracy | gain over start | final greedy accuracy | KL to ref (final) "
        "| compile s | run s |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for name in main + [n for n in runs if n not in main]:
        run = runs[name]
        start = np.asarray(run["metrics"]["sft_accuracy"])[:, 0]
        lines.append(
            f"| {name} | {fmt_ci(start)} | {fmt_ci(final(run))} | {fmt_ci(final(run) - start)} | "
            f"{fmt_ci(final(run, 'greedy_accuracy'))} | {fmt_ci(final(run, 'kl_to_ref'), 2)} | "
            f"{run['compile_seconds']:.0f} | {run['run_seconds']:.0f} |")
    rm = runs["PPO + reward model"]["metrics"].get("rm_true_accuracy")
    lines += [
        "",
        "![accuracy vs samples, vs wall-clock, and KL to the reference](llm_rl_curves.png)",
        "",
        "Wall-clock: the run time of the whole vmapped batch (one program; DPO and GSPO train 2 settings × "
        "the seeds in theirs, plotted at half their time), spread evenly over the updates; \"run s\" is that "
        "batch's time. PPO + reward model's includes training the reward model first "
        f"({scale['rm_steps']} steps × 64 pairs sampled from the SFT policy, the completions named in the "
        "legend).",
    ]
    if rm is not None:
        lines.append(f"The reward model orders held-out pairs with different hidden scores correctly "
                     f"{fmt_ci(np.asarray(rm)[:, 0])} of the time (IQM over seeds).")
    variance = data["gradient_variance"]
    lines += [
        "",
        "## 2. Token-level gradient variance: critic vs group baseline",
        "",
        f"At each seed's final PPO policy (and its critic), {scale['grad_batches']} independent batches of 128 "
        "completions; g = ∇ −(1/128) Σ_i Σ_t A_it log π(y_it) (no KL, no clipping: the plain policy gradient "
        "each advantage estimator implies). Variance = E‖g − ḡ‖² over batches; SNR = ‖ḡ‖² / variance. "
        "Group: 16 prompts × 8 completions, A = R_i − mean_group (no std division, so all rows estimate the "
        "same-scale gradient); critic: 128 prompts × 1, A_t = R − V(s_t) (λ = 1, unbiased) or GAE λ = 0.95 "
        "(PPO's, biased). \"no baseline, 16 prompts × 8\" separates the group layout (fewer distinct "
        "prompts) from the baseline itself.",
        "",
        "| estimator | variance (IQM [95% CI]) | ‖ḡ‖² | SNR | variance / no baseline |",
        "|---|---|---|---|---|",
    ]
    none = np.asarray(variance["no baseline"]["variance"])
    for estimator, values in variance.items():
        var, mean_sq = np.asarray(values["variance"]), np.asarray(values["mean_sq"])
        lines.append(f"| {estimator} | {fmt_ci(var, 4)} | {float(iqm(mean_sq)):.4f} | "
                     f"{float(iqm(mean_sq / var)):.3f} | {float(iqm(var / none)):.2f} |")
    lines += [
        "",
        "## 3. Token-level ratios (GRPO) vs sequence-level ratios (GSPO)",
        "",
        "Same runs as GRPO but with GSPO's length-normalised sequence ratio s_i = exp(mean_t log π/π_old), "
        "clipped per completion (two clip ranges), 3 epochs × 4 minibatches per batch so that ratios leave 1.",
        "",
        "| variant | final accuracy | clip fraction (mean over updates) | approx KL(old‖new) per step |",
        "|---|---|---|---|",
    ]
    for name in ["GRPO"] + [n for n in runs if n.startswith("GSPO")]:
        run = runs[name]
        clip = np.asarray(run["metrics"]["clip_frac"]).mean(axis=1)
        kl = np.asarray(run["metrics"]["approx_kl"]).mean(axis=1)
        lines.append(f"| {name} | {fmt_ci(final(run))} | {fmt_ci(clip)} | {fmt_ci(kl, 4)} |")
    lines += ["", "![GRPO vs GSPO](llm_rl_ratios.png)", "",
              "## 4. H_kv (KV heads) with 4 query heads", "",
              f"Rollout: median of 30 calls of the one-program generation, {scale['rollout_batch']} prompts × "
              "3 tokens, random weights. Accuracy: GRPO as above.", "",
              "| H_kv | rollout ms | KV cache bytes | final accuracy |", "|---:|---:|---:|---|"]
    for kv_heads, timing in data["rollout"].items():
        name = "GRPO" if kv_heads == "4" else f"GRPO H_kv={kv_heads}"
        lines.append(f"| {kv_heads} | {timing['median_ms']:.2f} | {timing['cache_bytes']:,} | "
                     f"{fmt_ci(final(runs[name]))} |")
    lines += [
        "", "## 5. Memory: model-count arithmetic vs what XLA allocates", "",
        "Arithmetic (fp32, `purerl.llm.memory`): every model's weights, plus gradients and two Adam moments for "
        "each trained one (actor; PPO's critic). State: the bytes of the train state carried between updates "
        "(policy, Adam moments, reference, critic), from `jax.eval_shape`. XLA: every buffer the compiled "
        "executable of one whole run is assigned (`memory_analysis()`: arguments + outputs + temp arena − "
        "aliases; single seed, batches of 8 completions, so weights dominate); the temp arena holds the "
        "gradients, activations, rollouts and the in-program reward model. MiB.",
        "",
        "| set-up | d_model | params/model | models | arithmetic | weights / grads / Adam | state | XLA temp "
        "| XLA total | XLA / arithmetic |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    mib = 2**20
    for row in data["memory"]:
        lines.append(
            f"| {row['setup']} | {row['d_model']} | {row['policy_params']:,} | {row['arith_models']} | "
            f"{row['arith_total'] / mib:.2f} | {row['arith_weights'] / mib:.2f} / "
            f"{row['arith_gradients'] / mib:.2f} / {row['arith_optimizer'] / mib:.2f} | "
            f"{row['state_bytes'] / mib:.2f} | {row['xla_temp_bytes'] / mib:.2f} | {row['xla_bytes'] / mib:.2f} | "
            f"{row['xla_bytes'] / row['arith_total']:.2f} |")
    short = [row for row in data["memory"] if row["xla_temp_bytes"] < row["arith_gradients"]]
    if short:
        row = short[0]
        lines += ["", f"{row['setup']} (d_model {row['d_model']}): the temp arena "
                  f"({row['xla_temp_bytes'] / mib:.1f} MiB) "
                  f"is smaller than the gradients the arithmetic counts ({row['arith_gradients'] / mib:.1f} MiB), "
                  "and the total stays below the arithmetic: XLA's buffer assignment does not need a separate buffer "
                  "for every gradient at once. Elsewhere the temp arena exceeds the gradients by the activations, "
                  "rollouts and (+ RM) the reward model."]
    lines += ["", "The same arithmetic at 7B parameters in bf16 gives the seeds' figures (tests/test_llm_memory.py): "
              "GRPO actor + reference + reward model 42 GB, + Adam 28 GB + gradients 14 GB = 84 GB.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="ci")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from llm_rl.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the sections already in --cache (after a crash or to redo one section)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/purerl_llm_rl_cache"),
                        help="partial results and PPO's final state, between sections")
    args = parser.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        data = json.loads(DATA.read_text())
    else:
        data = collect(SCALES[args.scale], args.scale, args.cache, args.resume)
        DATA.write_text(json.dumps(data))
    report = write_report(data)
    (REPORTS / "llm_rl.md").write_text(report)
    print(report)


def collect(scale: Scale, scale_name: str, cache: Path, resume: bool) -> dict[str, Any]:
    import pickle

    import jax

    cache.mkdir(parents=True, exist_ok=True)
    partial, state_file = cache / f"{scale_name}.json", cache / f"{scale_name}_ppo_state.pkl"
    data = json.loads(partial.read_text()) if resume and partial.exists() else {}
    seconds, cpu_seconds = data.get("seconds", {}), data.get("cpu_seconds", {})

    def section(name, compute):
        if name not in data:
            start, cpu_start = time.perf_counter(), time.process_time()
            data[name] = compute()
            seconds[name] = time.perf_counter() - start
            cpu_seconds[name] = time.process_time() - cpu_start
            data.update(seconds=seconds, cpu_seconds=cpu_seconds)
            partial.write_text(json.dumps(data))

    def runs():
        out, kept = train_runs(scale, keep_state="PPO")
        state_file.write_bytes(pickle.dumps(jax.device_get(kept)))
        return out

    section("runs", runs)
    section("gradient_variance", lambda: gradient_variance(scale, *pickle.loads(state_file.read_bytes())))
    section("rollout", lambda: rollout_times(scale))
    section("memory", lambda: memory(scale))
    data.update(scale_name=scale_name, scale=dataclasses.asdict(scale), jax=f"jax {jax.__version__}",
                machine=f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
                wall_minutes=sum(seconds.values()) / 60, cpu_minutes=sum(cpu_seconds.values()) / 60)
    return data


if __name__ == "__main__":
    main()
