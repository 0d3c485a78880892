"""Synthetic job folders for the analysis tests: written with purerl.results exactly as
`purerl-train` writes them, but from made-up metrics (no training, no JAX compile)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from purerl import results as res
from purerl.algos import ppo


@dataclasses.dataclass
class FakeResult:  # the fields of purerl.sweep.SweepResult that purerl.results reads
    metrics: dict
    settings: tuple
    seeds: np.ndarray
    compile_seconds: float = 1.0
    run_seconds: float = 0.5


def fake_metrics(
    num_settings: int,
    num_seeds: int,
    num_updates: int = 20,
    level: np.ndarray | float = 100.0,
    seed: int = 0,
    diverge: dict[tuple[int, int], int] | None = None,
    no_episode: set[tuple[int, int]] | None = None,
    batch: int = 128,
) -> dict[str, np.ndarray]:
    """Returns that rise linearly to `level` (per setting) plus noise; `diverge` maps
    (setting, seed index) -> update from which the losses (and returns) are NaN;
    `no_episode` runs finish no episode in the last 10% of updates."""
    rng = np.random.default_rng(seed)
    shape = (num_settings, num_seeds, num_updates)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), (num_settings,))
    ramp = np.linspace(0.1, 1.0, num_updates)
    returns = level[:, None, None] * ramp + rng.normal(0.0, 5.0, shape)
    episodes = np.ones(shape, np.int32)
    loss = rng.normal(size=shape)
    for (s, k), update in (diverge or {}).items():
        loss[s, k, update:] = np.nan
        returns[s, k, update:] = np.nan
    window = res.final_window(num_updates)
    for s, k in no_episode or set():
        returns[s, k, -window:] = np.nan
        episodes[s, k, -window:] = 0
    return {
        "env_steps": np.broadcast_to((np.arange(num_updates) + 1) * batch, shape).astype(np.int64),
        "episode_return": returns.astype(np.float32),
        "episodes": episodes,
        "policy_loss": loss.astype(np.float32),
    }


def write_fake_job(
    job_dir: Path,
    *,
    clip_eps: tuple[float, ...] = (0.1, 0.2),
    seeds: tuple[int, ...] = tuple(range(8)),
    env: str = "CartPole-v1",
    num_envs: int = 4,
    experiment: str = "exp",
    **metric_kwargs,
) -> Path:
    """A complete job folder with a `clip_eps` in-job grid."""
    config = ppo.Config(env=env, num_envs=num_envs, num_steps=32, total_timesteps=num_envs * 32 * 20)
    settings = tuple({"clip_eps": c} for c in clip_eps)
    metrics = fake_metrics(len(settings), len(seeds), **metric_kwargs)
    result = FakeResult(metrics=metrics, settings=settings, seeds=np.asarray(seeds))
    ids = dict(experiment=experiment, algo="ppo", config=config, base_hyper=ppo.Hyper())
    res.write_job(job_dir, res.tidy(result, **ids), res.summarize(result, **ids), "fake: true\n", fingerprint="x")
    return job_dir
