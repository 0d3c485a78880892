"""How many models an RLHF set-up holds, and what they cost in memory phase by phase (the RLHF
memory calculator's arithmetic), to set next to the peak memory XLA allocates for our runs. The
`purerl-memory rlhf` command prints these figures (`purerl/cli/memory.py`); this module is their one
accounting.

Each set-up is a list of model roles; a trained role carries weights + gradients + optimizer
state, a frozen one only weights:

    sft           actor
    dpo           actor, reference
    grpo          actor, reference (+ reward model; none with a verifiable reward: 2 models)
    ppo           actor, critic, reference (+ reward model)
    reward_model  reward model (trained), sampling policy (frozen)

Bytes per parameter by precision convention:
    fp32   weights 4, gradients 4, Adam 8 (two fp32 moments)  — what purerl trains in
    bf16   weights 2, gradients 2, Adam 4 (two bf16 moments)  — the seeds' "bf16 everywhere"
    mixed  weights 2, gradients 2, Adam 12 (fp32 master copy + two fp32 moments)

Offloading (`offload=`): "reference" / "reward_model" move a frozen model's weights to host memory
(it comes back to the device, one model at a time, for its scoring pass); "optimizer" is
ZeRO-Offload (Ren et al. 2021): gradients stream to the host during the backward pass and the
optimizer state (moments, and the master copy under `mixed`) and the optimizer step live there;
the device keeps the 16-bit weights and runs forward and backward.

Phases (`phase_memory`): what is resident in every phase (weights of the models kept on the
device, the optimizer state unless offloaded: nothing frees it between phases) plus what each
phase adds —
    generation  the rollout KV cache (`purerl.attention.memory.kv_cache_bytes`) and one step's
                fp32 logits (PPO, GRPO);
    scoring     a no-gradient forward pass of the reference / reward model / critic over a
                micro-batch (one layer's activations and the fp32 logits of the reference's
                log-probs), plus an offloaded frozen model brought back for its pass;
    training    gradients of the trained models (unless offloaded) and their activations
                (`activation_bytes`).
The peak is the largest phase, not the sum of the phases.

Check against the seeds: a 7B GRPO actor + reference + reward model in bf16 is 3 × 14 GB = 42 GB
of weights, + 28 GB Adam + 14 GB gradients = 84 GB; offloading reference and reward model leaves
56 GB; ZeRO-Offload of the optimizer too leaves 14 GB (actor weights: its gradients go with the
optimizer step to the host; the seeds' 28 GB keeps them on the device) (`tests/test_llm_memory.py`).
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
    """Bytes of weights, gradients and optimizer state of a set-up, their total (the training
    state), and how the total splits between the accelerator (`device`) and host memory
    (`offloaded`).

    `scalar_params`: parameters of a scalar-head model (critic, reward model); defaults to the
    policy's (a 7B critic for a 7B actor). `offload`: any of OFFLOADABLE; a frozen model the
    set-up does not hold (DPO's reward model) moves nothing; "optimizer" moves the optimizer state
    and the gradients (ZeRO-Offload). A trained reward model (`setup="reward_model"`) is never
    offloaded as a frozen one."""
    check_choice("memory", "precision", precision, tuple(PRECISIONS))
    offload = check_offload(offload)
    for name, value in (("policy_params", policy_params), ("scalar_params", scalar_params)):
        if value is not None:
            _check_count(name, value, minimum=0)
    bytes_per = PRECISIONS[precision]
    scalar_params = policy_params if scalar_params is None else scalar_params
    out = {"models": 0, "device_models": 0, "weights": 0, "gradients": 0, "optimizer": 0,
           "offloaded_weights": 0, "offloaded_gradients": 0, "offloaded_optimizer": 0,
           "largest_offloaded_model": 0}
    for role, trained in roles(setup, reward_model):
        size = scalar_params if role in ("critic", "reward_model") else policy_params
        out["models"] += 1
        out["weights"] += size * bytes_per.weights
        if not trained and role in offload:
            out["offloaded_weights"] += size * bytes_per.weights
            out["largest_offloaded_model"] = max(out["largest_offloaded_model"], size * bytes_per.weights)
        else:
            out["device_models"] += 1
        if trained:
            out["gradients"] += size * bytes_per.gradients
            out["optimizer"] += size * bytes_per.optimizer
            if "optimizer" in offload:
                out["offloaded_gradients"] += size * bytes_per.gradients
                out["offloaded_optimizer"] += size * bytes_per.optimizer
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    out["offloaded"] = out["offloaded_weights"] + out["offloaded_gradients"] + out["offloaded_optimizer"]
    out["device"] = out["total"] - out["offloaded"]
    return out


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"memory.{name}: got {value!r}; allowed: an integer ≥ {minimum}")
    return value


def rollout_kv_bytes(setup: str, layers: int, num_kv_heads: int, head_dim: int, rollout_batch: int,
                     rollout_len: int, dtype: Any = "bfloat16") -> int:
    """KV cache of the policy while it samples `rollout_batch` sequences of `rollout_len` tokens
    (prompt + completion); 0 for set-ups that do not generate while training (SFT, offline DPO,
    reward model)."""
    check_choice("memory", "setup", setup, SETUPS)
    cache = kv_cache_bytes(layers, num_kv_heads, head_dim, rollout_len, rollout_batch, dtype)
    return cache if setup in GENERATING else 0


# ---------------------------------------------------------------- activations
RECOMPUTE = ("none", "selective", "full")


def layer_activation_bytes(hidden: int, heads: int, seq_len: int, batch: int) -> int:
    """Bytes one transformer layer stores for its backward pass without recomputation, 16-bit
    activations, no tensor or sequence parallelism: s·b·h·(34 + 5·a·s/h) = 34·s·b·h + 5·a·s²·b
    (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
    eq. 1: 11·s·b·h + 5·a·s²·b for attention — its a·s²·b terms are the softmax, its dropout mask
    and output — 19·s·b·h for the MLP, 4·s·b·h for the two layer norms)."""
    for name, value in (("hidden", hidden), ("heads", heads), ("seq_len", seq_len), ("batch", batch)):
        _check_count(name, value)
    return 34 * seq_len * batch * hidden + 5 * heads * seq_len**2 * batch


def activation_bytes(layers: int, hidden: int, heads: int, seq_len: int, batch: int, *,
                     recompute: str = "none", vocab: int = 0) -> int:
    """Activation memory of a decoder's training step at its peak (the start of the backward pass),
    after Korthikanti et al. 2022 (§4):

        none       L · (34·s·b·h + 5·a·s²·b)           every layer's activations stored
        selective  L · 34·s·b·h                         attention core recomputed (its §5: the a·s²·b terms)
        full       L · 2·s·b·h + (34·s·b·h + 5·a·s²·b)  only each layer's input stored, plus the
                                                        one layer being recomputed in the backward pass

    plus 4·s·b·v for the fp32 logits of the loss (`vocab` v; 0 for a scalar head). Dropout masks
    are counted (the formula's 1-byte terms); a model trained without dropout stores a little less,
    and a fused (flash) attention kernel does not store the a·s²·b terms at all."""
    check_choice("memory", "recompute", recompute, RECOMPUTE)
    _check_count("layers", layers)
    _check_count("vocab", vocab, minimum=0)
    layer = layer_activation_bytes(hidden, heads, seq_len, batch)
    stored = {"none": layers * layer, "selective": layers * 34 * seq_len * batch * hidden,
              "full": layers * 2 * seq_len * batch * hidden + layer}[recompute]
    return stored + 4 * seq_len * batch * vocab


def forward_bytes(hidden: int, heads: int, seq_len: int, batch: int, *, vocab: int = 0) -> int:
    """Working set of a forward pass without gradients (a frozen model scoring a micro-batch): one
    layer's activations at a time (each freed when the next layer runs) and the fp32 logits the
    log-probabilities are taken of (`vocab` 0: a scalar head)."""
    _check_count("vocab", vocab, minimum=0)
    return layer_activation_bytes(hidden, heads, seq_len, batch) + 4 * seq_len * batch * vocab


# ---------------------------------------------------------------- phases
PHASES = ("generation", "scoring", "training")


@dataclass(frozen=True)
class Workload:
    """Decoder shape and batch sizes for the terms that depend on them (KV cache, activations).

    `rollout_batch` × `rollout_len`: sequences sampled at once (prompt + completion tokens);
    `micro_batch` × `seq_len`: sequences per forward/backward pass when scoring and training;
    `recompute`: activation recomputation while training (RECOMPUTE)."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rollout_batch: int
    rollout_len: int
    micro_batch: int
    seq_len: int
    recompute: str = "full"
    kv_dtype: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab", "rollout_batch",
                     "rollout_len", "micro_batch", "seq_len"):
            _check_count(name, getattr(self, name))
        check_choice("memory", "recompute", self.recompute, RECOMPUTE)


def phase_memory(setup: str, policy_params: int, workload: Workload, scalar_params: int | None = None, *,
                 reward_model: bool = False, precision: str = "fp32",
                 offload: Sequence[str] = ()) -> dict[str, Any]:
    """`setup_memory` plus the accelerator memory of each phase and the peak over the phases.

    Resident in every phase: the weights of the models kept on the device and the optimizer state
    unless offloaded. `generation` (PPO, GRPO; else 0) adds the rollout KV cache and one step's fp32
    logits; `scoring` (set-ups with a frozen model or a critic to run; else 0) adds the largest
    offloaded frozen model, brought back for its pass, and the forward working set (with the
    reference's logits); `training` adds the gradients on the device and the activations of each
    trained model (the critic and a trained reward model have scalar heads)."""
    memory = setup_memory(setup, policy_params, scalar_params, reward_model=reward_model, precision=precision,
                          offload=offload)
    w = workload
    resident = (memory["weights"] - memory["offloaded_weights"]) + (memory["optimizer"] - memory["offloaded_optimizer"])
    held = roles(setup, reward_model)
    generating = setup in GENERATING
    kv = rollout_kv_bytes(setup, w.layers, w.kv_heads, w.head_dim, w.rollout_batch, w.rollout_len, w.kv_dtype)
    step_logits = 4 * w.rollout_batch * w.vocab if generating else 0
    scored = [role for role, trained in held if not trained or role == "critic"]
    reference_logits = any(role == "reference" for role in scored)
    if scored:
        work = forward_bytes(w.hidden, w.heads, w.seq_len, w.micro_batch, vocab=w.vocab if reference_logits else 0)
    else:
        work = 0
    activations = sum(
        activation_bytes(w.layers, w.hidden, w.heads, w.seq_len, w.micro_batch, recompute=w.recompute,
                         vocab=0 if role in ("critic", "reward_model") else w.vocab)
        for role, trained in held if trained)
    device_gradients = memory["gradients"] - memory["offloaded_gradients"]
    phases = {
        "generation": resident + kv + step_logits if generating else 0,
        "scoring": resident + memory["largest_offloaded_model"] + work if scored else 0,
        "training": resident + device_gradients + activations,
    }
    peak_phase = max(PHASES, key=lambda phase: phases[phase])
    return {**memory, "resident": resident, "rollout_kv": kv, "step_logits": step_logits, "scoring_work": work,
            "device_gradients": device_gradients, "activations": activations, **phases,
            "peak": phases[peak_phase], "peak_phase": peak_phase,
            "sum_of_phases": phases["training"] + kv}  # what adding the KV cache to the training state gives


def rlhf_rows(policy_params: int, setups: Sequence[str], precisions: Sequence[str],
              offloads: Sequence[Sequence[str]], workload: Workload, *, scalar_params: int | None = None,
              rewards: Sequence[bool] = (True,)) -> list[dict[str, Any]]:
    """One row per set-up × reward (a reward model or a verifiable reward; PPO and GRPO only) ×
    precision × offload choice: `phase_memory` of it, with `offload` the names that actually
    moved something."""
    rows = []
    for setup in setups:
        for reward_model in (rewards if setup in GENERATING else (False,)):
            frozen = {role for role, trained in roles(setup, reward_model) if not trained}
            for precision in precisions:
                for offload in offloads:
                    check_offload(offload)
                    moved = tuple(n for n in offload if n == "optimizer" or n in frozen)
                    memory = phase_memory(setup, policy_params, workload, scalar_params, reward_model=reward_model,
                                          precision=precision, offload=offload)
                    rows.append({"setup": setup, "reward_model": reward_model, "precision": precision,
                                 "offload": moved, **memory})
    return rows


def saving(before: float, after: float) -> float:
    """Fraction of `before` that `after` saves: 84 GB -> 28 GB is 2/3."""
    return 1 - after / before


def format_gb(num_bytes: float) -> str:
    """Decimal gigabytes, the unit of the hand arithmetic: 14e9 -> '14 GB'."""
    text = f"{num_bytes / 1e9:.2f}".rstrip("0").rstrip(".")
    return f"{text} GB"


def offload_label(offload: Sequence[str]) -> str:
    names = {"reference": "reference", "reward_model": "reward model", "optimizer": "optimizer"}
    return " + ".join(names[n] for n in offload) if offload else "nothing"
