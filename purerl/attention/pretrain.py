"""Pretraining the tiny LM as a `purerl-train` algorithm (`algo=lm_pretrain`), with MHA -> GQA/MQA
conversion and uptraining (Ainslie et al. 2023) in the same program.

Every step trains on a batch of MQAR sequences (recall; `purerl.attention.mqar`) and a batch of
a synthetic order-2 Markov language (`purerl.attention.language`, tokens offset past the MQAR
vocabulary) with the mean of the two next-token losses; AdamW, global-norm clip, linear warm-up
then cosine decay to 10% of the peak.

- From scratch (`init_kv_heads=0`): a TinyLM with `num_kv_heads` (or linear attention) trains for
  `num_updates` updates of `steps_per_update` steps.
- Conversion (`init_kv_heads=H`): first exactly the from-scratch run with H KV heads for
  `pretrain_updates` updates (same key, so the same parameters as that job), then
  `convert_kv_heads` to `num_kv_heads` with each of `convert_methods` (vmapped, same data), each
  uptrained for `num_updates` updates with a fresh optimizer (peak `uptrain_lr`).

Metrics per update, on a held-out batch of `eval_batch` fresh sequences per task drawn with the
update's training data (from-scratch jobs of one seed see the same data and evaluation batches
whatever their shape): row 0 before any training (the initial or the just-converted model), then
after each update, so a job has `num_updates + 1` rows: mqar_accuracy (answer positions),
mqar_loss, language_loss, language_bayes_loss (the true distribution's loss on the same batch),
language_excess = language_loss − language_bayes_loss; env_steps_in_update = training sequences
of the update. Conversion jobs name them `<metric>_<method>` and add `pretrained_<metric>`: the
pretrained model before conversion. The headline (`return_metric`) is mqar_accuracy, for
conversion jobs the first method's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from purerl.attention.convert import CONVERSION_METHODS, convert_kv_heads
from purerl.attention.language import LanguageConfig, bayes_loss, sample_language
from purerl.attention.linear import FEATURE_MAPS
from purerl.attention.lm import ATTENTION_KINDS, LMConfig, TinyLM, masked_loss_and_accuracy
from purerl.attention.mqar import MQARBatch, MQARConfig, generate_mqar
from purerl.config import (
    ValidatedHyper,
    check_choice,
    check_divides,
    check_positive_int,
    hyper_field,
    validate_hyper,
)
from purerl.rl.loop import COUNT_SUFFIX, run_updates
from purerl.rl.training import fit

EVAL_METRICS = ("mqar_accuracy", "mqar_loss", "language_loss", "language_bayes_loss", "language_excess")


# The headline per-update metric of from-scratch jobs (purerl.algos.return_metric).
RETURN_METRIC = "mqar_accuracy"


def return_metric(config: Config) -> str:
    """The headline metric of a job: MQAR accuracy, of the first conversion method for conversions."""
    return f"mqar_accuracy_{config.convert_methods[0]}" if config.init_kv_heads else RETURN_METRIC


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: model shape, attention kind, tasks, budget, conversion."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 4
    mlp_ratio: int = 4
    attention: str = "softmax"  # or "linear" (one state per KV head)
    feature_map: str = "elu"  # linear attention only
    token_shift: bool = False  # LMConfig.token_shift: the previous token's embedding added at each position
    seq_len: int = 64
    mqar_vocab: int = 64
    mqar_pairs: int = 8
    language_vocab: int = 32
    language_alpha: float = 0.1
    language_seed: int = 0
    batch_size: int = 32  # sequences of each task per step
    num_updates: int = 20
    steps_per_update: int = 25
    warmup_steps: int = 50
    eval_batch: int = 256  # held-out sequences of each task per evaluation
    init_kv_heads: int = 0  # 0: from scratch; H: pretrain with H KV heads, then convert
    pretrain_updates: int = 20
    convert_methods: tuple = ("mean", "first", "random")

    def __post_init__(self) -> None:
        owner = "Config"
        object.__setattr__(self, "convert_methods", tuple(self.convert_methods))
        for name in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_ratio",
                     "language_vocab", "batch_size", "num_updates", "steps_per_update", "eval_batch",
                     "pretrain_updates"):
            check_positive_int(owner, name, getattr(self, name))
        check_divides(owner, "num_kv_heads", self.num_kv_heads, self.num_heads, "num_heads")
        check_choice(owner, "attention", self.attention, ATTENTION_KINDS)
        check_choice(owner, "feature_map", self.feature_map, FEATURE_MAPS)
        if isinstance(self.init_kv_heads, bool) or not isinstance(self.init_kv_heads, int) or self.init_kv_heads < 0:
            raise ValueError(f"Config.init_kv_heads: got {self.init_kv_heads!r}; allowed: 0 (from scratch) or a "
                             f"number of KV heads to convert from")
        if self.init_kv_heads:
            check_divides(owner, "init_kv_heads", self.init_kv_heads, self.num_heads, "num_heads")
            check_divides(owner, "num_kv_heads", self.num_kv_heads, self.init_kv_heads, "init_kv_heads")
            if self.attention != "softmax":
                raise ValueError(f"Config.attention: got {self.attention!r} with init_kv_heads="
                                 f"{self.init_kv_heads}; allowed: 'softmax' (conversion pools K/V heads)")
            if not self.convert_methods:
                raise ValueError("Config.convert_methods: got (); allowed: a non-empty subset of "
                                 f"{CONVERSION_METHODS}")
            for method in self.convert_methods:
                check_choice(owner, "convert_methods", method, CONVERSION_METHODS)
            if len(set(self.convert_methods)) != len(self.convert_methods):
                raise ValueError(f"Config.convert_methods: got {self.convert_methods}; allowed: distinct methods")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"Config.warmup_steps: got {self.warmup_steps!r}; allowed: an integer >= 0")
        self.mqar  # noqa: B018 - validates the MQAR shape
        self.language  # noqa: B018

    @property
    def env(self) -> str:
        """The results tables' `env` column."""
        return "mqar+language"

    @property
    def mqar(self) -> MQARConfig:
        return MQARConfig(vocab_size=self.mqar_vocab, seq_len=self.seq_len, num_pairs=self.mqar_pairs)

    @property
    def language(self) -> LanguageConfig:
        return LanguageConfig(vocab_size=self.language_vocab, seq_len=self.seq_len, alpha=self.language_alpha,
                              seed=self.language_seed)

    def lm_config(self, num_kv_heads: int | None = None) -> LMConfig:
        return LMConfig(vocab_size=self.mqar_vocab + self.language_vocab, max_len=self.seq_len,
                        d_model=self.d_model, num_layers=self.num_layers, num_heads=self.num_heads,
                        num_kv_heads=num_kv_heads or self.num_kv_heads, head_dim=self.head_dim,
                        mlp_ratio=self.mlp_ratio, attention=self.attention, feature_map=self.feature_map,
                        token_shift=self.token_shift)

    @property
    def sequences_per_update(self) -> int:
        return 2 * self.batch_size * self.steps_per_update


