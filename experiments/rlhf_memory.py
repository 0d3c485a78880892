"""Accelerator memory of RLHF set-ups phase by phase — PPO (actor, critic, reference, reward model)
vs GRPO (no critic; with a verifiable reward no reward model either) vs DPO (policy + reference) —
with offloading (ZeRO-Offload for the optimizer), the rollout KV cache and training activations.

`python -m experiments.rlhf_memory [scale=full|ci|paper|smoke] [rebuild=true] [key=value ...]`

The figures are arithmetic, from the one accounting the `purerl-memory rlhf` command prints
(`purerl.llm.memory`, KV cache from `purerl.attention.memory`). Two checks make them evidence
rather than assertion: the hand arithmetic of the issue is reproduced (and where it differs from
ZeRO-Offload, the difference is computed), and each precision convention's bytes per parameter
equal the bytes of real optax Adam states (and of every model of the preset's tiny GRPO +
reward-model set-up) built with `jax.eval_shape`. The numbers are kept beside the report
(`experiments/reports/rlhf_memory/results/`); `rebuild=true` remakes the report from them.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab

NAME = "rlhf_memory"
GB = 10**9
PHASE_COLOURS = {"generation": "C0", "scoring": "C1", "training": "C2"}
PHASE_MARKERS = {"generation": "o", "scoring": "s", "training": "^"}


# ---------------------------------------------------------------- arithmetic
def workload(plan: DictConfig, shape: DictConfig, micro_batch: int | None = None, recompute: str | None = None):
    from purerl.llm.memory import Workload

    return Workload(layers=shape.layers, hidden=shape.hidden, heads=shape.heads, kv_heads=shape.kv_heads,
                    head_dim=shape.head_dim, vocab=shape.vocab, rollout_batch=plan.rollout.batch,
                    rollout_len=plan.rollout.len, micro_batch=micro_batch or plan.train.micro_batch,
                    seq_len=plan.train.len, recompute=recompute or plan.train.recompute, kv_dtype=plan.rollout.dtype)


def arithmetic(plan: DictConfig) -> dict[str, pd.DataFrame]:
    """Every model × set-up × reward × convention × offload row of `rlhf_rows`; the KV-cache and the
    activation sweeps of the headline model."""
    from purerl.attention.memory import kv_cache_bytes
    from purerl.llm.memory import activation_bytes, rlhf_rows

    rows = []
    rewards = [{"model": True, "verifiable": False}[r] for r in plan.rewards]
    for model, shape in plan.models.items():
        seen = set()
        for row in rlhf_rows(int(shape.params), list(plan.setups), list(plan.precisions),
                             [list(o) for o in plan.offloads], workload(plan, shape), rewards=rewards):
            key = (row["setup"], row["reward_model"], row["precision"], row["offload"])
            if key not in seen:  # DPO: offloading the reward model it does not hold moves nothing
                seen.add(key)
                rows.append({"model": model, **row, "offload": ",".join(row["offload"])})
    shape = plan.models[plan.headline_model]
    kv = [{"kv_heads": h, "rollout_len": n, "rollout_batch": b,
           "bytes": kv_cache_bytes(shape.layers, h, shape.head_dim, n, b, plan.rollout.dtype)}
          for h in plan.kv_sweep.kv_heads for n in plan.kv_sweep.lens for b in plan.kv_sweep.batches]
    activations = [{"recompute": r, "micro_batch": b, "tokens": b * plan.train.len,
                    "bytes": activation_bytes(shape.layers, shape.hidden, shape.heads, plan.train.len, b,
                                              recompute=r, vocab=shape.vocab)}
                   for r in plan.activation_sweep.recompute for b in plan.activation_sweep.micro_batches]
    return {"rows": pd.DataFrame(rows), "kv_sweep": pd.DataFrame(kv), "activations": pd.DataFrame(activations)}


# ---------------------------------------------------------------- conventions vs real pytrees
def _nbytes(tree: Any) -> tuple[int, int]:
    """(bytes of floating-point leaves, bytes of the rest: Adam's step counter)."""
    import jax
    import jax.numpy as jnp

    floating = other = 0
    for leaf in jax.tree.leaves(tree):
        size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            floating += size
        else:
            other += size
    return floating, other


def trained_state(params: Any, precision: str) -> dict[str, int]:
    """Bytes of the weights, gradients and optimizer state of one trained model, as optax builds
    them (shapes only) under a precision convention."""
    import jax
    import jax.numpy as jnp
    import optax

    def cast(tree, dtype):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), tree)

    if precision == "fp32":
        weights = cast(params, jnp.float32)
        optimizer = jax.eval_shape(optax.adam(1e-3).init, weights)
    elif precision == "bf16":  # Adam on the bf16 weights themselves: both moments bf16
        weights = cast(params, jnp.bfloat16)
        optimizer = jax.eval_shape(optax.adam(1e-3, mu_dtype=jnp.bfloat16).init, weights)
    else:  # mixed: the optimizer owns an fp32 master copy and updates it with fp32 moments
        weights = cast(params, jnp.bfloat16)
        master = cast(params, jnp.float32)
        optimizer = (master, jax.eval_shape(optax.adam(1e-3).init, master))
    gradients = weights  # same dtype as the weights they are taken of
    (w, _), (g, _), (o, counter) = _nbytes(weights), _nbytes(gradients), _nbytes(optimizer)
    return {"weights": w, "gradients": g, "optimizer": o, "counter": counter}


