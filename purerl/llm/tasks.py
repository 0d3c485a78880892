"""Tasks with verifiable rewards for the tiny LM, generated on the fly from a PRNG key.

Every task is a frozen (hashable, static) dataclass with the same interface:

- `sample(key, n) -> Problems`: n prompts of exactly `prompt_len` tokens (shorter ones are
  left-padded with PAD before their BOS, so every completion starts at the same position: what
  one-program generation needs), and a reference completion (the demonstration SFT imitates),
  right-padded to `completion_len` with EOS then PAD. A pure function of `key`.
- `reward(problems, completions) -> [n]` in [0, 1]: the verifiable reward of sampled completions
  (tokens after the first EOS are ignored).
- `score(problems, completions) -> [n]`: the hidden scoring rule that preference labels come from
  (`preference_pairs`); the reward itself unless a task says otherwise.
- `heldout` (a field of every task, default 0): the share of all problems kept out of training.
  A problem belongs to the held-out split when a hash of its prompt tokens falls below
  `heldout`; `sample` then draws only training problems and `sample_heldout` only held-out
  ones (redrawing a problem until it lands in its split), so the two are disjoint. With
  `heldout=0` both draw from every problem, as fresh prompts of one distribution.

Tasks: `Addition` ("12+7=" -> "19", reward 1 for the exact answer), `Recall` (multi-query
associative recall: key-value pairs, then keys asked again; reward = fraction answered correctly),
`Preference` (letters; the hidden rule prefers completions with more copies of the prompt's
first letter, labels drawn with Bradley-Terry noise), `Repeat` ("c5=" -> "ccccc": completion
lengths drawn from a truncated power law, so a batch's longest completion varies widely) and
`Reverse` ("12345678=" -> "87654321": 9-token completions over 10^8 problems).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purerl.config import check_choice, check_positive_int

# ------------------------------------------------------------------------------ tokenizer
PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
DIGITS = "0123456789"
SYMBOLS = "+=:?"
LETTERS = "abcdefghijklmnop"
VOCAB: tuple[str, ...] = SPECIALS + tuple(DIGITS) + tuple(SYMBOLS) + tuple(LETTERS)
VOCAB_SIZE = len(VOCAB)
DIGIT0 = VOCAB.index("0")
LETTER0 = VOCAB.index("a")
PLUS, EQUALS, COLON, QUERY = (VOCAB.index(s) for s in SYMBOLS)


class Tokenizer:
    """Character-level tokenizer over `VOCAB` (digits, + = : ?, 16 letters, PAD/BOS/EOS)."""

    vocab = VOCAB
    pad, bos, eos = PAD, BOS, EOS

    def __init__(self) -> None:
        self._ids = {s: i for i, s in enumerate(VOCAB)}

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown:
            raise ValueError(f"text: characters {unknown} are not in the vocabulary; allowed: "
                             f"{DIGITS}{SYMBOLS}{LETTERS}")
        return [BOS] * bos + [self._ids[c] for c in text] + [EOS] * eos

    def decode(self, ids: Any) -> str:
        """Text up to the first EOS; PAD and BOS are dropped."""
        out = []
        for i in [int(i) for i in ids]:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(VOCAB[i])
        return "".join(out)


# ------------------------------------------------------------------------------ helpers
@struct.dataclass
class Problems:
    prompt: jax.Array  # [n, prompt_len] int32: (PAD ...) BOS prompt
    answer: jax.Array  # [n, completion_len] int32: reference completion, EOS then PAD
    target: jax.Array  # [n, completion_len] int32: what the reward compares against (task-specific)


def completion_mask(completions: jax.Array) -> jax.Array:
    """[..., C] bool: the tokens up to and including the first EOS (all of them if none)."""
    is_eos = (completions == EOS).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos
    return eos_before == 0


def clean_completions(completions: jax.Array) -> jax.Array:
    """PAD after the first EOS, so completions compare as strings."""
    return jnp.where(completion_mask(completions), completions, PAD)


def _place(pieces: list[tuple[jax.Array, jax.Array]], width: int) -> tuple[jax.Array, jax.Array]:
    """Concatenate variable-length pieces (tokens [w], length) into [width], right-padded."""
    out = jnp.full((width,), PAD, jnp.int32)
    offset = jnp.int32(0)
    for tokens, length in pieces:
        index = jnp.arange(tokens.shape[0])
        where = jnp.where(index < length, offset + index, width)  # width = dropped
        out = out.at[where].set(tokens.astype(jnp.int32), mode="drop")
        offset = offset + length
    return out, offset


_POW10 = np.array([10**k for k in range(10)], np.int32)


def _digits(number: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Decimal digit tokens of `number` (most significant first, no leading zeros) in [width]."""
    powers = jnp.asarray(_POW10[width - 1::-1])
    fixed = (number // powers) % 10  # zero-padded, width digits
    length = jnp.maximum(1, width - jnp.argmax(jnp.concatenate([fixed[:-1] != 0, jnp.array([True])])))
    start = width - length
    shifted = jnp.take(fixed, jnp.clip(jnp.arange(width) + start, 0, width - 1))
    return (DIGIT0 + shifted).astype(jnp.int32), length.astype(jnp.int32)


def _one(x: int) -> jax.Array:
    return jnp.array([x], jnp.int32)


def _uniform_int(u: jax.Array, low: jax.Array | int, high: jax.Array | int) -> jax.Array:
    """An integer in [low, high) from u ~ U[0, 1)."""
    return jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1)


