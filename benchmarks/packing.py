"""Sequence packing vs padding: one TinyLM training pass (forward + backward of the next-token
loss) over a length-skewed batch.

    .venv/bin/python benchmarks/packing.py                        # defaults below
    .venv/bin/python benchmarks/packing.py --sequences 256 --d-model 256 --clock cpu

Lengths are drawn from a long-tailed (log-normal) distribution, clipped to [4, --max-len]: most
sequences are short, a few are long. The same sequences are laid out two ways:
- padded: one sequence per row, right-padded to --max-len, `padding_mask`;
- packed: `purerl.attention.pack` (first-fit decreasing) into rows of --max-len, `segment_ids`.
Both run the same attention path (dense XLA softmax with an explicit mask), so only the layout
differs. Reported: rows, the fraction of token slots that are real, time per pass (best of
--rounds after a compile + warm-up call), real tokens per second, and the compiled program's
memory (`jax.jit(...).lower(...).compile().memory_analysis()`: temporaries, and temporaries +
arguments + outputs), with packed/padded ratios from the same run.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from purerl.attention import LMConfig, TinyLM, next_token_loss, pack
from purerl.attention.packing import pad

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def skewed_lengths(rng: np.random.Generator, n: int, max_len: int) -> np.ndarray:
    """Log-normal lengths, median max_len / 8, clipped to [4, max_len]."""
    return np.clip(np.round(rng.lognormal(np.log(max_len / 8), 0.9, n)), 4, max_len).astype(int)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def measure(model: TinyLM, params, tokens: np.ndarray, ids: np.ndarray, kind: str, rounds: int,
            clock) -> dict[str, float]:
    def loss(params, tokens, ids):
        mask = {"padding_mask": ids > 0} if kind == "padded" else {"segment_ids": ids}
        return next_token_loss(model.apply(params, tokens, **mask), tokens, ids)

    step = jax.jit(jax.value_and_grad(loss))
    args = (params, jnp.asarray(tokens), jnp.asarray(ids))
    compiled = step.lower(*args).compile()
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        jax.block_until_ready(compiled(*args))
        best = min(best, clock() - start)
    temp = float(memory.temp_size_in_bytes) if memory is not None else float("nan")
    total = temp + (float(memory.argument_size_in_bytes + memory.output_size_in_bytes)
                    if memory is not None else float("nan"))
    return {"seconds": best, "temp": temp, "total": total,
            "loss": float(compiled(*args)[0])}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    lengths = skewed_lengths(rng, args.sequences, args.max_len)
    seqs = [rng.integers(1, args.vocab, n).astype(np.int32) for n in lengths]
    config = LMConfig(vocab_size=args.vocab, max_len=args.max_len, d_model=args.d_model,
                      num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.heads,
                      position="rope")
    model = TinyLM(config)
    params = jax.jit(model.init)(jax.random.PRNGKey(args.seed),
                                 jnp.zeros((1, args.max_len), jnp.int32))
    padded, mask = pad(seqs, args.max_len)
    packed = pack(seqs, args.max_len)
    layouts = {"padded": (padded, mask.astype(np.int32)), "packed": (packed.tokens,
                                                                      packed.segment_ids)}
    real = int(lengths.sum())
    print(f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}, "
          f"{args.clock} clock; {args.sequences} sequences, lengths median "
          f"{int(np.median(lengths))}, mean {lengths.mean():.0f}, max {lengths.max()} "
          f"(row length {args.max_len}); TinyLM d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads} heads, RoPE, fp32")
    results = {}
    for kind, (tokens, ids) in layouts.items():
        results[kind] = measure(model, params, tokens, ids, kind, args.rounds,
                                CLOCKS[args.clock])
        results[kind]["rows"] = tokens.shape[0]
        results[kind]["fill"] = real / tokens.size
        results[kind]["tokens_per_s"] = real / results[kind]["seconds"]
    print(f"| layout | rows × length | real slots | ms / pass ({args.clock}) | real tokens/s | "
          "temp memory | temp + args + out |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['rows']} × {args.max_len} | {r['fill']:.1%} | "
              f"{r['seconds'] * 1e3:,.1f} | {r['tokens_per_s']:,.0f} | {mib(r['temp'])} | "
              f"{mib(r['total'])} |")
    a, b = results["packed"], results["padded"]
    print(f"packed / padded: {a['tokens_per_s'] / b['tokens_per_s']:.2f}× tokens/s, "
          f"{a['temp'] / b['temp']:.2f}× temp memory, {a['total'] / b['total']:.2f}× total; "
          f"loss {a['loss']:.6f} packed vs {b['loss']:.6f} padded")
    return results


if __name__ == "__main__":
    main()
