"""Variable-length rows in the tiny LM: padding masks, packing, RoPE positions, and generation
from left-padded prompts with EOS / min_new_tokens / top-k / top-p.

The reference for "a sequence alone" is the sequence at the start of a row with arbitrary tokens
after it and no mask at all: the model is causal, so its logits there are those of the sequence
by itself (one compiled shape for every sequence).
"""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.attention import (
    LMConfig,
    TinyLM,
    apply_rope,
    filter_logits,
    generate,
    next_token_loss,
    pack,
    positions_from,
    sample_token,
    sampling_log_probs,
    token_log_probs,
)
from purerl.attention.packing import pad

# The tests share cached compiled programs and runs (functools.cache): one worker runs the module.
pytestmark = [pytest.mark.usefixtures("highest_precision"), pytest.mark.xdist_group(__name__)]

VOCAB, ROW = 32, 12
SMALL = dict(vocab_size=VOCAB, max_len=16, d_model=16, num_layers=2, num_heads=4)
CONFIGS = {
    "rope": LMConfig(**SMALL, num_kv_heads=2, position="rope", tie_embeddings=False),
    "learned": LMConfig(**SMALL, num_kv_heads=2),
    "linear": LMConfig(**SMALL, num_kv_heads=1, attention="linear", chunk_size=4),
    # token shift: a sequence's first real token (after padding, or a packed segment start) has no predecessor
    "shift": LMConfig(**SMALL, num_kv_heads=2, token_shift=True),
}
LENGTHS = [3, 11, 7, 2, 6, 5]
PAD_ID = 0


def sequences(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, n).astype(np.int32) for n in LENGTHS]


@cache
def setup(name):
    cfg = CONFIGS[name]
    params = jax.jit(TinyLM(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, ROW), jnp.int32))
    # Larger logits than at initialisation: sampling far from uniform, near-ties rare.
    return cfg, jax.tree.map(lambda a: a * 1.5, params)


@cache
def forward(cfg):
    return jax.jit(TinyLM(cfg).apply)


@cache
def alone_logits(name):
    """[N, ROW, V]: each sequence at the start of its row, random tokens after it, no mask."""
    cfg, params = setup(name)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, VOCAB, (len(LENGTHS), ROW)).astype(np.int32)
    for i, s in enumerate(sequences()):
        rows[i, :len(s)] = s
    return np.asarray(forward(cfg)(params, rows))


def left_pad(seqs, width, filler):
    tokens = np.asarray(filler, np.int32).copy()
    mask = np.zeros((len(seqs), width), bool)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = s
        mask[i, width - len(s):] = True
    return tokens, mask


# ----------------------------------------------------------------------------- padding, packing


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padded_rows_give_each_sequence_its_logits_alone(name):
    """Left padding (PAD or arbitrary ids at the padded slots) and right padding: real-token
    logits equal the sequence alone, so PAD is never attended and positions start at the
    first real token."""
    cfg, params = setup(name)
    seqs, n = sequences(), len(LENGTHS)
    junk = np.random.default_rng(2).integers(0, VOCAB, (n, ROW))
    left, left_mask = left_pad(seqs, ROW, np.full((n, ROW), PAD_ID))
    left_junk, _ = left_pad(seqs, ROW, junk)
    right, right_mask = pad(seqs, ROW, PAD_ID)
    tokens = np.concatenate([left, left_junk, right])
    mask = np.concatenate([left_mask, left_mask, right_mask])
    logits = np.asarray(forward(cfg)(params, tokens, padding_mask=mask))
    alone = alone_logits(name)
    for i, length in enumerate(LENGTHS):
        for row in (i, n + i):  # PAD ids, then arbitrary ids in the padding
            np.testing.assert_allclose(logits[row, ROW - length:], alone[i, :length], **tol())
        np.testing.assert_allclose(logits[2 * n + i, :length], alone[i, :length], **tol())
    assert np.all(np.isfinite(logits))  # padding rows too (they see themselves, nothing else)


