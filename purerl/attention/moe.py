"""A mixture-of-experts feed-forward for the tiny LM: E expert MLPs, top-k routing.

    y = Σ_{e ∈ topk(s)} g_e · FFN_e(x),   p = softmax(x W_r),   g_e = p_e / Σ_{e' ∈ topk} p_e'

The top-k set is chosen on the scores s = p (+ a per-expert bias b with `router_bias=True`,
DeepSeek-V3's auxiliary-loss-free balancing: b shifts which experts are chosen, never the gate
weights g). Dispatch is dense and capacity-free: every expert runs on every token (one einsum over
the expert axis) and the combine weights are zero off the top-k set, so no token is ever dropped.
At this model size that costs E× the FLOPs of one expert and needs no gather/scatter; a large
model would dispatch sparsely with a capacity factor instead.

Auxiliary outputs, sown into Flax collections (ask for them with `mutable=[...]`):
- "intermediates"/"expert_ids": the chosen experts per token [..., k] int32 (ascending score
  order broken by index), so the rollout's routing can be compared with the training pass's;
- "losses"/"load_balance": Switch Transformer's load-balancing loss E · Σ_e f_e · P_e, with f_e
  the share of the token·slot assignments that went to expert e and P_e the mean router
  probability of e over tokens (1 when the load is uniform; `load_balance_loss`);
- "intermediates"/"expert_load": f_e [E], what `update_router_bias` reads.
The bias lives in the "router_bias" collection (not a parameter: no gradient reaches it).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

FFN_KINDS = ("dense", "moe")
BIAS_COLLECTION = "router_bias"


def route(router_logits: jax.Array, k: int, bias: jax.Array | None = None
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """router logits [..., E] -> (probs [..., E], expert ids [..., k], combine weights [..., E]).

    Combine weights are the renormalised top-k probabilities at the chosen experts, 0 elsewhere.
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    scores = probs if bias is None else probs + bias
    _, ids = jax.lax.top_k(scores, k)
    chosen = jnp.take_along_axis(probs, ids, axis=-1)
    gates = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
    num_experts = router_logits.shape[-1]
    combine = jnp.sum(jax.nn.one_hot(ids, num_experts, dtype=gates.dtype) * gates[..., None], axis=-2)
    return probs, ids.astype(jnp.int32), combine


def expert_load(ids: jax.Array, num_experts: int) -> jax.Array:
    """f_e: share of all token·slot assignments in `ids` [..., k] that went to expert e ([E])."""
    counts = jnp.sum(jax.nn.one_hot(ids, num_experts, dtype=jnp.float32), axis=tuple(range(ids.ndim)))
    return counts / ids.size


def load_balance_loss(probs: jax.Array, ids: jax.Array) -> jax.Array:
    """Switch-style E · Σ_e f_e · P_e over all tokens; probs [..., E], ids [..., k]."""
    num_experts = probs.shape[-1]
    mean_probs = jnp.mean(probs.reshape(-1, num_experts), axis=0)
    return num_experts * jnp.sum(expert_load(ids, num_experts) * mean_probs)


def update_router_bias(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
    """DeepSeek-V3's bias step: b_e += rate · sign(mean load − f_e) (overloaded experts go down)."""
    return bias + rate * jnp.sign(jnp.mean(load) - load)


class MoEFeedForward(nn.Module):
    """x [..., d] -> [..., d]: E GELU MLPs of width `hidden` each, top-k routed (module doc)."""

    num_experts: int
    experts_per_token: int
    hidden: int
    router_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, e, k = x.shape[-1], self.num_experts, self.experts_per_token
        router_logits = nn.Dense(e, use_bias=False, name="router")(x)
        bias = None
        if self.router_bias:
            bias = self.variable(BIAS_COLLECTION, "bias", jnp.zeros, (e,), jnp.float32).value
        probs, ids, combine = route(router_logits, k, bias)
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        w_in = self.param("w_in", init, (e, d, self.hidden))
        b_in = self.param("b_in", nn.initializers.zeros, (e, self.hidden))
        w_out = self.param("w_out", init, (e, self.hidden, d))
        b_out = self.param("b_out", nn.initializers.zeros, (e, d))
        # Dense dispatch: every expert on every token, weighted by 0 off the top-k set.
        h = nn.gelu(jnp.einsum("...d,edh->...eh", x, w_in) + b_in)
        y = jnp.einsum("...eh,ehd->...ed", h, w_out) + b_out
        out = jnp.einsum("...ed,...e->...d", y, combine.astype(y.dtype))
        self.sow("intermediates", "expert_ids", ids)
        self.sow("intermediates", "expert_load", expert_load(ids, e))
        self.sow("losses", "load_balance", load_balance_loss(probs, ids))
        return out.astype(x.dtype)


def collected(variables: Any, name: str) -> list[jax.Array]:
    """Every value sown under `name` in a collection returned by `apply(..., mutable=...)`, in
    layer order (one per MoE layer and call)."""
    found: list[jax.Array] = []

    def visit(tree: Any) -> None:
        if isinstance(tree, dict) or hasattr(tree, "items"):
            for key in sorted(tree, key=_layer_order):
                value = tree[key]
                if key == name:
                    found.extend(value if isinstance(value, tuple) else (value,))
                else:
                    visit(value)

    visit(variables)
    return found


def _layer_order(key: str) -> tuple[str, int]:
    """blocks_10 after blocks_9: sort names by their trailing number."""
    head, _, tail = key.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (key, -1)
