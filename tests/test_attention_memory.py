"""Memory formulas against the nbytes of real caches, and the purerl-memory CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.attention import LinearAttention, SoftmaxAttention
from purerl.attention.lm import LMConfig, TinyLM
from purerl.attention.memory import (
    format_bytes,
    kv_cache_bytes,
    linear_state_bytes,
    memory_table,
    parse_bytes,
)
from purerl.cli.memory import main


def kv_leaf_bytes(cache) -> int:
    """K and V storage only; the length counters and overflow flags are bookkeeping."""
    return cache.keys.nbytes + cache.values.nbytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kv_heads", [8, 2, 1])
def test_kv_cache_bytes_equals_nbytes(dtype, kv_heads):
    module = SoftmaxAttention(model_dim=16, num_heads=8, num_kv_heads=kv_heads, head_dim=4)
    cache = module.init_cache(batch=3, max_len=40, dtype=dtype)
    assert kv_leaf_bytes(cache) == kv_cache_bytes(1, kv_heads, 4, 40, 3, dtype)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(cache))
    # Bookkeeping on top: an int32 length and a bool overflow flag per sequence.
    assert total == kv_cache_bytes(1, kv_heads, 4, 40, 3, dtype) + 3 * (4 + 1)


def test_lm_cache_bytes_over_layers():
    cfg = LMConfig(vocab_size=32, max_len=24, d_model=32, num_layers=3, num_heads=4,
                   num_kv_heads=2)
    caches = TinyLM(cfg).init_cache(batch=2)
    measured = sum(kv_leaf_bytes(c) for c in caches)
    assert measured == kv_cache_bytes(3, 2, 8, 24, 2, "float32")


@pytest.mark.parametrize("feature_map,width", [("elu", 4), ("taylor", 1 + 4 + 16)])
def test_linear_state_bytes_equals_nbytes(feature_map, width):
    module = LinearAttention(model_dim=16, num_heads=4, num_kv_heads=2, head_dim=4,
                             feature_map=feature_map)
    state = module.init_state(batch=5)
    measured = state.kv.nbytes + state.normalizer.nbytes
    assert module.feature_width == width
    assert measured == linear_state_bytes(1, 2, width, 4, 5, "float32")


def test_reference_figures_for_a_32_layer_model():
    """32 layers, head_dim 128, bf16: MHA-32 512 KiB/token, GQA-8 128 KiB, MQA 16 KiB."""
    assert kv_cache_bytes(32, 32, 128, 1, 1, "bf16") == 512 * 2**10
    assert kv_cache_bytes(32, 8, 128, 1, 1, "bf16") == 128 * 2**10
    assert kv_cache_bytes(32, 1, 128, 1, 1, "bf16") == 16 * 2**10
    assert kv_cache_bytes(32, 32, 128, 8192, 1, "bf16") == 4 * 2**30
    assert format_bytes(kv_cache_bytes(32, 8, 128, 8192, 1, "bf16")) == "1 GiB"
    assert format_bytes(kv_cache_bytes(32, 1, 128, 8192, 1, "bf16")) == "128 MiB"
    # The linear state does not grow with context.
    assert linear_state_bytes(32, 32, 128, 128, 1, "bf16") == 32 * 32 * (128 * 128 + 128) * 2


def test_table_max_batch_fits_budget():
    rows = memory_table(32, 32, 128, 8192, "bf16", [32, 8, 1], parse_bytes("80GiB"))
    by_name = {r["attention"]: r for r in rows}
    assert by_name["MHA"]["max_batch"] == 20
    assert by_name["GQA-8"]["max_batch"] == 80
    assert by_name["MQA"]["max_batch"] == 640
    for r in rows:
        assert r["max_batch"] * r["per_sequence"] <= 80 * 2**30 < (r["max_batch"] + 1) * r[
            "per_sequence"]
    # The linear state is held in float32 whatever the cache dtype: S [f, d] and z [f] per head.
    assert by_name["linear (f=128)"]["per_sequence"] == 32 * 32 * (128 * 128 + 128) * 4
    # After the weights, the cache gets what is left of the budget.
    weights = 14 * 2**30
    after = {r["attention"]: r for r in memory_table(32, 32, 128, 8192, "bf16", [32, 8, 1], 80 * 2**30,
                                                      weight_bytes=weights)}
    assert after["MHA"]["max_batch"] == (80 - 14) * 2**30 // (4 * 2**30) == 16
    assert after["GQA-8"]["max_batch"] == 66 and after["MQA"]["max_batch"] == 528
    with pytest.raises(ValueError, match="weight_bytes: got 81"):
        memory_table(32, 32, 128, 8192, "bf16", [32], 80, weight_bytes=81)


def test_cli_prints_table(capsys):
    main(["--layers", "32", "--heads", "32", "--head-dim", "128", "--seq-len", "8192",
          "--dtype", "bf16", "--budget", "80GiB"])
    out = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    assert "512 KiB" in lines["MHA"] and "4 GiB" in lines["MHA"]
    assert "128 KiB" in lines["GQA-8"] and "1 GiB" in lines["GQA-8"]
    assert "16 KiB" in lines["MQA"] and "128 MiB" in lines["MQA"]
    assert "constant" in lines["linear (f=128)"]


def test_cli_rejects_bad_shapes(capsys):
    with pytest.raises(SystemExit):
        main(["--heads", "32", "--kv-heads", "3"])
    assert "purerl-memory.kv_heads: got 3; allowed: a divisor of heads=32" in (
        capsys.readouterr().err)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: kv_cache_bytes(0, 1, 1, 1),
         r"kv_cache_bytes.layers: got 0; allowed: a positive integer"),
        (lambda: kv_cache_bytes(1, 1, 1, 1, 1, "int4"), r"dtype_bytes.dtype: got 'int4'"),
        (lambda: linear_state_bytes(1, 1, -3, 1),
         r"linear_state_bytes.feature_dim: got -3; allowed: a positive integer"),
        (lambda: parse_bytes("lots"), r"purerl-memory.budget: got 'lots'; allowed: a number"),
    ],
)
def test_bad_arguments_raise(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, 2**20, 33816576)] == [
        "512 B", "1.5 KiB", "1 MiB", "32.25 MiB"]
    np.testing.assert_equal(parse_bytes("1.5 GiB"), int(1.5 * 2**30))