def _sample_many(build, key: jax.Array, n: int, draws: int) -> Problems:
    """n problems from ONE draw of uniforms [n, draws]: a single random-bits call per batch keeps
    the compiled programs (which sample prompts in several places) small."""
    check_positive_int("task", "n", n)
    return jax.vmap(build)(jax.random.uniform(key, (n, draws)))


_FNV_PRIME = np.uint32(16777619)
_FNV_OFFSET = np.uint32(2166136261)
_SPLIT_RESOLUTION = 1 << 16


def prompt_hash(prompt: jax.Array) -> jax.Array:
    """[..., P] int tokens -> [...] uint32: FNV-1a over the tokens, then murmur3's finaliser (so
    nearby prompts land far apart)."""
    h = jnp.full(prompt.shape[:-1], _FNV_OFFSET, jnp.uint32)
    for t in range(prompt.shape[-1]):
        h = (h ^ prompt[..., t].astype(jnp.uint32)) * _FNV_PRIME
    h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def is_heldout(prompt: jax.Array, heldout: float) -> jax.Array:
    """[..., P] -> [...] bool: whether a prompt's problem belongs to the held-out split."""
    threshold = int(round(heldout * _SPLIT_RESOLUTION))
    return (prompt_hash(prompt) % np.uint32(_SPLIT_RESOLUTION)) < np.uint32(threshold)


def check_heldout(owner: str, heldout: Any) -> None:
    if isinstance(heldout, bool) or not isinstance(heldout, int | float) or not 0 <= heldout < 1:
        raise ValueError(f"{owner}.heldout: got {heldout!r}; allowed: a share in [0, 1) of the problems "
                         "kept out of training")


class _Split:
    """`sample` / `sample_heldout` over the train / held-out split of a task with a `heldout` field
    and `_one(u) -> Problems`, `_draws` uniforms per problem."""

    heldout: float
    _draws: int

    def _one(self, u: jax.Array) -> Problems:
        raise NotImplementedError

    def _sample_split(self, key: jax.Array, n: int, heldout_side: bool) -> Problems:
        if self.heldout == 0:
            return _sample_many(self._one, key, n, self._draws)
        check_positive_int("task", "n", n)

        def one(problem_key):
            def draw(attempt):
                return self._one(jax.random.uniform(jax.random.fold_in(problem_key, attempt), (self._draws,)))

            def wrong_split(carry):
                return is_heldout(carry[1].prompt, self.heldout) != heldout_side

            def redraw(carry):
                return carry[0] + 1, draw(carry[0] + 1)

            return jax.lax.while_loop(wrong_split, redraw, (jnp.int32(0), draw(jnp.int32(0))))[1]

        return jax.vmap(one)(jax.random.split(key, n))

    def sample(self, key: jax.Array, n: int) -> Problems:
        """n training problems (every problem when `heldout=0`)."""
        return self._sample_split(key, n, False)

    def sample_heldout(self, key: jax.Array, n: int) -> Problems:
        """n held-out problems, never drawn by `sample` (fresh problems when `heldout=0`)."""
        return self._sample_split(key, n, True)


class _ExactAnswer:
    """Reward (and score) 1 where the completion, cleaned, is the target token for token."""

    def reward(self, problems: Problems, completions: jax.Array) -> jax.Array:
        exact = jnp.all(clean_completions(completions) == problems.target, axis=-1)
        return exact.astype(jnp.float32)

    score = reward


