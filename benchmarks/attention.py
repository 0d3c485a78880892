"""Attention benchmark: copy bandwidth, decode per token inside one program, prefill paths.

    .venv/bin/python benchmarks/attention.py                  # everything (minutes)
    .venv/bin/python benchmarks/attention.py --only decode    # decode targets only
    .venv/bin/python benchmarks/attention.py --only prefill --lengths 2048 8192 16384
    .venv/bin/python benchmarks/attention.py --only layouts   # cache layouts compared
    .venv/bin/python benchmarks/attention.py --clock cpu      # CPU seconds: a shared machine

Bandwidth: a jitted elementwise copy (y = x + 1) of a large array, counting bytes read plus
bytes written; the best of several runs. This is what a decode step can at most stream.

Decode: the library's decode path (`write_token` + `attend_cache` for softmax, the feature
maps + `linear_attention_step` for linear attention; no projections) run for `--decode-steps`
tokens inside ONE jitted `lax.scan` with the cache as the carry, so there is no per-token
dispatch; time per token = call time / steps. 32 query heads, d = 128, the cache filled to the
context length (random contents; lengths set so the last token lands at the context).
Bytes per token = K and V read once: 2 × B × H_kv × n × d × bytes/element. The linear state is
32 heads × (f × d + f) fp32 with f = d = 128 (2 MiB at B = 1).

Prefill: B = 1, 8 heads, d = 64, the attention core only (inputs already projected): XLA's
dense softmax (`jax.nn.dot_product_attention`, causal), the blockwise online-softmax path,
chunked linear attention (elu, chunk 64), all fp32, and on GPU XLA vs cuDNN in bf16. Dense
quadratic rows that would not fit in memory are skipped.

Every target is printed with its measured value and a met/missed verdict; ratios come from
one run.
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from purerl.attention.blockwise import blockwise_attention
from purerl.attention.linear import apply_feature_map, linear_attention_chunked, linear_attention_step
from purerl.attention.softmax import (
    CACHE_LAYOUTS,
    attend_cache,
    default_cache_layout,
    init_kv_cache,
    write_token,
)

ON_GPU = jax.default_backend() == "gpu"
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
QUERY_HEADS, HEAD_DIM = 32, 128
VARIANTS = (("MHA-32", 32), ("GQA-8", 8), ("MQA", 1))
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # set from --clock in main


def best_time(fn, *args, repeats: int = 3, budget_s: float = 30.0) -> float:
    """Best wall time of fn(*args) after one warm-up call (which also compiles)."""
    jax.block_until_ready(fn(*args))
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t = clock()
        jax.block_until_ready(fn(*args))
        times.append(clock() - t)
        if time.perf_counter() - start > budget_s:
            break
    return min(times)


def available_memory_bytes() -> int:
    if ON_GPU:
        stats = jax.devices()[0].memory_stats() or {}
        return int(stats.get("bytes_limit", 16 * 2**30) - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def copy_bandwidth(num_bytes: int) -> float:
    """Bytes read + written per second by a jitted y = x + 1 over an fp32 array.

    The input is donated, so each call reuses the buffer: a fresh output allocation per call
    would time the operating system's page zeroing on CPU, not memory bandwidth (2 GB/s instead
    of ~20 here).
    """
    step = jax.jit(lambda x, one: x + one, donate_argnums=0)
    one = jnp.float32(1)  # an argument, so XLA cannot fold the add away
    x = step(jnp.zeros((num_bytes // 4,), jnp.float32), one)
    times = []
    for _ in range(10):
        t = clock()
        x = jax.block_until_ready(step(x, one))
        times.append(clock() - t)
    return 2 * x.nbytes / min(times)


# ----------------------------------------------------------------------------- decode


def random_array(seed: int, shape, dtype) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32).astype(dtype)


def softmax_decoder(context: int, kv_heads: int, batch: int, dtype, steps: int,
                    layout: str | None):
    """A compiled call that decodes `steps` tokens in one program, and the KV bytes per token."""
    cache = init_kv_cache(batch, context, kv_heads, HEAD_DIM, dtype, layout,
                          group=QUERY_HEADS // kv_heads)
    cache = cache.replace(keys=random_array(0, cache.keys.shape, dtype),
                          values=random_array(1, cache.values.shape, dtype))
    queries = random_array(2, (steps, batch, QUERY_HEADS, HEAD_DIM), dtype)
    new_kv = random_array(3, (steps, batch, kv_heads, HEAD_DIM), dtype)
    start = np.full((batch,), context - steps, np.int32)

    @partial(jax.jit, donate_argnums=(0,))
    def decode_tokens(cache, queries, new_kv):
        def step(cache, inputs):
            q, kv = inputs
            cache = write_token(cache, kv, kv)
            return cache, attend_cache(q, cache, HEAD_DIM**-0.5)
        return jax.lax.scan(step, cache, (queries, new_kv))

    holder = [cache]

    def run():  # the cache is donated: keep the returned one for the next call
        cache, out = decode_tokens(holder[0].replace(lengths=jnp.asarray(start)), queries,
                                   new_kv)
        jax.block_until_ready(out)
        holder[0] = cache

    kv_bytes = 2 * batch * kv_heads * context * HEAD_DIM * jnp.dtype(dtype).itemsize
    return run, kv_bytes


def linear_decoder(batch: int, steps: int):
    """The same for linear attention; bytes = the fp32 state LinearAttention keeps."""
    state = (jnp.ones((batch, QUERY_HEADS, HEAD_DIM, HEAD_DIM)),
             jnp.ones((batch, QUERY_HEADS, HEAD_DIM)))
    inputs = random_array(0, (3, steps, batch, QUERY_HEADS, HEAD_DIM), jnp.float32)

    @partial(jax.jit, donate_argnums=(0,))
    def decode_tokens(state, q, k, v):
        def step(state, x):
            q, k, v = x
            out, state = linear_attention_step(apply_feature_map("elu", q),
                                               apply_feature_map("elu", k), v, state)
            return state, out
        return jax.lax.scan(step, state, (q, k, v))

    holder = [state]

    def run():
        state, out = decode_tokens(holder[0], *inputs)
        jax.block_until_ready(out)
        holder[0] = state

    return run, batch * QUERY_HEADS * (HEAD_DIM * HEAD_DIM + HEAD_DIM) * 4


def time_round_robin(runners: dict, rounds: int) -> dict:
    """Best time per runner, calling them in turn: a busy machine slows all of them alike."""
    for run in runners.values():
        run()  # compile
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for name, run in runners.items():
            t = clock()
            run()
            best[name] = min(best[name], clock() - t)
    return best


def decode_rows(args, memory_limit: int, layout: str | None) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for batch in args.batches:
            for context in args.contexts:
                row = {"dtype": dtype_name, "batch": batch, "context": context}
                runners, nbytes, steps = {}, {}, {}
                for name, kv_heads in VARIANTS:
                    size = 2 * batch * kv_heads * context * HEAD_DIM * jnp.dtype(dtype).itemsize
                    row[name] = None
                    if 1.5 * size < memory_limit:
                        runners[name], nbytes[name] = softmax_decoder(
                            context, kv_heads, batch, dtype, args.decode_steps, layout)
                        steps[name] = args.decode_steps
                steps["linear"] = 8 * args.decode_steps
                runners["linear"], nbytes["linear"] = linear_decoder(batch, steps["linear"])
                for name, seconds in time_round_robin(runners, args.rounds).items():
                    row[name] = (seconds / steps[name], nbytes[name])
                del runners  # free the caches before the next configuration
                rows.append(row)
                print("  decode " + label(row) + ": " + ", ".join(
                    f"{k} {ms(row[k])}" for k in ("MHA-32", "GQA-8", "MQA", "linear")),
                    flush=True)
    return rows


def label(row: dict) -> str:
    return f"{row['dtype']} B={row['batch']} n={row['context']:,}"


def ms(entry) -> str:
    return "skipped: memory" if entry is None else f"{entry[0] * 1e3:.3f} ms"


# ----------------------------------------------------------------------------- prefill


def prefill_rows(lengths, memory_limit: int, heads: int = 8, head_dim: int = 64,
                 chunk: int = 64) -> list[dict]:
    scale = head_dim**-0.5
    dense = lambda impl: jax.jit(partial(jax.nn.dot_product_attention, is_causal=True,
                                         scale=scale, implementation=impl))
    blockwise = jax.jit(partial(blockwise_attention, scale=scale, causal=True))

    @jax.jit
    def chunked(q, k, v):
        phi_q, phi_k = apply_feature_map("elu", q), apply_feature_map("elu", k)
        return linear_attention_chunked(phi_q, phi_k, v, chunk_size=chunk)[0]

    rows = []
    for n in lengths:
        q, k, v = random_array(n, (3, 1, n, heads, head_dim), jnp.float32) * 0.5
        # The dense path holds about two n×n×heads fp32 buffers (logits, probabilities).
        dense_fits = 2 * n * n * heads * 4 < memory_limit
        repeats = 3 if n <= 4096 else 2
        dense_repeats = repeats if n <= 4096 or ON_GPU else 1  # tens of seconds per call on CPU
        row = {"n": n,
               "xla": (best_time(dense("xla"), q, k, v, repeats=dense_repeats)
                       if dense_fits else None),
               "blockwise": best_time(blockwise, q, k, v, repeats=repeats),
               "chunked": best_time(chunked, q, k, v, repeats=repeats)}
        if ON_GPU:
            half = [a.astype(jnp.bfloat16) for a in (q, k, v)]
            row["xla_bf16"] = (best_time(dense("xla"), *half, repeats=repeats)
                               if dense_fits else None)
            row["cudnn_bf16"] = best_time(dense("cudnn"), *half, repeats=repeats)
        rows.append(row)
        print(f"  prefill n={n:,}: " + ", ".join(
            f"{k} {'skipped' if t is None else f'{t * 1e3:.1f} ms'}"
            for k, t in row.items() if k != "n"), flush=True)
    return rows


# ----------------------------------------------------------------------------- report


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def print_decode(rows: list[dict], bandwidth: float) -> None:
    print(f"\n## Decode per token inside one program (32 query heads, d = 128; time · bytes "
          f"read · share of the {bandwidth / 1e9:.1f} GB/s copy bandwidth)\n")
    body = []
    for r in rows:
        cells = [label(r)]
        for name in ("MHA-32", "GQA-8", "MQA", "linear"):
            if r[name] is None:
                cells.append("skipped: memory")
                continue
            t, nbytes = r[name]
            cells.append(f"{t * 1e3:.3f} ms · {nbytes / 2**20:,.0f} MiB · "
                         f"{nbytes / t / bandwidth:.0%}")
        body.append(cells)
    print(markdown_table(["dtype, batch, context", "MHA-32", "GQA-8", "MQA", "linear (state)"],
                         body))


def decode_targets(rows: list[dict], bandwidth: float) -> list[list[str]]:
    targets = []
    for r in rows:
        if r["context"] != max(x["context"] for x in rows) or r["MHA-32"] is None:
            continue
        mha_t, mha_bytes = r["MHA-32"]
        where = label(r)
        share = mha_bytes / mha_t / bandwidth
        targets.append([f"MHA-32 decode bandwidth ≥ 60% of copy ({where}; GPU target)",
                        f"{share:.0%}", verdict(share >= 0.6) if ON_GPU else "info (CPU)"])
        for name, goal in (("GQA-8", 3.2), ("MQA", 6.0)):
            if r[name] is not None:
                speedup = mha_t / r[name][0]
                hard = ON_GPU or name == "GQA-8"
                targets.append([f"{name} ≥ {goal}× faster than MHA-32 ({where})",
                                f"{speedup:.2f}×",
                                verdict(speedup >= goal) if hard else
                                f"info (CPU): {verdict(speedup >= goal)}"])
        share_linear = r["linear"][0] / mha_t
        targets.append([f"linear decode ≤ 5% of MHA-32's time ({where})", f"{share_linear:.1%}",
                        verdict(share_linear <= 0.05)])
    return targets


def print_prefill(rows: list[dict]) -> None:
    t = lambda x: "—" if x is None else f"{x * 1e3:.1f}"
    cudnn = lambda r, k: t(r[k]) if ON_GPU else "skipped: no GPU"
    print("\n## Prefill (B = 1, 8 heads, d = 64, causal; ms)\n")
    print(markdown_table(
        ["n", "xla fp32", "blockwise fp32", "linear chunked fp32", "xla bf16", "cudnn bf16"],
        [[f"{r['n']:,}", t(r["xla"]), t(r["blockwise"]), t(r["chunked"]),
          cudnn(r, "xla_bf16"), cudnn(r, "cudnn_bf16")] for r in rows]))


def prefill_targets(rows: list[dict]) -> list[list[str]]:
    from purerl.attention.softmax import dense_logits_limit
    limit = dense_logits_limit()
    # What SoftmaxAttention(implementation=None) runs at each length.
    default = {r["n"]: r["blockwise"] if 8 * r["n"] ** 2 >= limit else r["xla"] for r in rows}
    targets = []
    by_n = {r["n"]: r for r in rows}
    for n in sorted(by_n):
        if n // 2 in by_n and default[n] is not None and default[n // 2] is not None:
            growth = default[n] / default[n // 2]
            targets.append([f"default softmax prefill {n:,} / {n // 2:,} ≤ 6× (quadratic: 4×; "
                            "no cliff)", f"{growth:.1f}×", verdict(growth <= 6)])
    big = rows[-1]
    best_softmax = min(x for x in (big["xla"], big["blockwise"]) if x is not None)
    targets.append([f"chunked linear vs best softmax prefill at {big['n']:,} (info)",
                    f"{best_softmax / big['chunked']:.1f}× faster", "info"])
    return targets


def compare_layouts(args, memory_limit: int) -> None:
    """Every layout for every variant, interleaved; the backend's defaults are marked *."""
    print("\n## Cache layouts (decode per token, ms; * = this backend's default)\n")
    context, batch = max(args.contexts), args.batches[0]
    dtype = DTYPES[args.dtypes[0]]
    runners = {}
    for layout in CACHE_LAYOUTS:
        for name, kv_heads in VARIANTS:
            runners[layout, name] = softmax_decoder(context, kv_heads, batch, dtype,
                                                    args.decode_steps, layout)[0]
    best = time_round_robin(runners, args.rounds)
    body = []
    for layout in CACHE_LAYOUTS:
        cells = [layout]
        for name, kv_heads in VARIANTS:
            mark = "*" if layout == default_cache_layout(QUERY_HEADS // kv_heads) else ""
            cells.append(f"{best[layout, name] / args.decode_steps * 1e3:.2f}{mark}")
        body.append(cells)
    print(f"{args.dtypes[0]}, B={batch}, n={context:,}, 32 query heads, d = 128\n")
    print(markdown_table(["layout (K_V)", "MHA-32", "GQA-8", "MQA"], body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("decode", "prefill", "layouts"), default=None)
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768],
                        help="decode context lengths (the targets use the largest)")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES),
                        default=["fp32", "bf16"] if ON_GPU else ["fp32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8] if ON_GPU else [1])
    parser.add_argument("--decode-steps", type=int, default=64 if ON_GPU else 8,
                        help="tokens decoded per program (per-token time = time / steps)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="cpu: CPU seconds of this process (all threads; CPU backend "
                             "only), steadier than wall time on a machine shared with other "
                             "jobs. The copy bandwidth is timed with the same clock.")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed calls per decode variant (best of; variants interleaved)")
    parser.add_argument("--layout", choices=CACHE_LAYOUTS, default=None,
                        help="force a cache layout (default: the backend's measured choice)")
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[1024, 2048, 4096, 8192, 16384],
                        help="prefill lengths")
    args = parser.parse_args()
    if args.clock == "cpu" and ON_GPU:
        parser.error("--clock cpu measures host CPU time; on a GPU use wall time")
    global clock
    clock = CLOCKS[args.clock]
    memory_limit = int(0.7 * available_memory_bytes())
    device = jax.devices()[0]
    print(f"# {platform.processor() or platform.machine()}, {device.device_kind}, "
          f"jax {jax.__version__}, {args.clock} clock, cache layouts " + (
              args.layout or f"{default_cache_layout(1)} (MHA), {default_cache_layout(4)} "
                             "(grouped)"))
    bandwidth = copy_bandwidth(2**31 if ON_GPU else 2**29)
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s", flush=True)

    targets = []
    if args.only == "layouts":
        compare_layouts(args, memory_limit)
        return
    if args.only in (None, "decode"):
        decode = decode_rows(args, memory_limit, args.layout)
        print_decode(decode, bandwidth)
        targets += decode_targets(decode, bandwidth)
    if args.only in (None, "prefill"):
        prefill = prefill_rows(args.lengths, memory_limit)
        print_prefill(prefill)
        targets += prefill_targets(prefill)
    print("\n## Targets (this run)\n")
    print(markdown_table(["target", "measured", "verdict"], targets))


if __name__ == "__main__":
    main()
