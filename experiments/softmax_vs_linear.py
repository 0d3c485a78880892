"""Why exact softmax attention still wins over linear attention.

`python -m experiments.softmax_vs_linear [scale=ci|paper|smoke] [key=value ...]`

Two measurements and a model:
- recall: the tiny LM (`purerl.attention.lm`) trained on MQAR with softmax attention and with
  linear attention (elu+1 and Taylor feature maps) at equal width and depth, over the number of
  key-value pairs and the width; seeds vmapped in one program per setting; accuracy on fresh
  sequences, next to the size of each model's per-sequence memory (linear state vs KV cache);
- speed: prefill time of the attention core vs sequence length on this CPU — softmax (XLA's dense
  path) vs linear attention (chunked and parallel forms) — and the crossover length;
- an analytic FLOP + memory-traffic (roofline) model of the same paths, checked against the CPU
  timings and a measured H100 figure, that says where the crossover sits on an H100 with a fused
  (FlashAttention-style) softmax kernel.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from analysis.aggregate import iqm
from experiments import lab
from purerl.attention.cost import KERNELS, cost, crossover, roofline_seconds

NAME = "softmax_vs_linear"
KINDS = {"softmax": "softmax", "elu": "linear, elu+1", "taylor": "linear, Taylor"}
PRESET = lab.EXPERIMENT_CONF / f"{NAME}.yaml"


def with_recipe(plan: DictConfig) -> DictConfig:
    """The preset's recipe under the scale's settings (the scale wins)."""
    merged = OmegaConf.merge(OmegaConf.load(PRESET), plan)
    return merged


# ---------------------------------------------------------------- recall (MQAR with bound pairs)
# MQAR as in Zoology writes a pair as two tokens "k v", so a model must first learn to bind each
# value to the key before it (a previous-token circuit) and only then to retrieve. On this CPU's
# budget neither softmax nor linear attention learned that binding (both plateaued at the
# no-binding baseline below; see the report), which would say nothing about the memory of the
# two. So each pair arrives as ONE token (key and value bound in its embedding), and the queries
# ask keys as in MQAR: what remains is the retrieval — storing m associations and reading one back
# — which is where a constant-size linear state and a growing KV cache differ.
#
# Vocabulary: 0 = padding; keys 1..K; answers (values) K+1..K+V; pair tokens K+V+1.. (K·V of
# them). A sequence for m of at most M pairs: M pair slots (m used, the rest 0), then M (query key,
# answer) slots (m used). The loss is taken where the next token is an answer. m is traced, so
# every pair count shares one compiled program.


def recall_vocab(plan: DictConfig) -> int:
    from purerl.attention.mqar import bound_recall_vocab

    return bound_recall_vocab(plan.recall.num_keys, plan.recall.num_values)




def recall_settings(plan: DictConfig) -> list[dict[str, Any]]:
    """The compiled programs: the pairs sweep at the main width, and the width sweep (at one pair
    count) for the kinds it names. With `recall.max_pairs` set, all pair counts of a (kind, width)
    share one program (sequences padded to max_pairs); with it null, each pair count is its own
    program with unpadded sequences of 3·pairs tokens."""
    r = plan.recall
    groups = [[int(m) for m in r.pairs]] if r.max_pairs else [[int(m)] for m in r.pairs]
    settings = [{"kind": k, "width": int(w), "pairs": g} for k in r.kinds for w in r.widths for g in groups]
    settings += [{"kind": k, "width": int(w), "pairs": [int(r.width_sweep.pairs)]}
                 for k in r.width_sweep.kinds for w in r.width_sweep.widths]
    return settings


def setting_name(setting: dict[str, Any], plan: DictConfig) -> str:
    name = f"recall_{setting['kind']}_d{setting['width']}"
    return name if plan.recall.max_pairs else f"{name}_m{'_'.join(map(str, setting['pairs']))}"


def lm_config(plan: DictConfig, kind: str, width: int, max_pairs: int):
    from purerl.attention.lm import LMConfig

    r = plan.recall
    seq_len = 3 * max_pairs
    return LMConfig(vocab_size=recall_vocab(plan), max_len=seq_len, d_model=width, num_layers=r.layers,
                    num_heads=r.heads, num_kv_heads=r.heads, mlp_ratio=r.mlp_ratio,
                    attention="softmax" if kind == "softmax" else "linear",
                    feature_map="elu" if kind == "softmax" else kind, chunk_size=min(r.chunk_size, seq_len))


def memory_per_sequence(plan: DictConfig, kind: str, width: int, pairs: int) -> dict[str, int]:
    """Per-sequence inference memory of all layers (fp32): the linear state (constant) or the KV
    cache of a sequence with `pairs` pairs (3·pairs tokens; it grows with them)."""
    from purerl.attention.linear import feature_dim
    from purerl.attention.memory import kv_cache_bytes, linear_state_bytes

    r = plan.recall
    head_dim = width // r.heads
    if kind == "softmax":
        return {"feature_dim": 0, "memory_bytes": kv_cache_bytes(r.layers, r.heads, head_dim, 3 * pairs, 1, "float32")}
    f = feature_dim(kind, head_dim)
    return {"feature_dim": f, "memory_bytes": linear_state_bytes(r.layers, r.heads, f, head_dim, 1, "float32")}


def train_recall(key, num_pairs, plan: DictConfig, kind: str, width: int, max_pairs: int):
    """Train one TinyLM on bound-pair recall with `num_pairs` pairs; returns (accuracy on fresh
    sequences, per-step training accuracy). Pure in `key` and `num_pairs`: vmap both."""
    import jax

    from purerl.attention.lm import TinyLM, TrainConfig, make_optimizer, masked_loss_and_accuracy
    from purerl.attention.mqar import bound_recall_batch
    from purerl.rl.training import fit

    r = plan.recall
    model = TinyLM(lm_config(plan, kind, width, max_pairs))
    train = TrainConfig(steps=r.steps, batch_size=r.batch_size, learning_rate=r.learning_rate,
                        warmup_steps=max(1, int(r.warmup_fraction * r.steps)))
    optimizer = make_optimizer(train)
    batch_of = partial(bound_recall_batch, num_pairs=num_pairs, max_pairs=max_pairs, num_keys=r.num_keys,
                       num_values=r.num_values)
    init_key, data_key, eval_key = jax.random.split(key, 3)
    params = model.init(init_key, batch_of(init_key, batch=1).tokens)

    def loss_fn(params, batch):
        return masked_loss_and_accuracy(model.apply(params, batch.tokens), batch)

    params, _, stats = fit(optimizer, loss_fn, params, optimizer.init(params), jax.random.split(data_key, r.steps),
                           lambda step_key: batch_of(step_key, batch=r.batch_size))
    return loss_fn(params, batch_of(eval_key, batch=r.eval_batch))[1], stats.aux


def train_setting(plan: DictConfig, kind: str, width: int, pairs: list[int]) -> pd.DataFrame:
    """Every pair count × seed of one (kind, width) in one vmapped program."""
    import jax
    import jax.numpy as jnp

    seeds = jax.random.split(jax.random.PRNGKey(0), plan.seeds)
    counts = jnp.asarray(pairs)
    max_pairs = plan.recall.max_pairs or max(pairs)
    run = jax.vmap(jax.vmap(partial(train_recall, plan=plan, kind=kind, width=width, max_pairs=max_pairs),
                            in_axes=(0, None)), in_axes=(None, 0))
    accuracy, curves = jax.block_until_ready(jax.jit(run)(seeds, counts))  # [pairs, seeds]
    curves = np.asarray(curves)
    tail = max(1, plan.recall.steps // 10)
    rows = []
    for i, m in enumerate(pairs):
        rows.append(pd.DataFrame({
            "kind": kind, "width": width, "pairs": m, "seed": np.arange(plan.seeds),
            "accuracy": np.asarray(accuracy[i], np.float64),
            "train_accuracy_first10pct": curves[i, :, :tail].mean(1),
            "train_accuracy_last10pct": curves[i, :, -tail:].mean(1),
            **memory_per_sequence(plan, kind, width, m)}))
    return pd.concat(rows, ignore_index=True)


def recall(plan: DictConfig) -> pd.DataFrame:
    """Every recall setting's table; `workers=N` trains N settings at a time in their own
    processes (each is one compile-heavy program; the timings come later, alone)."""
    # Settings in `skip` are left out of this run (the report says so).
    settings = [s for s in recall_settings(plan) if setting_name(s, plan) not in plan.get("skip", [])]
    return pd.concat(lab.in_workers(plan, recall_setting, [(s,) for s in settings]), ignore_index=True)


def recall_setting(plan: DictConfig, setting: dict[str, Any]) -> pd.DataFrame:
    """One (kind, width) setting's measured table (trained unless stored)."""
    from purerl.attention import linear, lm, mqar

    setting = dict(setting)
    identity = {"setting": setting, "seeds": plan.seeds, "recipe": OmegaConf.to_container(plan.recall, resolve=True)}
    return lab.measured(plan, setting_name(setting, plan), identity, partial(train_setting, plan, **setting),
                        code=[lm, linear, mqar, lm_config, train_recall, train_setting,
                              memory_per_sequence])


