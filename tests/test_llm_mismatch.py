"""Rollout-vs-training mismatch diagnostics: ratio variances and routing flips against NumPy,
zero mismatch at equal numerics, and the rollout knob reaching GRPO."""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from test_llm_algos import run

from purerl.attention import LMConfig, TinyLM
from purerl.attention.moe import collected
from purerl.llm import grpo
from purerl.llm.common import LMSetup
from purerl.llm.mismatch import mismatch_diagnostics, ratio_statistics, rollout_params, routing_flips
from purerl.llm.rollout import to_targets

# The tests share cached compiled programs and runs (functools.cache): one worker runs the module.
pytestmark = [pytest.mark.usefixtures("highest_precision"), pytest.mark.xdist_group(__name__)]


def test_ratio_statistics_equal_numpy_on_ragged_rows():
    rng = np.random.default_rng(0)
    new, old = rng.normal(-2, 0.3, (2, 4, 6))
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], float)
    token_ratios, seq_ratios, abs_logs = [], [], []
    for row in range(4):
        kept = mask[row] > 0
        if not kept.any():
            continue  # a row without completion tokens is not a sequence
        diff = new[row][kept] - old[row][kept]
        token_ratios.extend(np.exp(diff))
        abs_logs.extend(np.abs(diff))
        seq_ratios.append(np.exp(diff.mean()))
    got = ratio_statistics(jnp.asarray(new, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(mask))
    np.testing.assert_allclose(got["token_ratio_var"], np.var(token_ratios), **tol())
    np.testing.assert_allclose(got["sequence_ratio_var"], np.var(seq_ratios), **tol())
    np.testing.assert_allclose(got["mean_abs_log_ratio"], np.mean(abs_logs), **tol())


def test_routing_flips_compare_sets_not_orders():
    a = jnp.array([[0, 1], [2, 3], [1, 2], [0, 3]])
    b = jnp.array([[1, 0], [2, 3], [1, 3], [3, 2]])
    expected = [set(x) != set(y) for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True)]
    np.testing.assert_array_equal(routing_flips(a, b), expected)


def lm(ffn):
    return LMConfig(vocab_size=32, max_len=12, d_model=32, num_layers=2, num_heads=4, num_kv_heads=4, ffn=ffn,
                    num_experts=8, experts_per_token=2)


@cache
def batch(ffn, seed=0):
    config = lm(ffn)
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, 32, (16, 12)), jnp.int32)
    params = TinyLM(config).init(jax.random.PRNGKey(seed), tokens)
    mask = jnp.asarray(np.arange(11)[None] >= 4, jnp.float32) * jnp.ones((16, 1))
    return params, config, tokens, mask


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_equal_numerics_give_no_mismatch(ffn):
    params, config, tokens, mask = batch(ffn)
    stats = mismatch_diagnostics(params, config, tokens, mask, rollout_dtype="float32")
    assert np.isnan(stats.pop("flipped_abs_log_ratio"))  # no token flips, so no mean over them
    for name, value in stats.items():
        np.testing.assert_allclose(value, 0.0, atol=1e-12, err_msg=name)


