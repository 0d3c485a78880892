"""Sweep construction, chunking and multi-device sharding."""

import io
import logging
from functools import partial

import jax
import numpy as np
import pytest
from conftest import ON_CPU, tol

from purerl import sweep
from purerl.algos import ppo
from purerl.checkpoint import Checkpointing


def test_grid_is_cartesian_last_axis_fastest():
    s = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.2], gamma=[0.9, 0.99, 0.999])
    assert len(s) == 6
    assert s.settings[1] == {"clip_eps": 0.1, "gamma": 0.99}
    np.testing.assert_allclose(s.hypers.gamma, [0.9, 0.99, 0.999] * 2, rtol=1e-6)
    np.testing.assert_allclose(s.hypers.lr, np.full(6, 2.5e-4), rtol=1e-6)  # unswept fields keep defaults


def test_zipped_and_its_length_check():
    s = sweep.zipped(ppo.Hyper(), lr=[1e-3, 3e-4], ent_coef=[0.0, 0.01])
    assert s.settings == ({"lr": 1e-3, "ent_coef": 0.0}, {"lr": 3e-4, "ent_coef": 0.01})
    with pytest.raises(ValueError, match="equal lengths"):
        sweep.zipped(ppo.Hyper(), lr=[1e-3], ent_coef=[0.0, 0.01])


def test_random_search_respects_distributions_and_is_seeded():
    a = sweep.random_search(
        ppo.Hyper(), 200, seed=1, lr=sweep.LogUniform(1e-5, 1e-2),
        clip_eps=sweep.Uniform(0.1, 0.3), gae_lambda=sweep.Choice((0.9, 0.95)),
    )
    b = sweep.random_search(ppo.Hyper(), 200, seed=1, lr=sweep.LogUniform(1e-5, 1e-2))
    lr = np.asarray(a.hypers.lr)
    assert lr.min() >= 1e-5 and lr.max() <= 1e-2
    # Log-uniform: about half the draws below the geometric midpoint 3.16e-4.
    assert 0.35 < np.mean(lr < np.sqrt(1e-5 * 1e-2)) < 0.65
    assert sorted(set(np.round(np.asarray(a.hypers.gae_lambda, dtype=float), 4))) == [0.9, 0.95]
    np.testing.assert_allclose(a.hypers.lr, b.hypers.lr)


def test_bad_seeds_and_max_batch():
    train = ppo.make_train(ppo.Config(num_steps=8, num_minibatches=1, total_timesteps=32))
    with pytest.raises(ValueError, match="seeds"):
        sweep.run(train, ppo.Hyper(), seeds=0)
    with pytest.raises(ValueError, match="max_batch"):
        sweep.run(train, ppo.Hyper(), seeds=1, max_batch=0)


def test_second_run_of_a_program_reuses_its_executable():
    train = ppo.make_train(ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=32))
    first = sweep.run(train, ppo.Hyper(), seeds=2)
    second = sweep.run(train, sweep.grid(ppo.Hyper(), clip_eps=[0.3]), seeds=[5, 6])  # same shapes
    assert second.compile_seconds < 0.05 * max(first.compile_seconds, 1.0)
    again = sweep.run(train, ppo.Hyper(), seeds=2)
    for name in first.metrics:
        np.testing.assert_array_equal(again.metrics[name], first.metrics[name], err_msg=name)


def test_compiler_options_reach_every_program_and_key_its_executable(tmp_path):
    """An option XLA does not know is refused on each path that compiles (plain, exported-program
    cache, checkpointed segments), although the same program without options is already compiled
    in this process: the options are part of the executable's cache key."""
    train = ppo.make_train(ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=32))
    sweep.run(train, ppo.Hyper(), seeds=2)
    unknown = {"xla_no_such_option": 1}
    refused = pytest.raises(Exception, match="No such compile option: 'xla_no_such_option'")
    with refused:
        sweep.run(train, ppo.Hyper(), seeds=2, compiler_options=unknown)
    with refused:
        sweep.run(train, ppo.Hyper(), seeds=2, compiler_options=unknown, export_cache=tmp_path / "export",
                  program_key="ppo-options-test")
    with refused:
        sweep.run(train, ppo.Hyper(), seeds=2, compiler_options=unknown,
                  checkpoint=Checkpointing(tmp_path / "ckpt", "job", segment_updates=1))


def test_table_prints_every_column():
    train = ppo.make_train(ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=32))
    result = sweep.run(train, sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.2]), seeds=2)
    text = repr(result.table("entropy", last=1))
    assert "..." not in text
    for column in ("clip_eps", "entropy_mean", "entropy_std", "entropy_min", "entropy_max"):
        assert column in text


def test_update_progress_fires_once_per_update_per_chunk_with_every_runs_return():
    config = ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=48)
    seen = []

    class Recording(sweep.UpdateProgress):
        def __call__(self, update_index, values=None):
            seen.append((int(update_index), np.asarray(values["episode_return"])))
            super().__call__(update_index, values)

    progress = Recording(total=3 * 2, file=io.StringIO())
    train = ppo.make_train(config, on_update=progress)
    result = sweep.run(train, ppo.Hyper(), seeds=4, max_batch=2)  # 2 chunks x 3 updates
    progress.close()
    assert progress.calls == config.num_updates * 2
    returns = result.metrics["episode_return"][0]  # [seed, update]
    for update in range(config.num_updates):
        batches = [v for i, v in seen if i == update]
        assert [b.shape for b in batches] == [(2,), (2,)]  # one call per chunk, with the chunk's runs
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.sort(returns[:, update]))
    assert "return=" in progress.bar.format_dict["postfix"]


