"""How many models an RLHF set-up holds, and what they cost in memory (the RLHF memory calculator's
arithmetic), to set next to the peak memory XLA allocates for our runs. The `purerl-memory rlhf`
command prints these figures (`purerl/attention/memory.py`); this module is their one accounting.

Each set-up is a list of model roles; a trained role carries weights + gradients + optimizer
state, a frozen one only weights:

    sft           actor
    dpo           actor, reference
    grpo          actor, reference (+ reward model)
    ppo           actor, critic, reference (+ reward model)
    reward_model  reward model (trained), sampling policy (frozen)

Bytes per parameter by precision convention:
    fp32   weights 4, gradients 4, Adam 8 (two fp32 moments)  — what purerl trains in
    bf16   weights 2, gradients 2, Adam 4 (two bf16 moments)  — the seeds' "bf16 everywhere"
    mixed  weights 2, gradients 2, Adam 12 (fp32 master copy + two fp32 moments)

Offloading (`offload=`) moves the frozen reference and reward model, and/or the optimizer state
(Adam moments, and the master copy under `mixed`), to host memory: their bytes leave the
accelerator's total (`device`) and are counted in `offloaded`. Generation for PPO/GRPO adds the
rollout KV cache (`rollout_kv_bytes`, the formula of `purerl.attention.memory.kv_cache_bytes`).

Check against the seeds: a 7B GRPO actor + reference + reward model in bf16 is 3 × 14 GB = 42 GB
of weights, + 28 GB Adam + 14 GB gradients = 84 GB; offloading reference and reward model leaves
56 GB, offloading the optimizer too leaves 28 GB (`tests/test_llm_memory.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from purerl.attention.memory import kv_cache_bytes
from purerl.config import check_choice


@dataclass(frozen=True)
class Precision:
    weights: int
    gradients: int
    optimizer: int
    label: str = ""


PRECISIONS = {
    "fp32": Precision(4, 4, 8, "fp32 weights, gradients and two Adam moments (4 + 4 + 8 B/param)"),
    "bf16": Precision(2, 2, 4, "hand arithmetic: bf16 weights, gradients and two bf16 Adam moments "
                               "(2 + 2 + 4 B/param)"),
    "mixed": Precision(2, 2, 12, "mixed precision: bf16 weights and gradients, fp32 master copy + two fp32 "
                                 "Adam moments (2 + 2 + 12 B/param)"),
}
SETUPS = ("sft", "dpo", "grpo", "ppo", "reward_model")
OFFLOADABLE = ("reference", "reward_model", "optimizer")
GENERATING = ("grpo", "ppo")  # set-ups that sample rollouts (and so hold a KV cache) while training


def roles(setup: str, reward_model: bool = False) -> list[tuple[str, bool]]:
    """(role, trained) for every model the set-up keeps in memory."""
    check_choice("memory", "setup", setup, SETUPS)
    if setup == "reward_model":
        return [("reward_model", True), ("policy", False)]
    models = [("actor", True)]
    if setup == "ppo":
        models.append(("critic", True))
    if setup != "sft":
        models.append(("reference", False))
    if reward_model and setup in ("grpo", "ppo"):
        models.append(("reward_model", False))
    return models


def check_offload(offload: Sequence[str]) -> tuple[str, ...]:
    offload = tuple(offload)
    for name in offload:
        check_choice("memory", "offload", name, OFFLOADABLE)
    return offload


def setup_memory(setup: str, policy_params: int, scalar_params: int | None = None, *,
                 reward_model: bool = False, precision: str = "fp32",
                 offload: Sequence[str] = ()) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state of a set-up, their total, and how the total
    splits between the accelerator (`device`) and host memory (`offloaded`).

    `scalar_params`: parameters of a scalar-head model (critic, reward model); defaults to the
    policy's (a 7B critic for a 7B actor). `offload`: any of OFFLOADABLE; a frozen model the
    set-up does not hold (DPO's reward model) moves nothing. A trained reward model
    (`setup="reward_model"`) is never offloaded as a frozen one."""
    check_choice("memory", "precision", precision, tuple(PRECISIONS))
    offload = check_offload(offload)
    for name, value in (("policy_params", policy_params), ("scalar_params", scalar_params)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"memory.{name}: got {value!r}; allowed: an integer ≥ 0")
    bytes_per = PRECISIONS[precision]
    scalar_params = policy_params if scalar_params is None else scalar_params
    out = {"models": 0, "device_models": 0, "weights": 0, "gradients": 0, "optimizer": 0,
           "offloaded_weights": 0, "offloaded_optimizer": 0}
    for role, trained in roles(setup, reward_model):
        size = scalar_params if role in ("critic", "reward_model") else policy_params
        out["models"] += 1
        out["weights"] += size * bytes_per.weights
        frozen_offloaded = not trained and role in offload
        if frozen_offloaded:
            out["offloaded_weights"] += size * bytes_per.weights
        else:
            out["device_models"] += 1
        if trained:
            out["gradients"] += size * bytes_per.gradients
            out["optimizer"] += size * bytes_per.optimizer
            if "optimizer" in offload:
                out["offloaded_optimizer"] += size * bytes_per.optimizer
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    out["offloaded"] = out["offloaded_weights"] + out["offloaded_optimizer"]
    out["device"] = out["total"] - out["offloaded"]
    return out


def rollout_kv_bytes(setup: str, layers: int, num_kv_heads: int, head_dim: int, rollout_batch: int,
                     rollout_len: int, dtype: Any = "bfloat16") -> int:
    """KV cache of the policy while it samples `rollout_batch` sequences of `rollout_len` tokens
    (prompt + completion); 0 for set-ups that do not generate while training (SFT, offline DPO,
    reward model)."""
    check_choice("memory", "setup", setup, SETUPS)
    cache = kv_cache_bytes(layers, num_kv_heads, head_dim, rollout_len, rollout_batch, dtype)
    return cache if setup in GENERATING else 0


def rlhf_rows(policy_params: int, setups: Sequence[str], precisions: Sequence[str],
              offloads: Sequence[Sequence[str]], *, scalar_params: int | None = None,
              reward_model: bool = True, kv: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per set-up × precision × offload choice: `setup_memory` plus the rollout KV cache
    (`kv`: the keyword arguments of `rollout_kv_bytes` other than `setup`; None: no cache)."""
    rows = []
    for setup in setups:
        for precision in precisions:
            for offload in offloads:
                memory = setup_memory(setup, policy_params, scalar_params, reward_model=reward_model,
                                      precision=precision, offload=offload)
                cache = rollout_kv_bytes(setup, **kv) if kv else 0
                frozen = {role for role, trained in roles(setup, reward_model) if not trained}
                moved = tuple(n for n in offload if n == "optimizer" or n in frozen)  # what actually moved
                rows.append({"setup": setup, "precision": precision, "offload": moved, **memory,
                             "rollout_kv": cache, "device_with_kv": memory["device"] + cache})
    return rows

def format_gb(num_bytes: float) -> str:
    """Decimal gigabytes, the unit of the hand arithmetic: 14e9 -> '14 GB'."""
    text = f"{num_bytes / 1e9:.2f}".rstrip("0").rstrip(".")
    return f"{text} GB"


def offload_label(offload: Sequence[str]) -> str:
    names = {"reference": "reference", "reward_model": "reward model", "optimizer": "optimizer"}
    return " + ".join(names[n] for n in offload) if offload else "nothing"
