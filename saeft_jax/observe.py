"""Run observability: progress bars with rate and ETA, and metrics as JSON lines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import tqdm

from saeft_jax import storage


def progress(total: int, desc: str, *, enabled: bool = True, initial: int = 0, unit: str = "step") -> tqdm.tqdm:
    """A progress bar showing rate and ETA (silent when not `enabled`)."""
    return tqdm.tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True)


class JsonLines:
    """Appends one JSON object per line; can drop records a resumed run will write again.

    An object store cannot append, so for a URL the lines gather in memory and the object is
    rewritten whole at most every `flush_every_s` seconds and at `flush()`; callers flush when
    they checkpoint and when they finish.
    """

    def __init__(self, path: str | os.PathLike | None, flush_every_s: float = 30.0):
        self.path = storage.path(path) if path else None
        self._pending: list[str] = []
        self._flush_every_s, self._flushed_at = flush_every_s, time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record) + "\n"
        if storage.is_remote(self.path):
            self._pending.append(line)
            if time.monotonic() - self._flushed_at > self._flush_every_s:
                self.flush()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(line)

    def flush(self) -> None:
        """Writes the lines held back for an object store."""
        if self._pending:
            before = self.path.read_text() if self.path.exists() else ""
            storage.write_atomic(self.path, before + "".join(self._pending))
            self._pending = []
        self._flushed_at = time.monotonic()

    def keep_only(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrites the file (atomically) keeping the records for which `predicate` holds."""
        if self.path is None:
            return
        self.flush()
        if not self.path.exists():
            return
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        storage.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records if predicate(r)))
