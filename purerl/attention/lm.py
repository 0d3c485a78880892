"""A tiny decoder-only language model whose attention kind and H_kv are configuration.

Token embedding + position information (a learned position embedding, or RoPE on q and k:
`LMConfig.position`), N pre-norm blocks (attention + MLP), final norm, tied or untied output.
Variable-length rows: `padding_mask` (left or right padding) and `segment_ids` (packed rows)
with positions counted per sequence (`purerl.attention.masks`). `train_mqar` is a pure
function of a PRNG key, so seeds vmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from purerl.attention._checks import check_kv_heads
from purerl.attention.linear import (
    FEATURE_MAPS,
    FORMS,
    LinearAttention,
    LinearState,
    feature_dim,
    init_linear_state,
)
from purerl.attention.masks import positions_from
from purerl.attention.moe import FFN_KINDS, MoEFeedForward
from purerl.attention.mqar import MQARBatch, MQARConfig, generate_mqar
from purerl.attention.softmax import (
    KVCache,
    SoftmaxAttention,
    cache_positions,
    check_room,
    init_kv_cache,
)
from purerl.config import check_choice, check_positive_int
from purerl.rl.training import fit

ATTENTION_KINDS = ("softmax", "linear")
POSITION_KINDS = ("learned", "rope")
LayerCache = KVCache | LinearState


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 128
    max_len: int = 64
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int | None = None  # default d_model // num_heads
    mlp_ratio: int = 4
    attention: Literal["softmax", "linear"] = "softmax"
    feature_map: str = "elu"  # linear attention only
    qk_dim: int | None = None  # linear attention only: project q, k to this width before φ (Based)
    linear_form: str = "chunked"
    chunk_size: int = 64
    use_rope: bool = False  # RoPE on top of the learned embedding (position="learned")
    qk_norm: bool = False
    tie_embeddings: bool = True
    # "learned": a position embedding added to the tokens; "rope": no position parameters,
    # q and k rotated by position (softmax attention only; cached keys are stored rotated).
    position: Literal["learned", "rope"] = "learned"
    # Token shift: the previous token, embedded by a second table, is added to each position's
    # input (zero at a sequence's first position), so every position sees the pair (x_{t-1}, x_t).
    # The cheapest form of the short convolution that H3, Based and Mamba put before their token
    # mixers (Zoology, Arora et al. 2023): it makes an MQAR value carry its key into the first
    # layer, which a model with position embeddings alone forms slowly. Decoding keeps the
    # previous token id (one int per sequence, whatever the attention) beside the caches.
    token_shift: bool = False
    # "moe": each block's MLP is a mixture of `num_experts` MLPs (each mlp_ratio·d_model wide),
    # `experts_per_token` routed per token (`purerl.attention.moe`); router_bias: DeepSeek-V3's
    # auxiliary-loss-free balancing bias (collection "router_bias").
    ffn: Literal["dense", "moe"] = "dense"
    num_experts: int = 4
    experts_per_token: int = 2
    router_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "num_layers", "num_heads",
                     "mlp_ratio", "chunk_size", "num_experts", "experts_per_token"):
            check_positive_int("LMConfig", name, getattr(self, name))
        check_kv_heads("LMConfig", self.num_heads, self.num_kv_heads)
        check_choice("LMConfig", "attention", self.attention, ATTENTION_KINDS)
        check_choice("LMConfig", "feature_map", self.feature_map, FEATURE_MAPS)
        check_choice("LMConfig", "linear_form", self.linear_form, FORMS)
        check_choice("LMConfig", "position", self.position, POSITION_KINDS)
        check_choice("LMConfig", "ffn", self.ffn, FFN_KINDS)
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"LMConfig.experts_per_token: got {self.experts_per_token}; allowed: 1.."
                f"num_experts={self.num_experts}"
            )
        if self.position == "rope" and self.attention != "softmax":
            raise ValueError(
                f"LMConfig.position: got 'rope' with attention={self.attention!r}; allowed: "
                "'learned' (linear attention has no rotary positions)"
            )
        if self.head_dim is not None:
            check_positive_int("LMConfig", "head_dim", self.head_dim)
        elif self.d_model % self.num_heads:
            raise ValueError(
                f"LMConfig.num_heads: got {self.num_heads}; allowed: a divisor of d_model="
                f"{self.d_model} when head_dim is not given"
            )
        if self.qk_dim is not None:
            check_positive_int("LMConfig", "qk_dim", self.qk_dim)
            if self.attention != "linear":
                raise ValueError(f"LMConfig.qk_dim: got {self.qk_dim} with attention={self.attention!r}; allowed: "
                                 "None (qk_dim is the feature map's input width, linear attention only)")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads


def make_attention(config: LMConfig, name: str | None = None) -> nn.Module:
    common = dict(model_dim=config.d_model, num_heads=config.num_heads,
                  num_kv_heads=config.num_kv_heads, head_dim=config.resolved_head_dim, name=name)
    if config.attention == "softmax":
        use_rope = config.use_rope or config.position == "rope"
        return SoftmaxAttention(use_rope=use_rope, qk_norm=config.qk_norm, **common)
    return LinearAttention(feature_map=config.feature_map, form=config.linear_form,
                           chunk_size=config.chunk_size, qk_dim=config.qk_dim, **common)


class Block(nn.Module):
    config: LMConfig

    def setup(self) -> None:
        self.attn_norm = nn.RMSNorm()
        self.attn = make_attention(self.config)
        self.mlp_norm = nn.RMSNorm()
        cfg = self.config
        if cfg.ffn == "moe":
            self.moe = MoEFeedForward(cfg.num_experts, cfg.experts_per_token,
                                      cfg.mlp_ratio * cfg.d_model, cfg.router_bias)
        else:
            self.mlp_in = nn.Dense(cfg.mlp_ratio * cfg.d_model)
            self.mlp_out = nn.Dense(cfg.d_model)

    def _mlp(self, x: jax.Array) -> jax.Array:
        h = self.mlp_norm(x)
        if self.config.ffn == "moe":
            return x + self.moe(h)
        return x + self.mlp_out(nn.gelu(self.mlp_in(h)))

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None,
                 positions: jax.Array | None = None, padding_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        h = self.attn_norm(x)
        if self.config.attention == "softmax":
            h = self.attn(h, lengths=lengths, padding_mask=padding_mask, positions=positions,
                          segment_ids=segment_ids)
        else:
            if lengths is not None:
                right = jnp.arange(x.shape[1])[None] < lengths[:, None]
                padding_mask = right if padding_mask is None else padding_mask & right
            h = self.attn(h, padding_mask=padding_mask)
        return self._mlp(x + h)

    def prefill(self, x, cache, lengths=None, start=None):
        h, cache = self.attn.prefill(self.attn_norm(x), cache, lengths, start)
        return self._mlp(x + h), cache

    def decode(self, x, cache):
        h, cache = self.attn.decode(self.attn_norm(x), cache)
        return self._mlp(x + h), cache


class TinyLM(nn.Module):
    """tokens [B, T] int -> logits [B, T, vocab]."""

    config: LMConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model,
                                    embedding_init=nn.initializers.normal(0.02))
        if cfg.position == "learned":
            self.position_embed = nn.Embed(cfg.max_len, cfg.d_model,
                                           embedding_init=nn.initializers.normal(0.02))
        if cfg.token_shift:
            self.shift_embed = nn.Embed(cfg.vocab_size, cfg.d_model,
                                        embedding_init=nn.initializers.normal(0.02))
        self.blocks = [Block(cfg) for _ in range(cfg.num_layers)]
        self.final_norm = nn.RMSNorm()
        if not cfg.tie_embeddings:
            self.output = nn.Dense(cfg.vocab_size, use_bias=False)

    def _logits(self, h: jax.Array) -> jax.Array:
        h = self.final_norm(h)
        if self.config.tie_embeddings:
            return self.token_embed.attend(h)
        return self.output(h)

    def _check_tokens(self, tokens: jax.Array, ndim: int) -> None:
        if tokens.ndim != ndim:
            raise ValueError(f"TinyLM: tokens have shape {tokens.shape}; allowed: {ndim} dims")
        if ndim == 2 and tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"TinyLM: sequence length {tokens.shape[1]}; allowed: at most LMConfig.max_len="
                f"{self.config.max_len}"
            )

    def _embed(self, tokens: jax.Array, positions: jax.Array, previous: jax.Array | None = None) -> jax.Array:
        """tokens [B, T] or [B], positions of the same shape -> [..., d_model].

        `previous`: each token's predecessor (token shift); default, for [B, T] rows, the row
        shifted right. Ignored at position 0 (a sequence's first token, after left padding or a
        packed row's segment start, has none)."""
        h = self.token_embed(tokens)
        if self.config.position == "learned":
            h = h + self.position_embed(positions)
        if self.config.token_shift:
            if previous is None:
                previous = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
            h = h + jnp.where((positions > 0)[..., None], self.shift_embed(previous), 0.0)
        return h

    def __call__(self, tokens: jax.Array, lengths: jax.Array | None = None, *,
                 positions: jax.Array | None = None, padding_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """tokens [B, T] -> logits [B, T, vocab].

        `lengths` [B]: right padding. `padding_mask` [B, T] (True = real token; any padding,
        left included): PAD tokens are never attended. `segment_ids` [B, T]: packed rows, a
        token attends within its own sequence only; 0 = padding (softmax attention only).
        `positions` [B, T] default: 0, 1, ... counted over real tokens and restarting per
        segment (`masks.positions_from`), so a padded or packed sequence gets the logits it
        gets alone. Logits at padding positions are unspecified.
        """
        self._check_tokens(tokens, 2)
        shape = tokens.shape
        for name, value in (("padding_mask", padding_mask), ("segment_ids", segment_ids),
                            ("positions", positions)):
            if value is not None and value.shape != shape:
                raise ValueError(f"TinyLM.{name}: got shape {value.shape}; allowed: the tokens' "
                                 f"shape {shape}")
        if segment_ids is not None and self.config.attention != "softmax":
            raise ValueError(
                f"TinyLM.segment_ids: given with LMConfig.attention={self.config.attention!r}; "
                "allowed: packed rows with attention='softmax' only"
            )
        if positions is None:
            if padding_mask is None and segment_ids is None:
                positions = jnp.broadcast_to(jnp.arange(shape[1]), shape)
            else:
                positions = positions_from(shape, padding_mask, segment_ids)
        h = self._embed(tokens, positions)
        for block in self.blocks:
            h = block(h, lengths, positions, padding_mask, segment_ids)
        return self._logits(h)

    def init_cache(self, batch: int, max_len: int | None = None) -> tuple[LayerCache, ...]:
        """Per-layer caches: KV caches for softmax attention, constant states for linear.

        `max_len` (softmax only) defaults to LMConfig.max_len, the most positions there are.
        """
        cfg = self.config
        if max_len is not None and not 1 <= max_len <= cfg.max_len:
            raise ValueError(
                f"TinyLM.init_cache.max_len: got {max_len}; allowed: 1..{cfg.max_len} "
                "(LMConfig.max_len: there are no positions beyond it)"
            )
        if cfg.attention == "softmax":
            group = cfg.num_heads // cfg.num_kv_heads
            return tuple(init_kv_cache(batch, max_len or cfg.max_len, cfg.num_kv_heads,
                                       cfg.resolved_head_dim, group=group)
                         for _ in range(cfg.num_layers))
        width = feature_dim(cfg.feature_map, cfg.qk_dim or cfg.resolved_head_dim)
        return tuple(init_linear_state(batch, cfg.num_kv_heads, width, cfg.resolved_head_dim)
                     for _ in range(cfg.num_layers))

    def prefill(self, tokens: jax.Array, caches: tuple[LayerCache, ...],
                lengths: jax.Array | None = None, start: jax.Array | None = None,
                ) -> tuple[jax.Array, tuple[LayerCache, ...]]:
        """Prompts tokens [B, T]: real tokens [start, lengths) (left padding: `start` [B]
        padding tokens in front, never attended; their first real token is position 0)."""
        self._check_tokens(tokens, 2)
        if start is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        else:
            real = jnp.arange(tokens.shape[1])[None, :] >= start[:, None]
            positions = positions_from(tokens.shape, real)
        h = self._embed(tokens, positions)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            h, cache = block.prefill(h, cache, lengths, start)
            new_caches.append(cache)
        return self._logits(h), tuple(new_caches)

    def decode(self, token: jax.Array, caches: tuple[LayerCache, ...], previous: jax.Array | None = None
               ) -> tuple[jax.Array, tuple[LayerCache, ...]]:
        """token [B] at position caches[0].lengths - start -> logits [B, vocab].

        `previous` [B]: the token before `token` (required with LMConfig.token_shift).

        Positions must be < LMConfig.max_len (and < the KV cache's max_len): checked when the
        lengths are concrete; under jit a token past the end is read at the last position,
        not stored, and flagged in every layer's `overflow` — a clamped, flagged result.
        """
        self._check_tokens(token, 1)
        if self.config.token_shift and previous is None:
            raise ValueError("TinyLM.decode.previous: got None with LMConfig.token_shift=True; allowed: the "
                             "token before `token`, shape [B]")
        max_len = self.config.max_len
        position = cache_positions(caches[0])
        check_room("TinyLM.decode", position, max_len)
        past_end = position >= max_len
        h = self._embed(token, jnp.minimum(position, max_len - 1), previous)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            h, cache = block.decode(h, cache)
            new_caches.append(cache.replace(overflow=cache.overflow | past_end))
        return self._logits(h), tuple(new_caches)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mqar: MQARConfig = field(default_factory=MQARConfig)


def masked_loss_and_accuracy(logits: jax.Array, batch: MQARBatch) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy and accuracy over answer positions only."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
    weights = batch.loss_mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    correct = (jnp.argmax(logits, -1) == batch.targets).astype(jnp.float32)
    return (losses * weights).sum() / count, (correct * weights).sum() / count


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, train.warmup_steps, train.steps, train.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                       optax.adamw(schedule, weight_decay=train.weight_decay))


def train_mqar(key: jax.Array, lm: LMConfig, train: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Train a TinyLM on fresh MQAR batches; returns (params, {"loss", "accuracy"} per step).

    Pure in `key`: `jax.vmap(lambda k: train_mqar(k, lm, train))(keys)` trains seeds together.
    """
    for name in ("seq_len", "vocab_size"):
        model_name = "max_len" if name == "seq_len" else name
        if getattr(train.mqar, name) > getattr(lm, model_name):
            raise ValueError(
                f"MQARConfig.{name}: got {getattr(train.mqar, name)}; allowed: at most "
                f"LMConfig.{model_name}={getattr(lm, model_name)}"
            )
    model = TinyLM(lm)
    optimizer = make_optimizer(train)
    init_key, data_key = jax.random.split(key)
    dummy = jnp.zeros((1, train.mqar.seq_len), jnp.int32)
    params = model.init(init_key, dummy)
    opt_state = optimizer.init(params)

    def loss_fn(params, batch):
        return masked_loss_and_accuracy(model.apply(params, batch.tokens), batch)

    params, _, stats = fit(optimizer, loss_fn, params, opt_state, jax.random.split(data_key, train.steps),
                           lambda step_key: generate_mqar(step_key, train.mqar, train.batch_size))
    return params, {"loss": stats.loss, "accuracy": stats.aux}


def evaluate_mqar(params: Any, key: jax.Array, lm: LMConfig, mqar: MQARConfig,
                  batch_size: int = 256) -> jax.Array:
    """Answer accuracy on a fresh batch."""
    batch = generate_mqar(key, mqar, batch_size)
    return masked_loss_and_accuracy(TinyLM(lm).apply(params, batch.tokens), batch)[1]