@pytest.mark.parametrize("name", ["rope", "learned", "shift"])
def test_packed_rows_give_each_sequence_its_logits_and_loss_alone(name):
    cfg, params = setup(name)
    seqs = sequences()
    packed = pack(seqs, ROW, PAD_ID)
    assert packed.tokens.shape[0] < len(seqs)  # something was packed together
    np.testing.assert_array_equal(positions_from(packed.tokens.shape, None, packed.segment_ids),
                                  packed.positions)
    logits = forward(cfg)(params, packed.tokens, segment_ids=packed.segment_ids)
    alone = alone_logits(name)
    for i, length in enumerate(LENGTHS):
        np.testing.assert_array_equal(packed.unpack(packed.tokens, i), seqs[i])
        np.testing.assert_allclose(packed.unpack(np.asarray(logits), i), alone[i, :length],
                                   **tol())
    # Token-weighted next-token loss: packed = padded = every sequence alone (float64).
    total, count = 0.0, 0
    for i, s in enumerate(seqs):
        z = alone[i, :len(s) - 1].astype(np.float64)
        log_p = z - z.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        total -= log_p[np.arange(len(s) - 1), s[1:]].sum()
        count += len(s) - 1
    np.testing.assert_allclose(next_token_loss(logits, packed.tokens, packed.segment_ids),
                               total / count, **tol())
    padded, mask = pad(seqs, ROW, PAD_ID)
    padded_logits = forward(cfg)(params, padded, padding_mask=mask)
    np.testing.assert_allclose(next_token_loss(padded_logits, padded, mask), total / count, **tol())


