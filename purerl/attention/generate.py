"""Sampling from the tiny LM as one program: prefill plus every decode step in one `lax.scan`.

    from purerl.attention import LMConfig, generate, token_log_probs

    out = generate(params, config, prompts, key, steps=16, temperature=1.0, eos_token=None)
    out.tokens           # [B, T0 + steps] int32: the prompts, then the sampled completions
    out.log_probs        # [B, T0 + steps] f32: behaviour log-prob of each sampled token, else 0
    out.completion_mask  # [B, T0 + steps] bool: True at sampled tokens up to and including EOS
    out.attention_mask   # [B, T0 + steps] bool: real prompt tokens and completion_mask

For RL on language models (PPO / GRPO rollouts): `out.log_probs` are the behaviour policy's
log π_old(y_t | y_<t) under the distribution each token was actually sampled from (below), and
`token_log_probs(params, config, out.tokens, temperature, ...)` recomputes the same quantity
from a full forward pass with new parameters (the ratio's numerator); mask both with
`out.completion_mask`.

The sampling distribution of every step, in this order (the order of Hugging Face's logits
processors):
1. EOS banned (logit −inf) while fewer than `min_new_tokens` tokens have been sampled;
2. temperature τ: softmax(logits / τ); τ = 0 is greedy (argmax, log-prob 0: a point mass);
3. top-k: tokens whose tempered logit is below the k-th largest are dropped (ties with the
   k-th all kept); k = 0 or k >= vocab keeps all;
4. top-p (nucleus): of the tokens left, sorted by probability (renormalised over them), the
   smallest prefix whose mass reaches p is kept (ties with its last token too); p = 1 keeps all.
The behaviour log-prob is log of this renormalised distribution at the sampled token
(`sampling_log_probs`). τ, k and p are traced (scalars or [B]), so they vmap and sweep.

Conventions:
- Prompts are a batch [B, T0]. Without `prompt_mask` every row is T0 real tokens. With
  `prompt_mask` [B, T0] (True = real token) prompts of different lengths are LEFT-padded: each
  row is padding then its real tokens; padding is never attended, and a prompt's first real
  token is position 0 (what it gets alone). Completions occupy slots T0 .. T0 + steps − 1, and
  T0 + steps <= LMConfig.max_len, checked before anything compiles, so the cache cannot
  overflow inside the loop.
- `steps` is the maximum number of new tokens; `min_new_tokens` bans EOS before that many.
- PRNG: `key` is split into `steps` keys up front; sample i uses keys[i] for the whole batch
  (Gumbel noise of shape [B, vocab]). Same key, same tokens; row b is not what sampling its
  prompt alone with the same key would give (the noise is drawn for the whole batch).
- A negative temperature raises when concrete; a traced negative one gives NaN log-probs.
- eos_token: once a sequence has sampled it, its later tokens are `pad_token` (default: the
  EOS token itself), with log-prob 0 and completion_mask False. None: every token counts.

`generate` is one `jax.jit` program (prefill + scan; the KV cache / linear-attention state is
the scan carry, updated in place; stopping is a mask, not a branch) and vmaps over keys and
temperatures:
`jax.vmap(lambda k, t: generate(params, cfg, prompts, k, steps=8, temperature=t))(keys, ts)`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purerl.attention.lm import LMConfig, TinyLM
from purerl.attention.masks import is_left_padded, left_padding_start
from purerl.config import check_positive_int


@struct.dataclass
class Generation:
    tokens: jax.Array  # [B, T0 + steps] int32
    log_probs: jax.Array  # [B, T0 + steps] float32: 0 outside the completion
    completion_mask: jax.Array  # [B, T0 + steps] bool
    attention_mask: jax.Array  # [B, T0 + steps] bool: real prompt tokens | completion_mask


def _column(value: Any, batch: int, dtype: Any) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(value, dtype), (batch,))[:, None]


def _temperature_column(temperature: jax.Array, batch: int) -> jax.Array:
    return _column(temperature, batch, jnp.float32)


def tempered_log_probs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """log softmax(logits / τ) over the last axis, τ broadcastable to logits.

    τ = 0 is read as τ = 1 (callers use greedy's own convention); τ < 0 gives NaN, so an
    invalid traced temperature cannot pass silently.
    """
    safe = jnp.where(temperature > 0, temperature, 1.0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / safe, axis=-1)
    return jnp.where(temperature < 0, jnp.nan, log_probs)


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array | None = None,
    top_p: jax.Array | None = None, banned: jax.Array | None = None,
) -> jax.Array:
    """logits [..., V] with −inf outside the sampling support (module doc, steps 1-4).

    temperature, top_k, top_p broadcast against logits[..., :1] (e.g. [B, 1]); `banned` bool
    broadcasts against logits. None skips a filter (no sort is paid for it).
    """
    logits = logits.astype(jnp.float32)
    if banned is not None:
        logits = jnp.where(banned, -jnp.inf, logits)
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[-1]
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    ranked = -jnp.sort(-scaled, axis=-1)  # descending
    rank = jnp.arange(vocab)
    keep = jnp.ones(logits.shape, bool)
    if top_k is not None:
        k = jnp.asarray(top_k, jnp.int32)
        k = jnp.where((k <= 0) | (k > vocab), vocab, k)
        kth = jnp.take_along_axis(ranked, jnp.broadcast_to(k - 1, ranked[..., :1].shape), -1)
        keep = keep & (scaled >= kth)
        ranked = jnp.where(rank < k, ranked, -jnp.inf)
    if top_p is not None:
        p = jnp.asarray(top_p, jnp.float32)
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        inside = (mass_before < p) | (p >= 1.0)
        inside = inside & (ranked > -jnp.inf)
        last = jnp.maximum(inside.sum(-1, keepdims=True) - 1, 0)
        threshold = jnp.take_along_axis(ranked, last, -1)
        keep = keep & (scaled >= threshold)
    return jnp.where(keep, logits, -jnp.inf)


def sampling_log_probs(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array | None = None,
    top_p: jax.Array | None = None, banned: jax.Array | None = None,
) -> jax.Array:
    """log-probs [..., V] of the distribution `generate` samples from (−inf outside support)."""
    return tempered_log_probs(filter_logits(logits, temperature, top_k, top_p, banned),
                              temperature)


def sample_token(
    key: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: jax.Array | None = None,
    top_p: jax.Array | None = None, banned: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One token per row of logits [B, V] and its log-prob under the sampling distribution.

    Gumbel-max: argmax(logits + τ·g) = argmax(logits / τ + g) for τ > 0 (a sample from
    softmax(logits / τ)) and argmax(logits) at τ = 0, so greedy needs no branch under vmap;
    the filters set logits outside the support to −inf first. top_k / top_p: scalars or [B].
    """
    batch = logits.shape[0]
    temperature = _temperature_column(temperature, batch)
    if top_k is not None:
        top_k = _column(top_k, batch, jnp.int32)
    if top_p is not None:
        top_p = _column(top_p, batch, jnp.float32)
    logits = filter_logits(logits, temperature, top_k, top_p, banned)
    gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
    token = jnp.argmax(logits + temperature * gumbel, axis=-1).astype(jnp.int32)
    chosen = jnp.take_along_axis(tempered_log_probs(logits, temperature), token[:, None], -1)
    log_prob = jnp.where(temperature == 0, 0.0, chosen)[:, 0]
    return token, log_prob


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_per_row(name: str, value: Any, batch: int, ok: Any, allowed: str) -> None:
    if value is None or isinstance(value, jax.core.Tracer):
        return
    values = np.asarray(value)
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != batch) or not np.all(
            ok(values)):
        raise ValueError(f"generate.{name}: got {value!r}; allowed: a scalar or [B={batch}] "
                         f"array of {allowed}")


