"""Cutting the KV cache 4× on a 32-query-head model.
`python -m experiments.kv_cache_4x [scale=ci|paper]`

One model family (TinyLM, 32 query heads) with H_kv ∈ {32, 16, 8, 4, 2, 1} (one `purerl-train`
job per H_kv: it changes shapes; seeds vmapped in each job) and a linear-attention variant, all
trained the same number of steps on MQAR + a synthetic order-2 Markov language
(`algo=lm_pretrain`). Conversion jobs pretrain MHA-32 exactly as the H_kv = 32 job, pool its K/V
heads to 8 or 1 (`convert_kv_heads`: mean, first head, random init) and uptrain 5% and 10% of
the pretraining steps. Measurements that are not training: exact cache bytes (formula and the
`nbytes` of real caches), the largest batch in a memory budget, and prefill and per-token
decode time with `generate` (one program: prefill + a `lax.scan` of decode steps).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import lab
from purerl.attention.memory import format_bytes

NAME = "kv_cache_4x"
METHOD_LABELS = {"mean": "mean-pool", "first": "first head", "random": "random K/V"}


def variant(attention: str, kv_heads: int, heads: int = 32) -> str:
    if attention == "linear":
        return "linear"
    return f"MHA-{heads}" if kv_heads == heads else "MQA" if kv_heads == 1 else f"GQA-{kv_heads}"


def model_config(plan: DictConfig):
    """The trained family's Config (the preset with the first job's overrides)."""
    from purerl.cli.train import build_plan

    overrides, preset = lab.job_spec(next(iter(plan.jobs.values())))
    return build_plan(lab.compose_job(plan, overrides, preset=preset)).config


def variants(spec: DictConfig) -> list[tuple[str, int]]:
    """(attention, H_kv) of the softmax variants `spec.kv_heads`, plus linear (H_kv 0) if `spec.linear`."""
    return [("softmax", int(h)) for h in spec.kv_heads] + ([("linear", 0)] if spec.linear else [])


# ---------------------------------------------------------------- memory (exact)
def measure_memory(plan: DictConfig, config) -> dict[str, pd.DataFrame]:
    """Cache bytes of the trained model per sequence: the formula and the real caches' nbytes."""
    import jax

    from purerl.attention import TinyLM, kv_cache_bytes, linear_state_bytes
    from purerl.attention.linear import feature_dim
    from purerl.attention.memory import memory_table, parse_bytes

    budget = parse_bytes(plan.memory.budget)
    rows = []
    for attention, h_kv in variants(plan.memory):
        lm = dataclasses.replace(config.lm_config(h_kv or config.num_heads), attention=attention)
        caches = TinyLM(lm).init_cache(batch=1)
        if attention == "softmax":
            measured = sum(c.keys.nbytes + c.values.nbytes for c in caches)
            formula = kv_cache_bytes(lm.num_layers, h_kv, lm.resolved_head_dim, lm.max_len, 1, plan.memory.dtype)
            per_token = kv_cache_bytes(lm.num_layers, h_kv, lm.resolved_head_dim, 1, 1, plan.memory.dtype)
        else:
            measured = sum(c.kv.nbytes + c.normalizer.nbytes for c in caches)
            formula = linear_state_bytes(lm.num_layers, lm.num_heads, feature_dim(lm.feature_map, lm.resolved_head_dim),
                                         lm.resolved_head_dim, 1, plan.memory.dtype)
            per_token = 0
        jax.clear_caches()
        rows.append(dict(variant=variant(attention, h_kv, config.num_heads), kv_heads=h_kv or config.num_heads,
                         per_token=per_token, per_sequence=formula, measured_nbytes=measured,
                         max_batch=budget // formula))
    ref = plan.memory.reference
    reference = pd.DataFrame(memory_table(ref.layers, config.num_heads, ref.head_dim, ref.seq_len, ref.dtype,
                                          [int(h) for h in plan.memory.kv_heads], parse_bytes(ref.budget)))
    return {"tiny": pd.DataFrame(rows), "reference": reference}


# ---------------------------------------------------------------- timing
def timing_config(plan: DictConfig, config, attention: str, h_kv: int, context: int):
    """The timed model: the trained family (same 32 query heads) widened by `timing.model`, so a
    decode step's cache read is large against its fixed cost, with max_len = context."""
    lm = config.lm_config(h_kv or config.num_heads)
    return dataclasses.replace(lm, attention=attention, max_len=context, **dict(plan.timing.get("model") or {}))


def measure_timing(plan: DictConfig, config) -> pd.DataFrame:
    """Per context n and variant: prefill time and per-token decode time, both from `generate`.

    Decode: one `generate` call from a 1-token prompt sampling `decode_steps` tokens into a
    cache of n slots (`cache_len`, as a server allocates it). A decode step attends over the
    whole buffer (masked by length), so every step costs what a step at context n costs, and per
    token = call time / decode_steps (the 1-token prefill is negligible). Prefill: one call
    with an (n − 1)-token prompt and one sampled token. Variants are timed in turn, best of
    `rounds`."""
    import jax

    from purerl.attention import TinyLM, generate

    spec = plan.timing
    rows = []
    for context in (int(c) for c in spec.contexts):
        calls = []
        steps = min(int(spec.decode_steps), context - 1)
        for attention, h_kv in variants(spec):
            lm = timing_config(plan, config, attention, h_kv, context)
            params = jax.jit(TinyLM(lm).init)(jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), jax.numpy.int32))
            prompt = jax.random.randint(jax.random.PRNGKey(1), (spec.batch, context - 1), 0, lm.vocab_size)
            for kind, tokens, n, slots in (("prefill", prompt, 1, None), ("decode", prompt[:, :1], steps, context)):
                def call(params=params, lm=lm, tokens=tokens, n=n, slots=slots):
                    return generate(params, lm, tokens, jax.random.PRNGKey(2), steps=n, cache_len=slots).tokens

                jax.block_until_ready(call())  # compile
                calls.append(((attention, h_kv, kind), call))
        best = {}
        for _ in range(spec.rounds):
            for key, call in calls:
                start = time.perf_counter()
                jax.block_until_ready(call())
                best[key] = min(best.get(key, np.inf), time.perf_counter() - start)
        for attention, h_kv in variants(spec):
            lm = timing_config(plan, config, attention, h_kv, context)
            rows.append(dict(context=context, variant=variant(attention, h_kv, config.num_heads),
                             kv_heads=h_kv or config.num_heads, prefill_ms=1e3 * best[(attention, h_kv, "prefill")],
                             decode_ms_per_token=1e3 * best[(attention, h_kv, "decode")] / steps,
                             cache_bytes_read=(kv_cache_read(lm, h_kv, context) if attention == "softmax" else
                                               linear_state_read(lm)),
                             load=os.getloadavg()[0]))
        jax.clear_caches()
        print(f"[{NAME}] timing: context {context} done", flush=True)
    return pd.DataFrame(rows)


