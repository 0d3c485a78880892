"""Memory accounting for KV caches and linear-attention states, and the `purerl-memory` CLI
(`purerl-memory rlhf`: RLHF training memory, counted by `purerl.llm.memory`).

KV cache bytes = 2 (K and V) × layers × H_kv × head_dim × bytes/element × tokens × batch.
Linear state bytes = layers × heads × (f × d + f) × bytes/element × batch (S plus normaliser z),
independent of context length. The per-sequence bookkeeping (an int32 length and a bool
overflow flag: 5 bytes × batch per layer) is not counted.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from purerl.attention._checks import check_kv_heads
from purerl.config import check_positive_int

DTYPE_ALIASES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "f16": "float16", "float16": "float16",
    "fp32": "float32", "f32": "float32", "float32": "float32",
    "fp8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn",
}
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element; accepts numpy/jax dtypes and the names in DTYPE_ALIASES."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_ALIASES:
            raise ValueError(
                f"dtype_bytes.dtype: got {dtype!r}; allowed: {', '.join(sorted(DTYPE_ALIASES))}")
        dtype = DTYPE_ALIASES[dtype.lower()]
    return jnp.dtype(dtype).itemsize


def kv_cache_bytes(
    layers: int,
    num_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch: int = 1,
    dtype: Any = "bfloat16",
) -> int:
    """Bytes of K and V for `batch` sequences of `seq_len` tokens."""
    for name, value in [("layers", layers), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim), ("seq_len", seq_len), ("batch", batch)]:
        check_positive_int("kv_cache_bytes", name, value)
    return 2 * layers * num_kv_heads * head_dim * seq_len * batch * dtype_bytes(dtype)


def linear_state_bytes(
    layers: int,
    heads: int,
    feature_dim: int,
    head_dim: int,
    batch: int = 1,
    dtype: Any = "float32",
) -> int:
    """Bytes of the recurrent state (S [f, d] and z [f] per head): constant in context length."""
    for name, value in [("layers", layers), ("heads", heads), ("feature_dim", feature_dim),
                        ("head_dim", head_dim), ("batch", batch)]:
        check_positive_int("linear_state_bytes", name, value)
    return layers * heads * (feature_dim * head_dim + feature_dim) * batch * dtype_bytes(dtype)


def format_bytes(num_bytes: float) -> str:
    """Binary units, trailing zeros dropped: 524288 -> '512 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            text = f"{num_bytes:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """'80GiB', '80 GB', '1.5TiB', '1024' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"purerl-memory.budget: got {text!r}; allowed: a number with an optional unit in "
            f"{sorted(_UNITS)}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_table(
    layers: int,
    num_heads: int,
    head_dim: int,
    seq_len: int,
    dtype: Any,
    kv_heads: Sequence[int],
    budget_bytes: int,
    feature_dim: int | None = None,
) -> list[dict[str, Any]]:
    """One row per softmax variant (H_kv) plus linear attention with one state per head."""
    check_positive_int("purerl-memory", "heads", num_heads)
    rows = []
    for h_kv in kv_heads:
        check_kv_heads("purerl-memory", num_heads, h_kv, name="kv_heads", heads_name="heads")
        name = "MHA" if h_kv == num_heads else "MQA" if h_kv == 1 else "GQA"
        per_token = kv_cache_bytes(layers, h_kv, head_dim, 1, 1, dtype)
        per_seq = kv_cache_bytes(layers, h_kv, head_dim, seq_len, 1, dtype)
        rows.append(dict(attention=f"{name}-{h_kv}" if name == "GQA" else name, kv_heads=h_kv,
                         per_token=per_token, per_sequence=per_seq,
                         max_batch=budget_bytes // per_seq))
    width = feature_dim or head_dim
    state = linear_state_bytes(layers, num_heads, width, head_dim, 1, dtype)
    rows.append(dict(attention=f"linear (f={width})", kv_heads=num_heads, per_token=0,
                     per_sequence=state, max_batch=budget_bytes // state))
    return rows


def _markdown(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *map(fmt, body)])


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ["attention", "H_kv", "cache/token", "cache/sequence", "max batch in budget"]
    body = [[r["attention"], str(r["kv_heads"]),
             format_bytes(r["per_token"]) if r["per_token"] else "0 (constant)",
             format_bytes(r["per_sequence"]), f"{r['max_batch']:,}"] for r in rows]
    return _markdown(header, body)


# ----------------------------------------------------------------------------- RLHF training memory
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str, field: str = "params") -> int:
    """'7B', '6.74e9', '350M', '1.5T' -> a parameter count (decimal units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]?)\s*", text, re.IGNORECASE)
    if not match or match.group(2).lower() not in _COUNT_UNITS:
        raise ValueError(f"purerl-memory.{field}: got {text!r}; allowed: a count like 7B, 6.74e9, 350M")
    count = round(float(match.group(1)) * _COUNT_UNITS[match.group(2).lower()])
    if count <= 0:
        raise ValueError(f"purerl-memory.{field}: got {text!r}; allowed: a positive count like 7B")
    return count


def format_gb(num_bytes: float) -> str:
    """Decimal gigabytes, the unit of the hand arithmetic: 14e9 -> '14 GB'."""
    text = f"{num_bytes / 1e9:.2f}".rstrip("0").rstrip(".")
    return f"{text} GB"


def parse_offload(text: str) -> tuple[str, ...]:
    """'none' or a comma-separated subset of OFFLOADABLE: 'reference,reward_model'."""
    from purerl.llm.memory import OFFLOADABLE

    if text.strip().lower() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in OFFLOADABLE] or ([] if names else [text])
    if bad:
        raise ValueError(f"purerl-memory.offload: got {bad[0]!r}; allowed: 'none' or a comma-separated "
                         f"subset of {', '.join(OFFLOADABLE)}")
    return names


def offload_label(offload: Sequence[str]) -> str:
    names = {"reference": "reference", "reward_model": "reward model", "optimizer": "optimizer"}
    return " + ".join(names[n] for n in offload) if offload else "nothing"


def render_rlhf_table(rows: list[dict[str, Any]], budget_bytes: int | None = None) -> str:
    """The rows of `purerl.llm.memory.rlhf_rows` as a Markdown table (decimal GB)."""
    header = ["set-up", "convention", "offloaded", "models on device", "weights on device", "gradients",
              "optimizer on device", "training state on device", "rollout KV", "device total", "on host"]
    if budget_bytes is not None:
        header.append(f"fits {format_bytes(budget_bytes)}")
    body = []
    for r in rows:
        line = [r["setup"].upper(), r["precision"], offload_label(r["offload"]), str(r["device_models"]),
                format_gb(r["weights"] - r["offloaded_weights"]), format_gb(r["gradients"]),
                format_gb(r["optimizer"] - r["offloaded_optimizer"]), format_gb(r["device"]),
                format_gb(r["rollout_kv"]), format_gb(r["device_with_kv"]), format_gb(r["offloaded"])]
        if budget_bytes is not None:
            line.append("yes" if r["device_with_kv"] <= budget_bytes else "no")
        body.append(line)
    return _markdown(header, body)


def rlhf_main(argv: Sequence[str]) -> None:
    from purerl.llm.memory import PRECISIONS, SETUPS, rlhf_rows

    parser = argparse.ArgumentParser(
        prog="purerl-memory rlhf",
        description="Training-time accelerator memory of RLHF set-ups (PPO, GRPO, DPO): weights, "
                    "gradients, Adam states, offloading, rollout KV cache.",
    )
    parser.add_argument("--params", default="7B", help="policy parameters, e.g. 7B, 6.74e9")
    parser.add_argument("--scalar-params", default=None,
                        help="critic / reward-model parameters (default: --params)")
    parser.add_argument("--setups", nargs="+", default=["ppo", "grpo", "dpo"], help=f"any of {SETUPS}")
    parser.add_argument("--precision", nargs="+", default=["bf16", "mixed"],
                        help=f"conventions, any of {tuple(PRECISIONS)}")
    parser.add_argument("--offload", nargs="+", default=["none", "reference,reward_model",
                                                         "reference,reward_model,optimizer"],
                        help="offload choices, one table row each: 'none' or a comma-separated subset "
                             "of reference, reward_model, optimizer")
    parser.add_argument("--no-reward-model", action="store_true",
                        help="PPO/GRPO with a verifiable reward (no reward model)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rollout-batch", type=int, default=0,
                        help="sequences sampled at once by PPO/GRPO (0: leave the KV cache out)")
    parser.add_argument("--rollout-len", type=int, default=2048, help="prompt + completion tokens")
    parser.add_argument("--kv-dtype", default="bf16", help=f"one of {sorted(DTYPE_ALIASES)}")
    parser.add_argument("--budget", default="80GiB", help="accelerator memory, e.g. 80GiB")
    args = parser.parse_args(argv)
    try:
        params = parse_count(args.params)
        scalar = None if args.scalar_params is None else parse_count(args.scalar_params, "scalar_params")
        for setup in args.setups:
            if setup not in SETUPS:
                raise ValueError(f"purerl-memory.setups: got {setup!r}; allowed: {', '.join(SETUPS)}")
        for precision in args.precision:
            if precision not in PRECISIONS:
                raise ValueError(f"purerl-memory.precision: got {precision!r}; allowed: "
                                 f"{', '.join(PRECISIONS)}")
        offloads = [parse_offload(text) for text in args.offload]
        if args.rollout_batch < 0:
            raise ValueError(f"purerl-memory.rollout_batch: got {args.rollout_batch}; allowed: an integer "
                             "≥ 0 (0: no KV cache)")
        kv = None
        if args.rollout_batch:
            kv = dict(layers=args.layers, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                      rollout_batch=args.rollout_batch, rollout_len=args.rollout_len, dtype=args.kv_dtype)
            kv_cache_bytes(**{k: v for k, v in kv.items() if k not in ("rollout_batch", "rollout_len")},
                           seq_len=args.rollout_len, batch=args.rollout_batch)  # validates the shape
        budget = parse_bytes(args.budget)
        rows = rlhf_rows(params, args.setups, args.precision, offloads, scalar_params=scalar,
                         reward_model=not args.no_reward_model, kv=kv)
    except ValueError as err:
        parser.error(str(err))
    cache = (f"rollout KV cache: {args.rollout_batch} × {args.rollout_len:,} tokens, {args.layers} layers × "
             f"{args.kv_heads} KV heads × head_dim {args.head_dim}, {args.kv_dtype}" if kv else
             "no rollout KV cache (--rollout-batch 0)")
    print(f"{params:,} parameters per model; {cache}; budget {format_bytes(budget)}")
    for precision in dict.fromkeys(args.precision):
        print(f"  {precision}: {PRECISIONS[precision].label}")
    print(render_rlhf_table(rows, budget))


def main(argv: Sequence[str] | None = None) -> None:
    """`purerl-memory [flags]`: KV-cache budgets; `purerl-memory rlhf [flags]`: RLHF training memory."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["rlhf"]:
        return rlhf_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="purerl-memory",
        description="KV-cache and linear-attention state memory for a model shape "
                    "(`purerl-memory rlhf --help`: training memory of RLHF set-ups).",
    )
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32, help="query heads H_q")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=8192, help="context length in tokens")
    parser.add_argument("--dtype", default="bf16", help=f"one of {sorted(DTYPE_ALIASES)}")
    parser.add_argument("--kv-heads", type=int, nargs="+", default=None,
                        help="H_kv values to compare (default: H_q, 8, 1)")
    parser.add_argument("--feature-dim", type=int, default=None,
                        help="linear-attention feature width f (default: head_dim)")
    parser.add_argument("--budget", default="80GiB", help="memory budget, e.g. 80GiB")
    args = parser.parse_args(argv)
    kv_heads = args.kv_heads or sorted({args.heads, min(8, args.heads), 1}, reverse=True)
    try:
        budget = parse_bytes(args.budget)
        rows = memory_table(args.layers, args.heads, args.head_dim, args.seq_len, args.dtype,
                            kv_heads, budget, args.feature_dim)
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.layers} layers, {args.heads} query heads, head_dim {args.head_dim}, "
          f"{args.seq_len:,} tokens, {args.dtype}, budget {format_bytes(budget)}")
    print(render_table(rows))


if __name__ == "__main__":
    main()
