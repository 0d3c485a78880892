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
from purerl.llm.memory import (
    OFFLOADABLE,
    PRECISIONS,
    RECOMPUTE,
    SETUPS,
    Workload,
    format_gb,
    offload_label,
    rlhf_rows,
)
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
    """The rows of `purerl.llm.memory.rlhf_rows` as a Markdown table (decimal GB): the training
    state, then the accelerator memory of each phase and the peak over the phases."""
    header = ["set-up", "reward", "convention", "offloaded", "models on device", "weights on device",
              "gradients on device", "optimizer on device", "training state on device", "generation", "scoring",
              "training", "peak (phase)", "on host"]
    if budget_bytes is not None:
        header.append(f"fits {format_gb(budget_bytes)}")  # one unit system: decimal GB
    body = []
    for r in rows:
        reward = "model" if r["reward_model"] else ("verifiable" if r["setup"] in ("grpo", "ppo") else "-")
        line = [r["setup"].upper(), reward, r["precision"], offload_label(r["offload"]), str(r["device_models"]),
                format_gb(r["weights"] - r["offloaded_weights"]), format_gb(r["device_gradients"]),
                format_gb(r["optimizer"] - r["offloaded_optimizer"]), format_gb(r["device"]),
                format_gb(r["generation"]) if r["generation"] else "-",
                format_gb(r["scoring"]) if r["scoring"] else "-", format_gb(r["training"]),
                f"{format_gb(r['peak'])} ({r['peak_phase']})", format_gb(r["offloaded"])]
        if budget_bytes is not None:
            line.append("yes" if r["peak"] <= budget_bytes else "no")
        body.append(line)
    return markdown_table(header, body)


def rlhf_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="purerl-memory rlhf",
        description="Accelerator memory of RLHF set-ups (PPO, GRPO, DPO) phase by phase — generation "
                    "(weights + rollout KV cache), scoring, training (weights + gradients + Adam states + "
                    "activations) — and its peak, with offloading (ZeRO-Offload for the optimizer).",
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
                             "of reference, reward_model, optimizer (ZeRO-Offload: gradients, optimizer "
                             "state and step on the host)")
    parser.add_argument("--no-reward-model", action="store_true",
                        help="PPO/GRPO with a verifiable reward only (no reward model)")
    parser.add_argument("--both-rewards", action="store_true",
                        help="PPO/GRPO rows with a reward model and with a verifiable reward")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096, help="model width h")
    parser.add_argument("--heads", type=int, default=32, help="query heads a")
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rollout-batch", type=int, default=64, help="sequences sampled at once by PPO/GRPO")
    parser.add_argument("--rollout-len", type=int, default=1536, help="prompt + completion tokens")
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="sequences per forward/backward pass when scoring and training")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per trained sequence (default: "
                                                                   "--rollout-len)")
    parser.add_argument("--recompute", default="full", help=f"activation recomputation, one of {RECOMPUTE}")
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
        for flag in ("rollout_batch", "rollout_len", "micro_batch"):
            if getattr(args, flag) < 1:
                raise ValueError(f"purerl-memory.{flag}: got {getattr(args, flag)}; allowed: an integer ≥ 1")
        kv_cache_bytes(args.layers, args.kv_heads, args.head_dim, args.rollout_len, args.rollout_batch,
                       args.kv_dtype)  # validates the cache's shape with its own field names
        workload = Workload(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                            head_dim=args.head_dim, vocab=args.vocab, rollout_batch=args.rollout_batch,
                            rollout_len=args.rollout_len, micro_batch=args.micro_batch,
                            seq_len=args.seq_len or args.rollout_len, recompute=args.recompute,
                            kv_dtype=args.kv_dtype)
        budget = parse_bytes(args.budget)
        rewards = (True, False) if args.both_rewards else ((False,) if args.no_reward_model else (True,))
        rows = rlhf_rows(params, args.setups, args.precision, offloads, workload, scalar_params=scalar,
                         rewards=rewards)
    except ValueError as err:
        parser.error(str(err))
    print(f"{params:,} parameters per model; rollout {args.rollout_batch} × {args.rollout_len:,} tokens, "
          f"{args.layers} layers × {args.kv_heads} KV heads × head_dim {args.head_dim}, {args.kv_dtype} cache; "
          f"training micro-batch {args.micro_batch} × {workload.seq_len:,} tokens, recompute {args.recompute}; "
          f"budget {format_gb(budget)} ({format_bytes(budget)})")
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