def test_pack_fills_rows_first_fit_decreasing_and_rejects_bad_lengths():
    packed = pack([[5] * 7, [6] * 5, [7] * 4, [8] * 3], row_len=8)
    # 7 -> row 0; 5 -> row 1; 4 -> row 2 (row 1 has 3 left); 3 -> row 1.
    np.testing.assert_array_equal(packed.row, [0, 1, 2, 1])
    np.testing.assert_array_equal(packed.segment_ids[1], [1, 1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(packed.positions[1], [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(packed.tokens[0], [5] * 7 + [0])
    with pytest.raises(ValueError, match=r"pack.sequences: sequence 1 has length 9; allowed: "
                                         r"1..row_len=8"):
        pack([[1], [2] * 9], row_len=8)


# ----------------------------------------------------------------------------- RoPE


def test_rope_scores_depend_on_position_differences_only():
    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal((1, 1, 4, 8)).astype(np.float32) for _ in range(2))
    score = lambda m, n: float(jnp.sum(apply_rope(q, jnp.array([[m]]))
                                       * apply_rope(k, jnp.array([[n]]))))
    for m, n in [(5, 2), (2, 5), (9, 9)]:
        base = score(m, n)
        for shift in (1, 7, 40):
            np.testing.assert_allclose(score(m + shift, n + shift), base, rtol=1e-4, atol=1e-5)
    assert abs(score(5, 2) - score(6, 2)) > 1e-3  # but they do depend on the difference


def test_rope_lm_logits_do_not_move_when_every_position_shifts():
    cfg, params = setup("rope")
    assert "position_embed" not in params["params"]  # no learned positions with RoPE
    tokens = np.stack(sequences()[1:2] * 2)[:, :ROW]
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    base = forward(cfg)(params, tokens, positions=positions)
    shifted = forward(cfg)(params, tokens, positions=positions + np.array([[3], [9]]))
    # The angles position · θ are float32: shifted positions round differently (~1e-6 rad).
    np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- generation


def greedy_alone(cfg, params, prompts, steps):
    """Each prompt at the start of its own row, extended greedily by full forward passes."""
    run = forward(cfg)
    tokens = np.zeros((len(prompts), ROW + steps), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    out = []
    for t in range(steps):
        logits = np.asarray(run(params, tokens))
        nxt = [int(logits[i, len(p) + t - 1].argmax()) for i, p in enumerate(prompts)]
        for i, p in enumerate(prompts):
            tokens[i, len(p) + t] = nxt[i]
        out.append(nxt)
    return np.array(out).T


@pytest.mark.parametrize("name", list(CONFIGS))
def test_left_padded_generation_equals_each_prompt_alone(name):
    """Cache decode after a left-padded prefill (masked padding slots, positions from the first
    real token; cached keys stored rotated with RoPE) = greedy decoding of each prompt alone."""
    cfg, params = setup(name)
    prompts = [s[:n] for s, n in zip(sequences(4)[:3], [2, 6, 4], strict=True)]
    width, steps = 6, 4
    tokens, mask = left_pad(prompts, width, np.full((3, width), PAD_ID))
    out = generate(params, cfg, tokens, jax.random.PRNGKey(0), steps=steps, temperature=0.0,
                   prompt_mask=mask)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, width:],
                                  greedy_alone(cfg, params, prompts, steps))
    np.testing.assert_array_equal(out.attention_mask[:, :width], mask)


def test_behaviour_log_probs_equal_a_full_forward_pass_with_the_same_filters():
    """log-probs returned by generate = log of the distribution sampled from (EOS ban,
    temperature, top-k, top-p), recomputed from one full forward pass over the left-padded
    sequences; EOS ends a sequence, PAD follows with log-prob 0 and mask 0."""
    cfg, params = setup("rope")
    long = sequences(5)[1]
    prompts = [long[:3], long[2:7], long[9:10], long[1:5]]
    width, steps, eos, min_new = 5, 8, 7, 2
    tokens, mask = left_pad(prompts, width, np.full((4, width), PAD_ID))
    options = dict(top_k=6, top_p=0.9)
    out = generate(params, cfg, tokens, jax.random.PRNGKey(3), steps=steps, temperature=0.8,
                   prompt_mask=mask, eos_token=eos, min_new_tokens=min_new, pad_token=PAD_ID,
                   **options)
    rescored = jax.jit(token_log_probs, static_argnums=1, static_argnames=(
        "eos_token", "min_new_tokens", "prompt_len"))(
        params, cfg, out.tokens, 0.8, attention_mask=out.attention_mask, eos_token=eos,
        min_new_tokens=min_new, prompt_len=width, **options)
    completion = np.asarray(out.completion_mask)
    np.testing.assert_allclose(np.where(completion, rescored, 0.0), out.log_probs, **tol())
    sampled = np.asarray(out.tokens)[:, width:]
    assert np.all(np.isfinite(np.asarray(out.log_probs)))
    assert not np.any(sampled[:, :min_new] == eos)
    ended = 0
    for b in range(4):
        hits = np.flatnonzero(sampled[b] == eos)
        end = hits[0] + 1 if len(hits) else steps
        ended += bool(len(hits))
        np.testing.assert_array_equal(completion[b, width:], np.arange(steps) < end)
        np.testing.assert_array_equal(sampled[b, end:], PAD_ID)
        np.testing.assert_array_equal(np.asarray(out.log_probs)[b, width + end:], 0.0)
    assert ended >= 1


def test_min_new_tokens_bans_eos_until_reached():
    cfg, params = setup("learned")
    prompt = np.stack([s[:4] for s in sequences(6) if len(s) >= 4][:3])
    free = generate(params, cfg, prompt, jax.random.PRNGKey(0), steps=5, temperature=0.0)
    eos = int(free.tokens[0, 4])  # what greedy picks first for row 0
    out = generate(params, cfg, prompt, jax.random.PRNGKey(0), steps=5, temperature=0.0,
                   eos_token=eos, min_new_tokens=3)
    sampled = np.asarray(out.tokens)[:, 4:]
    assert not np.any(sampled[:, :3] == eos)
    assert np.all(np.asarray(out.completion_mask)[:, 4:7])


# ----------------------------------------------------------------------------- top-k / top-p


def support_reference(z, temperature, k, p):
    """Tokens kept, float64: the k largest of z / τ, then the smallest most-likely prefix of
    mass >= p under the renormalised distribution."""
    z = np.asarray(z, np.float64) / temperature
    keep = np.ones(z.shape, bool)
    if k:
        keep &= z >= np.sort(z)[::-1][k - 1]
    if p < 1:
        kept = np.sort(z[keep])[::-1]
        probs = np.exp(kept - kept.max())
        probs /= probs.sum()
        n = int(np.searchsorted(np.cumsum(probs), p) + 1)
        keep &= z >= kept[min(n, len(kept)) - 1]
    return keep


@pytest.mark.parametrize("k,p", [(0, 0.5), (5, 1.0), (8, 0.7), (1, 0.9), (0, 1.0)])
def test_top_k_top_p_support_matches_numpy_reference(k, p):
    rng = np.random.default_rng(k * 10 + int(p * 10))
    logits = rng.standard_normal((6, VOCAB)).astype(np.float32) * 2
    temperature = np.array([0.5, 1.0, 2.0, 0.7, 1.3, 1.0], np.float32)[:, None]
    filtered = np.asarray(filter_logits(logits, temperature, np.full((6, 1), k),
                                        np.full((6, 1), p, np.float32)))
    for b in range(6):
        keep = support_reference(logits[b], temperature[b, 0], k, p)
        np.testing.assert_array_equal(np.isfinite(filtered[b]), keep)
        ref = logits[b] / temperature[b, 0]
        ref = np.where(keep, ref - np.log(np.exp(ref[keep] - ref[keep].max()).sum())
                       - ref[keep].max(), -np.inf)
        log_p = np.asarray(sampling_log_probs(logits, temperature, np.full((6, 1), k),
                                              np.full((6, 1), p, np.float32)))[b]
        np.testing.assert_allclose(log_p[keep], ref[keep], **tol())


def test_samples_stay_in_the_support_with_the_filtered_frequencies():
    logits = np.random.default_rng(8).standard_normal((1, VOCAB)).astype(np.float32) * 2
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draw = jax.jit(jax.vmap(lambda key: sample_token(key, logits, 0.9, 6, 0.8)))
    tokens, log_probs = (np.asarray(a)[:, 0] for a in draw(keys))
    expected = np.asarray(sampling_log_probs(logits, 0.9, 6, 0.8))[0]
    support = np.isfinite(expected)
    assert set(np.unique(tokens)) == set(np.flatnonzero(support))
    counts = np.bincount(tokens, minlength=VOCAB) / len(tokens)
    np.testing.assert_allclose(counts, np.exp(expected), atol=0.03)
    np.testing.assert_allclose(log_probs, expected[tokens], **tol())


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(prompt_mask=np.array([[True, False, True]] * 2)),
         r"generate.prompt_mask: got a mask that is not left padding"),
        (dict(prompt_mask=np.zeros((2, 3), bool)), r"generate.prompt_mask: .*at least one True"),
        (dict(prompt_mask=np.ones((2, 4), bool)), r"generate.prompt_mask: got shape \(2, 4\)"),
        (dict(min_new_tokens=2), r"generate.min_new_tokens: got 2 with eos_token=None"),
        (dict(min_new_tokens=5, eos_token=2), r"generate.min_new_tokens: got 5; allowed: an int "
                                              r"in \[0, steps=4\]"),
        (dict(top_p=0.0), r"generate.top_p: got 0.0; allowed: .*values in \(0, 1\]"),
        (dict(top_k=-1), r"generate.top_k: got -1; allowed: .*ints >= 0"),
        (dict(pad_token=VOCAB), r"generate.pad_token: got 32; allowed"),
    ],
)
def test_bad_generation_options_raise_before_compiling(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):  # params=None: nothing is traced
        generate(None, CONFIGS["rope"], np.ones((2, 3), np.int32), jax.random.PRNGKey(0),
                 steps=4, **kwargs)