# ------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Addition(_ExactAnswer, _Split):
    """`a+b=` -> the decimal sum. Each operand has 1..num_digits digits (count uniform, then the
    value uniform among numbers with that many digits). Reward 1 for the exact answer then EOS."""

    num_digits: int = 2
    heldout: float = 0.0

    name = "addition"
    _draws = 4

    def __post_init__(self) -> None:
        check_positive_int("Addition", "num_digits", self.num_digits)
        check_heldout("Addition", self.heldout)
        if self.num_digits > 6:
            raise ValueError(f"Addition.num_digits: got {self.num_digits}; allowed: 1..6")

    @property
    def prompt_len(self) -> int:
        return 2 * self.num_digits + 3  # BOS a + b =

    @property
    def completion_len(self) -> int:
        return self.num_digits + 2  # sum digits + EOS

    def _operand(self, u_count: jax.Array, u_value: jax.Array) -> jax.Array:
        count = _uniform_int(u_count, 1, self.num_digits + 1)
        powers = jnp.asarray(_POW10)  # a table: traced integer powers compile to long programs
        low = jnp.where(count == 1, 0, powers[count - 1])
        return _uniform_int(u_value, low, powers[count])

    def _one(self, u: jax.Array) -> Problems:
        a, b = self._operand(u[0], u[1]), self._operand(u[2], u[3])
        prompt, length = _place([(_one(BOS), 1), _digits(a, self.num_digits), (_one(PLUS), 1),
                                 _digits(b, self.num_digits), (_one(EQUALS), 1)], self.prompt_len)
        prompt = jnp.roll(prompt, self.prompt_len - length)  # left-pad: the PADs move to the front
        answer, _ = _place([_digits(a + b, self.num_digits + 1), (_one(EOS), 1)], self.completion_len)
        return Problems(prompt, answer, answer)


@dataclass(frozen=True)
class Recall(_Split):
    """Multi-query associative recall as generation: `<bos> k1 v1 ... km vm : q1 .. qk =`, then the
    values of the asked keys in order and EOS. Keys are letters, values digits; reward = fraction
    of the asked values produced at the right place."""

    num_pairs: int = 4
    num_queries: int = 2
    heldout: float = 0.0

    name = "recall"

    def __post_init__(self) -> None:
        check_heldout("Recall", self.heldout)
        check_positive_int("Recall", "num_pairs", self.num_pairs)
        check_positive_int("Recall", "num_queries", self.num_queries)
        if self.num_pairs > len(LETTERS):
            raise ValueError(f"Recall.num_pairs: got {self.num_pairs}; allowed: 1..{len(LETTERS)}")
        if self.num_queries > self.num_pairs:
            raise ValueError(
                f"Recall.num_queries: got {self.num_queries}; allowed: 1..num_pairs={self.num_pairs}"
            )

    @property
    def prompt_len(self) -> int:
        return 2 * self.num_pairs + self.num_queries + 3

    @property
    def completion_len(self) -> int:
        return self.num_queries + 1

    def _one(self, u: jax.Array) -> Problems:
        u_keys, u_values, u_asked = jnp.split(u, [len(LETTERS), len(LETTERS) + self.num_pairs])
        keys = LETTER0 + jnp.argsort(u_keys)[: self.num_pairs]  # distinct letters
        values = DIGIT0 + _uniform_int(u_values, 0, 10)
        asked = jnp.argsort(u_asked)[: self.num_queries]
        pairs = jnp.stack([keys, values], axis=1).reshape(-1)
        prompt = jnp.concatenate([_one(BOS), pairs, _one(COLON), keys[asked], _one(EQUALS)]).astype(jnp.int32)
        answer = jnp.concatenate([values[asked], _one(EOS)]).astype(jnp.int32)
        return Problems(prompt, answer, answer)

    @property
    def _draws(self) -> int:
        return len(LETTERS) + 2 * self.num_pairs

    def reward(self, problems: Problems, completions: jax.Array) -> jax.Array:
        asked = slice(0, self.num_queries)
        correct = clean_completions(completions)[:, asked] == problems.target[:, asked]
        return jnp.mean(correct.astype(jnp.float32), axis=-1)

    score = reward