def _check(config: LMConfig, prompt: Any, steps: Any, temperature: Any, eos_token: Any,
           prompt_mask: Any = None, min_new_tokens: Any = 0, top_k: Any = None,
           top_p: Any = None, pad_token: Any = None) -> None:
    """Everything that can be checked before tracing: shapes, sizes, concrete values."""
    if not isinstance(config, LMConfig):
        raise ValueError(f"generate.config: got {type(config).__name__}; allowed: LMConfig")
    check_positive_int("generate", "steps", steps)
    shape = np.shape(prompt)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"generate.prompt: got shape {shape}; allowed: [B, T0] with T0 >= 1")
    if not jnp.issubdtype(jnp.result_type(prompt), jnp.integer):
        raise ValueError(f"generate.prompt: got dtype {jnp.result_type(prompt)}; allowed: "
                         "integer token ids")
    if not isinstance(prompt, jax.core.Tracer):
        tokens = np.asarray(prompt)
        if tokens.size and not (0 <= tokens.min() and tokens.max() < config.vocab_size):
            raise ValueError(
                f"generate.prompt: got token ids in [{tokens.min()}, {tokens.max()}]; allowed: "
                f"[0, LMConfig.vocab_size={config.vocab_size})"
            )
    if shape[1] + steps > config.max_len:
        raise ValueError(
            f"generate.steps: got {steps} after a prompt of {shape[1]} tokens; allowed: "
            f"prompt + steps <= LMConfig.max_len={config.max_len}"
        )
    for name, token in (("eos_token", eos_token), ("pad_token", pad_token)):
        if token is not None and not (_is_int(token) and 0 <= token < config.vocab_size):
            raise ValueError(f"generate.{name}: got {token!r}; allowed: None or an int in "
                             f"[0, {config.vocab_size})")
    if not (_is_int(min_new_tokens) and 0 <= min_new_tokens <= steps):
        raise ValueError(f"generate.min_new_tokens: got {min_new_tokens!r}; allowed: an int in "
                         f"[0, steps={steps}]")
    if min_new_tokens and eos_token is None:
        raise ValueError(f"generate.min_new_tokens: got {min_new_tokens} with eos_token=None; "
                         "allowed: 0 unless an eos_token is given")
    if prompt_mask is not None:
        if np.shape(prompt_mask) != shape:
            raise ValueError(f"generate.prompt_mask: got shape {np.shape(prompt_mask)}; allowed: "
                             f"the prompt's shape {shape}")
        if not isinstance(prompt_mask, jax.core.Tracer) and not is_left_padded(prompt_mask):
            raise ValueError(
                "generate.prompt_mask: got a mask that is not left padding; allowed: each row "
                "False (padding) then True (its real tokens), at least one True"
            )
    batch = shape[0]
    if not isinstance(temperature, jax.core.Tracer):
        _check_per_row("temperature", temperature, batch, lambda v: v >= 0, "values >= 0 "
                       "(0 = greedy)")
    _check_per_row("top_k", top_k, batch,
                   lambda v: np.issubdtype(v.dtype, np.integer) & (v >= 0),
                   "ints >= 0 (0 = no top-k)")
    _check_per_row("top_p", top_p, batch, lambda v: (v > 0) & (v <= 1), "values in (0, 1]")