def conventions(plan: DictConfig) -> pd.DataFrame:
    """Per convention: bytes/parameter of real optax states, and the preset's tiny set-up summed
    model by model from real pytrees, next to `setup_memory`."""
    from functools import partial

    import jax

    from purerl.cli.train import build_plan
    from purerl.llm.common import LMSetup
    from purerl.llm.memory import PRECISIONS, roles, setup_memory
    from purerl.llm.models import count_params, init_lm

    config = build_plan(lab.compose_job(plan, [], preset=True)).config
    setup = LMSetup(config)
    key = jax.random.PRNGKey(0)
    trees = {kind: jax.eval_shape(partial(init_lm, model, seq_len=setup.seq_len), key)
             for kind, model in (("policy", setup.policy), ("scalar", setup.scalar))}
    sizes = {kind: count_params(tree) for kind, tree in trees.items()}
    name = "grpo"
    rows = []
    for precision in PRECISIONS:
        one = trained_state(trees["policy"], precision)
        measured = {"weights": 0, "gradients": 0, "optimizer": 0, "counters": 0}
        for role, trained in roles(name, reward_model=config.reward == "model"):
            tree = trees["scalar" if role in ("critic", "reward_model") else "policy"]
            state = trained_state(tree, precision)
            measured["weights"] += state["weights"]
            if trained:
                measured["gradients"] += state["gradients"]
                measured["optimizer"] += state["optimizer"]
                measured["counters"] += state["counter"]
        counted = setup_memory(name, sizes["policy"], sizes["scalar"], reward_model=config.reward == "model",
                               precision=precision)
        bytes_per = PRECISIONS[precision]
        rows.append({
            "precision": precision, "policy_params": sizes["policy"], "scalar_params": sizes["scalar"],
            "weights_per_param": one["weights"] / sizes["policy"], "convention_weights": bytes_per.weights,
            "gradients_per_param": one["gradients"] / sizes["policy"], "convention_gradients": bytes_per.gradients,
            "optimizer_per_param": one["optimizer"] / sizes["policy"], "convention_optimizer": bytes_per.optimizer,
            **{f"setup_{k}": v for k, v in measured.items()},
            "counted_total": counted["total"],
            "setup_total": measured["weights"] + measured["gradients"] + measured["optimizer"],
        })
    return pd.DataFrame(rows)


def measure(plan: DictConfig) -> dict[str, pd.DataFrame]:
    """Every table the report is made of (cached in out_dir by fingerprint, as all measurements)."""
    import purerl.attention.memory as attention_memory
    import purerl.llm.memory as llm_memory

    identity = OmegaConf.to_container(plan, resolve=True)
    for key in ("force", "out_dir", "report_dir", "rebuild", "kept_from", "workers"):
        identity.pop(key, None)
    tables = lab.measured(plan, "arithmetic", identity, lambda: arithmetic(plan),
                          code=[llm_memory, attention_memory, arithmetic, workload])
    conv = lab.measured(plan, "conventions", identity, lambda: conventions(plan),
                        code=[llm_memory, trained_state, conventions])
    return {**tables, "conventions": conv}


def measuring_code() -> list[Any]:
    """What decides the numbers (docs/experiments.md flags the report when any of it changes)."""
    import purerl.attention.memory as attention_memory
    import purerl.llm.memory as llm_memory

    return [llm_memory, attention_memory, workload, arithmetic, _nbytes, trained_state, conventions]


# ---------------------------------------------------------------- selection helpers
def gb(x: float) -> str:
    from purerl.llm.memory import format_gb

    return format_gb(x)


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def offload_names(text: str) -> tuple[str, ...]:
    return tuple(n for n in str(text).split(",") if n)


def reward_label(setup: str, reward_model: bool) -> str:
    return "model" if reward_model else ("verifiable" if setup in ("ppo", "grpo") else "-")


