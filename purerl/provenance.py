"""What produced a result: a hash of purerl's own source and the versions of the libraries
that change its numbers.

Both feed the job fingerprint of `purerl-train` (a finished job made by other code or other
library versions is not silently reused) and the key of `purerl.sweep`'s exported-program
cache (a cached program from other code is not silently run).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

# Libraries whose versions change what a training program computes.
DEPENDENCIES = ("jax", "jaxlib", "gymnax", "flax", "optax", "distrax")

PACKAGE_ROOT = Path(__file__).resolve().parent


def hash_source_tree(root: str | Path) -> str:
    """SHA-256 over every `*.py` file under `root`: relative paths and contents, sorted."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root).as_posix()).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.cache
def source_digest() -> str:
    """Hash of purerl's own source (every `.py` file of the package), computed once per
    process: any edit to the package's code gives a different digest."""
    return hash_source_tree(PACKAGE_ROOT)


def dependency_versions() -> dict[str, str]:
    """Installed versions of `DEPENDENCIES` ("not installed" for a missing one)."""
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance() -> dict[str, object]:
    """`{"source_digest": ..., "versions": {...}}`, as stored in a job's `job.json`."""
    return {"source_digest": source_digest(), "versions": dependency_versions()}


def describe_changes(recorded: dict[str, object] | None, current: dict[str, object]) -> list[str]:
    """Human-readable differences between a recorded provenance and the current one,
    e.g. ["purerl source 1a2b3c4d (now 5e6f7a8b)", "jax 0.10.1 (now 0.10.2)"]."""
    recorded = recorded or {}
    changes = []
    old_source, new_source = recorded.get("source_digest"), current.get("source_digest")
    if old_source != new_source:
        shown = str(old_source)[:8] if old_source else "unrecorded"
        changes.append(f"purerl source {shown} (now {str(new_source)[:8]})")
    old_versions = recorded.get("versions") or {}
    for name, version in (current.get("versions") or {}).items():
        old = old_versions.get(name, "unrecorded")
        if old != version:
            changes.append(f"{name} {old} (now {version})")
    return changes