@partial(jax.jit, static_argnames=("config", "steps", "eos_token", "cache_len", "min_new_tokens",
                                   "pad_token", "stop_early"))
def _generate(params: Any, prompt: jax.Array, key: jax.Array, temperature: jax.Array,
              prompt_mask: jax.Array | None, top_k: jax.Array | None, top_p: jax.Array | None, *,
              config: LMConfig, steps: int, eos_token: int | None, cache_len: int,
              min_new_tokens: int, pad_token: int | None, stop_early: bool = False) -> Generation:
    model = TinyLM(config)
    batch, prompt_len = prompt.shape
    vocab = config.vocab_size
    pad_token = eos_token if pad_token is None else pad_token
    start = None if prompt_mask is None else left_padding_start(prompt_mask)
    if eos_token is not None and min_new_tokens:
        is_eos = jnp.arange(vocab) == eos_token
        banned_at = lambda i: is_eos[None, :] & (i < min_new_tokens)
    else:
        banned_at = lambda i: None
    sample = lambda k, logits, i: sample_token(k, logits, temperature, top_k, top_p, banned_at(i))
    # The last sampled token is never fed back, so the cache needs prompt + steps - 1 slots.
    caches = model.init_cache(batch, cache_len)
    logits, caches = model.apply(params, prompt, caches, None, start, method="prefill")
    step_keys = jax.random.split(key, steps)
    first, first_log_prob = sample(step_keys[0], logits[:, -1], 0)
    no_eos = jnp.zeros((batch,), bool)
    first_done = no_eos if eos_token is None else first == eos_token

    def decode_and_sample(carry, inputs):
        step_key, i = inputs
        caches, token, previous, done = carry
        logits, caches = model.apply(params, token, caches, previous, method="decode")
        new_token, log_prob = sample(step_key, logits, i)
        if eos_token is not None:
            new_token = jnp.where(done, pad_token, new_token)
            log_prob = jnp.where(done, 0.0, log_prob)
            counts = ~done
            done = done | (new_token == eos_token)
        else:
            counts = jnp.ones((batch,), bool)
        return (caches, new_token, token, done), (new_token, log_prob, counts)

    previous = prompt[:, -1].astype(jnp.int32)  # the token before `first`, for the token shift
    if stop_early and eos_token is not None:
        # The same steps in a while loop that ends once every row is done: the rows' later tokens
        # would all be padding, so the outputs are the scan's, and the time follows the longest row.
        def unfinished(carry):
            i, (_, _, _, done), _ = carry
            return (i < steps) & ~jnp.all(done)

        def one_step(carry):
            i, inner, (tokens, log_probs, counts) = carry
            inner, (token, log_prob, count) = decode_and_sample(inner, (step_keys[i], i))
            return i + 1, inner, (tokens.at[i - 1].set(token), log_probs.at[i - 1].set(log_prob),
                                  counts.at[i - 1].set(count))

        empty = (jnp.full((steps - 1, batch), pad_token, first.dtype), jnp.zeros((steps - 1, batch), jnp.float32),
                 jnp.zeros((steps - 1, batch), bool))
        _, _, (tokens, log_probs, counts) = jax.lax.while_loop(
            unfinished, one_step, (jnp.int32(1), (caches, first, previous, first_done), empty))
    else:
        _, (tokens, log_probs, counts) = jax.lax.scan(
            decode_and_sample, (caches, first, previous, first_done), (step_keys[1:], jnp.arange(1, steps)))
    sampled = jnp.concatenate([first[:, None], tokens.T], axis=1)
    sampled_log_probs = jnp.concatenate([first_log_prob[:, None], log_probs.T], axis=1)
    sampled_mask = jnp.concatenate([jnp.ones((batch, 1), bool), counts.T], axis=1)
    prompt_zeros = jnp.zeros((batch, prompt_len), jnp.float32)
    real_prompt = (jnp.ones((batch, prompt_len), bool) if prompt_mask is None
                   else prompt_mask.astype(bool))
    return Generation(
        tokens=jnp.concatenate([prompt.astype(jnp.int32), sampled], axis=1),
        log_probs=jnp.concatenate([prompt_zeros, sampled_log_probs], axis=1),
        completion_mask=jnp.concatenate([prompt_zeros.astype(bool), sampled_mask], axis=1),
        attention_mask=jnp.concatenate([real_prompt, sampled_mask], axis=1),
    )