def timing_shape(plan: DictConfig, config) -> str:
    lm = timing_config(plan, config, "softmax", config.num_heads, 1)
    return f"d_model {lm.d_model}, head_dim {lm.resolved_head_dim}, {lm.num_layers} layer(s)"


def kv_cache_read(lm, h_kv: int, context: int) -> int:
    """Bytes of K and V one decode step reads (the whole buffer, all layers, batch 1, fp32)."""
    from purerl.attention import kv_cache_bytes

    return kv_cache_bytes(lm.num_layers, h_kv, lm.resolved_head_dim, context, 1, "float32")


def linear_state_read(lm) -> int:
    from purerl.attention import linear_state_bytes
    from purerl.attention.linear import feature_dim

    return linear_state_bytes(lm.num_layers, lm.num_heads, feature_dim(lm.feature_map, lm.resolved_head_dim),
                              lm.resolved_head_dim, 1, "float32")


# ---------------------------------------------------------------- quality from the jobs
def final_rows(curves: pd.DataFrame) -> pd.DataFrame:
    return curves[curves["update"] == curves.groupby("job")["update"].transform("max")]


def scratch_quality(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per scratch run (seed): the final held-out metrics."""
    scratch = final_rows(curves[curves.init_kv_heads == 0]).copy()
    scratch["variant"] = [variant(a, h, n) for a, h, n in zip(scratch.attention, scratch.num_kv_heads,
                                                               scratch.num_heads)]
    # MHA first, then fewer KV heads, linear last; the first row is the baseline of every comparison.
    scratch["order"] = [(a == "linear", -h) for a, h in zip(scratch.attention, scratch.num_kv_heads)]
    return scratch.sort_values(["order", "seed"]).drop(columns="order")


def conversion_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per conversion run × method × uptrain update: target, method, uptrain fraction, metrics."""
    from purerl.attention.pretrain import EVAL_METRICS

    part = curves[curves.init_kv_heads > 0]
    frames = []
    for method in METHOD_LABELS:
        if f"mqar_accuracy_{method}" not in part:
            continue
        frame = part[["job", "seed", "update", "num_kv_heads", "num_heads", "pretrain_updates"]].copy()
        frame["method"] = method
        frame["uptrain"] = frame["update"] / frame["pretrain_updates"]
        for name in EVAL_METRICS:
            frame[name] = part[f"{name}_{method}"].to_numpy()
            frame[f"pretrained_{name}"] = part[f"pretrained_{name}"].to_numpy()
        frame["target"] = [variant("softmax", h, n) for h, n in zip(frame.num_kv_heads, frame.num_heads)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ci_cell(values: np.ndarray, digits: int = 3) -> str:
    return lab.fmt_ci(*lab.bootstrap_ci(np.asarray(values, np.float64)), digits=digits)


def paired_delta(scratch: pd.DataFrame, name: str, metric: str, base: str) -> tuple[float, float, float]:
    """Mean over seeds of (variant − base) on the same seeds (same evaluation batches), 95% CI."""
    a = scratch[scratch.variant == name].set_index("seed")[metric]
    b = scratch[scratch.variant == base].set_index("seed")[metric]
    return lab.bootstrap_ci((a - b).dropna().to_numpy())


# ---------------------------------------------------------------- tables
def memory_table_md(tiny: pd.DataFrame, plan: DictConfig, config) -> str:
    table = pd.DataFrame({
        "variant": tiny.variant,
        "H_kv": [str(h) for h in tiny.kv_heads],
        "cache / token": [format_bytes(b) if b else "0 (constant)" for b in tiny.per_token],
        f"cache / sequence ({config.seq_len} tokens)": [format_bytes(b) for b in tiny.per_sequence],
        "real caches' nbytes": [format_bytes(b) for b in tiny.measured_nbytes],
        "exact": ["yes" if a == b else "NO" for a, b in zip(tiny.per_sequence, tiny.measured_nbytes)],
        f"max batch in {plan.memory.budget}": [f"{b:,}" for b in tiny.max_batch],
        "saving vs MHA": [f"{tiny.per_sequence.iloc[0] / b:.3g}×" for b in tiny.per_sequence],
    })
    return lab.markdown_table(table)


def reference_table_md(reference: pd.DataFrame, plan: DictConfig) -> str:
    ref = plan.memory.reference
    mha = reference.per_sequence.iloc[0]
    table = pd.DataFrame({
        "variant": reference.attention, "H_kv": [str(h) for h in reference.kv_heads],
        "cache / token": [format_bytes(b) if b else "0 (constant)" for b in reference.per_token],
        f"cache / sequence ({ref.seq_len:,} tokens)": [format_bytes(b) for b in reference.per_sequence],
        f"max batch in {ref.budget}": [f"{b:,}" for b in reference.max_batch],
        "saving vs MHA": [f"{mha / b:.3g}×" for b in reference.per_sequence],
    })
    return lab.markdown_table(table)


def timing_table_md(timing: pd.DataFrame) -> str:
    table = timing.pivot(index="variant", columns="context", values="decode_ms_per_token")
    prefill = timing.pivot(index="variant", columns="context", values="prefill_ms")
    order = list(dict.fromkeys(timing.variant))
    out = pd.DataFrame({"variant": order})
    for context in table.columns:
        out[f"decode ms/token @ {context:,}"] = [lab.fmt(table.loc[v, context]) for v in order]
    for context in prefill.columns:
        out[f"prefill ms @ {context:,}"] = [lab.fmt(prefill.loc[v, context]) for v in order]
    longest = timing[timing.context == timing.context.max()].set_index("variant")
    n = int(timing.context.max())
    out[f"cache read / step @ {n:,}"] = [format_bytes(longest.loc[v].cache_bytes_read) for v in order]
    out[f"streamed GB/s @ {n:,}"] = [
        lab.fmt(longest.loc[v].cache_bytes_read / longest.loc[v].decode_ms_per_token / 1e6, 2) for v in order]
    return lab.markdown_table(out)


def quality_table_md(scratch: pd.DataFrame) -> str:
    rows = []
    for name, group in scratch.groupby("variant", sort=False):
        d_acc = paired_delta(scratch, name, "mqar_accuracy", scratch.variant.iloc[0])
        d_excess = paired_delta(scratch, name, "language_excess", scratch.variant.iloc[0])
        rows.append({
            "variant": name,
            "MQAR accuracy [95% CI]": ci_cell(group.mqar_accuracy),
            "Δ accuracy vs MHA (paired)": lab.fmt_ci(*d_acc, digits=2),
            "language loss − Bayes loss (nats) [95% CI]": ci_cell(group.language_excess),
            "Δ excess vs MHA (paired)": lab.fmt_ci(*d_excess, digits=2),
            "seeds": str(group.seed.nunique()),
        })
    return lab.markdown_table(pd.DataFrame(rows))


def conversion_table_md(conversions: pd.DataFrame, scratch: pd.DataFrame) -> str:
    rows = []
    for (target, method, uptrain), group in conversions.groupby(["target", "method", "uptrain"], sort=False):
        rows.append({
            "target": target, "init": METHOD_LABELS[method], "uptrain (of pretraining steps)": f"{uptrain:.0%}",
            "MQAR accuracy [95% CI]": ci_cell(group.mqar_accuracy),
            "language loss − Bayes [95% CI]": ci_cell(group.language_excess),
        })
    mha = scratch[scratch.variant == scratch.variant.iloc[0]]
    rows.append({"target": mha.variant.iloc[0], "init": "(the pretrained model)", "uptrain (of pretraining steps)": "—",
                 "MQAR accuracy [95% CI]": ci_cell(mha.mqar_accuracy),
                 "language loss − Bayes [95% CI]": ci_cell(mha.language_excess)})
    for target in dict.fromkeys(conversions.target):
        own = scratch[scratch.variant == target]
        if len(own):
            rows.append({"target": target, "init": "from scratch (100% steps)", "uptrain (of pretraining steps)": "—",
                         "MQAR accuracy [95% CI]": ci_cell(own.mqar_accuracy),
                         "language loss − Bayes [95% CI]": ci_cell(own.language_excess)})
    return lab.markdown_table(pd.DataFrame(rows))


def decision_table(memory: pd.DataFrame, reference: pd.DataFrame, timing: pd.DataFrame, scratch: pd.DataFrame,
                   conversions: pd.DataFrame, plan: DictConfig, config) -> pd.DataFrame:
    base = variant("softmax", config.num_heads, config.num_heads)
    longest = timing[timing.context == timing.context.max()].set_index("variant")
    ref = reference[~reference.attention.str.startswith("linear")].set_index("kv_heads")
    options = [name for name in (base, "GQA-8", "MQA", "linear") if name in set(memory.variant)]
    rows = []
    for name in options:
        mem = memory.set_index("variant").loc[name]
        ref_row = reference[reference.attention.str.startswith("linear")].iloc[0] if name == "linear" \
            else ref.loc[int(mem.kv_heads)]
        saving = reference.per_sequence.iloc[0] / ref_row.per_sequence
        speed = (f"{ratio(longest.loc[base].decode_ms_per_token, longest.loc[name].decode_ms_per_token)} decode, "
                 f"{ratio(longest.loc[base].prefill_ms, longest.loc[name].prefill_ms)} prefill"
                 if name in longest.index and base in longest.index else "not timed")
        if name == base:
            quality = "baseline: MQAR " + ci_cell(scratch[scratch.variant == base].mqar_accuracy, 2)
        elif name in set(scratch.variant):
            d_acc = paired_delta(scratch, name, "mqar_accuracy", base)
            d_exc = paired_delta(scratch, name, "language_excess", base)
            quality = f"MQAR {lab.fmt_ci(*d_acc, digits=2)}; LM excess {lab.fmt_ci(*d_exc, digits=2)}"
        else:
            quality = "not trained"
        conv = conversions[(conversions.target == name) & (conversions.method == "mean")] if len(conversions) else []
        if name == base:
            conversion = "—"
        elif name == "linear":
            conversion = "no K/V pooling path: train (or distil) from scratch, 100% of the steps here"
        elif len(conv):
            last = conv[conv.uptrain == conv.uptrain.max()]
            zero = conv[conv.uptrain == 0]
            conversion = (f"mean-pool: MQAR {ci_cell(zero.mqar_accuracy, 2)} at 0%, "
                          f"{ci_cell(last.mqar_accuracy, 2)} after {last.uptrain.iloc[0]:.0%} uptraining")
        else:
            conversion = "not run"
        rows.append({
            "option": name,
            f"KV memory / sequence (ref. shape, {plan.memory.reference.seq_len:,} tok)": (
                f"{format_bytes(ref_row.per_sequence)} ({saving:.3g}× less)" if name != base
                else format_bytes(ref_row.per_sequence)),
            f"max batch in {plan.memory.reference.budget}": f"{int(ref_row.max_batch):,}",
            f"speed vs {base} @ {int(timing.context.max()):,} tok (CPU)": speed if name != base else
            f"{lab.fmt(longest.loc[base].decode_ms_per_token)} ms/token, "
            f"{lab.fmt(longest.loc[base].prefill_ms)} ms prefill",
            "quality cost vs MHA (Δ, paired 95% CI)": quality,
            "conversion cost from an MHA checkpoint": conversion,
        })
    return pd.DataFrame(rows)


def growth(timing: pd.DataFrame) -> str:
    """How each variant's per-token decode time grew from the shortest to the longest context."""
    short, long = timing.context.min(), timing.context.max()
    by = timing.set_index(["variant", "context"]).decode_ms_per_token
    parts = ", ".join(f"{v} {by[v, long] / by[v, short]:.2g}×" for v in dict.fromkeys(timing.variant))
    return (f"From {short:,} to {long:,} tokens ({long / short:.2g}× the context) the per-token decode time grew: "
            f"{parts} — linear attention reads a constant state and does no per-position work, so only its fixed "
            "per-step cost (and the shared machine's noise) remains.")


def ratio(base: float, other: float) -> str:
    """How many times faster `other` is than `base` (times), or n/a when a time rounds to 0."""
    return f"{base / other:.2g}×" if base > 0 and other > 0 else "n/a"


# ---------------------------------------------------------------- plots
def plot_memory(memory: pd.DataFrame, reference: pd.DataFrame, plan: DictConfig):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    ref = reference
    labels = list(ref.attention)
    axes[0].bar(labels, ref.per_sequence / 2**20, color=["C0"] * (len(ref) - 1) + ["C3"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cache per sequence (MiB, log)")
    axes[0].set_title(f"{plan.memory.reference.layers} layers, 32 q-heads × {plan.memory.reference.head_dim}, "
                      f"{plan.memory.reference.seq_len:,} tokens, {plan.memory.reference.dtype}", fontsize="medium")
    axes[1].bar(labels, ref.max_batch, color=["C0"] * (len(ref) - 1) + ["C3"])
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"largest batch in {plan.memory.reference.budget} (log)")
    axes[1].set_title("sequences whose cache fits the budget (cache only)", fontsize="medium")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
        ax.grid(axis="y", alpha=0.3)
    return fig


def plot_timing(timing: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for i, (name, group) in enumerate(timing.groupby("variant", sort=False)):
        style = "--" if name == "linear" else "-"
        axes[0].plot(group.context, group.decode_ms_per_token, style, marker="o", color=f"C{i}", label=name)
        axes[1].plot(group.context, group.prefill_ms, style, marker="o", color=f"C{i}", label=name)
    for ax, label in zip(axes, ["decode, ms per token (generate, in one program)", "prefill, ms (one call)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", ncol=2)
    axes[0].set_title("per-token decode time vs context", fontsize="medium")
    axes[1].set_title("prefill time vs context", fontsize="medium")
    return fig


def plot_quality(scratch: pd.DataFrame, curves: pd.DataFrame):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    order = list(dict.fromkeys(scratch.variant))
    for ax, metric, label in [(axes[0], "mqar_accuracy", "MQAR accuracy (final)"),
                              (axes[1], "language_excess", "language loss − Bayes loss (nats, final)")]:
        stats = [lab.bootstrap_ci(scratch[scratch.variant == v][metric].to_numpy()) for v in order]
        means = [s[0] for s in stats]
        ax.errorbar(range(len(order)), means, yerr=[[m - s[1] for m, s in zip(means, stats)],
                                                    [s[2] - m for m, s in zip(means, stats)]],
                    fmt="o", capsize=4)
        for i, v in enumerate(order):
            ax.plot([i] * (scratch.variant == v).sum(), scratch[scratch.variant == v][metric], ".", color="grey",
                    alpha=0.6)
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize="small")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("after equal training steps (mean, 95% CI; dots: seeds)", fontsize="medium")
    scratch_curves = curves[curves.init_kv_heads == 0].copy()
    scratch_curves["variant"] = [variant(a, h, n) for a, h, n in zip(scratch_curves.attention,
                                                                      scratch_curves.num_kv_heads,
                                                                      scratch_curves.num_heads)]
    for i, v in enumerate(order):
        mean = scratch_curves[scratch_curves.variant == v].groupby("env_steps").mqar_accuracy.mean()
        axes[2].plot(mean.index, mean.to_numpy(), "--" if v == "linear" else "-", color=f"C{i}", label=v)
    axes[2].set_xlabel("training sequences")
    axes[2].set_ylabel("MQAR accuracy (held out, mean over seeds)")
    axes[2].legend(fontsize="small", ncol=2)
    axes[2].grid(alpha=0.3)
    return fig


def plot_conversion(conversions: pd.DataFrame, scratch: pd.DataFrame):
    targets = list(dict.fromkeys(conversions.target))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8), layout="constrained", squeeze=False)
    base = scratch.variant.iloc[0]
    for ax, target in zip(axes[0], targets):
        part = conversions[conversions.target == target]
        for i, method in enumerate(METHOD_LABELS):
            group = part[part.method == method]
            if not len(group):
                continue
            stats = group.groupby("uptrain").mqar_accuracy.apply(lambda x: lab.bootstrap_ci(x.to_numpy()))
            xs = 100 * stats.index.to_numpy()
            means = np.array([s[0] for s in stats])
            ax.errorbar(xs, means, yerr=[means - [s[1] for s in stats], [s[2] for s in stats] - means],
                        marker="o", capsize=3, color=f"C{i}", label=f"converted: {METHOD_LABELS[method]}")
        references = [(scratch[scratch.variant == base].mqar_accuracy.mean(), ":", f"{base} (pretrained)"),
                      (scratch[scratch.variant == target].mqar_accuracy.mean(), "--", f"{target} from scratch (100%)")]
        for value, style, label in references:
            if np.isfinite(value):
                ax.axhline(value, linestyle=style, color="black", label=label)
        ax.set_xlabel("uptraining (% of pretraining steps)")
        ax.set_ylabel("MQAR accuracy (held out)")
        ax.set_title(f"{base} → {target}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------- report
def answer(memory, reference, timing, scratch, conversions, config, plan) -> str:
    base = variant("softmax", config.num_heads, config.num_heads)
    longest = timing[timing.context == timing.context.max()].set_index("variant")
    lines = []
    gqa8 = reference[reference.kv_heads == 8]
    exact = "all exact" if (memory.per_sequence == memory.measured_nbytes).all() else "MISMATCH"
    if len(gqa8):
        lines.append(
            f"- **Memory (exact, arithmetic):** the cache is 2 × layers × H_kv × head_dim × bytes per token, so it "
            f"scales with H_kv alone: GQA-8 keeps {32 // 8}× less than MHA-32 (the 4× cut), MQA 32× less; the linear "
            f"layer keeps a constant state instead (no per-token cost). The formula equals the `nbytes` of the real "
            f"caches for every variant ({exact}). "
            f"At the reference shape the largest batch in the budget grows by the same factors ("
            + " → ".join(f"{row.attention} {int(row.max_batch):,}" for row in reference.itertuples()) + ").")
    if base in longest.index:
        speedups = ", ".join(f"{v} {ratio(longest.loc[base].decode_ms_per_token, longest.loc[v].decode_ms_per_token)}"
                             for v in longest.index if v != base)
        prefill = ", ".join(f"{v} {ratio(longest.loc[base].prefill_ms, longest.loc[v].prefill_ms)}"
                            for v in longest.index if v != base)
        reads = ", ".join(f"{v} {ratio(longest.loc[base].cache_bytes_read, longest.loc[v].cache_bytes_read)}"
                          for v in longest.index if v != base)
        n = int(timing.context.max())
        lm = timing_config(plan, config, "softmax", config.num_heads, n)
        flops = 4 * lm.num_layers * lm.num_heads * n * lm.resolved_head_dim  # q·Kᵀ and P·V, multiply + add
        fastest = min((v for v in longest.index if v not in (base, "linear")),
                      key=lambda v: longest.loc[v].decode_ms_per_token)
        lines.append(
            f"- **Speed (measured, this CPU; {timing_shape(plan, config)}):** at {n:,} tokens a {base} decode step "
            f"reads {format_bytes(longest.loc[base].cache_bytes_read)} of cache and takes "
            f"{lab.fmt(longest.loc[base].decode_ms_per_token)} ms per token "
            f"({lab.fmt(longest.loc[base].cache_bytes_read / longest.loc[base].decode_ms_per_token / 1e6, 2)} GB/s "
            f"streamed: memory-bound). Relative to it, per-token decode is {speedups} faster, for {reads} fewer "
            "cache bytes per step. Time follows bytes only until the step stops being memory-bound: the attention's "
            f"arithmetic, 4·H_q·n·d = {flops / 1e6:.3g} MFLOP per step, is the same for every H_kv (all "
            f"{lm.num_heads} query heads still score every position), and {fastest}'s step runs it at "
            f"{lab.fmt(flops / longest.loc[fastest].decode_ms_per_token / 1e6, 2)} GFLOP/s, so cutting the cache "
            "further buys little on this CPU; a GPU moves that bound far out (hundreds of times the FLOP rate for "
            f"tens of times the bandwidth). {growth(timing)} Prefill computes all 32 query heads whatever H_kv, so "
            f"H_kv barely moves it ({prefill}); linear attention's chunked prefill is linear in the context. The "
            "attention-only benchmark at a realistic shape (`benchmarks/attention.py --clock cpu`, 32 query heads × "
            "128, fp32, 32k context) measured MHA-32 58.6, GQA-8 40.9, MQA 12.2 and linear 0.14 ms per token on this "
            "CPU (there XLA:CPU's small-matrix kernel, not memory, bounds GQA-8: docs/attention.md).")
    deltas = []
    spread = float(np.ptp(scratch.groupby("variant").language_excess.mean()))
    for v in dict.fromkeys(scratch.variant):
        if v == base:
            continue
        d = paired_delta(scratch, v, "mqar_accuracy", base)
        deltas.append(f"{v} {lab.fmt_ci(*d, digits=2)}")
    lines.append(
        f"- **Quality after equal steps ({int(scratch.env_steps.max()):,} training sequences):** MQAR accuracy minus "
        f"{base}'s on the same seeds and evaluation batches: {'; '.join(deltas)}. A CI that contains 0 means no "
        f"measurable cost at this budget. The language's excess loss over the Bayes loss spans only "
        f"{lab.fmt(spread, 2)} nats across variants (mean {lab.fmt(scratch.language_excess.mean(), 3)} nats): at "
        "this budget no variant has learned the order-2 structure yet, so the language separates nothing here; "
        "recall (MQAR), which needs to look up one key among many, is what fewer KV heads cost first.")
    if len(conversions):
        fractions = " → ".join(f"{u:.0%}" for u in sorted(conversions.uptrain.unique()))
        parts = []
        for target in dict.fromkeys(conversions.target):
            conv = conversions[conversions.target == target]
            cells = []
            for method in METHOD_LABELS:
                group = conv[conv.method == method]
                if len(group):
                    means = group.groupby("uptrain").mqar_accuracy.mean()
                    cells.append(f"{METHOD_LABELS[method]} " + " → ".join(lab.fmt(m, 2) for m in means))
            scratch_acc = scratch[scratch.variant == target].mqar_accuracy.mean()
            parts.append(f"{target}: {'; '.join(cells)} (scratch {lab.fmt(scratch_acc, 2)})")
        lines.append(
            f"- **Conversion (MQAR accuracy at {fractions} uptraining, mean over seeds):** " + ". ".join(parts) +
            f". {base} itself scored {lab.fmt(scratch[scratch.variant == base].mqar_accuracy.mean(), 2)}.")
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    from experiments import kv_cache_4x as this

    config = model_config(plan)
    folders = lab.train_jobs(plan)
    curves = lab.load_jobs(folders, table="results")
    scratch = scratch_quality(curves)
    conversions = conversion_curves(curves)
    memory = lab.measured(plan, "memory", {"memory": plan.memory, "timing": plan.timing, "config": repr(config)},
                          lambda: measure_memory(plan, config), code=[this.measure_memory])
    timing = lab.measured(plan, "timing", {"timing": plan.timing, "config": repr(config)},
                          lambda: measure_timing(plan, config), code=[this.measure_timing])
    tiny, reference = memory["tiny"], memory["reference"]

    report = lab.Report(plan, "Cutting the KV cache 4×: GQA-8 vs MQA vs linear attention on a 32-query-head model")
    steps = config.num_updates * config.steps_per_update
    report.add(
        "**Question.** A model has 32 query heads and its KV cache is too big. GQA with 8 KV heads, MQA (1 KV head) or "
        "a linear-attention layer — what would you measure to choose, and what do the measurements say?",
        "**Command** (trains what is missing, then writes this report from the results):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        "The H_kv axis alone, through `purerl-train` / `purerl-analyze` (one job per H_kv, seeds vmapped):\n\n"
        "```bash\npurerl-train -m experiment=kv_cache_4x algo.config.num_kv_heads=32,16,8,4,2,1\n"
        "purerl-analyze multirun/kv_cache_4x --by num_kv_heads --metric final_return   # final MQAR accuracy\n```\n\n"
        f"Scale `{plan.scale}`: TinyLM with d_model {config.d_model}, {config.num_layers} layers, {config.num_heads} "
        f"query heads of dim {config.head_dim}, trained {steps} steps of {config.batch_size} MQAR + "
        f"{config.batch_size} language sequences of {config.seq_len} tokens (`algo=lm_pretrain`), {plan.seeds} seeds "
        f"per job; MQAR with {config.mqar_pairs} pairs over {config.mqar_vocab} tokens; the language: an order-2 "
        f"Markov chain over {config.language_vocab} tokens (Dirichlet({config.language_alpha}) rows), whose true "
        f"next-token loss on each evaluation batch is known, so quality is reported as the excess over it. Held-out "
        f"metrics on {config.eval_batch} fresh sequences per task. Presets: `conf/experiment/{NAME}.yaml` and "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(tiny, reference, timing, scratch, conversions, config, plan),
    )
    report.headline("Decision table", lab.markdown_table(
        decision_table(tiny, reference, timing, scratch, conversions, plan, config)))
    report.add(
        "Memory saving and max batch: the reference shape below (cache only). Speed: CPU wall time, best of "
        f"{plan.timing.rounds} rounds on a shared machine — ratios, not absolute GPU figures. Quality cost: final "
        "held-out MQAR accuracy and language excess loss minus MHA's on the same seeds (paired). Conversion cost: "
        "mean-pooled checkpoint's MQAR accuracy before and after uptraining.",
        "## Memory: exact cache bytes",
        f"### The trained model ({config.num_layers} layers, head_dim {config.head_dim}, {plan.memory.dtype}, "
        f"{config.seq_len} tokens)",
        memory_table_md(tiny, plan, config),
        f"### The same family at a realistic size ({plan.memory.reference.layers} layers, head_dim "
        f"{plan.memory.reference.head_dim}, {plan.memory.reference.dtype}; `purerl-memory --layers "
        f"{plan.memory.reference.layers} --heads {config.num_heads} --head-dim {plan.memory.reference.head_dim} "
        f"--seq-len {plan.memory.reference.seq_len} --dtype {plan.memory.reference.dtype} --budget "
        f"{plan.memory.reference.budget} --kv-heads {' '.join(str(h) for h in plan.memory.kv_heads)}`)",
        reference_table_md(reference, plan),
    )
    report.figure(plot_memory(tiny, reference, plan), "memory.png",
                  "Cache per sequence and the largest batch that fits the budget, per variant (reference shape)")
    report.add(
        "## Speed: decode and prefill",
        f"Untrained models of the family: the same {config.num_heads} query heads, widened for timing "
        f"({timing_shape(plan, config)}) so that a decode step's cache read, not the model's fixed per-step cost, "
        f"is what H_kv changes; max_len = context n; batch {plan.timing.batch}. Decode: one `generate` call "
        f"(prefill + a `lax.scan` of decode steps, one program) from a 1-token prompt sampling "
        f"{plan.timing.decode_steps} tokens into a cache of n slots (`cache_len=n`, as a server allocates it); a "
        "decode step attends over the whole cache buffer, masked by length, so "
        "each step costs what a step at context n costs, and the per-token time is the call time / steps. Prefill: "
        "one `generate` call with an (n − 1)-token prompt and one sampled token. Wall time, best of "
        f"{plan.timing.rounds} rounds, variants in turn, on the shared 2-core CPU (load average "
        f"{lab.fmt(timing.load.min(), 2)}–{lab.fmt(timing.load.max(), 2)} while timing). The last column is the "
        "cache (K and V, or the linear state) one decode step reads, divided by the step's time: what the step "
        "streams, an upper bound on memory traffic's share.",
        "### Per-token decode and prefill time (ms, CPU, best of rounds)",
        timing_table_md(timing),
    )
    report.figure(plot_timing(timing), "timing.png", "Decode per token and prefill time against context length")
    report.add("## Quality after equal training steps", "### Final held-out quality per variant",
               quality_table_md(scratch))
    report.figure(plot_quality(scratch, curves), "quality.png",
                  "Final MQAR accuracy and language excess loss per variant, and MQAR learning curves")
    if len(conversions):
        pretrain = conversions.drop_duplicates(["job", "seed"])
        kv32 = scratch[scratch.variant == scratch.variant.iloc[0]].set_index("seed")
        gap = max(abs(row.pretrained_mqar_accuracy - kv32.loc[row.seed].mqar_accuracy)
                  for row in pretrain.itertuples() if row.seed in kv32.index) if len(kv32) else np.nan
        report.add(
            "## Conversion: MHA-32 → GQA-8 / MQA",
            "Each conversion job first trains MHA-32 exactly as the H_kv = 32 job (same seed, same data; its "
            f"pretrained MQAR accuracy differs from that job's final one by at most {lab.fmt(gap, 2)}), then pools "
            "each group of K/V heads (`convert_kv_heads`: the mean, the group's first head, or fresh random K/V "
            "weights) and uptrains with a fresh AdamW (warm-up + cosine, peak lr "
            f"{lab.fmt(float(curves.uptrain_lr.iloc[0]))}). 0% is the converted model before any step.",
            "### MQAR accuracy and language excess after conversion",
            conversion_table_md(conversions, scratch),
        )
        report.figure(plot_conversion(conversions, scratch), "conversion.png",
                      "MQAR accuracy of converted checkpoints against uptraining, with MHA and from-scratch references")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
