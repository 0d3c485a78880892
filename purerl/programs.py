"""Per-process caches of compiled programs (sweep executables, checkpointed segment programs)."""

from __future__ import annotations

from typing import Any


class BoundedCache(dict):
    """A dict that keeps its `maxsize` newest entries: compiled executables hold memory, so
    only the most recent programs stay."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        while len(self) > self.maxsize:
            self.pop(next(iter(self)))
