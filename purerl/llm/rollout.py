"""Sampling completions (one cached-generation program) and laying prompt + completion out as one
sequence with next-token-aligned masks.

`sample` wraps `purerl.attention.generate`: a prefill of the prompts, then every decode step in
one `lax.scan` with the KV cache carried. All prompts of a batch have the same length (the tasks
left-pad them), so every completion starts at slot P. By default the left padding is read as
ordinary tokens (attended, counted in positions), as the training forward passes read it; with
`prompt_mask` it is masked and positions start at each prompt's first real token, which the
training forward must then match (`TinyLM.apply(..., padding_mask=sequence_mask(...))`).
Token t of every completion is drawn from softmax(logits / temperature) (rows marked `greedy`:
the argmax); after a completion's EOS its tokens are PAD, its log-probs 0 and its mask 0. The
behaviour log-probs are kept for PPO's ratio.

Per-token training quantities are [B, L-1] arrays over next-token positions: entry j belongs to
token j+1 of the [B, L] sequence, so completion token t sits at entry P − 1 + t.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from purerl.attention.generate import generate
from purerl.attention.lm import LMConfig
from purerl.llm.tasks import EOS, PAD


@struct.dataclass
class Completions:
    tokens: jax.Array  # [B, C] int32, PAD after EOS
    log_probs: jax.Array  # [B, C] log π_T(token) under the sampling policy, 0 after EOS and for greedy rows
    mask: jax.Array  # [B, C] float32: 1 for tokens up to and including EOS

    @property
    def lengths(self) -> jax.Array:
        return jnp.sum(self.mask, axis=-1).astype(jnp.int32)


def sample(config: LMConfig, params: Any, prompts: jax.Array, key: jax.Array, temperature: float | jax.Array,
           num_tokens: int, greedy: bool | jax.Array = False, prompt_mask: jax.Array | None = None,
           stop_early: bool = False) -> Completions:
    """`num_tokens` completion tokens for prompts [B, P]; `greedy` (bool or [B]) picks argmax rows;
    `prompt_mask` [B, P] (True = real token; left padding) masks the padding (module doc);
    `stop_early`: decoding ends once every completion has sampled EOS (same tokens)."""
    batch, prompt_len = prompts.shape
    temperatures = jnp.where(greedy, 0.0, jnp.broadcast_to(temperature, (batch,)))
    out = generate(params, config, prompts, key, steps=num_tokens, temperature=temperatures, eos_token=EOS,
                   prompt_mask=prompt_mask, stop_early=stop_early)
    mask = out.completion_mask[:, prompt_len:]
    return Completions(tokens=jnp.where(mask, out.tokens[:, prompt_len:], PAD),
                       log_probs=out.log_probs[:, prompt_len:], mask=mask.astype(jnp.float32))


@struct.dataclass
class Sequences:
    tokens: jax.Array  # [B, L] prompt, completion, PAD
    target_mask: jax.Array  # [B, L-1] float32: 1 where token j+1 is a completion token

    @property
    def last_target(self) -> jax.Array:
        """[B, L-1] float32: 1 at the position predicting each completion's last token."""
        return last_of_mask(self.target_mask)

    @property
    def completion_lengths(self) -> jax.Array:
        return jnp.sum(self.target_mask, axis=-1).astype(jnp.int32)


def last_of_mask(mask: jax.Array) -> jax.Array:
    """1 where the mask is 1 and the next entry is not (the end of each contiguous run)."""
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    return mask * (1.0 - next_mask)


def assemble(prompts: jax.Array, completions: jax.Array, mask: jax.Array) -> Sequences:
    """Prompt then completion tokens (where mask is 1), PAD elsewhere: [B, P + C]."""
    tokens = jnp.concatenate([prompts, jnp.where(mask > 0, completions, PAD).astype(prompts.dtype)], axis=1)
    return Sequences(tokens=tokens, target_mask=to_targets(mask.astype(jnp.float32), prompts.shape[1]))


def sequence_mask(prompt_mask: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """[B, P + C] bool: the real tokens of an assembled sequence (real prompt tokens, then the
    completion up to and including EOS), the `padding_mask` of its training forward pass."""
    return jnp.concatenate([prompt_mask.astype(bool), completion_mask > 0], axis=1)


def to_targets(values: jax.Array, prompt_len: int) -> jax.Array:
    """Per-completion-token values [B, C] -> next-token-aligned [B, P + C − 1], 0 on the prompt."""
    return jnp.concatenate([jnp.zeros((values.shape[0], prompt_len - 1), values.dtype), values], axis=1)


def from_targets(aligned: jax.Array, prompt_len: int) -> jax.Array:
    """Next-token-aligned [B, P + C − 1] -> per-completion-token [B, C]."""
    return aligned[:, prompt_len - 1:]
