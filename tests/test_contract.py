"""The contract every registered algorithm (RL and LLM) keeps, checked on each with a tiny config
and one update:

- a bad Config value is refused on construction, naming the field, the value and what is allowed;
- a bad Hyper value likewise (before anything compiles);
- under a traced Hyper (a user's jit/vmap) a run whose values leave their intervals reports NaN
  for every float metric and `hyper_ok = 0`, while its neighbour in the batch trains normally;
- per-update counters are integers named `<name>_in_update` (cumulative totals are made on the
  host: `purerl.rl.loop.host_metrics`);
- run i of a vmapped batch equals the same run alone (float tolerance of batched kernels);
- the headline metric the algorithm declares (`purerl.algos.return_metric`) is among its metrics.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ON_CPU, tol

import purerl  # noqa: F401
from purerl.algos import ALGORITHMS, get_algorithm, return_metric
from purerl.config import _bounds
from purerl.rl.loop import COUNT_SUFFIX

LM = dict(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, sft_steps=2, sft_batch=4, num_updates=1,
          num_prompts=4, eval_prompts=4, rm_steps=2, rm_batch=4)
ON_POLICY = dict(num_envs=2, num_steps=8, total_timesteps=16)
# One update each, as small as each algorithm allows.
TINY = {
    "ppo": dict(ON_POLICY, num_minibatches=2, update_epochs=1),
    "stale_ppo": dict(ON_POLICY, num_minibatches=2, update_epochs=1, max_stale=2),
    "trpo": dict(ON_POLICY, critic_epochs=1, critic_minibatches=2, cg_iters=2, line_search_steps=2),
    "a2c": ON_POLICY,
    "reinforce": ON_POLICY,
    "bandit": dict(total_timesteps=20, num_steps=20),
    "dqn": dict(ON_POLICY, learning_starts=8, buffer_size=16, batch_size=4),
    "sac": dict(ON_POLICY, learning_starts=8, buffer_size=16, batch_size=4, actor_hidden=(8,),
                critic_hidden=(8,)),
    # The tiny policy earns no reward on its 4 samples, so its advantages are the KL reward's
    # rounding (0 in a run alone): normalising them would scale that rounding to unit size, and
    # Adam's ε-normalised first step amplifies near-zero gradients; so raw advantages and one
    # minibatch (every per-step statistic taken before the step).
    "llm_ppo": dict(LM, task_kwargs={"num_digits": 1}, normalize_advantages=False, num_minibatches=1,
                    update_epochs=1),
    "grpo": dict(LM, task_kwargs={"num_digits": 1}, group_size=2),
    "dpo": dict(LM, task="preference"),
    "reward_model": dict(LM),
    "lm_pretrain": dict(d_model=8, num_heads=2, num_kv_heads=2, head_dim=4, num_layers=1, seq_len=16,
                        mqar_vocab=16, mqar_pairs=2, language_vocab=8, batch_size=2, num_updates=1,
                        steps_per_update=1, warmup_steps=0, eval_batch=2),
}
# A value each Config refuses: (field, value).
BAD_CONFIG = {
    "ppo": ("num_envs", 0), "stale_ppo": ("max_stale", -1), "trpo": ("cg_iters", 0), "a2c": ("num_steps", 0),
    "reinforce": ("num_envs", -1),
    "bandit": ("strategy", "ucb2"), "dqn": ("batch_size", 0), "sac": ("buffer_size", 0),
    "llm_ppo": ("num_prompts", 0), "grpo": ("group_size", 1), "dpo": ("pair_source", "humans"),
    "reward_model": ("d_model", 0), "lm_pretrain": ("num_updates", 0),
}
# These runs check plumbing, not speed: XLA's backend optimisation level 0 halves their compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
LLM = {"llm_ppo", "grpo", "dpo", "reward_model"}


def test_every_registered_algorithm_is_covered():
    assert set(TINY) == set(ALGORITHMS) == set(BAD_CONFIG)


def bad_value(interval: str) -> float:
    """A number outside `interval` (below it where it has a finite lower end)."""
    _, low, high, _ = _bounds(interval)
    return low - 1.0 if np.isfinite(low) else high + 1.0


def intervals(module) -> dict[str, str]:
    """Each traced Hyper field and its allowed interval."""
    return {f.name: f.metadata["interval"] for f in dataclasses.fields(module.Hyper) if "interval" in f.metadata}


def probe_field(module) -> tuple[str, str]:
    """The Hyper field (and its interval) the traced-contract runs put out of range: the first one."""
    return next(iter(intervals(module).items()))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_bad_config_is_refused_naming_the_field(name):
    module = get_algorithm(name)
    module.Config(**TINY[name])  # the tiny config itself is fine
    field, value = BAD_CONFIG[name]
    with pytest.raises(ValueError, match=rf"Config\.{field}: got {re.escape(repr(value))}; allowed: "):
        module.Config(**{**TINY[name], field: value})


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_bad_hyper_is_refused_on_construction_naming_the_field(name, monkeypatch):
    module = get_algorithm(name)
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled"))
    assert intervals(module), name
    for field, interval in intervals(module).items():
        value = bad_value(interval)
        message = rf"Hyper\.{field}: got {value:g}; allowed: {re.escape(interval)}"
        with pytest.raises(ValueError, match=message):
            module.Hyper(**{field: value})
        with pytest.raises(ValueError, match=message):
            module.Hyper().replace(**{field: value})


@functools.cache
def trained(name: str):
    """One algorithm's tiny config trained as a vmapped batch of two runs (seed 1 with good
    hyperparameters, seed 2 with the probe field out of range, both traced) and run 0 alone.
    Cached per process: however pytest orders the tests, a worker trains each algorithm once."""
    module = get_algorithm(name)
    config = module.Config(**TINY[name])
    train = module.make_train(config)
    field, interval = probe_field(module)
    good = getattr(module.Hyper(), field)

    def one(key, value):
        return train(key, module.Hyper().replace(**{field: value}))[1]

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    values = jnp.asarray([good, bad_value(interval)], jnp.float32)
    batched = jax.jit(jax.vmap(one)).lower(keys, values).compile(compiler_options=FAST_COMPILE)(keys, values)
    alone = jax.jit(one).lower(keys[0], values[0]).compile(compiler_options=FAST_COMPILE)(keys[0], values[0])
    return name, jax.device_get(batched), jax.device_get(alone), return_metric(name, config)


# One xdist group per algorithm: its tests go to one worker, and the algorithms still spread over
# the workers.
@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.xdist_group(f"contract-{n}")) for n in sorted(ALGORITHMS)])
def runs(request):
    return trained(request.param)


def test_traced_bad_hyper_gives_nan_float_metrics_and_hyper_ok_0(runs):
    name, batched, _, _ = runs
    np.testing.assert_array_equal(batched["hyper_ok"][0], 1)
    np.testing.assert_array_equal(batched["hyper_ok"][1], 0)
    floats = [m for m, v in batched.items() if np.issubdtype(v.dtype, np.floating)]
    assert floats, name
    for metric in floats:
        assert np.all(np.isnan(batched[metric][1])), metric
    assert any(np.all(np.isfinite(batched[metric][0])) for metric in floats), "the good run trains"


def test_counters_are_integers_named_in_update(runs):
    name, batched, _, _ = runs
    counters = [m for m in batched if m.endswith(COUNT_SUFFIX)]
    assert counters, f"{name} reports no per-update counter"
    assert "env_steps" + COUNT_SUFFIX in counters, name
    for metric in counters:
        assert np.issubdtype(batched[metric].dtype, np.integer), metric
        assert np.all(batched[metric][0] >= 0), metric
        # A cumulative count is the host's (host_metrics), never an in-graph metric.
        assert metric[: -len(COUNT_SUFFIX)] not in batched, metric
    assert np.issubdtype(batched["hyper_ok"].dtype, np.integer)


def test_the_declared_headline_metric_is_reported_under_its_own_name(runs):
    name, batched, _, headline = runs
    assert headline in batched, (name, headline)
    assert np.issubdtype(batched[headline].dtype, np.floating)
    # episode_return means an episode's return: only trainers on environments report one.
    assert ("episode_return" in batched) == (name not in LLM | {"lm_pretrain"}), name


def test_vmapped_run_equals_the_run_alone(runs):
    name, batched, alone, _ = runs
    assert set(batched) == set(alone)
    close = tol(vmapped=True)
    if name in LLM:
        # Some LM metrics are differences of log-probs of order 1-10 (approx_kl, kl_to_ref: the
        # generation's cached log-probs against a full forward), so they carry the log-probs'
        # absolute rounding, not a relative error of their own small value.
        close = {**close, "atol": 1e-4}
    for metric, values in alone.items():
        if name in LLM and not ON_CPU and np.issubdtype(values.dtype, np.floating):
            # On GPU a last-bit difference may flip a sampled token, and every metric after it.
            continue
        np.testing.assert_allclose(batched[metric][0], values, **close, err_msg=metric)
