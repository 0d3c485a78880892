"""Replay buffer: circular writes, sampling only filled slots, independent buffers under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl.rl import replay


def items(start: int, count: int) -> dict:
    """Items whose every field encodes its running index, so slots can be identified."""
    ids = np.arange(start, start + count)
    return {"id": jnp.asarray(ids, jnp.int32), "obs": jnp.asarray(np.stack([ids, -ids], 1), jnp.float32)}


def test_wraps_around_like_a_numpy_ring():
    capacity = 7
    buffer = replay.init({"id": jnp.int32(0), "obs": jnp.zeros(2)}, capacity)
    ring, position = np.zeros(capacity, np.int64), 0
    written = 0
    for batch_size in [3, 3, 3, 2, 5, 7]:
        buffer = jax.jit(replay.add)(buffer, items(written, batch_size))
        for i in range(written, written + batch_size):  # reference: one item at a time
            ring[position] = i
            position = (position + 1) % capacity
        written += batch_size
        np.testing.assert_array_equal(np.asarray(buffer.data["id"]), ring)
        np.testing.assert_array_equal(np.asarray(buffer.data["obs"])[:, 1], -ring)
        assert int(buffer.position) == position
        assert int(buffer.size) == min(written, capacity)
    assert float(buffer.fill_fraction()) == 1.0


def test_samples_only_filled_slots_and_uniformly():
    buffer = replay.init({"id": jnp.int32(0), "obs": jnp.zeros(2)}, 100)
    buffer = replay.add(buffer, items(1, 10))  # slots 0..9 hold ids 1..10; 90 slots hold zeros
    drawn = np.asarray(replay.sample(buffer, jax.random.PRNGKey(0), 20_000)["id"])
    assert drawn.min() == 1 and drawn.max() == 10, "sampled an unfilled slot (id 0)"
    frequencies = np.bincount(drawn, minlength=11)[1:] / drawn.size
    np.testing.assert_allclose(frequencies, 0.1, atol=0.01)  # 4.5 standard errors of 0.0021


def test_sampled_items_are_whole_items():
    buffer = replay.add(replay.init({"id": jnp.int32(0), "obs": jnp.zeros(2)}, 16), items(0, 16))
    sample = replay.sample(buffer, jax.random.PRNGKey(3), 64)
    np.testing.assert_array_equal(np.asarray(sample["obs"][:, 0]), np.asarray(sample["id"]))


def test_vmapped_buffers_are_independent_per_seed():
    """Each run of a vmapped batch fills and samples its own buffer; run i equals run i alone."""

    def fill_and_sample(key, offset):
        buffer = replay.init({"id": jnp.int32(0), "obs": jnp.zeros(2)}, 8)
        for step in range(3):
            batch = jax.tree.map(lambda x: x + offset, items(4 * step, 4))
            buffer = replay.add(buffer, batch)
        return buffer, replay.sample(buffer, key, 32)

    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    offsets = jnp.asarray([0, 100, 200], jnp.int32)
    buffers, samples = jax.jit(jax.vmap(fill_and_sample))(keys, offsets)
    for i in range(3):
        alone_buffer, alone_sample = jax.jit(fill_and_sample)(keys[i], offsets[i])
        np.testing.assert_array_equal(np.asarray(buffers.data["id"][i]), np.asarray(alone_buffer.data["id"]))
        np.testing.assert_array_equal(samples["obs"][i], alone_sample["obs"])  # data movement only: exact
        # each run only ever sees its own items (the last 8 written: ids 4..11 plus its offset)
        ids = np.asarray(samples["id"][i]) - int(offsets[i])
        assert ids.min() >= 4 and ids.max() <= 11
    assert not np.array_equal(np.asarray(samples["id"][0]), np.asarray(samples["id"][1]) - 100)


def test_bad_capacity_and_oversized_batch():
    with pytest.raises(ValueError, match="capacity: got 0; allowed: a positive integer"):
        replay.init({"id": jnp.int32(0)}, 0)
    buffer = replay.init({"id": jnp.int32(0), "obs": jnp.zeros(2)}, 4)
    with pytest.raises(ValueError, match="batch of 5 items exceeds the capacity 4"):
        replay.add(buffer, items(0, 5))
