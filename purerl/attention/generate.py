"""Sampling from the tiny LM as one program: prefill plus every decode step in one `lax.scan`.

    from purerl.attention import LMConfig, generate, token_log_probs

    out = generate(params, config, prompts, key, steps=16, temperature=1.0, eos_token=None)
    out.tokens           # [B, T0 + steps] int32: the prompts, then the sampled completions
    out.log_probs        # [B, T0 + steps] f32: behaviour log-prob of each sampled token, else 0
    out.completion_mask  # [B, T0 + steps] bool: True at sampled tokens up to and including EOS

For RL on language models (PPO / GRPO rollouts): `out.log_probs` are the behaviour policy's
log π_old(y_t | y_<t) under the sampling distribution softmax(logits / temperature), and
`token_log_probs(params, config, out.tokens, temperature)` recomputes the same quantity from a
full forward pass with new parameters (the ratio's numerator); mask both with
`out.completion_mask`.

Conventions:
- Prompts are a batch [B, T0] of equal length, left-aligned: every prompt starts at position 0
  with no padding (the LM has learned absolute positions). Completions occupy positions
  T0 .. T0 + steps − 1, and T0 + steps <= LMConfig.max_len so the whole sequence can be
  re-scored by one forward pass; this is checked before anything compiles, so the cache can
  never overflow inside the loop.
- PRNG: `key` is split into `steps` keys up front; sample i uses keys[i] for the whole batch
  (Gumbel noise of shape [B, vocab]). Same key, same tokens; row b is not what sampling its
  prompt alone with the same key would give (the noise is drawn for the whole batch).
- temperature: a scalar or [B] array, traced (vmap it, sweep it). 0 means greedy (argmax);
  greedy tokens get log-prob 0 (their sampling distribution is a point mass). A negative
  temperature raises when concrete; a traced negative one gives NaN log-probs.
- eos_token: after a sequence samples it, its later tokens are `eos_token` (padding), with
  log-prob 0 and completion_mask False. None: every sampled token counts.

`generate` is one `jax.jit` program (prefill + scan; the KV cache / linear-attention state is
the scan carry, updated in place) and vmaps over keys and temperatures:
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
from purerl.config import check_positive_int


@struct.dataclass
class Generation:
    tokens: jax.Array  # [B, T0 + steps] int32
    log_probs: jax.Array  # [B, T0 + steps] float32: 0 outside the completion
    completion_mask: jax.Array  # [B, T0 + steps] bool


def _temperature_column(temperature: jax.Array, batch: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (batch,))[:, None]


def tempered_log_probs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """log softmax(logits / τ) over the last axis, τ broadcastable to logits.

    τ = 0 is read as τ = 1 (callers use greedy's own convention); τ < 0 gives NaN, so an
    invalid traced temperature cannot pass silently.
    """
    safe = jnp.where(temperature > 0, temperature, 1.0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / safe, axis=-1)
    return jnp.where(temperature < 0, jnp.nan, log_probs)


def sample_token(
    key: jax.Array, logits: jax.Array, temperature: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One token per row of logits [B, V] and its log-prob under softmax(logits / τ).

    Gumbel-max: argmax(logits + τ·g) = argmax(logits / τ + g) for τ > 0 (a sample from
    softmax(logits / τ)) and argmax(logits) at τ = 0, so greedy needs no branch under vmap.
    """
    temperature = _temperature_column(temperature, logits.shape[0])
    logits = logits.astype(jnp.float32)
    gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
    token = jnp.argmax(logits + temperature * gumbel, axis=-1).astype(jnp.int32)
    chosen = jnp.take_along_axis(tempered_log_probs(logits, temperature), token[:, None], -1)
    log_prob = jnp.where(temperature == 0, 0.0, chosen)[:, 0]
    return token, log_prob


def _check(config: LMConfig, prompt: Any, steps: Any, temperature: Any,
           eos_token: Any) -> None:
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
    if eos_token is not None and not (
        isinstance(eos_token, (int, np.integer)) and 0 <= eos_token < config.vocab_size
    ):
        raise ValueError(f"generate.eos_token: got {eos_token!r}; allowed: None or an int in "
                         f"[0, {config.vocab_size})")
    if not isinstance(temperature, jax.core.Tracer):
        values = np.asarray(temperature, np.float64)
        if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != shape[0]) or not np.all(
                values >= 0):
            raise ValueError(
                f"generate.temperature: got {temperature!r}; allowed: a scalar or [B={shape[0]}] "
                "array of values >= 0 (0 = greedy)"
            )