@dataclass(frozen=True)
class Preference(_Split):
    """`<bos> x y z :` -> a string of 1..max_letters letters. The hidden rule scores a completion by
    the share of its letter slots holding the prompt's first letter: reward = count / max_letters.
    The demonstration is a uniformly random string (SFT teaches the format, not the preference),
    so a reward model or DPO has to discover the rule from noisy preference labels."""

    prompt_letters: int = 3
    max_letters: int = 4
    num_letters: int = 8  # alphabet: the first num_letters of LETTERS
    heldout: float = 0.0

    name = "preference"

    def __post_init__(self) -> None:
        check_heldout("Preference", self.heldout)
        for name in ("prompt_letters", "max_letters", "num_letters"):
            check_positive_int("Preference", name, getattr(self, name))
        if self.num_letters > len(LETTERS):
            raise ValueError(f"Preference.num_letters: got {self.num_letters}; allowed: 1..{len(LETTERS)}")

    @property
    def prompt_len(self) -> int:
        return self.prompt_letters + 2

    @property
    def completion_len(self) -> int:
        return self.max_letters + 1

    def _one(self, u: jax.Array) -> Problems:
        u_prompt, u_length, u_answer = jnp.split(u, [self.prompt_letters, self.prompt_letters + 1])
        letters = LETTER0 + _uniform_int(u_prompt, 0, self.num_letters)
        prompt = jnp.concatenate([_one(BOS), letters, _one(COLON)]).astype(jnp.int32)
        length = _uniform_int(u_length[0], 1, self.max_letters + 1)
        random_letters = LETTER0 + _uniform_int(u_answer, 0, self.num_letters)
        answer, _ = _place([(random_letters, length), (_one(EOS), 1)], self.completion_len)
        target = jnp.full((self.completion_len,), letters[0], jnp.int32)
        return Problems(prompt, answer, target)

    @property
    def _draws(self) -> int:
        return self.prompt_letters + 1 + self.max_letters

    def reward(self, problems: Problems, completions: jax.Array) -> jax.Array:
        hits = (clean_completions(completions) == problems.target) & (completions != EOS)
        return jnp.sum(hits, axis=-1).astype(jnp.float32) / self.max_letters

    score = reward


@dataclass(frozen=True)
class Repeat(_ExactAnswer, _Split):
    """`<bos> x n =` -> the letter x written n times, then EOS; reward 1 for the exact answer.
    The count n follows a truncated power law (Zipf) on 1..max_len: P(n) = n^(−tail) / Σ_m m^(−tail),
    so most completions are short and a few are long (`tail=0`: uniform). A batch's generation,
    which lasts as long as its longest completion, then costs the max of its prompts' counts:
    `longest_pmf(b)` gives that max's distribution for b prompts."""

    max_len: int = 16
    tail: float = 1.0  # the power law's exponent: larger = shorter completions, rarer long ones
    num_letters: int = 8  # alphabet: the first num_letters of LETTERS
    heldout: float = 0.0

    name = "repeat"
    _draws = 2

    def __post_init__(self) -> None:
        check_heldout("Repeat", self.heldout)
        for name in ("max_len", "num_letters"):
            check_positive_int("Repeat", name, getattr(self, name))
        if self.max_len > 99:
            raise ValueError(f"Repeat.max_len: got {self.max_len}; allowed: 1..99 (the count is written in "
                             "at most two digits)")
        if self.num_letters > len(LETTERS):
            raise ValueError(f"Repeat.num_letters: got {self.num_letters}; allowed: 1..{len(LETTERS)}")
        if isinstance(self.tail, bool) or not isinstance(self.tail, int | float) or not 0 <= self.tail < 1e3:
            raise ValueError(f"Repeat.tail: got {self.tail!r}; allowed: a number in [0, 1000) (the exponent "
                             "of P(n) ∝ n^(−tail); 0 is uniform)")

    @property
    def prompt_len(self) -> int:
        return 3 + len(str(self.max_len))  # BOS x digits =

    @property
    def completion_len(self) -> int:
        return self.max_len + 1  # n letters + EOS

    def count_pmf(self) -> np.ndarray:
        """[max_len] float64: P(n = 1), ..., P(n = max_len)."""
        weights = np.arange(1, self.max_len + 1, dtype=np.float64) ** -float(self.tail)
        return weights / weights.sum()

    def longest_pmf(self, b: int) -> np.ndarray:
        """[max_len] float64: the distribution of the largest count among b independent prompts,
        P(max = m) = F(m)^b − F(m − 1)^b."""
        check_positive_int("Repeat.longest_pmf", "b", b)
        cdf = np.minimum(np.cumsum(self.count_pmf()), 1.0)
        return cdf**b - np.concatenate([[0.0], cdf[:-1]]) ** b

    def _one(self, u: jax.Array) -> Problems:
        letter = LETTER0 + _uniform_int(u[0], 0, self.num_letters)
        # inverse CDF: n − 1 = the number of cumulative probabilities below u
        cdf = jnp.asarray(np.cumsum(self.count_pmf())[:-1], jnp.float32)
        count = 1 + jnp.sum(u[1] >= cdf).astype(jnp.int32)
        width = len(str(self.max_len))
        prompt, length = _place([(_one(BOS), 1), (_one(letter), 1), _digits(count, width), (_one(EQUALS), 1)],
                                self.prompt_len)
        prompt = jnp.roll(prompt, self.prompt_len - length)  # left-pad: the PADs move to the front
        index = jnp.arange(self.completion_len)
        answer = jnp.where(index < count, letter, jnp.where(index == count, EOS, PAD)).astype(jnp.int32)
        return Problems(prompt, answer, answer)


