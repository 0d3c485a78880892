"""Every LM algorithm trains end to end on a tiny model (finite per-update metrics, counts). The
contract (validation, traced hypers, counters, vmapped ≡ alone): test_contract.py. Learning itself:
test_llm_learning.py."""

import jax
import jax.numpy as jnp
import numpy as np

from purerl.llm import dpo, grpo, ppo, reward_model
from purerl.rl.loop import host_metrics

TINY = dict(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, sft_steps=4, num_updates=3,
            eval_prompts=8, rm_steps=3, rm_batch=8, task_kwargs={"num_digits": 1})
# These runs check plumbing, not speed: XLA's backend optimisation level 0 halves their compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run(module, config, seeds, hyper=None):
    train = module.make_train(config)
    hyper = hyper or module.Hyper()
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    hypers = jax.tree.map(lambda x: jnp.full((len(seeds),), x, jnp.float32), hyper)
    compiled = jax.jit(jax.vmap(train)).lower(keys, hypers).compile(compiler_options=FAST_COMPILE)
    state, metrics = jax.device_get(compiled(keys, hypers))
    return state, host_metrics(metrics)


def check_metrics(metrics, config, seeds):
    for name, values in metrics.items():
        assert values.shape == (seeds, config.num_updates), name
        assert np.all(np.isfinite(values)), name
    assert np.all(metrics["hyper_ok"] == 1)
    np.testing.assert_array_equal(metrics["env_steps"][0], config.batch_size * np.arange(1, config.num_updates + 1))
    for name in ("accuracy", "greedy_accuracy"):
        if name in metrics:
            assert np.all((metrics[name] >= 0) & (metrics[name] <= 1))
    assert np.all(metrics["sft_accuracy"] == metrics["sft_accuracy"][:, :1])  # once per run


def test_ppo_with_a_reward_model_and_the_kl_as_a_loss_term():
    # 4 prompts × 2 completions: the prompts and completions per update of a GRPO run with G = 2
    config = ppo.Config(**TINY, num_prompts=4, group_size=2, num_minibatches=2, kl_mode="loss", reward="model")
    assert config.batch_size == 8
    assert config.kl_estimator == "k3"
    _, metrics = run(ppo, config, [0, 1])
    check_metrics(metrics, config, 2)
    for name in ("value_loss", "explained_variance", "kl_loss", "rm_true_accuracy", "approx_kl", "clip_frac"):
        assert name in metrics
    # the reward model's score is logged next to the true task reward (in [0, 1], multiples of 1/8)
    assert "proxy_reward" in metrics
    np.testing.assert_array_equal(metrics["sample_reward"] * 8, np.round(metrics["sample_reward"] * 8))
    assert np.all(metrics["kl_loss"] >= 0)  # k3 is non-negative
    assert not np.array_equal(metrics["sft_loss"][0], metrics["sft_loss"][1])  # seeds differ


def test_grpo_ratio_variances_vanish_at_the_behaviour_policy_only():
    """Two epochs of one minibatch: the first step is taken at the parameters that sampled the
    completions, the second from where the first moved them. With a learning rate of 1e-12 they do
    not move, every ratio π/π_old stays 1 up to float rounding and both logged variances (token
    ratio and GSPO sequence ratio) vanish; with 1e-2 they do not. One compiled program, the two
    learning rates vmapped; partial-credit rewards give the groups a signal to move on."""
    tiny = TINY | dict(task="reverse", task_kwargs={"num_digits": 2, "partial": True})
    config = grpo.Config(**tiny, num_prompts=4, group_size=2, num_minibatches=1, update_epochs=2)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.zeros(2, jnp.int32))
    hypers = jax.tree.map(lambda x: jnp.full((2,), x, jnp.float32), grpo.Hyper())
    hypers = hypers.replace(lr=jnp.array([1e-12, 1e-2], jnp.float32))
    compiled = jax.jit(jax.vmap(grpo.make_train(config))).lower(keys, hypers).compile(compiler_options=FAST_COMPILE)
    metrics = host_metrics(jax.device_get(compiled(keys, hypers))[1])
    check_metrics(metrics, config, 2)
    for name in ("token_ratio_var", "sequence_ratio_var"):
        assert np.all(metrics[name] >= 0), name
        assert np.all(metrics[name][0] < 1e-9) and metrics[name][1, 0] > 1e-9, name


def test_dpo_learns_from_informative_pairs_only():
    # The preference task: graded scores, so pairs from a barely trained policy are rarely ties.
    config = dpo.Config(**{**TINY, "task_kwargs": {}}, task="preference", num_prompts=8, pair_source="policy")
    _, batched = run(dpo, config, [3, 4], dpo.Hyper(beta=0.2))
    check_metrics(batched, config, 2)
    # −log σ(·) > 0 on every update that had a non-tied pair (tied pairs are dropped: loss 0);
    # graded scores make ties the exception, so most updates must have informative pairs.
    informative = batched["informative_pairs"] > 0
    assert informative.mean() >= 0.5, batched["informative_pairs"]
    assert np.all(batched["dpo_loss"][informative] > 0)
    assert not np.array_equal(batched["sft_loss"][0], batched["sft_loss"][1])  # seeds differ


def test_reward_model_algorithm_reports_held_out_order_accuracy():
    config = reward_model.Config(**{**TINY, "task_kwargs": {}, "num_updates": 4})
    assert config.task == "preference"
    state, metrics = run(reward_model, config, [0])
    check_metrics(metrics, config, 1)
    assert np.all((metrics["rm_true_accuracy"] >= 0) & (metrics["rm_true_accuracy"] <= 1))
    assert "scalar_head" in state.reward_model["params"]