@struct.dataclass
class Hyper(ValidatedHyper):
    lr: float = hyper_field(3e-3, "(0, inf)", "peak AdamW learning rate (from scratch / pretraining)")
    uptrain_lr: float = hyper_field(1e-3, "(0, inf)", "peak AdamW learning rate after conversion")
    weight_decay: float = hyper_field(0.01, "[0, inf)", "AdamW decoupled weight decay")
    max_grad_norm: float = hyper_field(1.0, "(0, inf]", "global gradient-norm clip")


@struct.dataclass
class TrainState:
    params: Any  # conversion jobs: stacked over convert_methods


def _optimizer(config: Config, peak: jax.Array, total_steps: int, hyper: Hyper) -> optax.GradientTransformation:
    warmup = min(config.warmup_steps, total_steps // 2)
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps, 0.1)  # peak traced: scale it
    schedule = lambda step: peak * unit(step)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(hyper.max_grad_norm),
                       optax.adamw(schedule, weight_decay=hyper.weight_decay))


@struct.dataclass
class Batch:
    """Sequences of both tasks: MQAR (tokens, targets, answer mask) and language tokens."""

    mqar_tokens: jax.Array  # [..., B, T]
    mqar_targets: jax.Array
    mqar_mask: jax.Array
    language: jax.Array  # [..., B, T], offset past the MQAR vocabulary


def _batch(key: jax.Array, config: Config, size: int) -> Batch:
    mqar_key, language_key = jax.random.split(key)
    mqar = generate_mqar(mqar_key, config.mqar, size)
    language = sample_language(language_key, config.language, size) + config.mqar_vocab  # own token range
    return Batch(mqar.tokens, mqar.targets, mqar.loss_mask, language)


def _losses(model: TinyLM, params: Any, batch: Batch) -> dict[str, jax.Array]:
    """Both tasks' losses from one forward pass over the stacked batches."""
    size = batch.mqar_tokens.shape[0]
    logits = model.apply(params, jnp.concatenate([batch.mqar_tokens, batch.language]))
    mqar_loss, mqar_accuracy = masked_loss_and_accuracy(
        logits[:size], MQARBatch(batch.mqar_tokens, batch.mqar_targets, batch.mqar_mask))
    language_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits[size:, :-1], batch.language[:, 1:]).mean()
    return {"mqar_loss": mqar_loss, "mqar_accuracy": mqar_accuracy, "language_loss": language_loss}


