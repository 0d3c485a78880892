"""A synthetic language with a known optimum: an order-2 Markov chain (a random "trigram" language).

Token t is drawn from P[x_{t-2}, x_{t-1}], a [V, V, V] table whose rows are Dirichlet(α) draws
fixed by a NumPy seed (a constant of the language, not a parameter); the first two tokens are
uniform. The true conditional probabilities are known, so the Bayes-optimal next-token loss of
any batch is exact (`bayes_loss`): an LM's excess over it is what it has not learned.
Small α makes the rows peaked (a low-entropy, learnable language).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from purerl.config import check_positive_int


@dataclass(frozen=True)
class LanguageConfig:
    vocab_size: int = 32
    seq_len: int = 64
    alpha: float = 0.1  # Dirichlet concentration of each transition row
    seed: int = 0  # fixes the transition table

    def __post_init__(self) -> None:
        check_positive_int("LanguageConfig", "vocab_size", self.vocab_size)
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 3:
            raise ValueError(f"LanguageConfig.seq_len: got {self.seq_len!r}; allowed: an integer >= 3")
        if not self.alpha > 0:
            raise ValueError(f"LanguageConfig.alpha: got {self.alpha!r}; allowed: a number > 0")

    @cached_property
    def log_table(self) -> np.ndarray:
        """log P[a, b, c] = log p(next = c | previous two = a, b), float32 [V, V, V]."""
        rng = np.random.default_rng(self.seed)
        table = rng.dirichlet(np.full(self.vocab_size, self.alpha), size=(self.vocab_size, self.vocab_size))
        return np.log(np.maximum(table, 1e-30)).astype(np.float32)


def sample_language(key: jax.Array, config: LanguageConfig, batch_size: int) -> jax.Array:
    """[B, seq_len] int32 sequences of the language; a pure function of `key`."""
    check_positive_int("sample_language", "batch_size", batch_size)
    log_table = jnp.asarray(config.log_table)
    first_key, rest_key = jax.random.split(key)
    start = jax.random.randint(first_key, (batch_size, 2), 0, config.vocab_size)

    def step(previous, step_key):
        token = jax.random.categorical(step_key, log_table[previous[:, 0], previous[:, 1]])
        return jnp.stack([previous[:, 1], token], axis=1), token

    _, rest = jax.lax.scan(step, start, jax.random.split(rest_key, config.seq_len - 2))
    return jnp.concatenate([start, rest.T], axis=1).astype(jnp.int32)


def true_log_probs(tokens: jax.Array, config: LanguageConfig) -> jax.Array:
    """log p(x_{t+1} | x_{<=t}) under the language, for t = 0 .. T-2: [B, T-1]."""
    log_table = jnp.asarray(config.log_table)
    second = jnp.full((tokens.shape[0], 1), -np.log(config.vocab_size), jnp.float32)  # uniform
    later = log_table[tokens[:, :-2], tokens[:, 1:-1], tokens[:, 2:]]
    return jnp.concatenate([second, later], axis=1)


def bayes_loss(tokens: jax.Array, config: LanguageConfig) -> jax.Array:
    """The mean next-token cross-entropy of the true distribution on this batch (nats)."""
    return -true_log_probs(tokens, config).mean()