def _optional(value: Any, dtype: Any) -> jax.Array | None:
    return None if value is None else jnp.asarray(value, dtype)


def generate(
    params: Any,
    config: LMConfig,
    prompt: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    temperature: float | jax.Array = 1.0,
    eos_token: int | None = None,
    cache_len: int | None = None,
    prompt_mask: jax.Array | None = None,
    min_new_tokens: int = 0,
    top_k: int | jax.Array | None = None,
    top_p: float | jax.Array | None = None,
    pad_token: int | None = None,
    stop_early: bool = False,
) -> Generation:
    """Sample up to `steps` tokens after each prompt [B, T0] in one compiled program.

    See the module doc for `prompt_mask` (left-padded prompts), `min_new_tokens`, `top_k`,
    `top_p` and `pad_token`. `cache_len`: slots of the KV cache (default: prompt + steps − 1,
    all that is needed). `stop_early`: with an `eos_token`, decoding ends once every row has sampled
    it (a `lax.while_loop` instead of the scan; same outputs, time set by the longest row). A
    server allocates its cache at a fixed maximum length and every
    decode step attends over the whole buffer (masked by length); pass that length (<=
    max_len) to generate — or time — the same way. The tokens do not depend on it."""
    _check(config, prompt, steps, temperature, eos_token, prompt_mask, min_new_tokens, top_k,
           top_p, pad_token)
    needed = np.shape(prompt)[1] + steps - 1
    if cache_len is None:
        cache_len = needed
    elif isinstance(cache_len, bool) or not isinstance(cache_len, (int, np.integer)) or not (
            needed <= cache_len <= config.max_len):
        raise ValueError(f"generate.cache_len: got {cache_len!r}; allowed: None or an int in "
                         f"[prompt + steps - 1 = {needed}, LMConfig.max_len = {config.max_len}]")
    return _generate(params, jnp.asarray(prompt), key, jnp.asarray(temperature, jnp.float32),
                     _optional(prompt_mask, bool), _optional(top_k, jnp.int32),
                     _optional(top_p, jnp.float32), config=config, steps=steps,
                     eos_token=eos_token, cache_len=int(cache_len),
                     min_new_tokens=int(min_new_tokens), pad_token=pad_token, stop_early=bool(stop_early))


