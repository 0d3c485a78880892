"""Attention blocks: softmax MHA/GQA/MQA and linear attention, KV caches, memory accounting."""

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
from purerl.attention.rope import apply_rope
from purerl.attention.softmax import KVCache, SoftmaxAttention, init_kv_cache

__all__ = [
    "FEATURE_MAPS",
    "FORMS",
    "KVCache",
    "LinearAttention",
    "LinearState",
    "SoftmaxAttention",
    "apply_feature_map",
    "apply_rope",
    "feature_dim",
    "init_kv_cache",
    "init_linear_state",
    "linear_attention_chunked",
    "linear_attention_parallel",
    "linear_attention_recurrent",
    "linear_attention_step",
    "performer_projection",
]
