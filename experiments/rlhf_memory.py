"""Training-time memory of RLHF set-ups — PPO (actor, critic, reference, reward
model) vs GRPO (no critic) vs DPO (policy + reference) — with offloading and the rollout KV cache.

`python -m experiments.rlhf_memory [scale=ci|paper|smoke] [key=value ...]`

The figures are arithmetic, from the one accounting the `purerl-memory rlhf` command prints
(`purerl.llm.memory`, KV cache from `purerl.attention.memory`). Two checks make them evidence
rather than assertion: the hand arithmetic of the issue is reproduced exactly, and each precision
convention's bytes per parameter equal the bytes of real optax Adam states (and of every model of
the preset's tiny GRPO + reward-model set-up) built with `jax.eval_shape`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import lab

NAME = "rlhf_memory"
GB = 10**9
SEGMENTS = (("weights", "weights on device"), ("gradients", "gradients"),
            ("optimizer", "optimizer on device"), ("rollout_kv", "rollout KV cache"))


# ---------------------------------------------------------------- arithmetic
def arithmetic(plan: DictConfig) -> dict[str, pd.DataFrame]:
    from purerl.attention.memory import kv_cache_bytes
    from purerl.llm.memory import rlhf_rows

    rows = []
    for model, shape in plan.models.items():
        kv = dict(layers=shape.layers, num_kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                  rollout_batch=plan.rollout.batch, rollout_len=plan.rollout.len, dtype=plan.rollout.dtype)
        for row in rlhf_rows(int(shape.params), list(plan.setups), list(plan.precisions),
                             [list(o) for o in plan.offloads], reward_model=bool(plan.reward_model), kv=kv):
            rows.append({"model": model, **row, "offload": ",".join(row["offload"])})
    shape = plan.models[plan.headline_model]
    sweep = [{"kv_heads": h, "rollout_len": n, "rollout_batch": b,
              "bytes": kv_cache_bytes(shape.layers, h, shape.head_dim, n, b, plan.rollout.dtype)}
             for h in plan.kv_sweep.kv_heads for n in plan.kv_sweep.lens for b in plan.kv_sweep.batches]
    return {"rows": pd.DataFrame(rows), "kv_sweep": pd.DataFrame(sweep)}


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


# ---------------------------------------------------------------- tables
def gb(x: float) -> str:
    from purerl.llm.memory import format_gb

    return format_gb(x)


def memory_table(rows: pd.DataFrame, budget: int) -> pd.DataFrame:
    from purerl.attention.memory import format_bytes
    from purerl.llm.memory import PRECISIONS, offload_label

    out = []
    for r in rows.itertuples():
        offload = tuple(n for n in r.offload.split(",") if n)
        out.append({
            "set-up": r.setup.upper(),
            "convention": f"{r.precision} ({PRECISIONS[r.precision].weights}+{PRECISIONS[r.precision].gradients}"
                          f"+{PRECISIONS[r.precision].optimizer} B/param)",
            "offloaded": offload_label(offload),
            "models on device": str(r.device_models),
            "weights": gb(r.weights - r.offloaded_weights),
            "gradients": gb(r.gradients),
            "optimizer": gb(r.optimizer - r.offloaded_optimizer),
            "training state on device": gb(r.device),
            "+ rollout KV": gb(r.rollout_kv),
            "device total": gb(r.device_with_kv),
            "on host": gb(r.offloaded),
            f"fits {format_bytes(budget)}": "yes" if r.device_with_kv <= budget else "no",
        })
    return pd.DataFrame(out)


def hand_check(rows: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    """The issue's GRPO figures (bf16 everywhere) against the accounting."""
    grpo = rows[(rows.model == plan.headline_model) & (rows.setup == "grpo") & (rows.precision == "bf16")]
    by_offload = {r.offload: r for r in grpo.itertuples()}
    none = by_offload[""]
    checks = [
        ("actor + reference + reward model weights", plan.hand.weights, none.weights),
        ("Adam states (two bf16 moments)", plan.hand.optimizer, none.optimizer),
        ("gradients", plan.hand.gradients, none.gradients),
        ("total on device, nothing offloaded", plan.hand.total, none.device),
        ("reference + reward model offloaded", plan.hand.offload_frozen,
         by_offload["reference,reward_model"].device),
        ("... and the optimizer offloaded", plan.hand.offload_frozen_and_optimizer,
         by_offload["reference,reward_model,optimizer"].device),
    ]
    return pd.DataFrame([{"quantity (GRPO, 7B, bf16)": what, "hand arithmetic": f"{hand:g} GB",
                          "purerl-memory rlhf": gb(value), "bytes": f"{int(value):,}",
                          "equal": "yes" if int(value) == int(hand * GB) else "NO"}
                         for what, hand, value in checks])


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