def pick(rows: pd.DataFrame, model: str, setup: str, precision: str, offload: str = "",
         reward_model: bool | None = None) -> pd.Series:
    """One row: `offload` as a comma-separated set (order-free); `reward_model` None: with one when
    the set-up can have one."""
    if reward_model is None:
        reward_model = setup in ("ppo", "grpo")
    part = rows[(rows.model == model) & (rows.setup == setup) & (rows.precision == precision)
                & (rows.reward_model == reward_model)]
    wanted = set(offload_names(offload))
    return part[part.offload.apply(lambda o: set(offload_names(o)) == wanted)].iloc[0]


# ---------------------------------------------------------------- tables
def peak_table(rows: pd.DataFrame, model: str, precisions: list[str], budget: int) -> pd.DataFrame:
    """One row per set-up × reward × offload: the peak under each convention and its phase."""
    from purerl.attention.memory import format_bytes
    from purerl.llm.memory import offload_label

    part = rows[rows.model == model]
    out = []
    for (setup, reward, offload), group in part.groupby(["setup", "reward_model", "offload"], sort=False):
        by = {r.precision: r for r in group.itertuples()}
        first = by[precisions[0]]
        row = {"set-up": setup.upper(), "reward": reward_label(setup, reward), "models held": str(first.models),
               "offloaded": offload_label(offload_names(offload))}
        for p in precisions:
            row[f"peak, {p}"] = f"{gb(by[p].peak)} ({by[p].peak_phase})"
        row[f"fits {format_bytes(budget)} ({'/'.join(precisions)})"] = "/".join(
            "yes" if by[p].peak <= budget else "no" for p in precisions)
        out.append(row)
    return pd.DataFrame(out)


def phase_table(rows: pd.DataFrame, model: str, precision: str) -> pd.DataFrame:
    from purerl.llm.memory import offload_label

    part = rows[(rows.model == model) & (rows.precision == precision)]
    out = []
    for r in part.itertuples():
        out.append({
            "set-up": r.setup.upper(), "reward": reward_label(r.setup, r.reward_model),
            "offloaded": offload_label(offload_names(r.offload)),
            "resident (weights + optimizer)": gb(r.resident),
            "generation (+ KV cache + logits)": gb(r.generation) if r.generation else "-",
            "scoring (+ model brought back + forward)": gb(r.scoring) if r.scoring else "-",
            "training (+ gradients + activations)": gb(r.training),
            "peak": f"{gb(r.peak)} ({r.peak_phase})",
            "training + KV cache (summed)": gb(r.sum_of_phases) if r.generation else "-",
            "on host": gb(r.offloaded),
        })
    return pd.DataFrame(out)