@partial(jax.jit, static_argnames=("config", "steps", "eos_token", "cache_len"))
def _generate(params: Any, prompt: jax.Array, key: jax.Array, temperature: jax.Array, *,
              config: LMConfig, steps: int, eos_token: int | None, cache_len: int) -> Generation:
    model = TinyLM(config)
    batch, prompt_len = prompt.shape
    # The last sampled token is never fed back, so the cache needs prompt + steps - 1 slots.
    caches = model.init_cache(batch, cache_len)
    logits, caches = model.apply(params, prompt, caches, method="prefill")
    step_keys = jax.random.split(key, steps)
    first, first_log_prob = sample_token(step_keys[0], logits[:, -1], temperature)
    no_eos = jnp.zeros((batch,), bool)
    first_done = no_eos if eos_token is None else first == eos_token

    def decode_and_sample(carry, step_key):
        caches, token, done = carry
        logits, caches = model.apply(params, token, caches, method="decode")
        new_token, log_prob = sample_token(step_key, logits, temperature)
        if eos_token is not None:
            new_token = jnp.where(done, eos_token, new_token)
            log_prob = jnp.where(done, 0.0, log_prob)
            counts = ~done
            done = done | (new_token == eos_token)
        else:
            counts = jnp.ones((batch,), bool)
        return (caches, new_token, done), (new_token, log_prob, counts)

    _, (tokens, log_probs, counts) = jax.lax.scan(
        decode_and_sample, (caches, first, first_done), step_keys[1:])
    sampled = jnp.concatenate([first[:, None], tokens.T], axis=1)
    sampled_log_probs = jnp.concatenate([first_log_prob[:, None], log_probs.T], axis=1)
    sampled_mask = jnp.concatenate([jnp.ones((batch, 1), bool), counts.T], axis=1)
    prompt_zeros = jnp.zeros((batch, prompt_len), jnp.float32)
    return Generation(
        tokens=jnp.concatenate([prompt.astype(jnp.int32), sampled], axis=1),
        log_probs=jnp.concatenate([prompt_zeros, sampled_log_probs], axis=1),
        completion_mask=jnp.concatenate([prompt_zeros.astype(bool), sampled_mask], axis=1),
    )


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
) -> Generation:
    """Sample `steps` tokens after each prompt [B, T0] in one compiled program (module doc).

    `cache_len`: slots of the KV cache (default: prompt + steps − 1, all that is needed). A
    server allocates its cache at a fixed maximum length and every decode step attends over
    the whole buffer (masked by length); pass that length (<= max_len) to generate — or time —
    the same way. The tokens do not depend on it."""
    _check(config, prompt, steps, temperature, eos_token)
    needed = np.shape(prompt)[1] + steps - 1
    if cache_len is None:
        cache_len = needed
    elif isinstance(cache_len, bool) or not isinstance(cache_len, (int, np.integer)) or not (
            needed <= cache_len <= config.max_len):
        raise ValueError(f"generate.cache_len: got {cache_len!r}; allowed: None or an int in "
                         f"[prompt + steps - 1 = {needed}, LMConfig.max_len = {config.max_len}]")
    return _generate(params, jnp.asarray(prompt), key, jnp.asarray(temperature, jnp.float32),
                     config=config, steps=steps, eos_token=eos_token, cache_len=int(cache_len))


def token_log_probs(
    params: Any, config: LMConfig, tokens: jax.Array, temperature: float | jax.Array = 1.0
) -> jax.Array:
    """log softmax(logits / τ)[y_t] of every token given its prefix, by one forward pass.

    tokens [B, T] -> [B, T] float32 with 0 at position 0 (no prefix). At τ = 0 the greedy
    convention of `generate` is not reproduced (τ is treated as 1 there); pass the τ > 0 the
    policy is trained at.
    """
    tokens = jnp.asarray(tokens)
    logits = TinyLM(config).apply(params, tokens)[:, :-1]
    column = _temperature_column(temperature, tokens.shape[0])[:, :, None]
    log_probs = tempered_log_probs(logits, column)
    chosen = jnp.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]
    return jnp.concatenate([jnp.zeros((tokens.shape[0], 1), jnp.float32), chosen], axis=1)