# ---------------------------------------------------------------- plots
def plot_breakdown(rows: pd.DataFrame, budget: int, model: str):
    import matplotlib.pyplot as plt

    from purerl.llm.memory import offload_label

    part = rows[rows.model == model].reset_index(drop=True)
    labels = [f"{r.setup.upper()} {r.precision}, off: {offload_label(tuple(n for n in r.offload.split(',') if n))}"
              for r in part.itertuples()]
    values = {
        "weights": (part.weights - part.offloaded_weights) / GB,
        "gradients": part.gradients / GB,
        "optimizer": (part.optimizer - part.offloaded_optimizer) / GB,
        "rollout_kv": part.rollout_kv / GB,
    }
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(part) + 1.6), layout="constrained")
    left = np.zeros(len(part))
    y = np.arange(len(part))[::-1]
    for i, (key, label) in enumerate(SEGMENTS):
        ax.barh(y, values[key], left=left, color=f"C{i}", label=label)
        left += values[key].to_numpy()
    ax.axvline(budget / GB, color="black", linestyle="--", linewidth=1)
    ax.annotate(f"one H100 ({budget / GB:.1f} GB)", (budget / GB, y.max() + 0.4), fontsize="small",
                xytext=(4, 0), textcoords="offset points")
    ax.set_yticks(y, labels, fontsize="x-small")
    ax.set_xlabel("accelerator memory (GB, decimal)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{model} RLHF training memory on the accelerator by part (rollout KV: see the table)",
                 fontsize="medium")
    return fig


def plot_kv(sweep: pd.DataFrame, budget: int, model: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4), layout="constrained")
    styles = ["-", "--", ":"]
    for i, (h, group_h) in enumerate(sweep.groupby("kv_heads", sort=False)):
        for j, (n, group) in enumerate(group_h.groupby("rollout_len")):
            # thick solid under thin dashed: equal-byte lines (H_kv 32 at 1k = H_kv 8 at 4k) stay visible
            ax.plot(group.rollout_batch, group.bytes / GB, styles[j % 3], marker="os^"[j % 3], color=f"C{i}",
                    linewidth=3.5 - 1.2 * j, markersize=8 - 2 * j, label=f"H_kv {h}, {n:,} tokens")
    ax.axhline(budget / GB, color="black", linestyle="--", linewidth=1, label="one H100")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences generated at once (rollout batch)")
    ax.set_ylabel("KV cache (GB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small")
    ax.set_title(f"{model}: rollout KV cache (bf16) vs batch, length and KV heads", fontsize="medium")
    return fig


