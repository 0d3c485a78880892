"""`purerl-memory`: KV-cache and linear-state budgets of a model shape; `purerl-memory rlhf`:
training memory of RLHF set-ups. The accounting lives in `purerl.attention.memory` and
`purerl.llm.memory`; this module only parses flags and prints tables."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from purerl.attention.memory import DTYPE_ALIASES, format_bytes, kv_cache_bytes, memory_table, parse_bytes
from purerl.llm.memory import OFFLOADABLE, PRECISIONS, SETUPS, format_gb, offload_label, rlhf_rows
from purerl.results import markdown_table


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ["attention", "H_kv", "cache/token", "cache/sequence", "max batch in budget"]
    body = [[r["attention"], str(r["kv_heads"]),
             format_bytes(r["per_token"]) if r["per_token"] else "0 (constant)",
             format_bytes(r["per_sequence"]), f"{r['max_batch']:,}"] for r in rows]
    return markdown_table(header, body)


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




def parse_offload(text: str) -> tuple[str, ...]:
    """'none' or a comma-separated subset of OFFLOADABLE: 'reference,reward_model'."""
    if text.strip().lower() == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in OFFLOADABLE] or ([] if names else [text])
    if bad:
        raise ValueError(f"purerl-memory.offload: got {bad[0]!r}; allowed: 'none' or a comma-separated "
                         f"subset of {', '.join(OFFLOADABLE)}")
    return names




def render_rlhf_table(rows: list[dict[str, Any]], budget_bytes: int | None = None) -> str:
    """The rows of `purerl.llm.memory.rlhf_rows` as a Markdown table (decimal GB)."""
    header = ["set-up", "convention", "offloaded", "models on device", "weights on device", "gradients",
              "optimizer on device", "training state on device", "rollout KV", "device total", "on host"]
    if budget_bytes is not None:
        header.append(f"fits {format_gb(budget_bytes)}")  # one unit system: decimal GB
    body = []
    for r in rows:
        line = [r["setup"].upper(), r["precision"], offload_label(r["offload"]), str(r["device_models"]),
                format_gb(r["weights"] - r["offloaded_weights"]), format_gb(r["gradients"]),
                format_gb(r["optimizer"] - r["offloaded_optimizer"]), format_gb(r["device"]),
                format_gb(r["rollout_kv"]), format_gb(r["device_with_kv"]), format_gb(r["offloaded"])]
        if budget_bytes is not None:
            line.append("yes" if r["device_with_kv"] <= budget_bytes else "no")
        body.append(line)
    return markdown_table(header, body)


def rlhf_main(argv: Sequence[str]) -> None:
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
    parser.add_argument("--budget", default="80GiB",
                        help="accelerator memory, e.g. 80GiB or 80GB (the table is in decimal GB)")
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
    print(f"{params:,} parameters per model; {cache}; budget {format_gb(budget)} ({format_bytes(budget)})")
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
