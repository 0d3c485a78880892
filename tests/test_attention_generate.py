"""One-program generation: same tokens as full-forward sampling, float64 log-probs, vmap, EOS."""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from test_attention_linear import linear_reference
from test_attention_softmax import attention_reference

from purerl.attention import LMConfig, TinyLM, generate, sample_token, token_log_probs

# The tests share cached compiled programs and runs (functools.cache): one worker runs the module.
pytestmark = [pytest.mark.usefixtures("highest_precision"), pytest.mark.xdist_group(__name__)]

VOCAB, PROMPT, STEPS = 32, 5, 9
CONFIGS = {
    "softmax-GQA": LMConfig(vocab_size=VOCAB, max_len=16, d_model=16, num_layers=2, num_heads=4,
                            num_kv_heads=2, tie_embeddings=False),
    "linear-MQA": LMConfig(vocab_size=VOCAB, max_len=16, d_model=16, num_layers=2, num_heads=4,
                           num_kv_heads=1, attention="linear", chunk_size=4),
}
# Token shift: decode carries the previous token beside the caches (checked against the reference).
SHIFT = {"softmax-MQA-shift": LMConfig(vocab_size=VOCAB, max_len=16, d_model=16, num_layers=2, num_heads=4,
                                       num_kv_heads=1, token_shift=True)}


@cache  # one init compile per (model, batch), shared by the tests
def setup(name, batch=3, seed=0):
    cfg = {**CONFIGS, **SHIFT}[name]
    prompt = jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, PROMPT)),
                         jnp.int32)
    params = jax.jit(TinyLM(cfg).init)(jax.random.PRNGKey(seed), prompt)
    # Larger logits than at initialisation, so sampling is far from uniform and near-ties rare.
    params = jax.tree.map(lambda a: a * 1.5, params)
    return cfg, params, prompt


# ----------------------------------------------------------------------------- references


def rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def lm_logits_reference(params, cfg, tokens):
    """TinyLM forward in float64 numpy, written from the architecture, not from the module."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    tokens = np.asarray(tokens)
    h = p["token_embed"]["embedding"][tokens] + p["position_embed"]["embedding"][
        np.arange(tokens.shape[1])]
    if cfg.token_shift:  # each position also sees its predecessor's shift embedding
        h[:, 1:] += p["shift_embed"]["embedding"][tokens[:, :-1]]
    for layer in range(cfg.num_layers):
        block = p[f"blocks_{layer}"]
        x = rms_norm(h, block["attn_norm"]["scale"])
        if cfg.attention == "softmax":
            attn = attention_reference({"params": block["attn"]}, x, cfg.num_heads,
                                       cfg.num_kv_heads, rope=cfg.use_rope)
        else:
            q, k, v = (np.einsum("btd,dhe->bthe", x, block["attn"][name]["kernel"])
                       for name in ("q_proj", "k_proj", "v_proj"))
            elu1 = lambda z: np.where(z > 0, z + 1, np.exp(z))
            heads = linear_reference(elu1(q), elu1(k), v)
            attn = np.einsum("bthe,hed->btd", heads, block["attn"]["o_proj"]["kernel"])
        h = h + attn
        m = rms_norm(h, block["mlp_norm"]["scale"])
        m = gelu_tanh(m @ block["mlp_in"]["kernel"] + block["mlp_in"]["bias"])
        h = h + m @ block["mlp_out"]["kernel"] + block["mlp_out"]["bias"]
    h = rms_norm(h, p["final_norm"]["scale"])
    if cfg.tie_embeddings:
        return h @ p["token_embed"]["embedding"].T
    return h @ p["output"]["kernel"]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@cache
def full_forward(cfg):
    return jax.jit(TinyLM(cfg).apply)


def sample_by_full_forward(params, cfg, prompt, key, steps, temperature):
    """No cache: one full forward pass over the sequence so far per sampled token.

    The sequence lives in a fixed [B, T0 + steps] buffer (one compile); the model is causal, so
    the logits at position t - 1 see tokens [0, t) only, whatever fills the rest.
    """
    forward = full_forward(cfg)
    prompt_len = prompt.shape[1]
    tokens = jnp.zeros((prompt.shape[0], prompt_len + steps), jnp.int32)
    tokens = tokens.at[:, :prompt_len].set(prompt)
    log_probs = []
    for i, step_key in enumerate(jax.random.split(key, steps)):
        logits = forward(params, tokens)[:, prompt_len + i - 1]
        token, log_prob = sample_token(step_key, logits, jnp.float32(temperature))
        tokens = tokens.at[:, prompt_len + i].set(token)
        log_probs.append(log_prob)
    return tokens, jnp.stack(log_probs, axis=1)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0], ids=["t1", "t0.7", "greedy"])
def test_cached_sampling_equals_full_forward_sampling(name, temperature):
    cfg, params, prompt = setup(name)
    key = jax.random.PRNGKey(7)
    out = generate(params, cfg, prompt, key, steps=STEPS, temperature=temperature)
    tokens, log_probs = sample_by_full_forward(params, cfg, prompt, key, STEPS, temperature)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_allclose(out.log_probs[:, PROMPT:], log_probs, **tol())
    assert out.tokens.shape == out.log_probs.shape == out.completion_mask.shape == (
        3, PROMPT + STEPS)
    np.testing.assert_array_equal(
        out.completion_mask, np.broadcast_to(np.arange(PROMPT + STEPS) >= PROMPT, (3, 14)))
    if temperature == 0.0:
        np.testing.assert_array_equal(out.log_probs, 0.0)  # greedy: a point mass


@pytest.mark.parametrize("name", [*CONFIGS, *SHIFT])
def test_log_probs_match_float64_reference(name):
    cfg, params, prompt = setup(name, seed=1)
    temperature = 0.8
    out = generate(params, cfg, prompt, jax.random.PRNGKey(3), steps=STEPS,
                   temperature=temperature)
    logits = lm_logits_reference(params, cfg, out.tokens)[:, :-1]
    tokens = np.asarray(out.tokens)
    ref = np.take_along_axis(log_softmax(logits / temperature), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(out.log_probs[:, PROMPT:], ref[:, PROMPT - 1:], **tol())
    # Re-scoring the rollout by one forward pass gives the same numbers (the PPO ratio's input).
    rescored = jax.jit(token_log_probs, static_argnums=1)(params, cfg, out.tokens, temperature)
    np.testing.assert_allclose(rescored[:, 1:], ref, **tol())
    assert np.all(np.asarray(rescored)[:, 0] == 0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_longer_cache_buffer_changes_nothing(name):
    # Decode masks the unused slots: a cache allocated at max_len (as a server would, and as
    # the decode timings do) samples the same tokens with the same log-probs.
    cfg, params, prompt = setup(name)
    key = jax.random.PRNGKey(7)
    short = generate(params, cfg, prompt, key, steps=STEPS, temperature=0.9)
    full = generate(params, cfg, prompt, key, steps=STEPS, temperature=0.9, cache_len=cfg.max_len)
    np.testing.assert_array_equal(full.tokens, short.tokens)
    np.testing.assert_allclose(full.log_probs, short.log_probs, **tol())


def test_vmap_over_seeds_and_temperatures_equals_each_run_alone():
    cfg, params, prompt = setup("softmax-GQA")
    keys = jax.random.split(jax.random.PRNGKey(11), 4)
    temperatures = jnp.array([0.0, 0.5, 1.0, 2.0])
    batched = jax.jit(jax.vmap(
        lambda k, t: generate(params, cfg, prompt, k, steps=STEPS, temperature=t)))(
            keys, temperatures)
    for i in range(4):
        alone = generate(params, cfg, prompt, keys[i], steps=STEPS,
                         temperature=float(temperatures[i]))
        np.testing.assert_array_equal(batched.tokens[i], alone.tokens)
        np.testing.assert_allclose(batched.log_probs[i], alone.log_probs,
                                   **tol(vmapped=True))
    assert len({tuple(np.asarray(t).ravel()) for t in batched.tokens[1:]}) == 3  # seeds differ


def test_eos_ends_each_sequence_and_masks_the_rest():
    cfg, params, prompt = setup("softmax-GQA")
    free = generate(params, cfg, prompt, jax.random.PRNGKey(5), steps=STEPS, temperature=1.5)
    eos = int(free.tokens[0, PROMPT + 2])  # a token that does get sampled with this key
    out = generate(params, cfg, prompt, jax.random.PRNGKey(5), steps=STEPS, temperature=1.5,
                   eos_token=eos)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    for b in range(3):
        completion = tokens[b, PROMPT:]
        hits = np.flatnonzero(completion == eos)
        end = hits[0] + 1 if len(hits) else STEPS  # EOS itself counts
        # Identical to the free run up to the EOS (same keys), padding with EOS after it.
        np.testing.assert_array_equal(completion[:end], np.asarray(free.tokens)[b, PROMPT:][:end])
        np.testing.assert_array_equal(completion[end:], eos)
        np.testing.assert_array_equal(mask[b, PROMPT:], np.arange(STEPS) < end)
        np.testing.assert_array_equal(np.asarray(out.log_probs)[b, PROMPT + end:], 0.0)
    assert mask[0, PROMPT:].sum() <= 3  # row 0 samples the EOS at completion step 2 at latest


def test_stopping_early_gives_the_scans_outputs():
    """`stop_early` ends decoding once every row has sampled EOS: the same outputs as the scan,
    whether every row ends early (EOS = a token each row samples soon) or some never do."""
    cfg, params, prompt = setup("softmax-GQA")
    free = generate(params, cfg, prompt, jax.random.PRNGKey(5), steps=STEPS, temperature=1.5)
    for eos in {int(t) for t in np.asarray(free.tokens)[:, PROMPT]} | {int(free.tokens[0, PROMPT + 2])}:
        runs = [generate(params, cfg, prompt, jax.random.PRNGKey(5), steps=STEPS, temperature=1.5, eos_token=eos,
                         stop_early=stop) for stop in (False, True)]
        for name in ("tokens", "completion_mask", "attention_mask"):
            np.testing.assert_array_equal(getattr(runs[1], name), getattr(runs[0], name), err_msg=name)
        np.testing.assert_allclose(runs[1].log_probs, runs[0].log_probs, **tol(np.float32))
    ended = np.asarray(runs[0].completion_mask)[:, PROMPT:].sum(axis=1)
    assert ended.min() < STEPS  # some row did stop before the last step


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(steps=12), r"generate.steps: got 12 after a prompt of 5 tokens; allowed: prompt "
                         r"\+ steps <= LMConfig.max_len=16"),
        (dict(steps=0), r"generate.steps: got 0; allowed: a positive integer"),
        (dict(temperature=-0.5), r"generate.temperature: got -0.5; allowed: .*values >= 0"),
        (dict(temperature=np.ones(2)), r"generate.temperature: .*\[B=3\]"),
        (dict(eos_token=VOCAB), r"generate.eos_token: got 32; allowed: None or an int in "
                                r"\[0, 32\)"),
        (dict(cache_len=17), r"generate.cache_len: got 17; allowed: None or an int in "
                             r"\[prompt \+ steps - 1 = 13, LMConfig.max_len = 16\]"),
        (dict(cache_len=12), r"generate.cache_len: got 12; allowed"),
        (dict(prompt=np.zeros((3,), np.int32)), r"generate.prompt: got shape \(3,\)"),
        (dict(prompt=np.zeros((3, 2), np.float32)), r"generate.prompt: got dtype float32"),
        (dict(prompt=np.full((3, 2), VOCAB)), r"generate.prompt: got token ids in \[32, 32\]; "
                                              r"allowed: \[0, LMConfig.vocab_size=32\)"),
    ],
)
def test_bad_arguments_raise_before_compiling(kwargs, pattern):
    call = dict(prompt=np.zeros((3, PROMPT), np.int32), steps=STEPS) | kwargs
    with pytest.raises(ValueError, match=pattern):  # params=None: nothing is traced
        generate(None, CONFIGS["softmax-GQA"], call.pop("prompt"), jax.random.PRNGKey(0), **call)


def test_traced_negative_temperature_gives_nan_log_probs():
    cfg, params, prompt = setup("softmax-GQA")
    out = jax.jit(lambda t: generate(params, cfg, prompt, jax.random.PRNGKey(0), steps=2,
                                     temperature=t))(-1.0)
    assert np.all(np.isnan(np.asarray(out.log_probs)[:, PROMPT:]))
