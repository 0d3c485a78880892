"""Mixture-of-experts feed-forward: against a NumPy loop over tokens and chosen experts, the
k = E limit, the load-balancing loss's closed form, vmap, and cached generation."""

from functools import cache

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import LMConfig, TinyLM, generate, token_log_probs
from purerl.attention.moe import (
    MoEFeedForward,
    collected,
    expert_load,
    load_balance_loss,
    update_router_bias,
)

# The tests share cached compiled programs and runs (functools.cache): one worker runs the module.
pytestmark = [pytest.mark.usefixtures("highest_precision"), pytest.mark.xdist_group(__name__)]

D, E, K, HIDDEN = 8, 4, 2, 12


@cache
def moe_setup(k=K, router_bias=False, seed=0):
    module = MoEFeedForward(E, k, HIDDEN, router_bias)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (3, 5, D))
    variables = module.init(jax.random.PRNGKey(seed), x)
    return module, variables, x


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def moe_reference(variables, x, k, bias=None):
    """Token by token in float64: softmax router, k best experts, renormalised gates."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    ids = np.zeros(x.shape[:-1] + (k,), int)
    for index in np.ndindex(*x.shape[:-1]):
        token = x[index]
        logits = token @ p["router"]["kernel"]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        scores = probs if bias is None else probs + bias
        chosen = sorted(range(E), key=lambda e: (-scores[e], e))[:k]
        gates = probs[chosen] / probs[chosen].sum()
        for gate, e in zip(gates, chosen, strict=True):
            h = gelu_tanh(token @ p["w_in"][e] + p["b_in"][e])
            out[index] += gate * (h @ p["w_out"][e] + p["b_out"][e])
        ids[index] = chosen
    return out, ids


@pytest.mark.parametrize("k", [1, K])
def test_moe_equals_a_loop_over_tokens_and_chosen_experts(k):
    module, variables, x = moe_setup(k)
    out, state = module.apply(variables, x, mutable=["intermediates", "losses"])
    ref, ref_ids = moe_reference(variables, x, k)
    np.testing.assert_allclose(out, ref, **tol())
    np.testing.assert_array_equal(collected(state, "expert_ids")[0], ref_ids)


def test_router_bias_moves_the_choice_but_not_the_gates():
    module, variables, x = moe_setup(K, router_bias=True)
    bias = np.array([0.0, 0.0, 0.0, 10.0])  # expert 3 is always chosen
    variables = {**variables, "router_bias": {"bias": jnp.asarray(bias, jnp.float32)}}
    out, state = module.apply(variables, x, mutable=["intermediates"])
    ref, ref_ids = moe_reference(variables, x, K, bias=bias)
    np.testing.assert_allclose(out, ref, **tol())
    ids = collected(state, "expert_ids")[0]
    np.testing.assert_array_equal(ids, ref_ids)
    assert np.all(ids[..., 0] == 3)
    # Overloaded experts' biases go down, underloaded ones' up.
    load = collected(state, "expert_load")[0]
    new = update_router_bias(jnp.zeros(E), load, 0.1)
    np.testing.assert_allclose(new, 0.1 * np.sign(np.mean(load) - np.asarray(load)), **tol())
    assert new[3] < 0


def test_all_experts_with_equal_gates_average_the_expert_ffns():
    module, variables, x = moe_setup(E)
    params = variables["params"]
    equal = {**variables, "params": {**params, "router": {"kernel": jnp.zeros_like(params["router"]["kernel"])}}}
    out = module.apply(equal, x)
    each = [nn.gelu(x @ params["w_in"][e] + params["b_in"][e]) @ params["w_out"][e] + params["b_out"][e]
            for e in range(E)]
    np.testing.assert_allclose(out, np.mean(np.stack(each), axis=0), **tol())


def test_load_balance_loss_equals_its_closed_form():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(E), size=(6, 5))
    ids = np.stack([rng.choice(E, K, replace=False) for _ in range(30)]).reshape(6, 5, K)
    counts = np.zeros(E)
    for e in ids.reshape(-1):
        counts[e] += 1
    f = counts / (30 * K)
    expected = E * np.sum(f * probs.reshape(-1, E).mean(0))
    np.testing.assert_allclose(load_balance_loss(jnp.asarray(probs, jnp.float32), jnp.asarray(ids)), expected,
                               **tol())
    np.testing.assert_allclose(expert_load(jnp.asarray(ids), E), f, **tol())
    # Uniform router and uniform load: the loss's minimum, 1.
    uniform = np.full((4, E), 1 / E)
    np.testing.assert_allclose(load_balance_loss(jnp.asarray(uniform), jnp.array([[0, 1], [2, 3], [0, 1], [2, 3]])),
                               1.0, **tol())


def test_the_module_sows_the_loss_of_its_own_routing():
    module, variables, x = moe_setup(K)
    _, state = module.apply(variables, x, mutable=["intermediates", "losses"])
    logits = np.asarray(x) @ np.asarray(variables["params"]["router"]["kernel"])
    probs = jax.nn.softmax(jnp.asarray(logits), -1)
    expected = load_balance_loss(probs, collected(state, "expert_ids")[0])
    np.testing.assert_allclose(collected(state, "load_balance")[0], expected, **tol())


def test_vmapped_equals_alone():
    module, variables, x = moe_setup(K)
    together = jax.vmap(lambda row: module.apply(variables, row))(x)
    alone = np.stack([module.apply(variables, row) for row in x])
    np.testing.assert_allclose(together, alone, **tol(vmapped=True))


MOE_LM = LMConfig(vocab_size=32, max_len=16, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                  ffn="moe", num_experts=4, experts_per_token=2)


def test_lm_routing_per_layer_and_cached_generation_equals_full_forward():
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 32, (3, 4)), jnp.int32)
    params = TinyLM(MOE_LM).init(jax.random.PRNGKey(0), prompt)
    params = jax.tree.map(lambda a: a * 1.5, params)  # far from uniform: rare near-ties
    out = generate(params, MOE_LM, prompt, jax.random.PRNGKey(1), steps=8, temperature=1.0)
    full = token_log_probs(params, MOE_LM, out.tokens, 1.0)
    np.testing.assert_allclose(out.log_probs[:, 4:], full[:, 4:], **tol())
    _, state = TinyLM(MOE_LM).apply(params, out.tokens, mutable=["intermediates"])
    ids = collected(state, "expert_ids")
    assert len(ids) == MOE_LM.num_layers and ids[0].shape == (3, 12, 2)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(ffn="sparse"), "LMConfig.ffn: got 'sparse'"),
    (dict(ffn="moe", num_experts=2, experts_per_token=3), "LMConfig.experts_per_token: got 3"),
    (dict(num_experts=0), "LMConfig.num_experts"),
])
def test_bad_moe_settings_raise(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LMConfig(**kwargs)
