"""Cached sampling against sampling by full forward passes, sequence layout against NumPy, and the
scalar-head models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.attention.lm import TinyLM
from purerl.llm.models import ScalarLM, init_lm, make_lm_config, next_token_log_probs, scalar_from_policy
from purerl.llm.rollout import assemble, from_targets, sample, to_targets
from purerl.llm.tasks import EOS, PAD, VOCAB_SIZE, Addition

TASK = Addition(2)  # prompts of 5-7 tokens: the cache must handle different prompt lengths
SEQ_LEN = TASK.prompt_len + TASK.completion_len
CONFIG = make_lm_config(VOCAB_SIZE, SEQ_LEN, 32, 2, 4, 2, 4)
MODEL = TinyLM(CONFIG)


@pytest.fixture(scope="module")
def setup():
    params = init_lm(MODEL, jax.random.PRNGKey(0), SEQ_LEN)
    # Make EOS likely so that some completions end early and padding appears.
    params["params"]["token_embed"]["embedding"] = params["params"]["token_embed"]["embedding"].at[EOS].mul(40.0)
    problems = jax.jit(lambda k: TASK.sample(k, 32))(jax.random.PRNGKey(1))
    return params, problems


def sample_by_full_forward(params, prompts, lengths, key, temperature, num_tokens):
    """The reference: at step t run the whole model on the sequence so far (no cache) and draw
    token t with keys[t] from the logits at the last real position."""
    batch = prompts.shape[0]
    tokens = np.concatenate([np.asarray(prompts), np.full((batch, num_tokens), PAD)], axis=1)
    keys = jax.random.split(key, num_tokens)
    done = np.zeros(batch, bool)
    out, log_probs = [], []
    apply = jax.jit(MODEL.apply)
    for t in range(num_tokens):
        logits = np.asarray(apply(params, jnp.asarray(tokens)))
        step_logits = jnp.asarray(logits[np.arange(batch), np.asarray(lengths) - 1 + t]) / temperature
        token = np.asarray(jax.random.categorical(keys[t], step_logits))
        log_prob = np.asarray(jax.nn.log_softmax(step_logits))[np.arange(batch), token]
        token = np.where(done, PAD, token)
        log_probs.append(np.where(done, 0.0, log_prob))
        done = done | (token == EOS)
        tokens[np.arange(batch), np.asarray(lengths) + t] = token
        out.append(token)
    return np.stack(out, 1), np.stack(log_probs, 1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_sampling_equals_full_forward_sampling(setup, temperature, highest_precision):
    params, problems = setup
    key = jax.random.PRNGKey(2)
    cached = jax.jit(lambda p, k: sample(MODEL, p, problems.prompt, problems.prompt_length, k, temperature,
                                         TASK.completion_len))(params, key)
    tokens, log_probs = sample_by_full_forward(params, problems.prompt, problems.prompt_length, key, temperature,
                                               TASK.completion_len)
    np.testing.assert_array_equal(cached.tokens, tokens)
    np.testing.assert_allclose(cached.log_probs, log_probs, rtol=1e-4, atol=1e-5)
    lengths = np.asarray(cached.lengths)
    assert lengths.min() < TASK.completion_len and lengths.max() == TASK.completion_len  # both cases occur
    assert len(set(np.asarray(problems.prompt_length).tolist())) > 1
    # Behaviour log-probs = log-probs of the assembled sequence under a full forward pass.
    sequences = assemble(problems.prompt, problems.prompt_length, cached.tokens, cached.mask)
    full, _ = next_token_log_probs(MODEL.apply(params, sequences.tokens), sequences.tokens, temperature)
    np.testing.assert_allclose(from_targets(full, problems.prompt_length, TASK.completion_len) * cached.mask,
                               cached.log_probs, rtol=1e-4, atol=1e-5)


def test_greedy_rows_take_the_argmax_and_sampled_rows_do_not(setup):
    params, problems = setup
    run = jax.jit(lambda greedy, k: sample(MODEL, params, problems.prompt, problems.prompt_length, k, 1.0,
                                           TASK.completion_len, greedy))
    greedy = jnp.arange(32) < 16
    a, b = run(greedy, jax.random.PRNGKey(3)), run(greedy, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(a.tokens[:16], b.tokens[:16])  # argmax: key-independent
    assert not np.array_equal(a.tokens[16:], b.tokens[16:])


def test_assemble_places_completions_after_each_prompt():
    prompts = jnp.asarray([[1, 5, 6, 0], [1, 5, 6, 7]])
    lengths = jnp.asarray([3, 4])
    completions = jnp.asarray([[8, 9, EOS], [EOS, 4, 4]])
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0]], jnp.float32)
    sequences = assemble(prompts, lengths, completions, mask)
    np.testing.assert_array_equal(sequences.tokens, [[1, 5, 6, 8, 9, EOS, 0], [1, 5, 6, 7, EOS, 0, 0]])
    # Position j is 1 where token j+1 is a completion token.
    np.testing.assert_array_equal(sequences.target_mask, [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(sequences.last_target, [[0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]])
    values = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    aligned = to_targets(values, lengths, 7)
    np.testing.assert_array_equal(aligned, [[0, 0, 1, 2, 3, 0], [0, 0, 0, 4, 5, 6]])
    np.testing.assert_array_equal(from_targets(aligned, lengths, 3), values)


def test_scalar_model_starts_from_the_policy_body(setup, highest_precision):
    params, problems = setup
    scalar = ScalarLM(CONFIG)
    fresh = init_lm(scalar, jax.random.PRNGKey(5), SEQ_LEN)
    copied = scalar_from_policy(params, fresh)
    for name in params["params"]:
        jax.tree.map(np.testing.assert_array_equal, copied["params"][name], params["params"][name])
    values = scalar.apply(copied, problems.prompt)
    assert values.shape == problems.prompt.shape
    np.testing.assert_array_equal(values, 0.0)  # zero-initialised head
    # With a head w, the output is w · final_norm(h): compare with the policy's logits through
    # the tied embedding, which reads the same normalised hidden state.
    w = jax.random.normal(jax.random.PRNGKey(6), (CONFIG.d_model, 1))
    copied["params"]["scalar_head"]["kernel"] = w
    embed = params["params"]["token_embed"]["embedding"]
    # Find h from logits = h @ E^T by least squares (E has full column rank here).
    logits = np.asarray(MODEL.apply(params, problems.prompt), np.float64)
    hidden = np.linalg.lstsq(np.asarray(embed, np.float64), logits.reshape(-1, VOCAB_SIZE).T, rcond=None)[0].T
    expected = (hidden @ np.asarray(w, np.float64)).reshape(problems.prompt.shape)
    np.testing.assert_allclose(scalar.apply(copied, problems.prompt), expected, rtol=1e-3, atol=1e-3)