def token_log_probs(
    params: Any, config: LMConfig, tokens: jax.Array, temperature: float | jax.Array = 1.0, *,
    attention_mask: jax.Array | None = None, top_k: int | jax.Array | None = None,
    top_p: float | jax.Array | None = None, eos_token: int | None = None,
    min_new_tokens: int = 0, prompt_len: int | None = None,
) -> jax.Array:
    """log-prob of every token given its prefix under `generate`'s sampling distribution, by
    one forward pass.

    tokens [B, T] -> [B, T] float32 with 0 at position 0 (no prefix). `attention_mask`
    ([B, T], e.g. `Generation.attention_mask`): padding is not attended and positions count
    real tokens, as in generation. top_k / top_p as in `generate`; `min_new_tokens` > 0 bans
    `eos_token` at the first min_new_tokens completion tokens, which start at `prompt_len`.
    At τ = 0 the greedy convention of `generate` is not reproduced (τ is treated as 1 there);
    pass the τ > 0 the policy is trained at.
    """
    tokens = jnp.asarray(tokens)
    batch, length = tokens.shape
    if min_new_tokens and (eos_token is None or prompt_len is None):
        raise ValueError(f"token_log_probs.min_new_tokens: got {min_new_tokens}; allowed: 0 "
                         "unless eos_token and prompt_len are given")
    logits = TinyLM(config).apply(params, tokens, padding_mask=attention_mask)[:, :-1]
    banned = None
    if min_new_tokens:
        step = jnp.arange(1, length) - prompt_len  # completion index of the predicted token
        early = (step >= 0) & (step < min_new_tokens)
        banned = early[None, :, None] & (jnp.arange(config.vocab_size) == eos_token)
    column = lambda v, dtype: None if v is None else _column(v, batch, dtype)[:, :, None]
    log_probs = sampling_log_probs(logits, column(temperature, jnp.float32),
                                   column(top_k, jnp.int32), column(top_p, jnp.float32), banned)
    chosen = jnp.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]
    return jnp.concatenate([jnp.zeros((batch, 1), jnp.float32), chosen], axis=1)
