"""LM tasks: the tokenizer, problems checked against plain Python, rewards, preference labels, the
Repeat task's power-law lengths against their closed form (scipy's truncated Zipf), and config
validation (bad input fails with a ValueError naming the field, before anything compiles)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.llm import dpo, grpo, ppo
from purerl.llm.tasks import (
    EOS,
    PAD,
    Addition,
    Preference,
    Recall,
    Repeat,
    Reverse,
    Tokenizer,
    completion_mask,
    make_task,
    preference_pairs,
)

TOKENIZER = Tokenizer()


@functools.cache
def sampler(task, n):
    return jax.jit(lambda key: task.sample(key, n))


def sample(task, n, seed=0):
    """Problems as NumPy arrays (iterating device arrays row by row dispatches an op per row)."""
    return jax.device_get(sampler(task, n)(jax.random.PRNGKey(seed)))


def completion_tokens(texts, width):
    rows = [TOKENIZER.encode(t, eos=True) for t in texts]
    return jnp.asarray([r + [PAD] * (width - len(r)) for r in rows], jnp.int32)


def test_tokenizer_round_trip_and_unknown_characters():
    ids = TOKENIZER.encode("12+7=", bos=True, eos=True)
    assert ids[0] == TOKENIZER.bos and ids[-1] == TOKENIZER.eos
    assert TOKENIZER.decode(ids) == "12+7="
    assert TOKENIZER.decode(TOKENIZER.encode("19") + [EOS, 5, 6]) == "19"  # stops at EOS
    with pytest.raises(ValueError, match=r"characters \['x'\] are not in the vocabulary"):
        TOKENIZER.encode("1x")


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_addition_prompts_and_answers_match_python(digits):
    task = Addition(digits)
    problems = sample(task, 64, seed=digits)
    counts = set()
    for prompt, answer in zip(problems.prompt, problems.answer):
        text = TOKENIZER.decode(prompt)
        pad = task.prompt_len - len(text) - 1  # left padding, then BOS and the characters
        assert np.all(prompt[:pad] == PAD) and prompt[pad] == TOKENIZER.bos
        assert TOKENIZER.decode(prompt[pad:]) == text and prompt[-1] == TOKENIZER.encode("=")[0]
        a, b = text.rstrip("=").split("+")
        counts.update([len(a), len(b)])
        assert str(int(a)) == a and str(int(b)) == b  # no leading zeros
        assert int(a) < 10**digits and int(b) < 10**digits
        assert TOKENIZER.decode(answer) == str(int(a) + int(b))
    assert counts == set(range(1, digits + 1))  # every operand length occurs
    assert problems.prompt.shape == (64, task.prompt_len)
    assert problems.answer.shape == (64, task.completion_len)


def test_addition_reward_is_exact_match_up_to_eos():
    task = Addition(2)
    problems = sample(task, 3)
    truth = [TOKENIZER.decode(a) for a in problems.answer]
    width = task.completion_len
    right = completion_tokens(truth, width)
    np.testing.assert_array_equal(task.reward(problems, right), [1, 1, 1])
    # Tokens after EOS do not count; a missing EOS, an extra digit or a wrong digit do.
    after_eos = right.at[:, -1].set(jnp.where(right[:, -1] == PAD, 5, right[:, -1]))
    assert not np.array_equal(after_eos, right)
    np.testing.assert_array_equal(task.reward(problems, after_eos), [1, 1, 1])
    no_eos = jnp.where(right == EOS, PAD, right)
    np.testing.assert_array_equal(task.reward(problems, no_eos), [0, 0, 0])
    wrong = completion_tokens([str((int(t) + 1) % 199) for t in truth], width)
    np.testing.assert_array_equal(task.reward(problems, wrong), [0, 0, 0])


def test_reverse_answers_match_python_and_rewards_are_exact_or_partial():
    task = Reverse(num_digits=8, heldout=0.2)
    problems = sample(task, 32)
    assert problems.prompt.shape == (32, 10) and problems.answer.shape == (32, 9)
    truth = []
    for prompt, answer in zip(problems.prompt, problems.answer, strict=True):
        text = TOKENIZER.decode(prompt)
        assert prompt[0] == TOKENIZER.bos and len(text) == 9 and text[-1] == "="
        assert TOKENIZER.decode(answer) == text[:-1][::-1] and answer[-1] == EOS
        truth.append(text[:-1][::-1])
    right = completion_tokens(truth, task.completion_len)
    np.testing.assert_array_equal(task.reward(problems, right), np.ones(32))
    # the first two digits swapped: 0 under exact match unless they are equal; partial credit
    # counts the digits still in place
    swapped = [t[1] + t[0] + t[2:] for t in truth]
    same = np.array([t[0] == t[1] for t in truth], np.float32)
    wrong = completion_tokens(swapped, task.completion_len)
    np.testing.assert_array_equal(task.reward(problems, wrong), same)
    partial = Reverse(num_digits=8, partial=True, heldout=0.2)
    np.testing.assert_allclose(partial.reward(problems, wrong), np.where(same > 0, 1.0, 6 / 8))
    short = completion_tokens([t[:5] for t in truth], task.completion_len)  # EOS too early
    np.testing.assert_allclose(partial.reward(problems, short), 5 / 8)
    np.testing.assert_array_equal(task.reward(problems, short), np.zeros(32))
    # the split by problem, checked with the reference hash: training draws never land in the
    # held-out fifth, held-out draws always do
    held = jax.device_get(jax.jit(lambda k: task.sample_heldout(k, 32))(jax.random.PRNGKey(1)))
    threshold = round(0.2 * 65536)
    assert all(_fnv_murmur(p) % 65536 >= threshold for p in problems.prompt)
    assert all(_fnv_murmur(p) % 65536 < threshold for p in held.prompt)


def test_recall_answers_are_the_asked_values_and_reward_is_fraction():
    task = Recall(num_pairs=4, num_queries=2)
    problems = sample(task, 32)
    for prompt, answer in zip(problems.prompt, problems.answer):
        text = TOKENIZER.decode(prompt)
        pairs, asked = text.rstrip("=").split(":")
        table = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
        assert len(table) == 4  # distinct keys
        assert TOKENIZER.decode(answer) == "".join(table[k] for k in asked)
    zero, one = TOKENIZER.encode("01")
    half = problems.answer.copy()
    half[:, 0] = np.where(half[:, 0] == zero, one, zero)  # first answer wrong, second right
    np.testing.assert_allclose(task.reward(problems, half), 0.5)
    np.testing.assert_allclose(task.reward(problems, problems.answer), 1.0)


def test_preference_score_counts_the_prompts_first_letter():
    task = Preference(prompt_letters=3, max_letters=4, num_letters=8)
    problems = sample(task, 16)
    texts = ["".join(np.random.default_rng(i).choice(list("abcdefgh"), size=1 + i % 4)) for i in range(16)]
    completions = completion_tokens(texts, task.completion_len)
    expected = [t.count(TOKENIZER.decode(p)[0]) / 4 for t, p in zip(texts, problems.prompt)]
    np.testing.assert_allclose(task.reward(problems, completions), expected)


def test_repeat_prompts_answers_and_count_law_match_the_closed_form():
    """Prompts decode to `xn=` and answers to x written n times; the counts' frequencies over many
    draws match P(n) ∝ n^(−tail) on 1..max_len (scipy.stats.zipfian as the reference), and the
    longest of b counts matches F(m)^b − F(m−1)^b (scipy again) and a NumPy simulation of it."""
    from scipy import stats

    task = Repeat(max_len=12, tail=1.5, num_letters=4)
    problems = sample(task, 20_000, seed=4)
    counts = np.zeros(task.max_len + 1)
    for prompt, answer in zip(problems.prompt[:200], problems.answer[:200], strict=True):
        text = TOKENIZER.decode(prompt)
        pad = task.prompt_len - len(text) - 1
        assert np.all(prompt[:pad] == PAD) and prompt[pad] == TOKENIZER.bos
        letter, n = text[0], int(text[1:].rstrip("="))
        assert letter in "abcd" and text.endswith("=") and 1 <= n <= 12
        assert TOKENIZER.decode(answer) == letter * n
    lengths = np.sum(problems.answer != PAD, axis=1) - 1  # the letters before EOS
    counts = np.bincount(lengths, minlength=task.max_len + 1)[1:]
    reference = stats.zipfian(1.5, 12).pmf(np.arange(1, 13))
    np.testing.assert_allclose(task.count_pmf(), reference, rtol=1e-12)
    # each frequency within 5 binomial standard errors of its probability
    se = np.sqrt(reference * (1 - reference) / len(lengths))
    assert np.all(np.abs(counts / len(lengths) - reference) < 5 * se)
    assert stats.chisquare(counts, reference * len(lengths)).pvalue > 1e-3

    cdf = stats.zipfian(1.5, 12).cdf(np.arange(1, 13))
    np.testing.assert_allclose(task.longest_pmf(4), cdf**4 - np.concatenate([[0], cdf[:-1]]) ** 4, atol=1e-12)
    draws = np.random.default_rng(0).choice(np.arange(1, 13), p=reference, size=(50_000, 4)).max(axis=1)
    simulated = np.bincount(draws, minlength=13)[1:] / len(draws)
    np.testing.assert_allclose(simulated, task.longest_pmf(4), atol=0.01)
    np.testing.assert_allclose(Repeat(max_len=5, tail=0).count_pmf(), 0.2)  # tail 0: uniform


def test_repeat_documented_figures():
    """The figures docs/llm.md quotes for Repeat(max_len=32, tail=1.5) and tail=0."""
    task = Repeat(max_len=32, tail=1.5)
    np.testing.assert_allclose(task.count_pmf()[:3], [0.442, 0.156, 0.085], atol=5e-4)
    assert round(float(task.count_pmf() @ np.arange(1, 33)), 1) == 4.4
    assert round(float(task.longest_pmf(8) @ np.arange(2, 34)), 1) == 16.0
    assert round(float(Repeat(max_len=32, tail=0).longest_pmf(8) @ np.arange(2, 34)), 1) == 29.9
    config = grpo.Config(task="repeat", task_kwargs={"max_len": 32, "tail": 1.5}, num_prompts=8)
    assert config.task_spec == task and config.seq_len == task.prompt_len + 33


def test_repeat_reward_is_exact_match_up_to_eos():
    task = Repeat(max_len=9, tail=1.0)
    problems = sample(task, 4, seed=2)
    truth = [TOKENIZER.decode(a) for a in problems.answer]
    width = task.completion_len
    np.testing.assert_array_equal(task.reward(problems, completion_tokens(truth, width)), [1, 1, 1, 1])
    longer = completion_tokens([t + t[0] for t in truth], width)  # one letter too many
    shorter = completion_tokens([t[:-1] for t in truth], width)  # one too few (the empty string for n = 1)
    other = completion_tokens(["a" * len(t) if t[0] != "a" else "b" * len(t) for t in truth], width)
    for wrong in (longer, shorter, other):
        np.testing.assert_array_equal(task.reward(problems, wrong), [0, 0, 0, 0])
    no_eos = completion_tokens([t[0] * width for t in truth], width)[:, :width]
    np.testing.assert_array_equal(task.reward(problems, no_eos), [0, 0, 0, 0])


def test_repeat_heldout_split_holds_out_whole_problems():
    """Repeat(max_len=9) has 8 × 9 problems: the held-out draws and the training draws never share a
    prompt, and both cover their whole split."""
    task = Repeat(max_len=9, tail=0.0, heldout=0.3)
    train = sample(task, 1500, seed=0)
    held = jax.device_get(jax.jit(lambda k: task.sample_heldout(k, 1000))(jax.random.PRNGKey(1)))
    train_set, held_set = {tuple(p) for p in train.prompt}, {tuple(p) for p in held.prompt}
    assert train_set.isdisjoint(held_set) and len(train_set) + len(held_set) == 72
    assert 10 <= len(held_set) <= 35
    assert all(_fnv_murmur(p) % 65536 < round(0.3 * 65536) for p in held_set)


def test_sampling_is_deterministic_per_key():
    task = Addition(2)
    a, b, c = sample(task, 16, 1), sample(task, 16, 1), sample(task, 16, 2)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    assert not np.array_equal(a.prompt, c.prompt)


def test_completion_mask_stops_after_first_eos():
    tokens = jnp.asarray([[5, 6, EOS, 7, EOS], [5, 5, 5, 5, 5], [EOS, 5, 5, 5, 5]])
    expected = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    np.testing.assert_array_equal(completion_mask(tokens), np.asarray(expected, bool))


def test_preference_labels_follow_the_score_without_noise_and_bradley_terry_with_it():
    task = Preference()
    problems = sample(task, 4000)
    target = problems.target[:, :1]
    other = jnp.where(target == TOKENIZER.encode("a")[0], TOKENIZER.encode("b")[0], TOKENIZER.encode("a")[0])
    two_hits = jnp.concatenate([target, target, jnp.full_like(target, EOS), jnp.zeros((4000, 2), jnp.int32)], 1)
    one_hit = jnp.concatenate([target, other, jnp.full_like(target, EOS), jnp.zeros((4000, 2), jnp.int32)], 1)
    key = jax.random.PRNGKey(0)
    exact = preference_pairs(key, task, problems, one_hit, two_hits, 0.0)
    np.testing.assert_array_equal(exact.chosen, two_hits)
    np.testing.assert_allclose(exact.chosen_score, 0.5)
    noisy = preference_pairs(key, task, problems, one_hit, two_hits, 0.25)  # Δscore = 0.25: σ(1)
    share = float(jnp.mean(jnp.all(noisy.chosen == two_hits, axis=1)))
    assert abs(share - 1 / (1 + np.exp(-1.0))) < 0.03


@pytest.mark.parametrize(
    "module,kwargs,pattern",
    [
        (grpo, dict(task="sorting"), r"Config.task: got 'sorting'; allowed: 'addition', 'recall', 'preference'"),
        (grpo, dict(group_size=1), r"Config.group_size: got 1; allowed: an integer ≥ 2"),
        (grpo, dict(num_kv_heads=3), r"Config.num_kv_heads: got 3; allowed: a divisor of num_heads=4"),
        (grpo, dict(ratio="episode"), r"Config.ratio: got 'episode'"),
        (grpo, dict(num_minibatches=3), r"Config.num_minibatches: 3 does not divide the completions per update = 256"),
        (grpo, dict(task_kwargs={"digits": 2}), r"Config.task_kwargs: .*digits"),
        (grpo, dict(task_kwargs={"num_digits": 9}), r"Addition.num_digits: got 9; allowed: 1..6"),
        (grpo, dict(task="repeat", task_kwargs={"tail": -1}), r"Repeat.tail: got -1; allowed: a number in \[0, 1000\)"),
        (grpo, dict(task="repeat", task_kwargs={"tail": "fat"}), r"Repeat.tail: got 'fat'"),
        (grpo, dict(task="repeat", task_kwargs={"max_len": 100}), r"Repeat.max_len: got 100; allowed: 1..99"),
        (grpo, dict(task="repeat", task_kwargs={"max_len": 0}), r"Repeat.max_len: got 0"),
        (grpo, dict(task="repeat", task_kwargs={"num_letters": 17}), r"Repeat.num_letters: got 17; allowed: 1..16"),
        (grpo, dict(task="repeat", task_kwargs={"heldout": 1}), r"Repeat.heldout: got 1"),
        (grpo, dict(task="reverse", task_kwargs={"num_digits": 33}), r"Reverse.num_digits: got 33; allowed: 1..32"),
        (grpo, dict(task="reverse", task_kwargs={"partial": 1}), r"Reverse.partial: got 1; allowed: true"),
        (ppo, dict(kl_mode="penalty"), r"Config.kl_mode: got 'penalty'; allowed: 'reward', 'loss'"),
        (ppo, dict(kl_estimator="k4"), r"Config.kl_estimator: got 'k4'"),
        (ppo, dict(sft_steps=-1), r"Config.sft_steps: got -1; allowed: an integer ≥ 0"),
        (dpo, dict(reward="model"), r"Config.reward: got 'model'; allowed for DPO: 'verifiable'"),
        (dpo, dict(pair_source="humans"), r"Config.pair_source: got 'humans'"),
    ],
)
def test_bad_config_raises_naming_the_field(module, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        module.Config(**kwargs)


def test_make_task_names_the_tasks():
    assert make_task("recall", num_pairs=3).prompt_len == 2 * 3 + 2 + 3
    assert make_task("repeat", max_len=20).prompt_len == 5 and make_task("repeat", max_len=20).completion_len == 21
    with pytest.raises(ValueError, match="task.name: got 'chess'"):
        make_task("chess")


def _fnv_murmur(tokens):
    """The prompt hash in plain Python integers (the independent reference)."""
    h = 2166136261
    for t in tokens:
        h = ((h ^ int(t)) * 16777619) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_heldout_split_is_disjoint_and_its_share_matches():
    """1-digit addition has 100 problems: enumerate them in Python, split them with the reference
    hash, and check that training samples come only from the train split, held-out samples only
    from the held-out one, and both splits are reached."""
    task = Addition(1, heldout=0.25)
    prompts = {}
    for a in range(10):
        for b in range(10):
            prompt = TOKENIZER.encode(f"{a}+{b}=", bos=True)
            prompts[(a, b)] = tuple(prompt)
    heldout = {p for p in prompts.values() if _fnv_murmur(p) % 65536 < round(0.25 * 65536)}
    assert 10 <= len(heldout) <= 40  # a quarter of 100, give or take the hash's luck
    train = jax.device_get(jax.jit(lambda k: task.sample(k, 1500))(jax.random.PRNGKey(0)))
    held = jax.device_get(jax.jit(lambda k: task.sample_heldout(k, 400))(jax.random.PRNGKey(1)))
    train_set, held_set = {tuple(p) for p in train.prompt}, {tuple(p) for p in held.prompt}
    assert train_set.isdisjoint(heldout) and held_set <= heldout
    assert held_set == heldout  # enough draws reach every problem of each split
    assert len(train_set) == 100 - len(heldout)
    # answers still match the prompts (a redrawn problem is a whole problem)
    for p, ans in zip(held.prompt, held.answer, strict=True):
        a, b = TOKENIZER.decode(p)[:-1].split("+")
        assert TOKENIZER.decode(ans) == str(int(a) + int(b))


def test_heldout_zero_keeps_the_unsplit_sampler_and_bad_share_is_refused():
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(Addition(2).sample(key, 16).prompt, Addition(2).sample_heldout(key, 16).prompt)
    for bad in (1.0, -0.1, "x", True):
        with pytest.raises(ValueError, match=r"Addition.heldout: got .*allowed: a share in \[0, 1\)"):
            Addition(2, heldout=bad)
    with pytest.raises(ValueError, match=r"Recall.heldout"):
        Recall(heldout=2)
