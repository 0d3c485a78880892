"""Watching training from outside: TensorBoard event files from host-side metrics.

`TensorBoardWriter` turns blocks of per-update metrics (host arrays with leading run axes
and a trailing update axis, as `purerl.sweep.run` returns them, or one segment of a
longer run) into one TensorBoard run per training run:

    writer = TensorBoardWriter(job_dir / "tensorboard", settings=result.settings, seeds=result.seeds)
    writer.write(result.metrics)          # or block by block: writer.write(block, first_update=u)
    writer.close()
    # tensorboard --logdir <job_dir>/tensorboard

Each run's folder is `setting<s>_seed<k>` (s = the `setting` column of the results, k the
seed value); its description lists the setting's grid values. Every scalar metric is a
tag, its step the run's cumulative env steps when the metrics hold `env_steps` (the
x-axis RL curves use), else the update index. NaN values (the episode metrics of an update
in which no episode finished) are left out rather than drawn as gaps. Nothing here runs
inside a compiled program: writing happens on the host, after the block is fetched.

Needs tensorboardX (`pip install 'purerl[tensorboard]'`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'purerl[tensorboard]' (tensorboardX)"


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def run_name(setting: int, seed: int) -> str:
    """The folder (TensorBoard's run name) of run (`setting`, `seed`)."""
    return f"setting{setting}_seed{seed}"


class TensorBoardWriter:
    """One TensorBoard run per (setting, seed); `write` takes [setting, seed, update] blocks."""

    def __init__(
        self,
        log_dir: str | os.PathLike,
        settings: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
    ) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(f"TensorBoard event files need tensorboardX: {INSTALL_HINT}") from None
        self.log_dir = Path(log_dir)
        self.settings = [dict(s) for s in settings]
        self.seeds = [int(k) for k in np.asarray(seeds).reshape(-1)]
        self.writers = {}
        for s, setting in enumerate(self.settings):
            for k, seed in enumerate(self.seeds):
                writer = SummaryWriter(str(self.log_dir / run_name(s, seed)), flush_secs=3600)
                values = ", ".join(f"{name}={value:g}" for name, value in setting.items()) or "base"
                writer.add_text("setting", f"setting {s} ({values}), seed {seed}", 0)
                self.writers[s, k] = writer

    def write(self, metrics: Mapping[str, Any], first_update: int = 0) -> int:
        """Add a block of updates: every scalar metric shaped [setting, seed, updates]
        (others, e.g. per-step vectors, are skipped). `first_update` is the index of the
        block's first update (step axis without env_steps). Returns the scalars written."""
        arrays = {name: np.asarray(value) for name, value in metrics.items()}
        shape = (len(self.settings), len(self.seeds))
        scalars = {n: a for n, a in arrays.items() if a.ndim == 3 and a.shape[:2] == shape}
        if not scalars:
            raise ValueError(f"metrics: no array shaped [setting, seed, update] with [setting, seed] = {shape}")
        num_updates = next(iter(scalars.values())).shape[2]
        steps = scalars.get("env_steps")
        written = 0
        for (s, k), writer in self.writers.items():
            for u in range(num_updates):
                step = int(steps[s, k, u]) if steps is not None else first_update + u
                for name, values in scalars.items():
                    value = float(values[s, k, u])
                    if np.isnan(value):
                        continue
                    writer.add_scalar(name, value, step)
                    written += 1
        for writer in self.writers.values():
            writer.flush()
        return written

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_tensorboard(
    log_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    settings: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
) -> Path:
    """Event files of a finished batch (`sweep.run`'s metrics), replacing earlier ones."""
    import shutil

    log_dir = Path(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)  # a rerun's curves must not mix with the old ones
    with TensorBoardWriter(log_dir, settings, seeds) as writer:
        writer.write(metrics)
    return log_dir


__all__ = ["TensorBoardWriter", "run_name", "tensorboard_available", "write_tensorboard"]
