"""Cutting the KV cache 4×: GQA vs MQA vs linear attention, on a model that learns recall.
`python -m experiments.kv_cache_4x [scale=ci|full|paper] [rebuild=true]`

One model family (TinyLM with a token shift, H query heads) with H_kv ∈ {H, H/2, H/4, 1} (one
`purerl-train` job per H_kv and MQAR pair count: it changes shapes; seeds vmapped in each job) and
a linear-attention variant, all trained the same steps on MQAR + a synthetic order-2 Markov
language (`algo=lm_pretrain`). Conversion jobs pretrain MHA exactly as the H_kv = H job, pool its
K/V heads to H/4 or 1 (`convert_kv_heads`: mean, first head, random init) and uptrain for growing
fractions of the pretraining steps. Measurements that are not training: exact cache bytes (formula
and the `nbytes` of real caches), the largest batch in a memory budget after the weights, and
prefill and per-token decode time with `generate` (one program: prefill + a `lax.scan` of decode
steps). Every table and plot is made from the kept results (`kept_results`); `rebuild=true` remakes
the report from them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter
from omegaconf import DictConfig

from experiments import lab
from purerl.attention.memory import format_bytes

NAME = "kv_cache_4x"
SOLVED = 0.9  # a run whose final MQAR accuracy reaches this has learned the lookup (the rest plateau near 0.2)
METHOD_LABELS = {"mean": "mean-pool", "first": "first head", "random": "random K/V"}


def variant(attention: str, kv_heads: int, heads: int) -> str:
    if attention == "linear":
        return "linear"
    return f"MHA-{heads}" if kv_heads == heads else "MQA" if kv_heads == 1 else f"GQA-{kv_heads}"


def cut_label(name: str, heads: int) -> str:
    """'GQA-2 (4× cut)': a variant with the factor its KV cache is cut by."""
    if name == "linear" or name.startswith("MHA"):
        return name
    kv = 1 if name == "MQA" else int(name.split("-")[1])
    return f"{name} ({heads // kv}× cut)"


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
    """Cache bytes per sequence of the trained model (the formula and the real caches' nbytes), and
    the reference shape's table (`memory_table`) with the budget whole and after the weights."""
    import jax

    from purerl.attention import TinyLM, kv_cache_bytes, linear_state_bytes
    from purerl.attention.linear import feature_dim
    from purerl.attention.memory import dtype_bytes, memory_table, parse_bytes

    budget = parse_bytes(plan.memory.budget)
    rows = []
    for attention, h_kv in variants(plan.memory):
        lm = dataclasses.replace(config.lm_config(h_kv or config.num_heads), attention=attention)
        caches = TinyLM(lm).init_cache(batch=1)
        if attention == "softmax":
            measured = sum(c.keys.nbytes + c.values.nbytes for c in caches)
            formula = kv_cache_bytes(lm.num_layers, h_kv, lm.resolved_head_dim, lm.max_len, 1, plan.memory.dtype)
            per_token = kv_cache_bytes(lm.num_layers, h_kv, lm.resolved_head_dim, 1, 1, plan.memory.dtype)
        else:  # the state is held in float32 (init_linear_state), whatever the model's dtype
            measured = sum(c.kv.nbytes + c.normalizer.nbytes for c in caches)
            width = feature_dim(lm.feature_map, lm.resolved_head_dim)
            formula = linear_state_bytes(lm.num_layers, lm.num_kv_heads, width, lm.resolved_head_dim, 1, "float32")
            per_token = 0
        jax.clear_caches()
        rows.append(dict(variant=variant(attention, h_kv, config.num_heads), kv_heads=h_kv or config.num_heads,
                         per_token=per_token, per_sequence=formula, measured_nbytes=measured,
                         max_batch=budget // formula))
    ref = plan.memory.reference
    weights = int(ref.weight_params) * dtype_bytes(ref.dtype)
    whole, after = (pd.DataFrame(memory_table(ref.layers, ref.heads, ref.head_dim, ref.seq_len, ref.dtype,
                                              [int(h) for h in ref.kv_heads], parse_bytes(ref.budget),
                                              weight_bytes=w))
                    for w in (0, weights))
    reference = whole.assign(max_batch_after_weights=after.max_batch, weight_bytes=weights,
                             cache_budget_after_weights=after.cache_budget)
    return {"memory": pd.DataFrame(rows), "reference": reference}


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


# ---------------------------------------------------------------- results of the jobs
def final_rows(curves: pd.DataFrame) -> pd.DataFrame:
    return curves[curves["update"] == curves.groupby("job")["update"].transform("max")]


def _order(attention: str, kv_heads: int) -> tuple[bool, int]:
    """MHA first, then fewer KV heads, linear last: the first row is every comparison's baseline."""
    return attention == "linear", -kv_heads


def scratch_results(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per scratch run (job × seed): the final held-out metrics."""
    scratch = final_rows(curves[curves.init_kv_heads == 0]).copy()
    scratch["variant"] = [variant(a, h, n) for a, h, n in zip(scratch.attention, scratch.num_kv_heads,
                                                               scratch.num_heads)]
    scratch["order"] = [_order(a, h) for a, h in zip(scratch.attention, scratch.num_kv_heads)]
    scratch = scratch.sort_values(["mqar_pairs", "order", "seed"])
    return scratch[["job", "mqar_pairs", "variant", "attention", "num_kv_heads", "num_heads", "seed", "env_steps",
                    "mqar_accuracy", "mqar_loss", "language_excess", "language_loss"]].reset_index(drop=True)


def curve_results(curves: pd.DataFrame) -> pd.DataFrame:
    """Scratch learning curves, one row per job × seed × update (held-out MQAR accuracy)."""
    part = curves[curves.init_kv_heads == 0].copy()
    part["variant"] = [variant(a, h, n) for a, h, n in zip(part.attention, part.num_kv_heads, part.num_heads)]
    return part[["job", "mqar_pairs", "variant", "seed", "env_steps", "mqar_accuracy"]].reset_index(drop=True)


def conversion_results(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per conversion run × method × uptrain update: target, method, uptrain fraction, metrics."""
    part = curves[curves.init_kv_heads > 0]
    frames = []
    for method in METHOD_LABELS:
        if f"mqar_accuracy_{method}" not in part:
            continue
        frame = part[["job", "seed", "update", "mqar_pairs", "num_kv_heads", "num_heads", "pretrain_updates",
                      "uptrain_lr"]].copy()
        frame["method"] = method
        frame["uptrain"] = frame["update"] / frame["pretrain_updates"]
        for name in ("mqar_accuracy", "language_excess"):
            frame[name] = part[f"{name}_{method}"].to_numpy()
            frame[f"pretrained_{name}"] = part[f"pretrained_{name}"].to_numpy()
        frame["target"] = [variant("softmax", h, n) for h, n in zip(frame.num_kv_heads, frame.num_heads)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compute(plan: DictConfig) -> dict[str, pd.DataFrame]:
    """Train what is missing, measure memory and time; the tables the report is made of."""
    from experiments import kv_cache_4x as this

    config = model_config(plan)
    curves = lab.load_jobs(lab.train_jobs(plan), table="results")
    memory = lab.measured(plan, "memory", {"memory": plan.memory, "config": repr(config)},
                          lambda: measure_memory(plan, config), code=[this.measure_memory])
    timing = lab.measured(plan, "timing", {"timing": plan.timing, "config": repr(config)},
                          lambda: measure_timing(plan, config), code=[this.measure_timing])
    return {"scratch": scratch_results(curves), "curves": curve_results(curves),
            "conversions": conversion_results(curves), **memory, "timing": timing, "runs": run_times(plan)}


def run_times(plan: DictConfig) -> pd.DataFrame:
    """Wall seconds and finish time of every complete training job and measurement in out_dir, as
    recorded when it ran (a resumed run keeps the times of the parts it skipped)."""
    import json
    from pathlib import Path

    rows = []
    for status in sorted(Path(plan.out_dir).glob("*/*.json")):
        record = json.loads(status.read_text())
        if record.get("status") != "complete":
            continue
        if status.name == "job.json":
            rows.append((status.parent.name, "training job (incl. compile)", record.get("wall_seconds"),
                         record.get("finished")))
        elif status.name == lab.MEASUREMENT_STATUS:
            rows.append((status.parent.name, "measurement", record.get("seconds"), record.get("finished")))
    return pd.DataFrame(rows, columns=["part", "kind", "seconds", "finished"])


def measuring_code() -> list:
    import purerl.attention.convert
    import purerl.attention.lm
    import purerl.attention.memory
    import purerl.attention.pretrain
    from experiments import kv_cache_4x as this

    return [purerl.attention.pretrain, purerl.attention.lm, purerl.attention.convert, purerl.attention.memory,
            this.measure_memory, this.measure_timing]


# ---------------------------------------------------------------- statistics
def ci_cell(values: np.ndarray, digits: int = 3) -> str:
    return lab.fmt_ci(*lab.bootstrap_ci(np.asarray(values, np.float64)), digits=digits)


def paired_delta(scratch: pd.DataFrame, pairs: int, name: str, metric: str, base: str) -> tuple[float, float, float]:
    """Mean over seeds of (variant − base) at `pairs` pairs, on the same seeds (same training data and
    evaluation batches), 95% bootstrap CI."""
    part = scratch[scratch.mqar_pairs == pairs]
    a = part[part.variant == name].set_index("seed")[metric]
    b = part[part.variant == base].set_index("seed")[metric]
    # Rounded: equal float32 accuracies differ by rounding noise, which would print as 1e-9.
    return lab.bootstrap_ci((a - b).dropna().round(6).to_numpy())


def method_delta(conversions: pd.DataFrame, target: str, uptrain: float, a: str, b: str) -> tuple[float, float, float]:
    """Mean over seeds of (method a − method b) MQAR accuracy: same pretrained model, same uptraining data."""
    part = conversions[(conversions.target == target) & np.isclose(conversions.uptrain, uptrain)]
    x = part[part.method == a].set_index("seed").mqar_accuracy
    y = part[part.method == b].set_index("seed").mqar_accuracy
    return lab.bootstrap_ci((x - y).dropna().round(6).to_numpy())


def verdict(estimate: float, low: float, high: float, more: str, less: str) -> str:
    """A claim only where the CI excludes 0."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not resolved"
    return more if low > 0 else less if high < 0 else "not resolved"


def bytes_per_sequence(memory: pd.DataFrame) -> dict[str, int]:
    return dict(zip(memory.variant, memory.per_sequence))


# ---------------------------------------------------------------- tables
def memory_table_md(memory: pd.DataFrame, plan: DictConfig, config) -> str:
    table = pd.DataFrame({
        "variant": [cut_label(v, config.num_heads) for v in memory.variant],
        "H_kv": [str(h) for h in memory.kv_heads],
        "cache / token": [format_bytes(b) if b else "0 (constant)" for b in memory.per_token],
        f"cache / sequence ({config.seq_len} tokens)": [format_bytes(b) for b in memory.per_sequence],
        "real caches' nbytes": [format_bytes(b) for b in memory.measured_nbytes],
        "exact": ["yes" if a == b else "NO" for a, b in zip(memory.per_sequence, memory.measured_nbytes)],
        f"max batch in {plan.memory.budget}": [f"{b:,}" for b in memory.max_batch],
        "saving vs MHA": [f"{memory.per_sequence.iloc[0] / b:.3g}×" for b in memory.per_sequence],
    })
    return lab.markdown_table(table)


def reference_table_md(reference: pd.DataFrame, plan: DictConfig) -> str:
    ref = plan.memory.reference
    mha = reference.per_sequence.iloc[0]
    left = format_bytes(int(reference.cache_budget_after_weights.iloc[0]))
    table = pd.DataFrame({
        "variant": reference.attention, "H_kv": [str(h) for h in reference.kv_heads],
        "cache / token": [format_bytes(b) if b else "0 (constant)" for b in reference.per_token],
        f"cache / sequence ({ref.seq_len:,} tokens)": [format_bytes(b) for b in reference.per_sequence],
        f"max batch in {ref.budget} (cache only)": [f"{b:,}" for b in reference.max_batch],
        f"max batch after the weights ({left} left)": [f"{b:,}" for b in reference.max_batch_after_weights],
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


def quality_table_md(scratch: pd.DataFrame, memory: pd.DataFrame, heads: int) -> str:
    sizes = bytes_per_sequence(memory)
    rows = []
    for (pairs, name), group in scratch.groupby(["mqar_pairs", "variant"], sort=False):
        base = scratch[scratch.mqar_pairs == pairs].variant.iloc[0]
        first = name == base
        rows.append({
            "pairs": str(pairs), "variant": cut_label(name, heads),
            "cache / sequence": format_bytes(sizes[name]) if name in sizes else "—",
            "MQAR accuracy [95% CI]": ci_cell(group.mqar_accuracy),
            "Δ accuracy vs MHA (paired)": "—" if first else lab.fmt_ci(
                *paired_delta(scratch, pairs, name, "mqar_accuracy", base), digits=2),
            "language loss − Bayes (nats) [95% CI]": ci_cell(group.language_excess),
            "Δ excess vs MHA (paired)": "—" if first else lab.fmt_ci(
                *paired_delta(scratch, pairs, name, "language_excess", base), digits=2),
            f"seeds solved (≥ {SOLVED})": f"{int((group.mqar_accuracy >= SOLVED).sum())} / {group.seed.nunique()}",
        })
    return lab.markdown_table(pd.DataFrame(rows))


def conversion_table_md(conversions: pd.DataFrame, scratch: pd.DataFrame, pairs: int) -> str:
    rows = []
    for (target, method, uptrain), group in conversions.groupby(["target", "method", "uptrain"], sort=False):
        rows.append({
            "target": target, "init": METHOD_LABELS[method], "uptrain (of pretraining steps)": f"{uptrain:.0%}",
            "MQAR accuracy [95% CI]": ci_cell(group.mqar_accuracy),
            "language loss − Bayes [95% CI]": ci_cell(group.language_excess),
        })
    part = scratch[scratch.mqar_pairs == pairs]
    mha = part[part.variant == part.variant.iloc[0]]
    rows.append({"target": mha.variant.iloc[0], "init": "(the pretrained model)", "uptrain (of pretraining steps)": "—",
                 "MQAR accuracy [95% CI]": ci_cell(mha.mqar_accuracy),
                 "language loss − Bayes [95% CI]": ci_cell(mha.language_excess)})
    for target in dict.fromkeys(conversions.target):
        own = part[part.variant == target]
        if len(own):
            rows.append({"target": target, "init": "from scratch (100% steps)", "uptrain (of pretraining steps)": "—",
                         "MQAR accuracy [95% CI]": ci_cell(own.mqar_accuracy),
                         "language loss − Bayes [95% CI]": ci_cell(own.language_excess)})
    return lab.markdown_table(pd.DataFrame(rows))


def method_table_md(conversions: pd.DataFrame) -> str:
    rows = []
    for target in dict.fromkeys(conversions.target):
        for uptrain in sorted(conversions[conversions.target == target].uptrain.unique()):
            row = {"target": target, "uptrain": f"{uptrain:.0%}"}
            for a, b in (("mean", "first"), ("mean", "random"), ("first", "random")):
                row[f"{METHOD_LABELS[a]} − {METHOD_LABELS[b]}"] = lab.fmt_ci(
                    *method_delta(conversions, target, uptrain, a, b), digits=2)
            rows.append(row)
    return lab.markdown_table(pd.DataFrame(rows))


def options(memory: pd.DataFrame, heads: int) -> list[str]:
    """The decision's options: MHA, the 4× cut (H_kv = H/4), MQA, linear (those measured)."""
    wanted = [variant("softmax", heads, heads), variant("softmax", max(heads // 4, 1), heads), "MQA", "linear"]
    return [name for name in dict.fromkeys(wanted) if name in set(memory.variant)]


def reference_row(reference: pd.DataFrame, name: str, heads: int, ref_heads: int) -> pd.Series:
    """The reference-shape row with the same cut as the trained variant `name`."""
    if name == "linear":
        return reference[reference.attention.str.startswith("linear")].iloc[0]
    if name == "MQA":  # one KV head at any width
        return reference[reference.kv_heads == 1].iloc[0]
    kv = heads if name.startswith("MHA") else int(name.split("-")[1])
    return reference[reference.kv_heads == ref_heads * kv // heads].iloc[0]


def decision_table(memory, reference, timing, scratch, conversions, plan, config) -> pd.DataFrame:
    heads, ref = config.num_heads, plan.memory.reference
    base = variant("softmax", heads, heads)
    pairs = int(plan.headline_pairs)
    longest = timing[timing.context == timing.context.max()].set_index("variant")
    rows = []
    for name in options(memory, heads):
        ref_row = reference_row(reference, name, heads, int(ref.heads))
        saving = reference.per_sequence.iloc[0] / ref_row.per_sequence
        speed = (f"{ratio(longest.loc[base].decode_ms_per_token, longest.loc[name].decode_ms_per_token)} decode, "
                 f"{ratio(longest.loc[base].prefill_ms, longest.loc[name].prefill_ms)} prefill"
                 if name in longest.index and base in longest.index else "not timed")
        part = scratch[scratch.mqar_pairs == pairs]
        if name == base:
            quality = "baseline: MQAR " + ci_cell(part[part.variant == base].mqar_accuracy, 2)
        elif name in set(part.variant):
            d_acc = paired_delta(scratch, pairs, name, "mqar_accuracy", base)
            d_exc = paired_delta(scratch, pairs, name, "language_excess", base)
            quality = f"MQAR {lab.fmt_ci(*d_acc, digits=2)}; LM excess {lab.fmt_ci(*d_exc, digits=2)}"
        else:
            quality = "not trained"
        conv = conversions[(conversions.target == name) & (conversions.method == "mean")] if len(conversions) else []
        if name == base:
            conversion = "—"
        elif name == "linear":
            conversion = "no K/V pooling path: train (or distil) from scratch, 100% of the steps here"
        elif len(conv):
            last, zero = conv[conv.uptrain == conv.uptrain.max()], conv[conv.uptrain == 0]
            conversion = (f"mean-pool: MQAR {ci_cell(zero.mqar_accuracy, 2)} at 0%, "
                          f"{ci_cell(last.mqar_accuracy, 2)} after {last.uptrain.iloc[0]:.0%} uptraining")
        else:
            conversion = "not run"
        rows.append({
            "option": cut_label(name, heads),
            f"at {ref.heads} query heads": ref_row.attention,
            f"cache / sequence ({ref.layers} layers × {ref.head_dim}, {ref.dtype}, {ref.seq_len:,} tok)": (
                f"{format_bytes(ref_row.per_sequence)} ({saving:.3g}× less)" if name != base
                else format_bytes(ref_row.per_sequence)),
            f"max batch after the weights ({ref.budget})": f"{int(ref_row.max_batch_after_weights):,}",
            f"speed vs {base} @ {int(timing.context.max()):,} tok (CPU)": speed if name != base else
            f"{lab.fmt(longest.loc[base].decode_ms_per_token)} ms/token, "
            f"{lab.fmt(longest.loc[base].prefill_ms)} ms prefill",
            f"quality vs MHA at {pairs} pairs (Δ, paired 95% CI)": quality,
            "conversion from an MHA checkpoint": conversion,
        })
    return pd.DataFrame(rows)


def growth(timing: pd.DataFrame) -> str:
    """How each variant's per-token decode time grew from the shortest to the longest context."""
    short, long = timing.context.min(), timing.context.max()
    by = timing.set_index(["variant", "context"]).decode_ms_per_token
    parts = ", ".join(f"{v} {by[v, long] / by[v, short]:.2g}×" for v in dict.fromkeys(timing.variant))
    return (f"From {short:,} to {long:,} tokens ({long / short:.2g}× the context) the per-token decode time grew: "
            f"{parts}; linear attention reads a constant state and does no per-position work.")


def ratio(base: float, other: float) -> str:
    """How many times faster `other` is than `base` (times), or n/a when a time rounds to 0."""
    return f"{base / other:.2g}×" if base > 0 and other > 0 else "n/a"


# ---------------------------------------------------------------- plots
def plot_memory(reference: pd.DataFrame, plan: DictConfig):
    ref = plan.memory.reference
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    labels = list(reference.attention)
    colours = ["C0"] * (len(reference) - 1) + ["C3"]
    axes[0].bar(labels, reference.per_sequence / 2**20, color=colours)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cache per sequence (MiB, log)")
    axes[0].set_title(f"{ref.layers} layers, {ref.heads} q-heads × {ref.head_dim}, {ref.seq_len:,} tokens, "
                      f"{ref.dtype} (linear state fp32)", fontsize="medium")
    x = np.arange(len(labels))
    axes[1].bar(x - 0.2, reference.max_batch, 0.4, color="lightgrey", label="cache only")
    axes[1].bar(x + 0.2, reference.max_batch_after_weights, 0.4, color=colours, label="after the weights")
    axes[1].set_xticks(x, labels)
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"largest batch in {ref.budget} (log)")
    axes[1].set_title(f"sequences whose cache fits ({format_bytes(int(reference.weight_bytes.iloc[0]))} of weights)",
                      fontsize="medium")
    axes[1].legend(fontsize="small", loc="upper left")
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


def plot_recall_vs_bytes(scratch: pd.DataFrame, memory: pd.DataFrame, config):
    """The Zoology view: accuracy against the cache (or state) bytes each sequence keeps."""
    sizes = bytes_per_sequence(memory)
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for i, (pairs, part) in enumerate(scratch.groupby("mqar_pairs")):
        points = []
        for name, group in part.groupby("variant", sort=False):
            if name in sizes:
                points.append((name, sizes[name] / 1024, *lab.bootstrap_ci(group.mqar_accuracy.to_numpy())))
        soft = [p for p in points if p[0] != "linear"]
        soft.sort(key=lambda p: p[1])
        ax.errorbar([p[1] for p in soft], [p[2] for p in soft], yerr=[[p[2] - p[3] for p in soft],
                                                                      [p[4] - p[2] for p in soft]],
                    marker="o", capsize=3, color=f"C{i}", label=f"softmax, {pairs} pairs")
        for name, x, y, _, _ in soft:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -11), fontsize="x-small",
                        color=f"C{i}")
        for _, x, y, low, high in (p for p in points if p[0] == "linear"):
            ax.errorbar([x], [y], yerr=[[y - low], [high - y]], marker="s", capsize=3, color=f"C{i}",
                        linestyle="none", mfc="white", label=f"linear, {pairs} pairs")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.margins(x=0.12)
    ax.set_xlabel(f"cache (softmax) or state (linear) per sequence, KiB (fp32, {config.seq_len} tokens; log)")
    ax.set_ylabel("MQAR accuracy (held out; mean, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return fig


def plot_curves(curves: pd.DataFrame, heads: int):
    pair_counts = sorted(curves.mqar_pairs.unique())
    fig, axes = plt.subplots(1, len(pair_counts), figsize=(5 * len(pair_counts), 3.6), layout="constrained",
                             squeeze=False, sharey=True)
    # One colour per variant in every panel, whichever variants a panel has.
    colour = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(curves.variant))}
    for ax, pairs in zip(axes[0], pair_counts):
        part = curves[curves.mqar_pairs == pairs]
        for name in dict.fromkeys(part.variant):
            matrix = part[part.variant == name].pivot(index="seed", columns="env_steps", values="mqar_accuracy")
            mean, low, high = lab.curve_ci(matrix.to_numpy())
            style = "--" if name == "linear" else "-"
            ax.plot(matrix.columns, mean, style, color=colour[name], label=cut_label(name, heads))
            ax.fill_between(matrix.columns, low, high, color=colour[name], alpha=0.15, linewidth=0)
        ax.set_title(f"{pairs} pairs", fontsize="medium")
        ax.set_xlabel("training sequences (each task)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (held out; mean, 95% CI)")
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    labels = [cut_label(name, heads) for name in colour if cut_label(name, heads) in handles]
    fig.legend([handles[label] for label in labels], labels, fontsize="small", loc="outside right upper")
    return fig


def plot_conversion(conversions: pd.DataFrame, scratch: pd.DataFrame, pairs: int):
    targets = list(dict.fromkeys(conversions.target))
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8), layout="constrained", squeeze=False,
                             sharey=True)
    part = scratch[scratch.mqar_pairs == pairs]
    base = part.variant.iloc[0]
    for ax, target in zip(axes[0], targets):
        conv = conversions[conversions.target == target]
        for i, method in enumerate(METHOD_LABELS):
            group = conv[conv.method == method]
            if not len(group):
                continue
            stats = group.groupby("uptrain").mqar_accuracy.apply(lambda x: lab.bootstrap_ci(x.to_numpy()))
            xs = 100 * stats.index.to_numpy()
            means = np.array([s[0] for s in stats])
            ax.errorbar(xs + (i - 1) * 0.3, means, yerr=[means - [s[1] for s in stats], [s[2] for s in stats] - means],
                        marker="o", capsize=3, color=f"C{i}", label=f"converted: {METHOD_LABELS[method]}")
        references = [(part[part.variant == base].mqar_accuracy.mean(), ":", f"{base} (pretrained)"),
                      (part[part.variant == target].mqar_accuracy.mean(), "--", f"{target} from scratch (100%)")]
        for value, style, label in references:
            if np.isfinite(value):
                ax.axhline(value, linestyle=style, color="black", label=label)
        ax.set_xlabel("uptraining (% of pretraining steps)")
        ax.set_title(f"{base} → {target}, {pairs} pairs", fontsize="medium")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (held out; mean, 95% CI)")
    axes[0][-1].legend(fontsize="x-small", loc="lower right")
    return fig


# ---------------------------------------------------------------- report
def recall_bullet(scratch: pd.DataFrame, heads: int) -> str:
    base = variant("softmax", heads, heads)
    cells, comparisons = [], 0
    for pairs, part in scratch.groupby("mqar_pairs"):
        mha = lab.bootstrap_ci(part[part.variant == base].mqar_accuracy.to_numpy())
        deltas = []
        for name in dict.fromkeys(part.variant):
            if name == base:
                continue
            d = paired_delta(scratch, pairs, name, "mqar_accuracy", base)
            comparisons += 1
            deltas.append(f"{cut_label(name, heads)} {lab.fmt_ci(*d, digits=2)} "
                          f"({verdict(*d, 'better', 'worse')})")
        runs = part[part.variant == base].mqar_accuracy
        cells.append(f"at {pairs} pairs {base} scores {lab.fmt_ci(*mha, digits=3)} "
                     f"({'meets' if mha[0] >= 0.95 else 'misses'} the 0.95 bar; {int((runs >= SOLVED).sum())} of "
                     f"{len(runs)} seeds solve it)"
                     + (f"; minus {base} on the same seeds: " + "; ".join(deltas) if deltas else ""))
    return (f"- **Recall after equal steps ({int(scratch.env_steps.max()):,} training sequences of each task):** "
            + ". ".join(cells) + f". ({comparisons} paired comparisons, each a 95% bootstrap CI over seeds; "
            "\"not resolved\" where the CI contains 0.)")


def language_bullet(scratch: pd.DataFrame, heads: int) -> str:
    base = variant("softmax", heads, heads)
    resolved = []
    for pairs, part in scratch.groupby("mqar_pairs"):
        for name in dict.fromkeys(part.variant):
            if name != base:
                d = paired_delta(scratch, pairs, name, "language_excess", base)
                if verdict(*d, "x", "x") != "not resolved":
                    resolved.append(f"{name} at {pairs} pairs {lab.fmt_ci(*d, digits=2)}")
    return (f"- **Language (order-2 Markov; loss minus the Bayes loss):** mean excess "
            f"{lab.fmt(scratch.language_excess.mean(), 2)} nats over all runs; differences from {base} whose CI "
            "excludes 0: " + ("; ".join(resolved) if resolved else "none") + ". An order-2 chain needs only the "
            "last two tokens, which the token shift and one attention step give every variant; it measures "
            "whether the variants still model local structure, not recall.")


def conversion_bullet(conversions: pd.DataFrame) -> str:
    parts, reversals = [], []
    for target in dict.fromkeys(conversions.target):
        conv = conversions[conversions.target == target]
        top = conv.uptrain.max()
        cells = []
        for u in sorted(conv.uptrain.unique()):
            means = conv[np.isclose(conv.uptrain, u)].groupby("method").mqar_accuracy.mean()
            cells.append(f"{u:.0%}: " + " / ".join(lab.fmt(means[m], 2) for m in METHOD_LABELS if m in means))
        mf, mr = (method_delta(conversions, target, top, "mean", b) for b in ("first", "random"))
        zero_mf = method_delta(conversions, target, 0.0, "mean", "first")
        zero_verdict = verdict(*zero_mf, "mean-pool better", "first head better")
        parts.append(f"{target}: " + ", ".join(cells) + f". At 0% mean-pool − first head "
                     f"{lab.fmt_ci(*zero_mf, digits=2)} ({zero_verdict}); "
                     f"after {top:.0%}: mean-pool − first head {lab.fmt_ci(*mf, digits=2)} "
                     f"({verdict(*mf, 'mean-pool better', 'first head better')}), mean-pool − random "
                     f"{lab.fmt_ci(*mr, digits=2)} ({verdict(*mr, 'mean-pool better', 'random better')})")
        for d, who in ((zero_mf, "first head at 0%"), (mf, f"first head after {top:.0%}"),
                       (mr, f"random after {top:.0%}")):
            if verdict(*d, "+", "-") == "-":
                reversals.append(f"{target}: {who}")
    order = ("Reversals of the GQA paper's ordering (mean-pool > first head > random) with a CI excluding 0: "
             + ("; ".join(reversals) + "." if reversals else "none."))
    comparisons = 3 * conversions.uptrain.nunique()
    return ("- **Conversion (MQAR accuracy, mean-pool / first head / random K/V by uptraining fraction; "
            f"{comparisons} paired method comparisons per target in the table of differences):** "
            + ". ".join(parts) + ". " + order)


def memory_bullet(memory: pd.DataFrame, reference: pd.DataFrame, plan: DictConfig, config) -> str:
    ref = plan.memory.reference
    exact = "all exact" if (memory.per_sequence == memory.measured_nbytes).all() else "MISMATCH"
    sizes = bytes_per_sequence(memory)
    base = variant("softmax", config.num_heads, config.num_heads)
    linear = (f" At the trained shape ({config.seq_len} tokens) the linear state ({format_bytes(sizes['linear'])}, "
              f"fp32) is larger than {'MQA' if 'MQA' in sizes else 'the smallest'}'s whole cache "
              f"({format_bytes(sizes.get('MQA', min(sizes.values())))}): a constant state pays off only past "
              f"{int(np.ceil(sizes['linear'] / memory.set_index('variant').loc[base].per_token)):,} tokens against "
              f"{base}." if "linear" in sizes else "")
    return (f"- **Memory (exact, arithmetic):** the cache is 2 × layers × H_kv × head_dim × bytes per token, so it "
            f"scales with H_kv alone: H_kv = H/4 keeps 4× less than MHA, MQA H× less; linear attention keeps a "
            f"constant fp32 state. The formula equals the `nbytes` of the real caches for every variant ({exact})."
            + linear + f" At the {ref.heads}-query-head reference shape ({ref.layers} layers × {ref.head_dim}, "
            f"{ref.dtype}, {ref.seq_len:,} tokens, {ref.budget}) with the weights "
            f"({format_bytes(int(reference.weight_bytes.iloc[0]))}) held, the largest batch goes "
            + " → ".join(f"{row.attention} {int(row.max_batch_after_weights):,}" for row in reference.itertuples())
            + " (cache only: " + " → ".join(f"{int(b):,}" for b in reference.max_batch) + ").")


def speed_bullet(timing: pd.DataFrame, plan: DictConfig, config) -> str:
    base = variant("softmax", config.num_heads, config.num_heads)
    longest = timing[timing.context == timing.context.max()].set_index("variant")
    if base not in longest.index:
        return ""
    others = [v for v in longest.index if v != base]
    speedups = ", ".join(f"{v} {ratio(longest.loc[base].decode_ms_per_token, longest.loc[v].decode_ms_per_token)}"
                         for v in others)
    reads = ", ".join(f"{v} {ratio(longest.loc[base].cache_bytes_read, longest.loc[v].cache_bytes_read)}"
                      for v in others)
    n = int(timing.context.max())
    return (f"- **Speed (measured, this CPU; {timing_shape(plan, config)}, {config.num_heads} query heads, batch "
            f"{plan.timing.batch}, context {n:,}):** a {base} decode step reads "
            f"{format_bytes(longest.loc[base].cache_bytes_read)} of cache and takes "
            f"{lab.fmt(longest.loc[base].decode_ms_per_token)} ms per token; per-token decode is {speedups} faster, "
            f"for {reads} fewer cache bytes per step. {growth(timing)} At a realistic shape the attention-only "
            "benchmark (`benchmarks/attention.py --clock cpu`: 32 query heads × 128, fp32, batch B = 1, context "
            "32,768; docs/attention.md) measured MHA-32 58.6, GQA-8 40.9, MQA 12.2 and linear 0.14 ms per token on "
            "this CPU: decode time follows the bytes read once the cache is large.")


def answer(memory, reference, timing, scratch, conversions, config, plan) -> str:
    lines = [recall_bullet(scratch, config.num_heads), memory_bullet(memory, reference, plan, config),
             speed_bullet(timing, plan, config), language_bullet(scratch, config.num_heads)]
    if len(conversions):
        lines.append(conversion_bullet(conversions))
    return "\n".join(line for line in lines if line)


def closing_note(scratch: pd.DataFrame, runs: pd.DataFrame, plan: DictConfig, heads: int) -> str:
    """The headline differences with their CIs, and the wall time of the run that made them."""
    pairs = int(plan.headline_pairs)
    base = variant("softmax", heads, heads)
    part = scratch[scratch.mqar_pairs == pairs]
    mha = lab.bootstrap_ci(part[part.variant == base].mqar_accuracy.to_numpy())
    shown = (variant("softmax", max(heads // 4, 1), heads), "MQA", "linear")
    cells = [f"{cut_label(name, heads)} "
             f"{lab.fmt_ci(*paired_delta(scratch, pairs, name, 'mqar_accuracy', base), digits=2)}"
             for name in dict.fromkeys(part.variant) if name != base and name in shown]
    start = (runs.finished - runs.seconds).min()
    training = runs[runs.kind.str.startswith("training")]
    return (f"## Closing note\n\nHeadline ({pairs} pairs, {plan.seeds} seeds, same seeds across arms): {base} "
            f"recalls {lab.fmt_ci(*mha, digits=3)}; MQAR accuracy minus {base}'s, paired 95% CI: "
            + "; ".join(cells) + f". Wall time of the `{plan.scale}` run: {len(training)} training jobs "
            f"({training.seconds.sum():.0f} s summed, up to {most_at_once(training)} at a time) and "
            f"{len(runs) - len(training)} measurements, {runs.finished.max() - start:.0f} s "
            f"({(runs.finished.max() - start) / 60:.0f} min) from the first start to the last finish on the "
            "shared 2-core CPU.")


def most_at_once(runs) -> int:
    """The most parts that ran at one time, from their kept (finished, seconds): a rebuild reads it
    from the kept results, not from this command's `workers`."""
    events = sorted([(f - s, 1) for f, s in zip(runs.finished, runs.seconds)]
                    + [(f, -1) for f in runs.finished])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


DISCUSSION = """## Discussion

Shazeer (2019) introduced MQA and Ainslie et al. (2023) GQA as ways to shrink the decode-time cache
with little loss; their quality checks are perplexity and downstream scores of large models, where a
missing KV head costs little. Recall is where a small cache should cost first: Zoology (Arora et al.
2023) shows MQAR accuracy tracking the state a model keeps per sequence, with gated and linear
recurrences falling behind attention as the number of pairs grows. The recall-vs-bytes plot above is
that view at this scale: the softmax variants differ only in how many bytes they keep per token, the
linear variant keeps a fixed state. The token shift (a previous-token embedding) is the cheapest form of
the short convolution Zoology's strong baselines (and H3, Based, Mamba) carry: without it, learning to
bind each value to its key took more steps than the CPU budget allows (2-layer models stayed near the
0.25-0.5 accuracy a model reaches without binding), so the task would have measured optimisation, not
cache size.

Conversion: Ainslie et al. uptrain T5 for 5% of the pretraining steps and find mean-pooling > first
head > random initialisation; the Answer states which of those orderings the paired CIs resolve here.
Per seed (`conversions.csv`), the first-head initialisation is all-or-nothing: it keeps one head of each
group exactly, so it works at once when that head is the one that carries the lookup and fails when the
group's recall lives in another head. The mean keeps a blurred version of every head of the group, which
a few uptraining steps sharpen. Random K/V throws away the keys the query heads were trained against,
and 20% of the steps is far from enough to relearn them.

Linear attention (elu + 1 features, a 16 × 16 state per head) fails recall at this budget, as Zoology
reports for small linear states. It also stays far above the Bayes loss on the language, which needs no
lookup at all (the token shift hands every position its predecessor), so part of its failure here is
optimisation at this learning rate, not only the size of its state.

What is not settled here: {heads} query heads, not 32 (the cut ratios are kept; `scale=paper` trains the
32-head shape on a GPU); {seeds} seeds; one learning rate for all variants; short sequences (32 tokens), where
a softmax cache is small; CPU timings on a shared machine."""


def from_converged(conversions: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The conversion runs whose pretrained MHA had learned the lookup (final MQAR accuracy ≥ SOLVED):
    converting a model that never learned recall measures nothing about the pooling. All runs (and a
    note saying so) when none had."""
    if not len(conversions):
        return conversions, ""
    seeds = conversions.seed.nunique()
    kept = conversions[conversions.pretrained_mqar_accuracy >= SOLVED]
    if not len(kept):
        return conversions, (f"No pretrained model reached {SOLVED} MQAR accuracy, so all {seeds} seeds are shown "
                             "(conversions of models that had not learned recall).")
    return kept, (f"Conversions start from a converged MHA model: the {kept.seed.nunique()} of {seeds} seeds whose "
                  f"pretrained model reached ≥ {SOLVED} MQAR accuracy (the others had stalled on the no-binding "
                  "plateau before conversion and are left out of this section's tables and plot).")


def run(plan: DictConfig) -> None:
    kept = lab.kept_results(plan, lambda: compute(plan), measuring_code())
    scratch, curves, conversions, memory, reference, timing, runs = (
        kept.tables[k] for k in ("scratch", "curves", "conversions", "memory", "reference", "timing", "runs"))
    conversions, converged_note = from_converged(conversions)
    config = model_config(plan)
    heads = config.num_heads
    pairs = int(plan.headline_pairs)
    steps = config.num_updates * config.steps_per_update
    ref = plan.memory.reference

    report = lab.Report(plan, "Cutting the KV cache 4×: GQA vs MQA vs linear attention, on a model that learns "
                              "recall", kept=kept)
    report.add(
        "**Question.** A model's KV cache is too big. Cut it 4× with GQA (H_kv = H/4), go all the way to MQA "
        "(1 KV head), or replace attention by a linear-attention layer with a constant state — what would you "
        "measure to choose, and what do the measurements say?",
        "**Command** (trains what is missing, measures, and writes this report and its kept results):\n\n"
        f"```bash\n{report.command()}\n{report.command()} rebuild=true   # from the kept results, computing "
        "nothing\n```\n\n"
        "The H_kv axis alone, through `purerl-train` / `purerl-analyze` (one job per H_kv, seeds vmapped):\n\n"
        "```bash\npurerl-train -m experiment=kv_cache_4x algo.config.num_kv_heads=8,4,2,1\n"
        "purerl-analyze multirun/kv_cache_4x --by num_kv_heads --metric final_return   # final MQAR accuracy\n```",
        f"**Set-up (scale `{plan.scale}`).** TinyLM with d_model {config.d_model}, {config.num_layers} layers, "
        f"{heads} query heads of dim {config.head_dim}, MLP ×{config.mlp_ratio}, learned positions and a token "
        f"shift (`LMConfig.token_shift`), trained {steps} steps (AdamW, peak lr {lab.fmt(float(plan_lr(plan)))}, "
        f"warm-up {config.warmup_steps} steps, cosine) on {config.batch_size} MQAR + {config.batch_size} language "
        f"sequences of {config.seq_len} tokens per step (`algo=lm_pretrain`); {plan.seeds} seeds per job, the same "
        "seeds (same initialisations, training data and evaluation batches) in every job. MQAR with "
        + " and ".join(str(p) for p in sorted(scratch.mqar_pairs.unique())) + f" key-value pairs over "
        f"{config.mqar_vocab} tokens (every key asked once; scored at the answers); the language: an order-2 Markov "
        f"chain over {config.language_vocab} tokens (Dirichlet({config.language_alpha}) rows) whose Bayes loss on each "
        f"evaluation batch is known. Held-out metrics on {config.eval_batch} fresh sequences per task. "
        f"**Why {heads} query heads and not 32:** the question's model has 32 query heads; with a head dim of at "
        "least 16 (so that MQA's single key head can still separate the keys) that is a 512-wide attention, too "
        f"slow to train {plan.seeds} seeds per variant on 2 CPU cores. The cut ratios are kept — H_kv = H/4 is the "
        f"4× cut (GQA-{heads // 4} here, GQA-8 at 32 heads), MQA the {heads}× one (32× at 32 heads) — the memory "
        f"tables use the 32-head shape, and `scale=paper` trains it on a GPU. Presets: `conf/experiment/{NAME}.yaml` "
        f"and `conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(memory, reference, timing, scratch, conversions, config, plan),
    )
    report.headline(f"Decision table ({pairs} pairs)", lab.markdown_table(
        decision_table(memory, reference, timing, scratch, conversions, plan, config)))
    report.add(
        f"Memory and max batch: the {ref.heads}-query-head reference shape below, after its weights. Speed: CPU wall "
        f"time, best of {plan.timing.rounds} rounds on a shared machine — ratios, not GPU figures. Quality: final "
        f"held-out MQAR accuracy and language excess loss minus MHA's on the same seeds (paired). Conversion: the "
        "mean-pooled checkpoint before and after uptraining.",
        "## Quality after equal training steps",
        "### Final held-out quality per pair count and variant",
        quality_table_md(scratch, memory, heads),
    )
    report.figure(plot_recall_vs_bytes(scratch, memory, config), "recall_vs_bytes.png",
                  "MQAR accuracy against the cache (or linear state) each sequence keeps — the Zoology view")
    report.figure(plot_curves(curves, heads), "curves.png", "Held-out MQAR accuracy during training, per pair count")
    if len(conversions):
        conversion_pairs = int(conversions.mqar_pairs.iloc[0])
        report.add(
            f"## Conversion: {variant('softmax', heads, heads)} → " + " / ".join(dict.fromkeys(conversions.target)),
            f"Each conversion job first trains {variant('softmax', heads, heads)} exactly as the "
            f"{conversion_pairs}-pair "
            "MHA job "
            "(same seed, same data), then pools each group of K/V heads (`convert_kv_heads`: the mean, the group's "
            "first head, or fresh random K/V weights) and uptrains with a fresh AdamW (warm-up + cosine, peak lr "
            f"{lab.fmt(float(conversions.uptrain_lr.iloc[0]))}); every method sees the same uptraining data. 0% is "
            "the converted model before any step. " + converged_note,
            "### MQAR accuracy and language excess after conversion",
            conversion_table_md(conversions, scratch, conversion_pairs),
            "### Paired differences between initialisations (MQAR accuracy; same seeds, 95% CI)",
            method_table_md(conversions),
        )
        report.figure(plot_conversion(conversions, scratch, conversion_pairs), "conversion.png",
                      "MQAR accuracy of converted checkpoints against uptraining, with MHA and from-scratch references")
    report.add(
        "## Memory: exact cache bytes",
        f"### The trained model ({config.num_layers} layers, head_dim {config.head_dim}, {plan.memory.dtype}, "
        f"{config.seq_len} tokens; linear state fp32)",
        memory_table_md(memory, plan, config),
        f"### The {ref.heads}-query-head family at a realistic size ({ref.layers} layers, head_dim {ref.head_dim}, "
        f"cache {ref.dtype}, linear state fp32, weights {int(ref.weight_params):,} parameters in {ref.dtype})",
        reference_table_md(reference, plan),
        f"`purerl-memory --layers {ref.layers} --heads {ref.heads} --head-dim {ref.head_dim} --seq-len {ref.seq_len} "
        f"--dtype {ref.dtype} --budget {ref.budget} --kv-heads {' '.join(str(h) for h in ref.kv_heads)}` prints the "
        "cache-only columns.",
    )
    report.figure(plot_memory(reference, plan), "memory.png",
                  "Cache per sequence and the largest batch that fits the budget, whole and after the weights")
    report.add(
        "## Speed: decode and prefill",
        f"Untrained models of the family: the same {heads} query heads, widened for timing "
        f"({timing_shape(plan, config)}) so that a decode step's cache read, not the model's fixed per-step cost, "
        f"is what H_kv changes; max_len = context n; batch B = {plan.timing.batch}. Decode: one `generate` call "
        f"(prefill + a `lax.scan` of decode steps, one program) from a 1-token prompt sampling "
        f"{plan.timing.decode_steps} tokens into a cache of n slots (`cache_len=n`, as a server allocates it); a "
        "decode step attends over the whole buffer, masked by length, so each step costs what a step at context n "
        "costs, and the per-token time is the call time / steps. Prefill: one `generate` call with an (n − 1)-token "
        f"prompt. Wall time, best of {plan.timing.rounds} rounds, variants in turn, on the shared 2-core CPU (load "
        f"average {lab.fmt(timing.load.min(), 2)}–{lab.fmt(timing.load.max(), 2)} while timing).",
        "### Per-token decode and prefill time (ms, CPU, best of rounds)",
        timing_table_md(timing),
    )
    report.figure(plot_timing(timing), "timing.png", "Decode per token and prefill time against context length")
    report.add(closing_note(scratch, runs, plan, heads))
    report.add(DISCUSSION.format(seeds=plan.seeds, heads=heads))
    report.write()


def plan_lr(plan: DictConfig) -> float:
    """The preset's peak learning rate (every job uses it)."""
    from purerl.cli.train import build_plan

    overrides, preset = lab.job_spec(next(iter(plan.jobs.values())))
    return float(build_plan(lab.compose_job(plan, overrides, preset=preset)).hyper.lr)


main = functools.partial(lab.main, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
