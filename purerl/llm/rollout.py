"""Sampling completions with the KV cache, and laying prompt + completion out as one sequence.

`sample` is one program: a prefill of the right-padded prompts, then `num_tokens` decode steps in
a `lax.scan` carrying the cache. Step t draws token t of every completion with key `keys[t]`
from softmax(logits / temperature) (or the argmax when `greedy`); after a sequence's EOS its
tokens are PAD, its log-probs 0 and its mask 0. The behaviour log-probs are kept for PPO's ratio.

`assemble` writes each completion right after its prompt (prompt lengths differ), giving the
[B, P + C] sequences that the training forward passes see, with next-token-aligned masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from purerl.attention.lm import TinyLM
from purerl.llm.tasks import EOS, PAD


@struct.dataclass
class Completions:
    tokens: jax.Array  # [B, C] int32, PAD after EOS
    log_probs: jax.Array  # [B, C] log π_T(token) under the sampling policy, 0 after EOS
    mask: jax.Array  # [B, C] float32: 1 for tokens up to and including EOS

    @property
    def lengths(self) -> jax.Array:
        return jnp.sum(self.mask, axis=-1).astype(jnp.int32)


def sample(model: TinyLM, params, prompts: jax.Array, prompt_lengths: jax.Array, key: jax.Array,
           temperature: float | jax.Array, num_tokens: int, greedy: bool | jax.Array = False) -> Completions:
    """Sample `num_tokens` completion tokens for right-padded `prompts` [B, P] (lengths [B]).

    `greedy` (a bool, or [B] bools: rows that decode by argmax) selects the argmax instead of a
    sample; the log-probs are still those of π_T."""
    batch, prompt_len = prompts.shape
    caches = model.init_cache(batch, prompt_len + num_tokens)
    logits, caches = model.apply(params, prompts, caches, prompt_lengths, method="prefill")
    first_logits = logits[jnp.arange(batch), prompt_lengths - 1]

    def step(carry, step_key):
        logits, caches, done = carry
        scaled = logits / temperature
        sampled = jax.random.categorical(step_key, scaled)
        token = jnp.where(greedy, jnp.argmax(scaled, -1), sampled) if greedy is not False else sampled
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(scaled), token[:, None], -1)[:, 0]
        valid = ~done
        token = jnp.where(valid, token, PAD).astype(jnp.int32)
        done = done | (token == EOS)
        next_logits, caches = model.apply(params, token, caches, method="decode")
        return (next_logits, caches, done), (token, jnp.where(valid, log_prob, 0.0), valid)

    done = jnp.zeros((batch,), bool)
    _, (tokens, log_probs, valid) = lax.scan(
        step, (first_logits, caches, done), jax.random.split(key, num_tokens))
    return Completions(tokens.T, log_probs.T, valid.T.astype(jnp.float32))


@struct.dataclass
class Sequences:
    tokens: jax.Array  # [B, L] prompt, completion, PAD
    target_mask: jax.Array  # [B, L-1] float32: 1 where token j+1 is a completion token
    prompt_lengths: jax.Array  # [B]
    completion_lengths: jax.Array  # [B]

    @property
    def last_target(self) -> jax.Array:
        """[B, L-1] float32: 1 at the position predicting each completion's last token."""
        position = self.prompt_lengths + self.completion_lengths - 2
        return (jnp.arange(self.target_mask.shape[1])[None] == position[:, None]).astype(jnp.float32)


def _completion_index(prompt_lengths: jax.Array, num_tokens: int) -> jax.Array:
    """[B, C]: sequence position of completion token t (prompt_length + t)."""
    return prompt_lengths[:, None] + jnp.arange(num_tokens)[None]


def assemble(prompts: jax.Array, prompt_lengths: jax.Array, completions: jax.Array,
             mask: jax.Array) -> Sequences:
    """Prompt then completion tokens (where mask is 1), PAD elsewhere: [B, P + C]."""
    batch, prompt_len = prompts.shape
    num_tokens = completions.shape[1]
    tokens = jnp.concatenate([prompts, jnp.full((batch, num_tokens), PAD, prompts.dtype)], axis=1)
    prompt_part = jnp.arange(prompt_len + num_tokens)[None] < prompt_lengths[:, None]
    tokens = jnp.where(prompt_part, tokens, PAD)
    rows = jnp.arange(batch)[:, None]
    index = _completion_index(prompt_lengths, num_tokens)
    tokens = tokens.at[rows, index].set(jnp.where(mask > 0, completions, PAD).astype(tokens.dtype))
    return Sequences(tokens=tokens, target_mask=to_targets(mask, prompt_lengths, prompt_len + num_tokens),
                     prompt_lengths=prompt_lengths,
                     completion_lengths=jnp.sum(mask, axis=-1).astype(jnp.int32))


def to_targets(values: jax.Array, prompt_lengths: jax.Array, seq_len: int) -> jax.Array:
    """Per-completion-token values [B, C] -> next-token-aligned [B, seq_len - 1], 0 elsewhere."""
    batch, num_tokens = values.shape
    index = _completion_index(prompt_lengths, num_tokens) - 1
    out = jnp.zeros((batch, seq_len - 1), values.dtype)
    return out.at[jnp.arange(batch)[:, None], index].set(values)


def from_targets(aligned: jax.Array, prompt_lengths: jax.Array, num_tokens: int) -> jax.Array:
    """Next-token-aligned [B, L-1] -> per-completion-token [B, C]."""
    index = _completion_index(prompt_lengths, num_tokens) - 1
    return jnp.take_along_axis(aligned, index, axis=1)
