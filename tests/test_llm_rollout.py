"""Rollouts through the one-program `generate` (tested in test_attention_generate.py) as the RL
code uses them: behaviour log-probs equal the training forward's, EOS/PAD handling, greedy rows,
sequence layout against hand-written expectations, and the scalar-head models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.attention.lm import TinyLM
from purerl.llm.models import ScalarLM, init_lm, make_lm_config, next_token_log_probs, scalar_from_policy
from purerl.llm.rollout import assemble, from_targets, sample, sequence_mask, to_targets
from purerl.llm.tasks import EOS, PAD, VOCAB_SIZE, Addition, completion_mask

TASK = Addition(2)
SEQ_LEN = TASK.prompt_len + TASK.completion_len
CONFIG = make_lm_config(VOCAB_SIZE, SEQ_LEN, 32, 2, 4, 2, 4)
MODEL = TinyLM(CONFIG)


# Under `pytest -n 2 --dist loadgroup` one worker runs this whole module, so the
# module-scoped fixture below is built once.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def setup():
    params = init_lm(MODEL, jax.random.PRNGKey(0), SEQ_LEN)
    # Make EOS likely so that some completions end early and padding appears.
    params["params"]["token_embed"]["embedding"] = params["params"]["token_embed"]["embedding"].at[EOS].mul(-8.0)
    problems = jax.jit(lambda k: TASK.sample(k, 32))(jax.random.PRNGKey(1))
    run = jax.jit(lambda params, key, temperature, greedy: sample(
        CONFIG, params, problems.prompt, key, temperature, TASK.completion_len, greedy))
    return params, problems, run


def test_behaviour_log_probs_equal_the_training_forward_pass(setup, highest_precision):
    """PPO's first ratio π/π_old must be 1: the sampler's log-probs (cached decoding) and the
    training forward over the assembled sequence agree, at a temperature ≠ 1 too."""
    params, problems, run = setup
    completions = run(params, jax.random.PRNGKey(2), 0.7, False)
    lengths = np.asarray(completions.lengths)
    assert lengths.min() < TASK.completion_len and lengths.max() == TASK.completion_len  # both cases occur
    np.testing.assert_array_equal(completions.mask, completion_mask(completions.tokens))
    assert np.all(np.asarray(completions.tokens)[np.asarray(completions.mask) == 0] == PAD)
    sequences = assemble(problems.prompt, completions.tokens, completions.mask)
    full, _ = next_token_log_probs(MODEL.apply(params, sequences.tokens), sequences.tokens, 0.7)
    np.testing.assert_allclose(from_targets(full, TASK.prompt_len) * completions.mask, completions.log_probs,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(completions.log_probs)[np.asarray(completions.mask) == 0], 0.0)


def test_greedy_rows_take_the_argmax_and_sampled_rows_do_not(setup):
    params, problems, run = setup
    greedy = jnp.arange(32) < 16
    a, b = run(params, jax.random.PRNGKey(3), 1.0, greedy), run(params, jax.random.PRNGKey(4), 1.0, greedy)
    np.testing.assert_array_equal(a.tokens[:16], b.tokens[:16])  # argmax: key-independent
    assert not np.array_equal(a.tokens[16:], b.tokens[16:])
    first = np.asarray(MODEL.apply(params, problems.prompt))[:16, -1].argmax(-1)
    np.testing.assert_array_equal(np.asarray(a.tokens)[:16, 0], first)


def test_assemble_places_completions_after_the_prompt():
    prompts = jnp.asarray([[0, 1, 5, 6], [1, 5, 6, 7]])
    completions = jnp.asarray([[8, 9, EOS], [EOS, 4, 4]])
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0]], jnp.float32)
    sequences = assemble(prompts, completions, mask)
    np.testing.assert_array_equal(sequences.tokens, [[0, 1, 5, 6, 8, 9, EOS], [1, 5, 6, 7, EOS, 0, 0]])
    # Position j is 1 where token j+1 is a completion token.
    np.testing.assert_array_equal(sequences.target_mask, [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(sequences.last_target, [[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(sequences.completion_lengths, [3, 1])
    values = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    aligned = to_targets(values, 4)
    np.testing.assert_array_equal(aligned, [[0, 0, 0, 1, 2, 3], [0, 0, 0, 4, 5, 6]])
    np.testing.assert_array_equal(from_targets(aligned, 4), values)


def test_scalar_model_starts_from_the_policy_body(setup, highest_precision):
    params, problems, _ = setup
    scalar = ScalarLM(CONFIG)
    copied = scalar_from_policy(params, init_lm(scalar, jax.random.PRNGKey(5), SEQ_LEN))
    for name in params["params"]:
        jax.tree.map(np.testing.assert_array_equal, copied["params"][name], params["params"][name])
    np.testing.assert_array_equal(scalar.apply(copied, problems.prompt), 0.0)  # zero-initialised head
    # With a head w the output is w · final_norm(h); the policy's logits are E · final_norm(h)
    # through the tied embedding E, so h follows from the logits by least squares.
    w = jax.random.normal(jax.random.PRNGKey(6), (CONFIG.d_model, 1))
    copied["params"]["scalar_head"]["kernel"] = w
    embed = np.asarray(params["params"]["token_embed"]["embedding"], np.float64)
    logits = np.asarray(MODEL.apply(params, problems.prompt), np.float64)
    hidden = np.linalg.lstsq(embed, logits.reshape(-1, VOCAB_SIZE).T, rcond=None)[0].T
    expected = (hidden @ np.asarray(w, np.float64)).reshape(problems.prompt.shape)
    np.testing.assert_allclose(scalar.apply(copied, problems.prompt), expected, rtol=1e-3, atol=1e-3)


def test_masked_left_padding_keeps_the_first_ratio_at_one(setup, highest_precision):
    """With `prompt_mask` the sampler ignores the tasks' left padding; a training forward given
    the same mask (`sequence_mask`) reproduces the behaviour log-probs."""
    params, problems, _ = setup
    prompt_mask = problems.prompt != PAD
    assert not np.all(np.asarray(prompt_mask))  # some prompts are padded
    completions = jax.jit(lambda key: sample(CONFIG, params, problems.prompt, key, 0.7, TASK.completion_len,
                                             prompt_mask=prompt_mask))(jax.random.PRNGKey(2))
    sequences = assemble(problems.prompt, completions.tokens, completions.mask)
    mask = sequence_mask(prompt_mask, completions.mask)
    logits = MODEL.apply(params, sequences.tokens, padding_mask=mask)
    full, _ = next_token_log_probs(logits, sequences.tokens, 0.7)
    np.testing.assert_allclose(from_targets(full, TASK.prompt_len) * completions.mask, completions.log_probs,
                               rtol=1e-4, atol=1e-5)
    # Unmasked, the padding is attended and positions shift: other numbers.
    unmasked, _ = next_token_log_probs(MODEL.apply(params, sequences.tokens), sequences.tokens, 0.7)
    assert not np.allclose(from_targets(unmasked, TASK.prompt_len) * completions.mask, completions.log_probs,
                           rtol=1e-4, atol=1e-5)
