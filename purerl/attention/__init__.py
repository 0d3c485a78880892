"""Attention blocks: softmax MHA/GQA/MQA and linear attention, KV caches, memory accounting,
variable-length rows (padding masks, packing) and sampling from the tiny LM."""

from purerl.attention.blockwise import blockwise_attention
from purerl.attention.convert import CONVERSION_METHODS, convert_kv_heads
from purerl.attention.generate import (
    Generation,
    filter_logits,
    generate,
    sample_token,
    sampling_log_probs,
    token_log_probs,
)
from purerl.attention.linear import (
    FEATURE_MAPS,
    FORMS,
    LinearAttention,
    LinearState,
    apply_feature_map,
    feature_dim,
    init_linear_state,
    linear_attention_chunked,
    linear_attention_parallel,
    linear_attention_recurrent,
    linear_attention_step,
    performer_projection,
)
from purerl.attention.lm import LMConfig, TinyLM, TrainConfig, evaluate_mqar, train_mqar
from purerl.attention.masks import attention_mask, positions_from
from purerl.attention.memory import kv_cache_bytes, linear_state_bytes
from purerl.attention.mqar import MQARBatch, MQARConfig, generate_mqar
from purerl.attention.packing import Packed, next_token_loss, next_token_weights, pack
from purerl.attention.rope import apply_rope
from purerl.attention.softmax import KVCache, SoftmaxAttention, init_kv_cache

__all__ = [
    "CONVERSION_METHODS",
    "FEATURE_MAPS",
    "FORMS",
    "Generation",
    "KVCache",
    "LMConfig",
    "LinearAttention",
    "LinearState",
    "MQARBatch",
    "MQARConfig",
    "Packed",
    "SoftmaxAttention",
    "TinyLM",
    "TrainConfig",
    "apply_feature_map",
    "apply_rope",
    "attention_mask",
    "blockwise_attention",
    "convert_kv_heads",
    "evaluate_mqar",
    "feature_dim",
    "filter_logits",
    "generate",
    "generate_mqar",
    "init_kv_cache",
    "init_linear_state",
    "kv_cache_bytes",
    "linear_attention_chunked",
    "linear_attention_parallel",
    "linear_attention_recurrent",
    "linear_attention_step",
    "linear_state_bytes",
    "next_token_loss",
    "next_token_weights",
    "pack",
    "performer_projection",
    "positions_from",
    "sample_token",
    "sampling_log_probs",
    "token_log_probs",
    "train_mqar",
]
