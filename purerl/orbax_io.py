"""orbax as purerl's files use it: saved policies (`purerl.policies`) and training
checkpoints (`purerl.checkpoint`) both save and restore through these two helpers.

- `checkpointer()`: orbax's StandardCheckpointer with its INFO logs kept out of the job's
  log, and, under jax.distributed, saving from the calling process alone.
- `orbax_path(path)`: `path`, or a link to it that orbax can read when the path holds glob
  characters (job folders named like `grid.lr=[0.001,0.01]`).

JAX and orbax are imported only when a helper is called, so importing this module (and
`purerl.load_policy`) stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def orbax_path(path: Path) -> Iterator[Path]:
    """`path`, or a link to it without glob characters. orbax 0.12.8 finds the per-process
    parts of a checkpoint with `directory.glob(...)`; in a folder named like a grid job
    (`grid.lr=[0.001,0.01]`) that finds nothing, so the parts are never merged and the
    checkpoint cannot be read. Saving (and reading) through a plain-named link avoids it."""
    if not any(c in str(path) for c in "*?["):
        yield path
        return
    link_dir = Path(tempfile.mkdtemp(prefix="purerl-orbax-"))
    try:
        (link_dir / "link").symlink_to(path.parent, target_is_directory=True)
        yield link_dir / "link" / path.name
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)  # removes the link, not its target


@contextlib.contextmanager
def checkpointer() -> Iterator[Any]:
    """orbax's StandardCheckpointer, its INFO logs (a dozen lines per save) kept out of the
    job's log."""
    import jax
    import orbax.checkpoint as ocp

    options = {}
    if jax.process_count() > 1:
        # Under jax.distributed one process writes the (host, already gathered) arrays;
        # orbax would otherwise wait at barriers for processes that never save.
        me = jax.process_index()
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(max(level, logging.WARNING))
    try:
        with ocp.StandardCheckpointer(**options) as orbax_checkpointer:
            yield orbax_checkpointer
    finally:
        absl.setLevel(level)


__all__ = ["checkpointer", "orbax_path"]
