"""How many models an RLHF set-up holds, and what they cost in memory (the RLHF memory calculator's
arithmetic), to set next to the peak memory XLA allocates for our runs.

Each set-up is a list of model roles; a trained role carries weights + gradients + optimizer
state, a frozen one only weights:

    sft           actor
    dpo           actor, reference
    grpo          actor, reference (+ reward model)
    ppo           actor, critic, reference (+ reward model)
    reward_model  reward model (trained), sampling policy (frozen)

Bytes per parameter by precision:
    fp32   weights 4, gradients 4, Adam 8 (two fp32 moments)  — what purerl trains in
    bf16   weights 2, gradients 2, Adam 4 (two bf16 moments)  — the seeds' "bf16 everywhere"
    mixed  weights 2, gradients 2, Adam 12 (fp32 master copy + two fp32 moments)

Check against the seeds: a 7B GRPO actor + reference + reward model in bf16 is 3 × 14 GB = 42 GB
of weights, + 28 GB Adam + 14 GB gradients = 84 GB (`tests/test_llm_memory.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from purerl.config import check_choice


@dataclass(frozen=True)
class Precision:
    weights: int
    gradients: int
    optimizer: int


PRECISIONS = {
    "fp32": Precision(4, 4, 8),
    "bf16": Precision(2, 2, 4),
    "mixed": Precision(2, 2, 12),
}
SETUPS = ("sft", "dpo", "grpo", "ppo", "reward_model")


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


def setup_memory(setup: str, policy_params: int, scalar_params: int | None = None, *,
                 reward_model: bool = False, precision: str = "fp32") -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state of a set-up, and their total.

    `scalar_params`: parameters of a scalar-head model (critic, reward model); defaults to the
    policy's (a 7B critic for a 7B actor)."""
    check_choice("memory", "precision", precision, tuple(PRECISIONS))
    bytes_per = PRECISIONS[precision]
    scalar_params = policy_params if scalar_params is None else scalar_params
    out = {"models": 0, "weights": 0, "gradients": 0, "optimizer": 0}
    for role, trained in roles(setup, reward_model):
        size = scalar_params if role in ("critic", "reward_model") else policy_params
        out["models"] += 1
        out["weights"] += size * bytes_per.weights
        if trained:
            out["gradients"] += size * bytes_per.gradients
            out["optimizer"] += size * bytes_per.optimizer
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out