def _evaluate(model: TinyLM, params: Any, config: Config, batch: Batch) -> dict[str, jax.Array]:
    out = _losses(model, params, batch)
    bayes = bayes_loss(batch.language - config.mqar_vocab, config.language)
    return {**out, "language_bayes_loss": bayes, "language_excess": out["language_loss"] - bayes}


def _fit(config: Config, lm: LMConfig, params: Any, peak_lr: jax.Array, num_updates: int, data_key: jax.Array,
         hyper: Hyper, on_update: Callable | None = None) -> tuple[Any, dict[str, jax.Array]]:
    """Train `params` for num_updates × steps_per_update steps; metrics [num_updates + 1].

    Each update draws its data in one call (training batches and a held-out evaluation batch:
    one copy of the generators in the program, which dominate its compile time); update 0 also
    evaluates the parameters before its first step, on the same held-out batch."""
    model = TinyLM(lm)
    optimizer = _optimizer(config, peak_lr, num_updates * config.steps_per_update, hyper)
    train_size = config.steps_per_update * config.batch_size

    def loss_fn(params, batch):
        out = _losses(model, params, batch)
        return 0.5 * (out["mqar_loss"] + out["language_loss"]), ()

    def update_step(state, key, update_index):
        data = _batch(key, config, train_size + config.eval_batch)
        steps = jax.tree.map(lambda x: x[:train_size].reshape(config.steps_per_update, config.batch_size,
                                                              *x.shape[1:]), data)
        held_out = jax.tree.map(lambda x: x[train_size:], data)
        # update_index is the scan counter (never batched), so this is a real branch under vmap.
        before = jax.lax.cond(update_index == 0, lambda: _evaluate(model, state[0], config, held_out),
                              lambda: {name: jnp.float32(0.0) for name in EVAL_METRICS})
        params, opt_state, _ = fit(optimizer, loss_fn, *state, steps)
        state = (params, opt_state)
        metrics = _evaluate(model, state[0], config, held_out)
        metrics["env_steps" + COUNT_SUFFIX] = jnp.int32(config.sequences_per_update)
        return state, {**metrics, **{f"before_{name}": value for name, value in before.items()}}

    (params, _), metrics = run_updates(update_step, (params, optimizer.init(params)), data_key, num_updates,
                                       hyper, on_update)
    first = {name: metrics[f"before_{name}"][0] for name in EVAL_METRICS}
    first["env_steps" + COUNT_SUFFIX] = jnp.int32(0)
    first["hyper_ok"] = metrics["hyper_ok"][0]
    return params, {name: jnp.concatenate([first[name][None], metrics[name]]) for name in first}


def _from_scratch(config: Config, num_kv_heads: int, num_updates: int, key: jax.Array, hyper: Hyper,
                  on_update: Callable | None = None) -> tuple[Any, dict[str, jax.Array]]:
    lm = config.lm_config(num_kv_heads)
    params = TinyLM(lm).init(jax.random.fold_in(key, 0), jnp.zeros((1, config.seq_len), jnp.int32))
    return _fit(config, lm, params, hyper.lr, num_updates, jax.random.fold_in(key, 1), hyper, on_update)


def make_train(config: Config, on_update: Callable[[jax.Array], None] | None = None
               ) -> Callable[[jax.Array, Hyper], tuple[TrainState, dict[str, jax.Array]]]:
    def train(key: jax.Array, hyper: Hyper) -> tuple[TrainState, dict[str, jax.Array]]:
        validate_hyper(hyper)
        if not config.init_kv_heads:
            params, metrics = _from_scratch(config, config.num_kv_heads, config.num_updates, key, hyper, on_update)
            return TrainState(params), metrics

        pretrained, pre_metrics = _from_scratch(config, config.init_kv_heads, config.pretrain_updates, key, hyper)
        convert_key = jax.random.fold_in(key, 2)
        converted = [convert_kv_heads(pretrained, config.num_kv_heads, method, key=convert_key)
                     for method in config.convert_methods]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *converted)

        def uptrain(params):  # every method sees the same data and evaluation batches
            return _fit(config, config.lm_config(), params, hyper.uptrain_lr, config.num_updates,
                        jax.random.fold_in(key, 3), hyper)

        params, per_method = jax.vmap(uptrain)(stacked)
        rows = config.num_updates + 1
        metrics = {"env_steps" + COUNT_SUFFIX: per_method["env_steps" + COUNT_SUFFIX][0],
                   "hyper_ok": per_method["hyper_ok"][0]}
        for i, method in enumerate(config.convert_methods):
            metrics.update({f"{name}_{method}": per_method[name][i] for name in EVAL_METRICS})
        metrics.update({f"pretrained_{name}": jnp.broadcast_to(pre_metrics[name][-1], (rows,))
                        for name in EVAL_METRICS})
        return TrainState(params), metrics

    return train