def test_bad_model_options_name_the_field():
    with pytest.raises(ValueError, match=r"LMConfig.position: got 'rope' with "
                                         r"attention='linear'; allowed: 'learned'"):
        LMConfig(attention="linear", position="rope")
    with pytest.raises(ValueError, match=r"LMConfig.position: got 'sinusoid'"):
        LMConfig(position="sinusoid")
    with pytest.raises(ValueError, match=r"TinyLM.segment_ids: given with "
                                         r"LMConfig.attention='linear'"):
        TinyLM(CONFIGS["linear"]).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                       segment_ids=jnp.ones((1, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"TinyLM.padding_mask: got shape \(1, 3\)"):
        TinyLM(CONFIGS["rope"]).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                     padding_mask=jnp.ones((1, 3), bool))


# ----------------------------------------------------------------------------- benchmark


def test_packing_benchmark_runs_and_both_layouts_give_the_same_loss(capsys):
    """The documented benchmarks/packing.py command, at a tiny size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "packing.py"
    spec = importlib.util.spec_from_file_location("packing_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--sequences", "12", "--max-len", "32", "--d-model", "16", "--layers",
                          "1", "--heads", "2", "--vocab", "32", "--rounds", "1"])
    assert results["packed"]["rows"] < results["padded"]["rows"] == 12
    assert results["packed"]["fill"] > results["padded"]["fill"]
    np.testing.assert_allclose(results["packed"]["loss"], results["padded"]["loss"], **tol())
    assert "| packed | " in capsys.readouterr().out