@dataclass(frozen=True)
class Reverse(_Split):
    """`<bos> d1 .. dn =` -> the n digits in reverse order, then EOS: completions of n + 1 tokens
    (9 for the default 8 digits) over 10^n problems, so a held-out split by problem is a real
    test of the algorithm rather than of memorised answers. Reward 1 for the exact answer
    (`partial=True`: the fraction of the n digits right, a documented partial-credit variant).
    A small transformer learns it by attending from answer position i to prompt position n − i."""

    num_digits: int = 8
    partial: bool = False
    heldout: float = 0.0

    name = "reverse"

    def __post_init__(self) -> None:
        check_heldout("Reverse", self.heldout)
        check_positive_int("Reverse", "num_digits", self.num_digits)
        if self.num_digits > 32:
            raise ValueError(f"Reverse.num_digits: got {self.num_digits}; allowed: 1..32")
        if not isinstance(self.partial, bool):
            raise ValueError(f"Reverse.partial: got {self.partial!r}; allowed: true (fraction of digits right) or "
                             "false (1 for the exact answer)")

    @property
    def prompt_len(self) -> int:
        return self.num_digits + 2  # BOS digits =

    @property
    def completion_len(self) -> int:
        return self.num_digits + 1  # reversed digits + EOS

    @property
    def _draws(self) -> int:
        return self.num_digits

    def _one(self, u: jax.Array) -> Problems:
        digits = DIGIT0 + _uniform_int(u, 0, 10)
        prompt = jnp.concatenate([_one(BOS), digits, _one(EQUALS)]).astype(jnp.int32)
        answer = jnp.concatenate([digits[::-1], _one(EOS)]).astype(jnp.int32)
        return Problems(prompt, answer, answer)

    def reward(self, problems: Problems, completions: jax.Array) -> jax.Array:
        right = clean_completions(completions) == problems.target
        if self.partial:
            return jnp.mean(right[:, : self.num_digits].astype(jnp.float32), axis=-1)
        return jnp.all(right, axis=-1).astype(jnp.float32)

    score = reward


TASKS = {"addition": Addition, "recall": Recall, "preference": Preference, "repeat": Repeat, "reverse": Reverse}
Task = Addition | Recall | Preference | Repeat | Reverse


def make_task(name: str, **kwargs: Any) -> Task:
    check_choice("task", "name", name, tuple(TASKS))
    return TASKS[name](**kwargs)


# ------------------------------------------------------------------------------ preferences
@struct.dataclass
class PreferencePairs:
    chosen: jax.Array  # [n, C] completion tokens
    rejected: jax.Array  # [n, C]
    chosen_score: jax.Array  # [n] hidden score (for diagnostics; never trained on)
    rejected_score: jax.Array


def preference_pairs(key: jax.Array, task: Task, problems: Problems, first: jax.Array,
                     second: jax.Array, noise: float | jax.Array) -> PreferencePairs:
    """Label pairs of completions with the task's hidden score under Bradley-Terry noise:
    P(first ≻ second) = σ((score_first − score_second) / noise); noise → 0 is the noiseless rule
    (ties broken at random)."""
    score_first, score_second = task.score(problems, first), task.score(problems, second)
    logit = (score_first - score_second) / jnp.maximum(noise, 1e-6)
    first_wins = jax.random.bernoulli(key, jax.nn.sigmoid(logit))
    pick = lambda a, b: jnp.where(first_wins[:, None], a, b)  # noqa: E731
    return PreferencePairs(
        chosen=pick(first, second),
        rejected=pick(second, first),
        chosen_score=jnp.where(first_wins, score_first, score_second),
        rejected_score=jnp.where(first_wins, score_second, score_first),
    )