# ---------------------------------------------------------------- report
def answer(rows: pd.DataFrame, hand: pd.DataFrame, conv: pd.DataFrame, plan: DictConfig, budget: int) -> str:
    from purerl.llm.memory import PRECISIONS

    head = rows[rows.model == plan.headline_model]

    def pick(setup, precision, offload):
        part = head[(head.setup == setup) & (head.precision == precision)]
        return part[part.offload.str.split(",").apply(set) == set(offload.split(","))].iloc[0]

    full, frozen = "reference,reward_model,optimizer", "reference,reward_model"
    lines = []
    lines.append(
        f"- **The hand arithmetic holds exactly** ({(hand.equal == 'yes').sum()}/{len(hand)} figures equal to the "
        f"byte): a {plan.headline_model} GRPO actor + reference + reward model in bf16 is "
        f"{gb(pick('grpo', 'bf16', '').weights)} of weights, + {gb(pick('grpo', 'bf16', '').optimizer)} Adam + "
        f"{gb(pick('grpo', 'bf16', '').gradients)} gradients = {gb(pick('grpo', 'bf16', '').device)}; offloading "
        f"reference and reward model leaves {gb(pick('grpo', 'bf16', frozen).device)}, offloading the optimizer too "
        f"{gb(pick('grpo', 'bf16', full).device)} (actor weights + gradients)."
    )
    if "mixed" in set(head.precision):
        lines.append(
            f"- **That arithmetic keeps Adam in bf16; real mixed precision costs more.** With an fp32 master copy "
            f"and two fp32 moments ({PRECISIONS['mixed'].optimizer} B/param instead of "
            f"{PRECISIONS['bf16'].optimizer}) the same GRPO needs {gb(pick('grpo', 'mixed', '').device)} "
            f"(not {gb(pick('grpo', 'bf16', '').device)}) and {gb(pick('grpo', 'mixed', frozen).device)} with "
            f"reference and reward model offloaded; only offloading the optimizer brings it back to "
            f"{gb(pick('grpo', 'mixed', full).device)}, with {gb(pick('grpo', 'mixed', full).offloaded)} on the host. "
            f"The optimizer, not the extra models, dominates: {gb(pick('grpo', 'mixed', '').optimizer)} of "
            f"{gb(pick('grpo', 'mixed', '').device)}."
        )
    saving = 1 - pick("grpo", "bf16", "").device / pick("ppo", "bf16", "").device
    lines.append(
        f"- **PPO vs GRPO vs DPO (bf16, nothing offloaded):** PPO holds {int(pick('ppo', 'bf16', '').models)} models "
        f"and trains two (actor and critic): {gb(pick('ppo', 'bf16', '').device)}; GRPO drops the critic: "
        f"{gb(pick('grpo', 'bf16', '').device)} ({saving:.0%} less); DPO holds only policy + reference and "
        f"generates nothing while training: {gb(pick('dpo', 'bf16', '').device)}."
    )
    kv = pick("grpo", "bf16", "").rollout_kv
    shape = plan.models[plan.headline_model]
    lines.append(
        f"- **The rollout KV cache is the term the hand arithmetic leaves out.** Generating {plan.rollout.batch} "
        f"sequences of {plan.rollout.len:,} tokens with this MHA shape ({shape.layers} layers × {shape.kv_heads} KV "
        f"heads × {shape.head_dim}) holds {gb(kv)} of KV cache — more than the {gb(pick('grpo', 'bf16', full).device)} "
        f"training state left after full offloading. Of the {plan.headline_model} rows, "
        f"{int((head.device_with_kv <= budget).sum())}/{len(head)} fit one H100 with the cache, "
        f"{int((head.device <= budget).sum())}/{len(head)} without; GQA-8 cuts the cache 4× (sweep below)."
    )
    exact = ((conv.weights_per_param == conv.convention_weights)
             & (conv.gradients_per_param == conv.convention_gradients)
             & (conv.optimizer_per_param == conv.convention_optimizer) & (conv.setup_total == conv.counted_total))
    lines.append(
        f"- **The conventions are what optax allocates:** for {int(exact.sum())}/{len(conv)} conventions the bytes "
        f"per parameter of real Adam states (`jax.eval_shape`, no arrays) equal the rule, and the preset's tiny GRPO "
        f"+ reward model ({int(conv.policy_params.iloc[0]):,}-parameter policy, {int(conv.scalar_params.iloc[0]):,}"
        f"-parameter reward model) summed model by model equals the accounting, apart from Adam's 4-byte step "
        f"counter. Not counted anywhere: activations (they depend on batch, length and checkpointing), the "
        f"reward model's and reference's forward activations, and framework workspace."
    )
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    from purerl.attention.memory import format_bytes, parse_bytes

    identity = OmegaConf.to_container(plan, resolve=True)
    for key in ("force", "out_dir", "report_dir"):
        identity.pop(key, None)
    import purerl.attention.memory as attention_memory
    import purerl.llm.memory as llm_memory

    tables = lab.measured(plan, "arithmetic", identity, lambda: arithmetic(plan),
                          code=[llm_memory, attention_memory])
    conv = lab.measured(plan, "conventions", identity, lambda: conventions(plan),
                        code=[llm_memory, sys.modules[__name__].trained_state, sys.modules[__name__].conventions])
    rows, sweep = tables["rows"], tables["kv_sweep"]
    budget = parse_bytes(plan.budget)
    hand = hand_check(rows, plan)

    report = lab.Report(plan, "Memory arithmetic for RLHF: PPO vs GRPO vs DPO")
    shape = plan.models[plan.headline_model]
    report.add(
        "**Question.** How much accelerator memory does RLHF training of a 7B model take — PPO (actor, critic, "
        "reference, reward model) vs GRPO (no critic) vs DPO (policy + reference) — what does offloading the "
        "reference, the reward model and the optimizer buy, and how large is the rollout KV cache next to it?",
        "**Command** (writes this report; the same accounting prints from the command line):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        "```bash\npurerl-memory rlhf --params 7B --rollout-batch 64 --rollout-len 1536   # the headline table\n```\n\n"
        f"Scale `{plan.scale}`: models {', '.join(plan.models)}; conventions {', '.join(plan.precisions)}; rollout "
        f"{plan.rollout.batch} sequences × {plan.rollout.len:,} tokens ({plan.rollout.dtype}); budget "
        f"{format_bytes(budget)} (one H100). Settings: `conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(rows, hand, conv, plan, budget),
        "## Conventions",
        "Every row says which convention it uses. **bf16** is the hand arithmetic: bf16 weights, bf16 gradients "
        "and two bf16 Adam moments (2 + 2 + 4 bytes per trained parameter). **mixed** is mixed-precision training "
        "as usually run: bf16 weights and gradients for the forward/backward pass, plus an fp32 master copy and two "
        "fp32 Adam moments held by the optimizer (2 + 2 + 12). Frozen models (reference, reward model) hold weights "
        "only (2 B/param in both). GB = 10⁹ bytes, as in the hand arithmetic; budgets in GiB. Offloading the "
        "optimizer moves its state (under mixed: master copy and moments) to host memory, as ZeRO-Offload does; the "
        "gradients stay on the device. PPO and GRPO score completions with a reward model of the policy's size; "
        "PPO's critic is the policy's size too.",
    )
    report.headline(
        f"Headline: {plan.headline_model} RLHF training memory per set-up, convention and offloading "
        f"(rollout {plan.rollout.batch} × {plan.rollout.len:,} tokens)",
        lab.markdown_table(memory_table(rows[rows.model == plan.headline_model], budget)))
    report.add("## Check against the hand arithmetic", lab.markdown_table(hand))
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
        f"## Rollout KV cache ({plan.headline_model} shape: {shape.layers} layers, head_dim {shape.head_dim}, "
        f"{plan.rollout.dtype})",
        "KV cache of the policy while it generates (2 × layers × H_kv × head_dim × bytes × tokens × batch; "
        "`purerl.attention.memory.kv_cache_bytes`, whose bytes equal real caches' `nbytes` in "
        "tests/test_attention_memory.py). The last column: sequences whose cache alone fills the budget.",
        lab.markdown_table(kv_table(sweep, budget)),
    )
    for model in plan.models:
        if model != plan.headline_model:
            report.add(f"## {model}", lab.markdown_table(memory_table(rows[rows.model == model], budget)))
    report.figure(plot_breakdown(rows, budget, plan.headline_model), "breakdown.png",
                  f"{plan.headline_model}: accelerator memory by part, per set-up, convention and offloading")
    report.figure(plot_kv(sweep, budget, plan.headline_model), "kv_cache.png",
                  f"{plan.headline_model}: rollout KV cache against the rollout batch")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