def test_update_progress_eta_leaves_out_compile_time():
    clock = [0.0]
    progress = sweep.UpdateProgress(total=10, file=io.StringIO(), mininterval=0)
    progress.bar._time = lambda: clock[0]
    progress.bar.reset()  # the bar is made before compiling, at t = 0
    clock[0] = 100.0  # compilation and the first update
    progress(0, {"episode_return": np.array([np.nan, np.nan])})  # no episode finished yet
    assert progress.bar.format_dict["postfix"] is None
    for update in range(1, 5):
        clock[0] += 2.0
        progress(update, {"episode_return": np.array([float(update), np.nan, 3.0 * update])})
    meter = progress.bar.format_dict
    assert meter["n"] == 5 and meter["elapsed"] == pytest.approx(8.0)  # 4 updates × 2 s, no compile
    rate = meter["rate"] or (meter["n"] - meter["initial"]) / meter["elapsed"]
    assert rate == pytest.approx(0.5)  # 2 s per update: ETA (10 - 5) × 2 s = 10 s
    assert "00:10" in progress.bar.format_meter(**meter).split("<")[1]
    assert meter["postfix"] == "return=8"  # mean of the finished runs' returns in the latest update: (4 + 12) / 2
    progress.close()


def test_export_cache_round_trip_gives_identical_results(tmp_path, caplog):
    train = ppo.make_train(ppo.Config(num_envs=2, num_steps=16, num_minibatches=2, total_timesteps=96))
    grid = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3])
    plain = sweep.run(train, grid, seeds=2)
    first = sweep.run(train, grid, seeds=2, export_cache=tmp_path, program_key="ppo-test")
    assert len(list(tmp_path.glob("*.jaxexport"))) == 1
    sweep._EXECUTABLES.clear()  # as in a new process
    second = sweep.run(train, grid, seeds=2, export_cache=tmp_path, program_key="ppo-test")  # from disk
    for name in plain.metrics:
        np.testing.assert_array_equal(first.metrics[name], plain.metrics[name], err_msg=name)
        np.testing.assert_array_equal(second.metrics[name], plain.metrics[name], err_msg=name)
    # A different program key (another Config) must not reuse the artefact.
    sweep.run(train, grid, seeds=2, export_cache=tmp_path, program_key="other")
    assert len(list(tmp_path.glob("*.jaxexport"))) == 2
    # A damaged artefact is reported, replaced, and the job still trains the same numbers.
    artefact = next(p for p in tmp_path.glob("*.jaxexport") if p.stat().st_mtime == min(
        q.stat().st_mtime for q in tmp_path.glob("*.jaxexport")))
    artefact.write_bytes(b"not a program")
    sweep._EXECUTABLES.clear()
    with caplog.at_level(logging.WARNING, logger="purerl.sweep"):
        third = sweep.run(train, grid, seeds=2, export_cache=tmp_path, program_key="ppo-test")
    assert any("is unreadable" in r.getMessage() and artefact.name in r.getMessage() for r in caplog.records)
    assert artefact.stat().st_size > 100  # exported again
    for name in plain.metrics:
        np.testing.assert_array_equal(third.metrics[name], plain.metrics[name], err_msg=name)


def test_export_cache_round_trip_with_final_state_skips_tracing(tmp_path):
    """return_state=True (purerl-train's default, for saved policies) goes through the exported
    program too: the final state's tree comes back from the pickled structure, equal to a plain
    run's, and a warm call never traces `train`."""
    inner = ppo.make_train(ppo.Config(num_envs=2, num_steps=16, num_minibatches=2, total_timesteps=96))
    traces = []

    def train(key, hyper):
        traces.append(1)  # runs only while JAX traces the program
        return inner(key, hyper)

    grid = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3])
    plain = sweep.run(train, grid, seeds=2, return_state=True)
    sweep.run(train, grid, seeds=2, return_state=True, export_cache=tmp_path, program_key="ppo-state")
    assert len(list(tmp_path.glob("*.jaxexport"))) == len(list(tmp_path.glob("*.treedef"))) == 1
    sweep._EXECUTABLES.clear()  # as in a new process
    traced_before = len(traces)
    warm = sweep.run(train, grid, seeds=2, return_state=True, export_cache=tmp_path, program_key="ppo-state")
    assert len(traces) == traced_before
    assert jax.tree.structure(warm.final_state) == jax.tree.structure(plain.final_state)
    # The same program either way: bitwise equal on CPU; a GPU may pick other kernels for the
    # re-lowered copy, so there the float32 tolerance applies.
    same = (np.testing.assert_array_equal if ON_CPU else partial(np.testing.assert_allclose, **tol()))
    for a, b in zip(jax.tree.leaves(warm.final_state), jax.tree.leaves(plain.final_state)):
        same(a, b)
    for name in plain.metrics:
        same(warm.metrics[name], plain.metrics[name], err_msg=name)
    # Metrics-only runs of the same key are another program (no state outputs): their own artefact.
    sweep.run(train, grid, seeds=2, export_cache=tmp_path, program_key="ppo-state")
    assert len(list(tmp_path.glob("*.jaxexport"))) == 2


def test_export_cache_falls_back_for_host_callbacks(tmp_path):
    calls = []
    config = ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=32)
    train = ppo.make_train(config, on_update=lambda i: calls.append(i))
    result = sweep.run(train, ppo.Hyper(), seeds=1, export_cache=tmp_path, program_key="cb")
    assert len(calls) == config.num_updates and result.metrics["entropy"].shape == (1, 1, 2)
