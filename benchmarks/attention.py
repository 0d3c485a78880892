"""Attention benchmark: prefill time vs length, decode step time vs context, bandwidth.

    .venv/bin/python benchmarks/attention.py            # full run (a few minutes)
    .venv/bin/python benchmarks/attention.py --quick    # small sizes, seconds

Prefill: B=1, 8 heads, d=64, fp32, attention core only (inputs already projected): XLA softmax
(`jax.nn.dot_product_attention`, causal) vs chunked linear (elu, chunk 64) vs parallel linear.
Quadratic forms materialise n×n×heads fp32 scores; sizes that would not fit in the available
memory are skipped.

Decode: B=1, 32 query heads, d=128, fp32 cache filled to the context length; one step = write
the new K/V into the cache + attend (the code path of SoftmaxAttention.decode without the
projections), jitted with the cache donated. KV bytes read per step = 2 × H_kv × n × d × 4.
The machine's read bandwidth is measured in the same run (sum over a 1 GiB array).
All ratios in the summary come from this one run.
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import jax
import jax.numpy as jnp

from purerl.attention.linear import (
    apply_feature_map,
    linear_attention_chunked,
    linear_attention_parallel,
    linear_attention_step,
)
from purerl.attention.softmax import attend_cache, init_kv_cache, write_token


def best_time(fn, *args, repeats: int = 5, budget_s: float = 20.0) -> float:
    """Best wall time of `fn(*args)` after one warm-up call (which also compiles).

    repeats=0 times the first call itself, compile included: for multi-second calls where a
    warm-up would double the cost and compilation is negligible.
    """
    if repeats == 0:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - t
    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return min(times)


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def read_bandwidth(num_bytes: int) -> float:
    """Bytes/s of a jitted sum over a fresh fp32 array (best of several)."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    return x.nbytes / best_time(jax.jit(jnp.sum), x, repeats=10)


# ----------------------------------------------------------------------------- prefill


def prefill_table(lengths, heads=8, head_dim=64, chunk=64, memory_limit=0):
    softmax = jax.jit(partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla"))

    @jax.jit
    def chunked(q, k, v):
        phi_q, phi_k = apply_feature_map("elu", q), apply_feature_map("elu", k)
        return linear_attention_chunked(phi_q, phi_k, v, chunk_size=chunk)[0]

    @jax.jit
    def parallel(q, k, v):
        return linear_attention_parallel(apply_feature_map("elu", q), apply_feature_map("elu", k),
                                         v)

    rows = []
    for n in lengths:
        key = jax.random.PRNGKey(n)
        q, k, v = jax.random.normal(key, (3, 1, n, heads, head_dim)) * 0.5
        # One n×n×heads fp32 score buffer plus headroom (XLA fuses mask and softmax into it).
        quadratic_fits = 1.25 * n * n * heads * 4 < memory_limit
        repeats = 5 if n <= 4096 else 2
        quadratic_repeats = repeats if n <= 8192 else 0  # ~35 s per call at 16k
        row = {"n": n}
        row["softmax"] = (best_time(softmax, q, k, v, repeats=quadratic_repeats)
                          if quadratic_fits else None)
        row["chunked"] = best_time(chunked, q, k, v, repeats=repeats)
        row["parallel"] = (best_time(parallel, q, k, v, repeats=quadratic_repeats)
                           if quadratic_fits else None)
        rows.append(row)
        fmt = lambda t: "skipped" if t is None else f"{t * 1e3:.1f} ms"
        print(f"  prefill n={n}: softmax {fmt(row['softmax'])}, chunked {fmt(row['chunked'])}, "
              f"parallel {fmt(row['parallel'])}", flush=True)
    return rows


# ----------------------------------------------------------------------------- decode


def softmax_decode_time(context, num_heads, kv_heads, head_dim):
    cache = init_kv_cache(1, context, kv_heads, head_dim)
    cache = cache.replace(
        keys_t=jax.random.normal(jax.random.PRNGKey(0), cache.keys_t.shape),
        values=jax.random.normal(jax.random.PRNGKey(1), cache.values.shape),
    )
    q = jax.random.normal(jax.random.PRNGKey(2), (1, num_heads, head_dim))
    k_new = jax.random.normal(jax.random.PRNGKey(3), (1, kv_heads, head_dim))
    scale = head_dim**-0.5

    @partial(jax.jit, donate_argnums=(0,))
    def step(cache, q, k_new):
        cache = write_token(cache, k_new, k_new)
        return attend_cache(q, cache, scale), cache

    # Each step fills the last slot; a fresh lengths array each time, since the cache is donated.
    full = lambda: jax.block_until_ready(jnp.full((1,), context - 1, jnp.int32))
    out, cache = step(cache.replace(lengths=full()), q, k_new)
    jax.block_until_ready(out)
    times = []
    for _ in range(10 if context <= 8192 else 6):
        cache = cache.replace(lengths=full())
        t = time.perf_counter()
        out, cache = step(cache, q, k_new)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return min(times), 2 * kv_heads * context * head_dim * 4


def linear_decode_time(num_heads, head_dim):
    state = (jnp.ones((1, num_heads, head_dim, head_dim)), jnp.ones((1, num_heads, head_dim)))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 1, num_heads, head_dim))

    @partial(jax.jit, donate_argnums=(3,))
    def step(q, k, v, state):
        return linear_attention_step(apply_feature_map("elu", q), apply_feature_map("elu", k), v,
                                     state)

    out, state = step(x[0], x[1], x[2], state)
    jax.block_until_ready(out)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        out, state = step(x[0], x[1], x[2], state)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    state_bytes = num_heads * (head_dim * head_dim + head_dim) * 4
    return min(times), state_bytes