def test_bfloat16_rollout_flips_moe_routing_and_spreads_token_ratios_more_than_sequence_ratios():
    params, config, tokens, mask = batch("moe")
    stats = jax.device_get(mismatch_diagnostics(params, config, tokens, mask, rollout_dtype="bfloat16"))
    # Independent count of the flips from the two passes' sown routing.
    _, train = TinyLM(config).apply(params, tokens, mutable=["intermediates"])
    _, roll = TinyLM(config).apply(rollout_params(params, "bfloat16"), tokens, mutable=["intermediates"])
    flips = [[set(a) != set(b) for a, b in zip(np.asarray(x)[:, 4:11].reshape(-1, 2).tolist(),
                                               np.asarray(y)[:, 4:11].reshape(-1, 2).tolist(), strict=True)]
             for x, y in zip(collected(train, "expert_ids"), collected(roll, "expert_ids"), strict=True)]
    np.testing.assert_allclose(stats["flip_share"], np.mean(flips), **tol())
    np.testing.assert_allclose(stats["token_flip_share"], np.mean(np.any(flips, axis=0)), **tol())
    assert 0 < stats["flip_share"] < 0.5
    assert stats["token_ratio_var"] > stats["sequence_ratio_var"] > 0
    # |log r| split by whether the token flipped in any layer, from NumPy log-softmaxes of the two passes.
    def log_probs(p):
        logits = np.asarray(TinyLM(config).apply(p, tokens), np.float64)[:, :-1]
        logits = logits - logits.max(-1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return np.take_along_axis(log_softmax, np.asarray(tokens)[:, 1:, None], -1)[..., 0][:, 4:11].reshape(-1)

    abs_log = np.abs(log_probs(params) - log_probs(rollout_params(params, "bfloat16")))
    # |log r| ~ 1e-3 is a difference of float32 log-probs of size ~1: relative error ~1e-4.
    small_difference = {"rtol": 1e-3, "atol": tol()["atol"]}
    any_flip = np.any(flips, axis=0)
    assert any_flip.any() and not any_flip.all()
    np.testing.assert_allclose(stats["flipped_abs_log_ratio"], abs_log[any_flip].mean(), **small_difference)
    np.testing.assert_allclose(stats["unflipped_abs_log_ratio"], abs_log[~any_flip].mean(), **small_difference)
    dense = mismatch_diagnostics(*batch("dense"), rollout_dtype="bfloat16")
    assert dense["flip_share"] == 0 and dense["token_ratio_var"] > 0
    assert np.isnan(dense["flipped_abs_log_ratio"])
    np.testing.assert_allclose(dense["unflipped_abs_log_ratio"], dense["mean_abs_log_ratio"], **tol())


def test_bad_rollout_dtype_names_the_field():
    with pytest.raises(ValueError, match="rollout_dtype: got 'int8'"):
        mismatch_diagnostics(*batch("dense"), rollout_dtype="int8")
    with pytest.raises(ValueError, match="Config.rollout_dtype: got 'int8'"):
        grpo.Config(rollout_dtype="int8")
    with pytest.raises(ValueError, match="Config.experts_per_token: got 5"):
        grpo.Config(ffn="moe", num_experts=4, experts_per_token=5)


def test_grpo_trains_an_moe_policy_whose_rollout_is_bfloat16():
    config = grpo.Config(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, sft_steps=4, num_updates=2,
                         eval_prompts=8, task_kwargs={"num_digits": 1}, num_prompts=4, group_size=2,
                         ffn="moe", num_experts=4, experts_per_token=2, rollout_dtype="bfloat16")
    assert config.lm_config.ffn == "moe" and config.lm_config.num_experts == 4
    state, metrics = run(grpo, config, [0])
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
    assert any("'moe'" in path for path in paths)
    for name, values in metrics.items():
        assert np.all(np.isfinite(values)), name


def test_the_trainers_sample_with_the_rollout_numerics():
    config = grpo.Config(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, task_kwargs={"num_digits": 1},
                         ffn="moe", num_experts=4, rollout_dtype="bfloat16")
    setup = LMSetup(config)
    params = jax.tree.map(lambda a: 3 * a, setup.init_policy(jax.random.PRNGKey(0)))
    problems = setup.task.sample(jax.random.PRNGKey(1), 16)
    completions = setup.sample(params, problems, jax.random.PRNGKey(2), 1.0)
    tokens = setup.assemble(problems, completions).tokens
    log_probs = jax.jit(lambda p: setup.log_probs(p, tokens, 1.0)[0])
    rounded, exact = log_probs(rollout_params(params, "bfloat16")), log_probs(params)
    behaviour = to_targets(completions.log_probs, setup.prompt_len)
    mask = to_targets(completions.mask, setup.prompt_len) > 0
    np.testing.assert_allclose(behaviour[mask], rounded[mask], **tol())
    assert np.max(np.abs(behaviour[mask] - exact[mask])) > 1e-4