def no_binding_accuracy(pairs: int) -> float:
    """Accuracy of a model that answers with a value from the context without knowing which key
    it belongs to, avoiding values already answered: (1/m) Σ_s 1/(m − s) = H_m / m (distinct
    values; repeated values raise it slightly). The plateau of standard two-token MQAR here."""
    return float(sum(1 / k for k in range(1, pairs + 1)) / pairs)


def standard_mqar_kind(plan: DictConfig, kind: str) -> pd.DataFrame:
    """Two-token MQAR ("k v" pairs, `purerl.attention.lm.train_mqar`) at this scale's budget: does
    the model learn to bind values to keys at all?"""
    import jax

    from purerl.attention.lm import LMConfig, TrainConfig, evaluate_mqar, train_mqar
    from purerl.attention.mqar import MQARConfig

    c = plan.standard_mqar
    seq_len = 4 * c.pairs
    mqar = MQARConfig(vocab_size=c.vocab, seq_len=seq_len, num_pairs=c.pairs)
    lm = LMConfig(vocab_size=c.vocab, max_len=seq_len, d_model=c.width, num_layers=c.layers, num_heads=c.heads,
                  num_kv_heads=c.heads, attention="softmax" if kind == "softmax" else "linear",
                  feature_map="elu" if kind == "softmax" else kind, chunk_size=min(32, seq_len))
    train = TrainConfig(steps=c.steps, batch_size=c.batch_size, learning_rate=c.learning_rate,
                        warmup_steps=max(1, c.steps // 10), mqar=mqar)

    def one(key):
        train_key, eval_key = jax.random.split(key)
        params, curves = train_mqar(train_key, lm, train)
        return evaluate_mqar(params, eval_key, lm, mqar, c.eval_batch), curves["accuracy"]

    accuracy, curves = jax.block_until_ready(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1), c.seeds)))
    curves = np.asarray(curves)
    tail = max(1, c.steps // 10)
    return pd.DataFrame({"kind": kind, "seed": np.arange(c.seeds), "accuracy": np.asarray(accuracy, np.float64),
                         "train_accuracy_first10pct": curves[:, :tail].mean(1),
                         "train_accuracy_last10pct": curves[:, -tail:].mean(1)})


def standard_mqar(plan: DictConfig) -> pd.DataFrame:
    from purerl.attention import linear, lm, mqar

    identity = OmegaConf.to_container(plan.standard_mqar, resolve=True)
    return pd.concat([lab.measured(plan, f"standard_mqar_{kind}", {**identity, "kind": kind},
                                   partial(standard_mqar_kind, plan, kind), code=[lm, linear, mqar, standard_mqar_kind])
                      for kind in plan.standard_mqar.kinds], ignore_index=True)


# ---------------------------------------------------------------- speed (prefill on this CPU)
def prefill_paths(s: DictConfig) -> dict[str, Any]:
    import jax

    from purerl.attention.linear import apply_feature_map, linear_attention_chunked, linear_attention_parallel

    scale = s.head_dim**-0.5
    softmax = jax.jit(partial(jax.nn.dot_product_attention, is_causal=True, scale=scale, implementation="xla"))

    def linear(form, feature_map):
        @jax.jit
        def run(q, k, v):
            phi_q, phi_k = apply_feature_map(feature_map, q), apply_feature_map(feature_map, k)
            if form == "parallel":
                return linear_attention_parallel(phi_q, phi_k, v)
            return linear_attention_chunked(phi_q, phi_k, v, chunk_size=s.chunk_size)[0]
        return run

    return {"softmax_xla": softmax, "linear_chunked_elu": linear("chunked", "elu"),
            "linear_parallel_elu": linear("parallel", "elu"), "linear_chunked_taylor": linear("chunked", "taylor")}


def best_time(fn, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def machine_roofline() -> dict[str, float]:
    """This CPU's fp32 matmul rate and copy bandwidth (what the model's CPU column assumes)."""
    import jax
    import jax.numpy as jnp

    n = 1024
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    matmul = jax.jit(lambda x: x @ x)
    flops = 2 * n**3 / best_time(matmul, (a,), 5)
    big = jnp.ones((32 * 2**20,), jnp.float32)  # 128 MiB
    copy = jax.jit(lambda x: x + 1.0)
    bandwidth = 2 * big.nbytes / best_time(copy, (big,), 5)
    return {"flops": float(flops), "bandwidth": float(bandwidth)}


def speed(plan: DictConfig) -> dict[str, pd.DataFrame]:
    import jax
    import jax.numpy as jnp

    s = plan.speed
    paths = prefill_paths(s)
    rows = []
    for n in s.lengths:
        keys = jax.random.split(jax.random.PRNGKey(n), 3)
        q, k, v = (0.5 * jax.random.normal(key, (s.batch, n, s.heads, s.head_dim), jnp.float32) for key in keys)
        for path, fn in paths.items():
            if (path.endswith("taylor") and n > s.taylor_max_len) or (path.startswith("linear_parallel")
                                                                      and n > s.parallel_max_len):
                continue
            seconds = best_time(fn, (q, k, v), s.repeats)
            rows.append({"length": n, "path": path, "seconds": seconds})
            print(f"[{NAME}] prefill n={n} {path}: {seconds * 1e3:.2f} ms", flush=True)
    return {"timings": pd.DataFrame(rows), "machine": pd.DataFrame([machine_roofline()])}


# ---------------------------------------------------------------- analytic model (purerl.attention.cost)




def gpu_seconds(path: str, n: int, plan: DictConfig, fused_efficiency: float | None = None) -> float:
    """Roofline time plus a fixed launch latency per kernel; `fused_efficiency`: the fused softmax
    kernel's share of peak (default: the best of `gpu.fused_efficiencies`)."""
    g, s = plan.gpu, plan.speed
    flops, moved = cost(path, n, s.heads, s.head_dim, s.chunk_size, g.bytes_per_element, g.query_block,
                        fused_linear=True)
    launches = KERNELS["_".join(path.split("_")[:2])] * g.launch_seconds
    fused_efficiency = fused_efficiency or max(g.fused_efficiencies)
    if path == "softmax_fused":
        return launches + roofline_seconds(flops, moved, fused_efficiency * g.bf16_flops, g.hbm_bytes_per_s)
    if path == "softmax_xla":
        return launches + roofline_seconds(flops, moved, fused_efficiency * g.bf16_flops,
                                           g.unfused_efficiency * g.hbm_bytes_per_s)
    return launches + roofline_seconds(flops, moved, g.linear_efficiency * g.bf16_flops, g.hbm_bytes_per_s)




def gpu_model(plan: DictConfig) -> pd.DataFrame:
    """Modelled crossover lengths on the GPU: chunked linear (elu, Taylor) vs XLA's dense softmax and
    vs a fused softmax at each assumed efficiency."""
    grid = np.unique(np.round(np.geomspace(64, 2**20, 200)).astype(int))
    unfused = np.array([gpu_seconds("softmax_xla", n, plan) for n in grid])
    rows = []
    for fmap in ("elu", "taylor"):
        lin = np.array([gpu_seconds(f"linear_chunked_{fmap}", n, plan) for n in grid])
        rows.append({"feature_map": fmap, "softmax": "softmax_xla", "fused_efficiency": np.nan,
                     "crossover": crossover(grid, unfused, lin)})
        for eff in plan.gpu.fused_efficiencies:
            fused = np.array([gpu_seconds("softmax_fused", n, plan, eff) for n in grid])
            rows.append({"feature_map": fmap, "softmax": "softmax_fused", "fused_efficiency": eff,
                         "crossover": crossover(grid, fused, lin)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- tables
LABELS = {"softmax_xla": "softmax, XLA dense", "linear_chunked_elu": "linear chunked, elu",
          "linear_parallel_elu": "linear parallel, elu", "linear_chunked_taylor": "linear chunked, Taylor",
          "softmax_fused": "softmax, fused (flash)"}


def recall_table(runs: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    from purerl.attention.memory import format_bytes

    rows = []
    for (width, pairs), cell in runs.groupby(["width", "pairs"], sort=True):
        row = {"width": str(width), "pairs": str(pairs), "tokens": str(4 * pairs),
               "no-binding baseline": f"{no_binding_accuracy(pairs):.2f}"}
        for kind in plan.recall.kinds:
            part = cell[cell.kind == kind]
            if part.empty:
                row[f"{KINDS[kind]}: accuracy [95% CI]"] = row[f"{KINDS[kind]}: memory/seq"] = "—"
                continue
            iqm, low, high = lab.bootstrap_ci(part.accuracy.to_numpy(), "iqm")
            row[f"{KINDS[kind]}: accuracy [95% CI]"] = lab.fmt_ci(iqm, low, high, 2)
            row[f"{KINDS[kind]}: memory/seq"] = format_bytes(int(part.memory_bytes.iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows)


def speed_table(timings: pd.DataFrame, machine: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    s = plan.speed
    m = machine.iloc[0]
    rows = []
    for n, part in timings.groupby("length", sort=True):
        row = {"tokens": f"{n:,}"}
        for path in (p for p in LABELS if p in set(timings.path)):
            hit = part[part.path == path]
            if hit.empty:
                row[f"{LABELS[path]} ms (model)"] = "— (not run)"
                continue
            flops, moved = cost(path, n, s.heads, s.head_dim, s.chunk_size, 4)
            model = roofline_seconds(flops, moved, m.flops, m.bandwidth)
            row[f"{LABELS[path]} ms (model)"] = f"{hit.seconds.iloc[0] * 1e3:.3g} ({model * 1e3:.2g})"
        soft = part[part.path == "softmax_xla"].seconds
        lin = part[part.path == "linear_chunked_elu"].seconds
        if len(soft) and len(lin):
            row["softmax / linear chunked"] = f"{soft.iloc[0] / lin.iloc[0]:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def measured_crossovers(timings: pd.DataFrame) -> dict[str, float]:
    wide = timings.pivot(index="length", columns="path", values="seconds").sort_index()
    out = {}
    for path in ("linear_chunked_elu", "linear_parallel_elu", "linear_chunked_taylor"):
        if path in wide:
            both = wide[["softmax_xla", path]].dropna()
            out[path] = crossover(both.index.to_numpy(), both.softmax_xla.to_numpy(), both[path].to_numpy())
    return out


def gpu_table(plan: DictConfig) -> pd.DataFrame:
    """Modelled H100 prefill time per path at a few lengths (bf16, batch 1)."""
    g = plan.gpu
    lengths = [512, 2048, 8192, 32768, 131072]
    rows = []
    paths = [("softmax_xla", None), *(("softmax_fused", e) for e in g.fused_efficiencies),
             ("linear_chunked_elu", None), ("linear_chunked_taylor", None)]
    for path, eff in paths:
        label = LABELS[path] + (f" ({eff:.0%} of peak)" if eff else "")
        if path.startswith("linear"):
            label += f" ({g.linear_efficiency:.0%} of peak)"
        row = {"path": label}
        for n in lengths:
            row[f"{n:,} tokens"] = f"{gpu_seconds(path, n, plan, eff) * 1e3:.3g} ms"
        rows.append(row)
    return pd.DataFrame(rows)


def crossover_table(model: pd.DataFrame, timings: pd.DataFrame, plan: DictConfig) -> pd.DataFrame:
    cpu = measured_crossovers(timings)
    rows = [{"where": "this CPU, measured (fp32)", "linear kernel": LABELS[path],
             "softmax kernel": LABELS["softmax_xla"], "linear faster from (tokens)": fmt_len(n)}
            for path, n in cpu.items()]
    for r in model.itertuples():
        softmax = LABELS[r.softmax] + ("" if np.isnan(r.fused_efficiency) else f" at {r.fused_efficiency:.0%} of peak")
        rows.append({"where": f"{plan.gpu.name}, model (bf16)",
                     "linear kernel": f"{LABELS['linear_chunked_' + r.feature_map]} (fused, "
                                      f"{plan.gpu.linear_efficiency:.0%} of peak)",
                     "softmax kernel": softmax, "linear faster from (tokens)": fmt_len(r.crossover)})
    return pd.DataFrame(rows)


def calibration(plan: DictConfig) -> str:
    c = plan.gpu.calibration
    flops, moved = cost("softmax_xla", c.length, c.heads, c.head_dim, plan.speed.chunk_size, 4)
    g = plan.gpu
    predicted = roofline_seconds(flops, moved, max(g.fused_efficiencies) * g.bf16_flops,
                                 g.unfused_efficiency * g.hbm_bytes_per_s)
    return (f"Calibration: for an H100 measurement (XLA dense prefill, fp32, {c.heads} heads, d "
            f"{c.head_dim}, {c.length:,} tokens: {c.measured_ms} ms) the model gives {predicted * 1e3:.2f} ms — "
            f"it moves {moved / 1e9:.1f} GB of logits and probabilities, so the unfused path is bandwidth-bound, "
            "as modelled.")


def fmt_len(n: float) -> str:
    return "beyond the measured lengths" if not np.isfinite(n) else f"{n:,.0f}"


# ---------------------------------------------------------------- plots
def plot_recall(runs: pd.DataFrame, plan: DictConfig):
    import matplotlib.pyplot as plt

    widths = sorted(runs.width.unique())
    main_width = plan.recall.widths[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, (axis, fixed, title) in zip(axes, (("pairs", main_width, f"width {main_width}"),
                                               ("width", plan.recall.width_sweep.pairs,
                                                f"{plan.recall.width_sweep.pairs} pairs"))):
        part = runs[(runs.width == fixed) if axis == "pairs" else (runs.pairs == fixed)]
        for i, kind in enumerate(plan.recall.kinds):
            rows = []
            for x, g in part[part.kind == kind].groupby(axis):
                rows.append((x, *lab.bootstrap_ci(g.accuracy.to_numpy(), "iqm")))
            if not rows:
                continue
            xs, ys, lo, hi = map(np.asarray, zip(*rows))
            ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt="-o", capsize=3, color=f"C{i}", label=KINDS[kind])
        if axis == "pairs":
            xs = np.asarray(sorted(part.pairs.unique()))
            ax.plot(xs, [no_binding_accuracy(m) for m in xs], "k:", label="no-binding baseline")
            ax.set_xscale("log", base=2)
        else:
            ax.axhline(no_binding_accuracy(fixed), color="black", linestyle=":", label="no-binding baseline")
            ax.set_xscale("log", base=2)
        ax.set_xlabel({"pairs": "key-value pairs", "width": "width (d_model)"}[axis])
        ax.set_ylabel("recall answer accuracy (IQM over seeds, 95% CI)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
    fig.suptitle(f"Recall after {plan.recall.steps} steps, {plan.seeds} seeds (widths tried: "
                 f"{', '.join(map(str, widths))})", fontsize="medium")
    return fig


def plot_speed(timings: pd.DataFrame, plan: DictConfig):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3), layout="constrained")
    ax = axes[0]
    colours = {"softmax_xla": "C0", "linear_chunked_elu": "C1", "linear_parallel_elu": "C2",
               "linear_chunked_taylor": "C4"}
    for path in (p for p in LABELS if p in set(timings.path)):
        part = timings[timings.path == path].sort_values("length")
        ax.plot(part.length, part.seconds * 1e3, "-o", color=colours[path], label=LABELS[path])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("prefill time of the attention core (ms, best of runs)")
    ax.set_title(f"Measured on this CPU (fp32, {plan.speed.heads} heads, d {plan.speed.head_dim})", fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    ax = axes[1]
    grid = np.unique(np.round(np.geomspace(128, 2**19, 60)).astype(int))
    curves = [("softmax_xla", None), *(("softmax_fused", e) for e in plan.gpu.fused_efficiencies),
              ("linear_chunked_elu", None), ("linear_chunked_taylor", None)]
    colours = {"softmax_xla": "C0", "softmax_fused": "C3", "linear_chunked_elu": "C1", "linear_chunked_taylor": "C4"}
    for path, eff in curves:
        ys = [gpu_seconds(path, n, plan, eff) * 1e3 for n in grid]
        label = LABELS[path] + (f", {eff:.0%} of peak" if eff else "")
        ax.plot(grid, ys, "--" if eff == min(plan.gpu.fused_efficiencies) else "-", color=colours[path],
                label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("modelled prefill time (ms)")
    ax.set_title(f"Roofline model, {plan.gpu.name} bf16 (same shape)", fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------- report
def answer(runs, standard, timings, machine, model, plan) -> str:
    from purerl.attention.memory import format_bytes

    lines = []
    r = plan.recall
    width = r.widths[0]
    main = runs[runs.width == width]
    pairs = sorted(main.pairs.unique())
    acc = {(k, m): iqm(g.accuracy) for (k, m), g in main.groupby(["kind", "pairs"])}
    mem = {(k, m): int(g.memory_bytes.iloc[0]) for (k, m), g in main.groupby(["kind", "pairs"])}
    def cell(k, m):
        return f"{acc[k, m]:.2f}" if (k, m) in acc else "not run"

    per_kind = "; ".join(f"{KINDS[k]} {' → '.join(cell(k, m) for m in pairs)}" for k in r.kinds)
    # A pair count is conclusive where softmax itself learned the task (train accuracy at the end).
    learned = main[main.kind == "softmax"].groupby("pairs").train_accuracy_last10pct.apply(lambda a: iqm(a))
    ok = [m for m in pairs if learned.get(m, 0) > 0.9]
    bad = [m for m in pairs if m not in ok]
    top = ok[-1] if ok else pairs[-1]
    text = (
        f"- **Reason 1 — recall needs memory that grows with the context.** Trained on recall at width {width} "
        f"({r.layers} layer(s), {r.steps} steps, {plan.seeds} seeds vmapped), IQM accuracy on fresh sequences for "
        f"{' → '.join(map(str, pairs))} key-value pairs: {per_kind}. ")
    if ok and ("elu", top) in acc:
        text += (
            f"Where softmax attention learned the task ({', '.join(map(str, ok))} pairs) it recalls "
            f"{' / '.join(cell('softmax', m) for m in ok)}, while elu+1 linear attention of the same width falls to "
            f"{' / '.join(cell('elu', m) for m in ok)}: at {top} pairs softmax reads a KV cache of "
            f"{format_bytes(mem[('softmax', top)])} per sequence (it grows with the pairs), elu+1 a constant "
            f"{format_bytes(mem['elu', top])} state")
        if ("taylor", top) in mem:
            text += (f"; the Taylor map's state is {mem['taylor', top] / mem['elu', top]:.0f}× larger "
                     f"({format_bytes(mem['taylor', top])}) and recalls {' / '.join(cell('taylor', m) for m in ok)}")
        text += (". Linear attention superposes all pairs in one f × d matrix per head, so reading one back is "
                 "corrupted by the others once the pairs outgrow f; softmax's lookup is exact.")
    if bad:
        ends = learned.reindex(bad)
        text += (f" At {', '.join(map(str, bad))} pairs the run is **inconclusive**: softmax itself had not learned "
                 f"the task in {r.steps} steps (its training accuracy ended at "
                 f"{', '.join(f'{v:.2f}' for v in ends)}), so a longer budget (`scale=paper`) is needed there.")
    lines.append(text)
    sweep = runs[runs.pairs == r.width_sweep.pairs]
    if sweep.width.nunique() > 1:
        cells = sweep.groupby(["kind", "width"]).accuracy.apply(lambda a: iqm(a)).unstack("width")
        text = "; ".join(f"{KINDS[k]} " + ", ".join(f"width {w}: {cells.loc[k, w]:.2f}" for w in cells.columns
                                                     if np.isfinite(cells.loc[k, w]))
                         for k in cells.index)
        lines.append(f"- **Width at {r.width_sweep.pairs} pairs** (the linear state is (d/h)² per head, so it "
                     f"shrinks with the width): {text}.")
    if standard is not None and len(standard):
        c = plan.standard_mqar
        parts = ", ".join(f"{KINDS[k]} {iqm(g.accuracy):.2f} (train accuracy "
                          f"{g.train_accuracy_first10pct.mean():.2f} → {g.train_accuracy_last10pct.mean():.2f})"
                          for k, g in standard.groupby("kind"))
        lines.append(
            f"- **Why the pairs arrive bound:** on standard two-token MQAR ({c.pairs} pairs, {c.layers} layer(s), "
            f"width {c.width}, {c.steps} steps, {c.seeds} seeds) the model reached only {parts}, against "
            f"{no_binding_accuracy(c.pairs):.2f} for a model that never binds a value to its key — at this CPU budget "
            "it had not learned the binding, so the two-token format would measure optimisation, not memory. "
            "Inconclusive here: whether linear attention would also learn the binding with Zoology's budgets "
            "(`scale=paper`).")
    cross = measured_crossovers(timings)
    longest = timings.length.max()
    wide = timings.pivot(index="length", columns="path", values="seconds")
    ratio = wide.loc[longest, "softmax_xla"] / wide.loc[longest, "linear_chunked_elu"]
    def model_at(fmap, softmax, eff=None):
        part = model[(model.feature_map == fmap) & (model.softmax == softmax)]
        if eff is not None:
            part = part[np.isclose(part.fused_efficiency, eff)]
        return fmt_len(part.crossover.iloc[0])

    low, high = min(plan.gpu.fused_efficiencies), max(plan.gpu.fused_efficiencies)
    lines.append(
        f"- **Reason 2 — at the lengths models run at, a fused softmax kernel is as fast or faster.** On this CPU "
        f"(unfused XLA softmax, fp32, {plan.speed.heads} heads × d {plan.speed.head_dim}) chunked elu linear "
        f"attention overtakes softmax from {fmt_len(cross.get('linear_chunked_elu', np.nan))} (tokens); at "
        f"{longest:,} tokens softmax takes {ratio:.1f}× the time of chunked linear attention; the Taylor map "
        f"(f = 1 + d + d², the one that recalls better) only from "
        f"{fmt_len(cross.get('linear_chunked_taylor', np.inf))}. The CPU softmax pays for writing and reading the "
        f"n² logits. A fused kernel never stores them and runs on tensor cores: in the H100 roofline model a fused "
        f"chunked linear kernel beats XLA's dense softmax from {model_at('elu', 'softmax_xla')} tokens (elu), but a "
        f"fused softmax only from {model_at('elu', 'softmax_fused', high)} tokens (softmax kernel at {high:.0%} of "
        f"peak; {model_at('elu', 'softmax_fused', low)} at {low:.0%}), and with the Taylor map from "
        f"{model_at('taylor', 'softmax_fused', high)} ({model_at('taylor', 'softmax_fused', low)}). Below those "
        "lengths — most training and prefill — softmax costs no more, and it needs no approximation. The two "
        "reasons compound: the feature map cheap enough to win on time (elu+1) is the one that lost on recall "
        "above, and the one that recalled like softmax (Taylor, f = 1 + d + d²) pays off only at tens of "
        "thousands of tokens.")
    lines.append(
        "- **What is not settled here:** the GPU figures are a model (this task had no GPU), with kernel efficiencies "
        "assumed (two shown for the softmax kernel); CPU timings were taken on a machine shared with other jobs "
        "(best of "
        f"{plan.speed.repeats} runs); recall was trained at one small budget, so a slower-learning model and a "
        "capacity limit are not separated (the width sweep and the train/eval accuracies in the tables help); "
        "decoding, where linear attention's constant state does win on memory, is part 2 (`kv_cache_4x`)."
        + (f" Left out of this run for time: {', '.join(plan.skip)}." if plan.get("skip") else ""))
    return "\n".join(lines)


def run(plan: DictConfig) -> None:
    plan = with_recipe(plan)
    started = time.perf_counter()
    runs = recall(plan)
    standard = standard_mqar(plan) if "standard_mqar" in plan else None
    identity = {"speed": OmegaConf.to_container(plan.speed, resolve=True)}
    import purerl.attention.linear as linear_module

    speed_tables = lab.measured(plan, "speed", identity, partial(speed, plan),
                                code=[linear_module, prefill_paths, best_time, machine_roofline, speed])
    timings, machine = speed_tables["timings"], speed_tables["machine"]
    model = gpu_model(plan)
    print(f"[{NAME}] measured in {time.perf_counter() - started:.0f} s", flush=True)

    report = lab.Report(plan, "Why exact softmax attention still wins over linear attention")
    report.add(
        "**Question.** Linear attention promises O(n) time and a constant-size state. Give two concrete reasons "
        "softmax attention (with FlashAttention-style kernels) still wins in practice — recall, and speed at the "
        "lengths models are run at.",
        "**Command** (trains and measures what is missing, then writes this report):\n\n"
        f"```bash\n{report.command()}\n```\n\n"
        f"Scale `{plan.scale}`; recipe `conf/experiment/{NAME}.yaml`, sizes "
        f"`conf/experiment/{NAME}/{plan.scale}.yaml`.",
        "## Answer\n\n" + answer(runs, standard, timings, machine, model, plan),
    )
    report.headline("Headline: MQAR recall per attention kind (IQM accuracy over seeds [95% CI]) and per-sequence "
                    "memory", lab.markdown_table(recall_table(runs, plan)))
    report.add("## Speed: prefill on this CPU", lab.markdown_table(speed_table(timings, machine, plan)))
    report.add(
        "## Crossover lengths",
        "Where chunked linear attention becomes faster than softmax attention: measured on this CPU (first length "
        "where the measured times cross, log-log interpolation), and from the roofline model on an H100.",
        lab.markdown_table(crossover_table(model, timings, plan)))
    report.add(
        "## GPU model",
        "Roofline: time = max(FLOPs / (efficiency × peak), bytes / bandwidth) + "
        f"{plan.gpu.launch_seconds * 1e6:g} µs per kernel launch "
        f"({', '.join(f'{k} {v}' for k, v in KERNELS.items())}), "
        "per path, batch 1, "
        f"{plan.speed.heads} heads, head_dim {plan.speed.head_dim}, chunk {plan.speed.chunk_size}; {plan.gpu.name} "
        f"figures {plan.gpu.bf16_flops / 1e12:.0f} TFLOP/s bf16 dense, {plan.gpu.hbm_bytes_per_s / 1e12:.2f} TB/s HBM. "
        f"Fused softmax at {', '.join(f'{e:.0%}' for e in plan.gpu.fused_efficiencies)} of peak (FlashAttention-2 "
        f"and -3 class); XLA's dense path at {plan.gpu.unfused_efficiency:.0%} of the bandwidth; a fused chunked "
        f"linear kernel (φ in registers, chunk states written and read once in fp32) at "
        f"{plan.gpu.linear_efficiency:.0%} of peak (it is bandwidth-bound for elu either way). The FLOP and byte "
        "counts are in "
        "`cost()` (experiments/softmax_vs_linear.py). " + calibration(plan),
        lab.markdown_table(gpu_table(plan)))
    report.figure(plot_recall(runs, plan), "recall.png",
                  "Recall accuracy against pairs and width (where softmax and Taylor are equal, the Taylor line hides "
                  "the softmax one)")
    report.figure(plot_speed(timings, plan), "prefill.png", "Prefill time: measured on this CPU, modelled on an H100")
    report.write()


def main(argv: list[str] | None = None) -> int:
    return lab.main(run, NAME, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