def decode_table(contexts, num_heads=32, head_dim=128):
    variants = [("MHA-32", 32), ("GQA-8", 8), ("MQA", 1)]
    rows = []
    for n in contexts:
        row = {"n": n}
        for name, kv_heads in variants:
            row[name] = softmax_decode_time(n, num_heads, kv_heads, head_dim)
        # The linear state does not depend on n; measured per context for the flatness check.
        row["linear"] = linear_decode_time(num_heads, head_dim)
        rows.append(row)
        print("  decode n=" + str(n) + ": " + ", ".join(
            f"{k} {row[k][0] * 1e3:.2f} ms" for k in ("MHA-32", "GQA-8", "MQA", "linear")),
            flush=True)
    return rows


# ----------------------------------------------------------------------------- report


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    parser.add_argument("--max-n", type=int, default=16384, help="largest prefill length")
    parser.add_argument("--max-context", type=int, default=32768, help="largest decode context")
    parser.add_argument("--only", choices=("prefill", "decode"), default=None,
                        help="run one half of the benchmark")
    args = parser.parse_args()
    max_n = min(args.max_n, 2048) if args.quick else args.max_n
    max_ctx = min(args.max_context, 4096) if args.quick else args.max_context
    lengths = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384) if n <= max_n]
    contexts = [n for n in (1024, 2048, 4096, 8192, 16384, 32768) if n <= max_ctx]
    memory_limit = int(0.8 * available_memory_bytes())

    print(f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}, {jax.device_count()} device(s)")
    bandwidth = read_bandwidth(2**28 if args.quick else 2**30)
    print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s", flush=True)

    prefill = [] if args.only == "decode" else prefill_table(lengths, memory_limit=memory_limit)
    decode = [] if args.only == "prefill" else decode_table(contexts)

    ms = lambda t: "—" if t is None else f"{t * 1e3:.1f}"
    ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.1f}×"
    if prefill:
        print_prefill(prefill, ms, ratio)
    if decode:
        print_decode(decode, bandwidth)
    print("\n## Summary (same run)\n")
    print(markdown_table(["quantity", "measured"], summary_rows(prefill, decode, bandwidth, ratio)))


def print_prefill(prefill, ms, ratio):
    print("\n## Prefill (B=1, 8 heads, d=64, fp32; ms)\n")
    print(markdown_table(
        ["n", "softmax (xla)", "linear chunked (C=64)", "linear parallel",
         "softmax / chunked"],
        [[f"{r['n']:,}", ms(r["softmax"]), ms(r["chunked"]), ms(r["parallel"]),
          ratio(r["softmax"], r["chunked"])] for r in prefill]))


def print_decode(decode, bandwidth):
    print(f"\n## Decode step (B=1, 32 query heads, d=128, fp32 cache; time · KV bytes read · "
          f"effective bandwidth (share of measured {bandwidth / 1e9:.1f} GB/s))\n")
    body = []
    for r in decode:
        cells = [f"{r['n']:,}"]
        for name in ("MHA-32", "GQA-8", "MQA", "linear"):
            t, nbytes = r[name]
            cells.append(f"{t * 1e3:.2f} ms · {nbytes / 2**20:.1f} MiB · "
                         f"{nbytes / t / 1e9:.1f} GB/s ({nbytes / t / bandwidth:.0%})")
        body.append(cells)
    print(markdown_table(["context", "MHA-32", "GQA-8", "MQA", "linear (state)"], body))


def summary_rows(prefill, decode, bandwidth, ratio):
    rows = []
    if decode:
        last, first = decode[-1], decode[0]
        mha_t, mha_bytes = last["MHA-32"]
        rows += [
            [f"MHA-32 decode bandwidth at {last['n']:,} (target ≥ 50% of measured)",
             f"{mha_bytes / mha_t / 1e9:.1f} GB/s = {mha_bytes / mha_t / bandwidth:.0%}"],
            [f"GQA-8 vs MHA-32 decode speed-up at {last['n']:,} (target ≥ 3.2×; bytes 4×)",
             f"{mha_t / last['GQA-8'][0]:.2f}×"],
            [f"MQA vs MHA-32 decode speed-up at {last['n']:,}",
             f"{mha_t / last['MQA'][0]:.1f}×"],
            [f"linear decode time {last['n']:,} / {first['n']:,} context (flat ≈ 1)",
             f"{last['linear'][0] / first['linear'][0]:.2f}"],
            [f"MHA-32 decode time {last['n']:,} / {first['n']:,} context",
             f"{mha_t / first['MHA-32'][0]:.1f}"],
        ]
    if prefill:
        big = prefill[-1]
        rows.append([f"softmax / chunked-linear prefill at n={big['n']:,} (target ≥ 10×)",
                     ratio(big["softmax"], big["chunked"])])
    return rows


if __name__ == "__main__":
    main()