def hand_check(rows: pd.DataFrame, plan: DictConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The issue's GRPO figures (bf16 everywhere, with a reward model) against the accounting, and
    the computed facts the answer states about them."""
    from purerl.llm.memory import saving

    m = plan.headline_model
    none = pick(rows, m, "grpo", "bf16")
    frozen = pick(rows, m, "grpo", "bf16", "reference,reward_model")
    zero = pick(rows, m, "grpo", "bf16", "reference,reward_model,optimizer")
    checks = [
        ("actor + reference + reward model weights", plan.hand.weights, none.weights),
        ("Adam states (two bf16 moments)", plan.hand.optimizer, none.optimizer),
        ("gradients", plan.hand.gradients, none.gradients),
        ("training state on device, nothing offloaded", plan.hand.total, none.device),
        ("reference + reward model offloaded", plan.hand.offload_frozen, frozen.device),
        ("... and the optimizer offloaded (ZeRO-Offload)", plan.hand.offload_frozen_and_optimizer, zero.device),
    ]
    table = pd.DataFrame([{"quantity (GRPO, 7B, bf16)": what, "hand arithmetic": f"{hand:g} GB",
                           "purerl-memory rlhf": gb(value), "bytes": f"{int(value):,}",
                           "equal": "yes" if int(value) == int(hand * GB) else "NO"}
                          for what, hand, value in checks])
    hand_zero = plan.hand.offload_frozen_and_optimizer * GB
    facts = {
        "equal": int((table.equal == "yes").sum()), "checks": len(table),
        # the hand figure keeps the actor's gradients on the device; ZeRO-Offload moves them
        "zero_gap_is_gradients": int(hand_zero - zero.device) == int(zero.offloaded_gradients),
        "zero_gap": hand_zero - zero.device,
        "quoted": float(plan.hand.quoted_saving),
        "hand_saving": saving(plan.hand.total, plan.hand.offload_frozen_and_optimizer),
        "zero_saving": saving(none.device, zero.device),
        "peak_saving": saving(none.peak, zero.peak),
        "none": none, "frozen": frozen, "zero": zero,
    }
    table = pd.concat([table, pd.DataFrame([
        {"quantity (GRPO, 7B, bf16)": "saving of offloading reference, reward model, optimizer",
         "hand arithmetic": f"{100 * facts['quoted']:g} % (quoted)",
         "purerl-memory rlhf": f"{percent(facts['hand_saving'])} (84 → 28 GB); {percent(facts['zero_saving'])} "
                               "under ZeRO-Offload",
         "bytes": "-", "equal": "yes" if abs(facts["hand_saving"] - facts["quoted"]) < 0.005 else "NO"}])],
        ignore_index=True)
    return table, facts


def conventions_table(conv: pd.DataFrame) -> pd.DataFrame:
    out = []
    for r in conv.itertuples():
        out.append({
            "convention": r.precision,
            "weights B/param (optax / rule)": f"{r.weights_per_param:g} / {r.convention_weights}",
            "gradients B/param": f"{r.gradients_per_param:g} / {r.convention_gradients}",
            "Adam state B/param": f"{r.optimizer_per_param:g} / {r.convention_optimizer}",
            "tiny GRPO + RM, summed pytrees": f"{int(r.setup_total):,} B (+{int(r.setup_counters)} B step counter)",
            "tiny GRPO + RM, accounting": f"{int(r.counted_total):,} B",
            "equal": "yes" if int(r.setup_total) == int(r.counted_total) else "NO",
        })
    return pd.DataFrame(out)


def kv_table(sweep: pd.DataFrame, budget: int) -> pd.DataFrame:
    from purerl.attention.memory import format_bytes

    out = []
    for (h, n), group in sweep.groupby(["kv_heads", "rollout_len"], sort=False):
        row = {"H_kv": str(h), "tokens per sequence": f"{n:,}"}
        for r in group.itertuples():
            row[f"batch {r.rollout_batch}"] = gb(r.bytes)
        per_seq = group.bytes.iloc[0] // group.rollout_batch.iloc[0]
        row[f"sequences in {format_bytes(budget)}"] = f"{budget // per_seq:,}"
        out.append(row)
    return pd.DataFrame(out)


def activation_table(sweep: pd.DataFrame) -> pd.DataFrame:
    out = []
    for b, group in sweep.groupby("micro_batch", sort=True):
        row = {"micro-batch (sequences)": str(b), "tokens": f"{group.tokens.iloc[0]:,}"}
        for r in group.itertuples():
            row[f"recompute {r.recompute}"] = gb(r.bytes)
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- plots
def _config_label(r: Any) -> str:
    from purerl.llm.memory import offload_label

    reward = {"model": ", RM", "verifiable": ", verifiable", "-": ""}[reward_label(r.setup, r.reward_model)]
    return f"{r.setup.upper()}{reward}; off: {offload_label(offload_names(r.offload))}"


def plot_phases(rows: pd.DataFrame, budget: int, model: str, precisions: list[str]):
    """Each configuration's memory in each phase (markers) and its peak (bar), per convention."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    part = rows[rows.model == model]
    first = part[part.precision == precisions[0]].reset_index(drop=True)
    n = len(first)
    fig, axes = plt.subplots(1, len(precisions), figsize=(5.2 * len(precisions) + 2.6, 0.3 * n + 2.2),
                             sharey=True, sharex=True, layout="constrained")
    axes = np.atleast_1d(axes)
    y = np.arange(n)[::-1]
    for ax, precision in zip(axes, precisions):
        sub = part[part.precision == precision].reset_index(drop=True)
        ax.barh(y, sub.peak / GB, color="0.88", height=0.7, zorder=1)
        for phase, colour in PHASE_COLOURS.items():
            values = sub[phase].to_numpy(dtype=float) / GB
            shown = values > 0
            ax.scatter(values[shown], y[shown], color=colour, marker=PHASE_MARKERS[phase], s=30, zorder=3)
        ax.axvline(budget / GB, color="black", linestyle="--", linewidth=1, zorder=2)
        ax.set_title(f"{precision}", fontsize="medium")
        ax.set_xlabel("accelerator memory (GB, decimal)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [_config_label(r) for r in first.itertuples()], fontsize="x-small")
    handles = [Line2D([], [], color=colour, marker=PHASE_MARKERS[phase], linestyle="", label=phase)
               for phase, colour in PHASE_COLOURS.items()]
    handles += [plt.Rectangle((0, 0), 1, 1, color="0.88", label="peak (largest phase)"),
                Line2D([], [], color="black", linestyle="--", label=f"one H100 ({budget / GB:.1f} GB)")]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    fig.suptitle(f"{model} RLHF: accelerator memory per phase; the peak is the largest phase, not their sum",
                 fontsize="medium")
    return fig


def plot_activations(sweep: pd.DataFrame, budget: int, model: str, seq_len: int):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.2), layout="constrained")
    for i, (recompute, group) in enumerate(sweep.groupby("recompute", sort=False)):
        ax.plot(group.micro_batch, group.bytes / GB, marker="os^"[i % 3], color=f"C{i}",
                label=f"recompute {recompute}")
    ax.axhline(budget / GB, color="black", linestyle="--", linewidth=1, label="one H100")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(sweep.micro_batch.unique()), [str(b) for b in sorted(sweep.micro_batch.unique())])
    ax.set_xlabel(f"training micro-batch (sequences of {seq_len:,} tokens)")
    ax.set_ylabel("activations (GB)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize="small", loc="outside right upper")
    ax.set_title(f"{model}: training activations (Korthikanti et al. 2022) + fp32 logits", fontsize="medium")
    return fig


def plot_kv(sweep: pd.DataFrame, budget: int, model: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.2, 4.4), layout="constrained")
    styles = ["-", "--", ":"]
    for i, (h, group_h) in enumerate(sweep.groupby("kv_heads", sort=False)):
        for j, (n, group) in enumerate(group_h.groupby("rollout_len")):
            # thick solid under thin dashed: equal-byte lines (H_kv 32 at 1k = H_kv 8 at 4k) stay visible
            ax.plot(group.rollout_batch, group.bytes / GB, styles[j % 3], marker="os^"[j % 3], color=f"C{i}",
                    linewidth=3.5 - 1.2 * j, markersize=8 - 2 * j, label=f"H_kv {h}, {n:,} tokens")
    ax.axhline(budget / GB, color="black", linestyle="--", linewidth=1, label="one H100")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(sweep.rollout_batch.unique()), [str(b) for b in sorted(sweep.rollout_batch.unique())])
    ax.set_xlabel("sequences generated at once (rollout batch)")
    ax.set_ylabel("KV cache (GB)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize="x-small", loc="outside right upper")
    ax.set_title(f"{model}: rollout KV cache (bf16) vs batch, length and KV heads", fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def answer(rows: pd.DataFrame, facts: dict[str, Any], conv: pd.DataFrame, activations: pd.DataFrame,
           plan: DictConfig, budget: int) -> str:
    """The answer's sentences; each claim is chosen by a comparison of the numbers it states."""
    from purerl.attention.memory import format_bytes
    from purerl.llm.memory import PRECISIONS

    m = plan.headline_model
    head = rows[rows.model == m]
    none, zero = facts["none"], facts["zero"]
    lines = []
    gap = (f"the difference is exactly the actor's {gb(zero.offloaded_gradients)} of gradients, which the hand figure "
           f"keeps on the device and ZeRO-Offload moves to the host with the optimizer step"
           if facts["zero_gap_is_gradients"] else f"they differ by {gb(facts['zero_gap'])}")
    lines.append(
        f"- **The hand arithmetic holds for {facts['equal']} of its {facts['checks']} figures** (equal to the byte): a "
        f"{m} GRPO actor + reference + reward model in bf16 is {gb(none.weights)} of weights + {gb(none.optimizer)} "
        f"Adam + {gb(none.gradients)} gradients = {gb(none.device)}; offloading reference and reward model leaves "
        f"{gb(facts['frozen'].device)}. Offloading the optimizer too leaves {gb(zero.device)}, not "
        f"{plan.hand.offload_frozen_and_optimizer:g} GB: {gap}.")
    quoted_ok = abs(facts["hand_saving"] - facts["quoted"]) < 0.005
    lines.append(
        f"- **The saving of offloading reference, reward model and optimizer is "
        f"{'about' if quoted_ok else 'not'} {100 * facts['quoted']:g} %** by the same arithmetic: "
        f"{plan.hand.total:g} → {plan.hand.offload_frozen_and_optimizer:g} GB is {percent(facts['hand_saving'])} of "
        f"the training state; under ZeRO-Offload ({gb(none.device)} → {gb(zero.device)}) "
        f"{percent(facts['zero_saving'])}. Of the peak over the phases it saves {percent(facts['peak_saving'])} "
        f"({gb(none.peak)} → {gb(zero.peak)}), because the rollout KV cache and the activations stay on the device.")
    phase_counts = head.peak_phase.value_counts()
    generating = head[head.setup.isin(["ppo", "grpo"])]
    gen_peaks = int((generating.peak_phase == "generation").sum())
    overstated = (generating.sum_of_phases - generating.peak) / generating.peak
    lines.append(
        f"- **The peak is one phase, not the sum of the phases.** For the {m} GRPO (bf16, nothing offloaded) the "
        f"largest phase is {none.peak_phase} at {gb(none.peak)} (generation {gb(none.generation)}, scoring "
        f"{gb(none.scoring)}, training {gb(none.training)}); adding the rollout KV cache to the training phase gives "
        f"{gb(none.sum_of_phases)}, {percent((none.sum_of_phases - none.peak) / none.peak)} too much. Over the "
        f"{len(generating)} PPO/GRPO rows of the {m} the sum overstates the peak by {percent(overstated.min())} to "
        f"{percent(overstated.max())}. The peak phase is generation in {gen_peaks} of those {len(generating)} rows "
        f"(the rollout KV cache of {plan.rollout.batch} × {plan.rollout.len:,} tokens is {gb(none.rollout_kv)}); over "
        f"all {len(head)} rows, DPO's included, it is training in {int(phase_counts.get('training', 0))} and scoring "
        f"in {int(phase_counts.get('scoring', 0))}.")
    verifiable = pick(rows, m, "grpo", "bf16", reward_model=False)
    ppo = pick(rows, m, "ppo", "bf16")
    dpo = pick(rows, m, "dpo", "bf16")
    lines.append(
        f"- **GRPO with a verifiable reward holds {int(verifiable.models)} models, not {int(none.models)}** (policy + "
        f"reference): {gb(verifiable.device)} of training state instead of {gb(none.device)}, peak "
        f"{gb(verifiable.peak)} instead of {gb(none.peak)}. PPO holds {int(ppo.models)} and trains two (actor and "
        f"critic): {gb(ppo.device)}, peak {gb(ppo.peak)}; dropping the critic (GRPO) saves "
        f"{percent(1 - none.device / ppo.device)} of the training state; DPO generates nothing: peak {gb(dpo.peak)} "
        f"({dpo.peak_phase}).")
    if "mixed" in set(head.precision):
        mixed = pick(rows, m, "grpo", "mixed")
        mixed_zero = pick(rows, m, "grpo", "mixed", "reference,reward_model,optimizer")
        dominant = "the optimizer" if mixed.optimizer > mixed.weights else "the weights"
        lines.append(
            f"- **Real mixed precision keeps an fp32 master copy and two fp32 moments** "
            f"({PRECISIONS['mixed'].optimizer} B/param instead of {PRECISIONS['bf16'].optimizer}): the same GRPO's "
            f"training state is {gb(mixed.device)} (bf16: {gb(none.device)}), of which {dominant} "
            f"({gb(max(mixed.optimizer, mixed.weights))}) is the largest part; ZeRO-Offload takes it to "
            f"{gb(mixed_zero.device)} on the device and {gb(mixed_zero.offloaded)} on the host, and the peak to "
            f"{gb(mixed_zero.peak)} ({mixed_zero.peak_phase}).")
    fits = head.peak <= budget
    zero_rows = head.offload.apply(lambda o: "optimizer" in offload_names(o))
    fit_without = sorted({f"{_config_label(r)} ({r.precision})" for r in head[fits & ~zero_rows].itertuples()})
    lines.append(
        f"- **{int(fits.sum())} of the {len(head)} {m} rows fit one H100 ({format_bytes(budget)}) at their peak:** "
        f"{int((fits & zero_rows).sum())} of the {int(zero_rows.sum())} with ZeRO-Offload, "
        + (f"and without it only {'; '.join(fit_without)}." if fit_without else "and none without it."))
    act = activations.set_index(["recompute", "micro_batch"]).bytes
    b = int(plan.train.micro_batch)
    if ("none", b) in act and ("full", b) in act:
        lines.append(
            f"- **Activations: recomputation decides whether training fits.** A {m} micro-batch of {b} × "
            f"{plan.train.len:,} tokens stores {gb(act[('none', b)])} of activations without recomputation, "
            f"{gb(act[('full', b)])} with full recomputation (the report's set-ups use `{plan.train.recompute}`).")
    exact = ((conv.weights_per_param == conv.convention_weights)
             & (conv.gradients_per_param == conv.convention_gradients)
             & (conv.optimizer_per_param == conv.convention_optimizer) & (conv.setup_total == conv.counted_total))
    lines.append(
        f"- **The conventions are what optax allocates:** for {int(exact.sum())}/{len(conv)} conventions the bytes "
        f"per parameter of real Adam states (`jax.eval_shape`, no arrays) equal the rule, and the preset's tiny GRPO "
        f"+ reward model ({int(conv.policy_params.iloc[0]):,}-parameter policy, {int(conv.scalar_params.iloc[0]):,}"
        f"-parameter reward model) summed model by model equals the accounting, apart from Adam's 4-byte step "
        f"counter.")
    return "\n".join(lines)


DISCUSSION = """\
**Relation to the literature.** The bytes per parameter are ZeRO's (Rajbhandari et al. 2020):
mixed-precision Adam holds 2 + 2 + 12 = 16 bytes per trained parameter (bf16 weights and gradients,
fp32 master copy and two moments), our `mixed`; the hand arithmetic's bf16 moments (2 + 2 + 4) are
a lower bound few trainers run. ZeRO-Offload (Ren et al. 2021) keeps the 16-bit parameters and the
forward and backward passes on the GPU and moves the gradients, the optimizer states and the
optimizer step to the CPU; the first edition of this report kept the gradients on the device when
"offloading the optimizer" and so reproduced the hand arithmetic's 28 GB, where ZeRO-Offload's
device holds the actor's 14 GB of weights. DeepSpeed-Chat (Yao et al. 2023) and OpenRLHF (Hu et
al. 2024) count PPO as four models — actor and critic trained, reference and reward model frozen —
as here, and both switch between a generation mode (KV cache, inference kernels; DeepSpeed-Chat's
Hybrid Engine, OpenRLHF's vLLM engines) and a training mode: memory is a peak per phase, which is
what this edition computes instead of adding the KV cache to the training state. GRPO (Shao et al.
2024) drops the critic and its optimizer state by taking the baseline from a group of samples;
with a rule-based (verifiable) reward, as in DeepSeek-R1, the reward model goes too and two models
remain, which the "three models" of the hand arithmetic overcounts.

**Where this accounting simplifies.** One device holds everything (colocated): no tensor,
pipeline or data-parallel sharding (ZeRO stages 1–3 divide the optimizer state, gradients and
weights by the number of devices; OpenRLHF places the four models on different GPUs, so each
device's peak is its own model's). Activations follow Korthikanti et al. 2022 for a GPT block with
dropout and unfused attention (a fused flash-attention kernel does not store the a·s² terms, a
model without dropout stores the masks' bytes less; Llama's SwiGLU MLP stores a little more than
GPT's 4h MLP); full recomputation counts each layer's input plus one layer being recomputed. The
scoring phase counts one layer's activations and fp32 logits per micro-batch; a generation engine
such as vLLM reserves a fixed fraction of the device for its paged KV cache rather than the exact
cache of the batch. Not counted: the CUDA context and framework workspace, allocator
fragmentation, ZeRO-Offload's gradient buckets on the device, host memory limits and the time the
transfers take, and PPO's actor and critic are taken to step together (their gradients and
activations add up)."""


def run(plan: DictConfig) -> None:
    from purerl.attention.memory import format_bytes, parse_bytes

    kept = lab.kept_results(plan, lambda: measure(plan), measuring_code())
    rows, sweep, acts, conv = (kept.tables[k] for k in ("rows", "kv_sweep", "activations", "conventions"))
    rows = rows.assign(offload=rows.offload.fillna("").astype(str))
    budget = parse_bytes(plan.budget)
    hand, facts = hand_check(rows, plan)
    precisions = list(plan.precisions)
    m = plan.headline_model
    shape = plan.models[m]

    report = lab.Report(plan, "Memory of RLHF phase by phase: PPO vs GRPO vs DPO", kept=kept)
    report.add(
        "**Question.** How much accelerator memory does RLHF of a 7B model take at its peak — phase by phase "
        "(generation: weights + rollout KV cache; scoring; training: weights + gradients + optimizer states + "
        "activations) — for PPO (actor, critic, reference, reward model), GRPO (no critic; with a verifiable reward "
        "no reward model) and DPO (policy + reference), and what does offloading the reference, the reward model and "
        "the optimizer (ZeRO-Offload) buy?",
        "**Command** (writes this report and keeps its numbers beside it; the same accounting prints from the "
        "command line):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true   # from the kept results, computing "
        f"nothing\n```\n\n"
        "```bash\npurerl-memory rlhf --params 7B --both-rewards   # the headline model's phases\n```\n\n"
        f"Scale `{plan.scale}`: models {', '.join(plan.models)}; conventions {', '.join(precisions)}; rollout "
        f"{plan.rollout.batch} sequences × {plan.rollout.len:,} tokens ({plan.rollout.dtype}); training micro-batch "
        f"{plan.train.micro_batch} × {plan.train.len:,} tokens, recomputation `{plan.train.recompute}`; budget "
        f"{format_bytes(budget)} (one H100). Settings: `conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(rows, facts, conv, acts, plan, budget),
        "## Conventions",
        "**bf16** is the hand arithmetic: bf16 weights, bf16 gradients and two bf16 Adam moments (2 + 2 + 4 bytes "
        "per trained parameter). **mixed** is mixed-precision training as usually run (ZeRO's 16 bytes per "
        "parameter): bf16 weights and gradients plus an fp32 master copy and two fp32 Adam moments (2 + 2 + 12). "
        "Frozen models hold weights only. GB = 10⁹ bytes, as in the hand arithmetic; budgets in GiB.\n\n"
        "**Phases.** *Resident* in every phase: the weights of the models kept on the device and the optimizer "
        "state unless offloaded (nothing frees it between phases). *Generation* (PPO, GRPO) adds the policy's "
        "rollout KV cache (2 × layers × H_kv × head_dim × bytes × tokens × batch) and one step's fp32 logits. "
        "*Scoring* (reference log-probs, reward model, critic values) adds a no-gradient forward pass over a "
        "micro-batch — one layer's activations and the fp32 logits (4·s·b·v) — plus an offloaded frozen model brought "
        "back for its pass, one at a time. *Training* adds the gradients on the device and the activations "
        "(Korthikanti et al. 2022: 34·s·b·h + 5·a·s²·b bytes per layer stored without recomputation, 34·s·b·h with "
        "selective recomputation, 2·s·b·h with full recomputation plus one layer's full set while it is recomputed; "
        "plus 4·s·b·v for the fp32 logits of the loss; the critic's scalar head has no logits). The peak is the "
        "largest phase.\n\n"
        "**Offloading.** *reference*, *reward model*: the frozen model's weights live on the host. *optimizer*: "
        "ZeRO-Offload — gradients stream to the host during the backward pass, the optimizer state (master copy and "
        "moments under mixed) and the optimizer step are on the host; the device keeps the 16-bit weights.",
    )
    report.headline(
        f"Headline: {m} RLHF peak accelerator memory (largest phase) per set-up, reward and offloading "
        f"(rollout {plan.rollout.batch} × {plan.rollout.len:,} tokens)",
        lab.markdown_table(peak_table(rows, m, precisions, budget)))
    for precision in precisions:
        report.add(f"## {m} phase by phase, {precision}", lab.markdown_table(phase_table(rows, m, precision)))
    report.add("## Check against the hand arithmetic",
               "The issue's figures for a 7B GRPO with a reward model, bf16 everywhere, against the accounting. The "
               "offload row differs by design: the hand figure keeps the gradients on the device, ZeRO-Offload does "
               "not (see the answer).",
               lab.markdown_table(hand))
    report.add(
        "## Check of the conventions against real optax states",
        "Bytes per parameter of one trained model's weights, gradients and Adam state built by optax "
        "(`jax.eval_shape` on the preset's policy: `optax.adam` on fp32 weights; `optax.adam(mu_dtype=bf16)` on bf16 "
        "weights; under mixed, an fp32 master copy and `optax.adam` on it), next to the rule of "
        "`purerl.llm.memory.PRECISIONS`; and the preset's whole tiny GRPO + reward-model set-up summed role by role "
        "from those pytrees (actor trained; reference and reward model frozen), next to `setup_memory`.",
        lab.markdown_table(conventions_table(conv)),
    )
    report.add(
        f"## Training activations ({m} shape: {shape.layers} layers, h {shape.hidden}, {shape.heads} heads, "
        f"vocab {shape.vocab:,}; {plan.train.len:,} tokens per sequence)",
        "Activation bytes of one training step of the policy (`purerl.llm.memory.activation_bytes`), by micro-batch "
        "and recomputation strategy, fp32 logits included.",
        lab.markdown_table(activation_table(acts)),
    )
    report.add(
        f"## Rollout KV cache ({m} shape: {shape.layers} layers, head_dim {shape.head_dim}, {plan.rollout.dtype})",
        "KV cache of the policy while it generates (2 × layers × H_kv × head_dim × bytes × tokens × batch; "
        "`purerl.attention.memory.kv_cache_bytes`, whose bytes equal real caches' `nbytes` in "
        "tests/test_attention_memory.py). The last column: sequences whose cache alone fills the budget.",
        lab.markdown_table(kv_table(sweep, budget)),
    )
    for model in plan.models:
        if model != m:
            s = plan.models[model]
            report.add(f"## {model} ({s.layers} layers, h {s.hidden}, H_kv {s.kv_heads}): peak per set-up",
                       lab.markdown_table(peak_table(rows, model, precisions, budget)))
    report.figure(plot_phases(rows, budget, m, precisions), "phases.png",
                  f"{m}: accelerator memory in each phase (markers) and the peak (grey bar), per set-up and offloading")
    report.figure(plot_activations(acts, budget, m, int(plan.train.len)), "activations.png",
                  f"{m}: training activations against the micro-batch, per recomputation strategy")
    report.figure(plot_kv(sweep, budget, m), "kv_cache.png", f"{m}: rollout KV cache against the rollout batch")
    report.add("## Discussion", DISCUSSION)
    report.write()


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
