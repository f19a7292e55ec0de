"""Run observability: progress bars with rate and ETA, and metrics as JSON lines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tqdm


def progress(total: int, desc: str, *, enabled: bool = True, initial: int = 0, unit: str = "step") -> tqdm.tqdm:
    """A progress bar showing rate and ETA (silent when not `enabled`)."""
    return tqdm.tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True)


class JsonLines:
    """Appends one JSON object per line; can drop records a resumed run will write again."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_only(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrites the file (atomically) keeping the records for which `predicate` holds."""
        if self.path is None or not self.path.exists():
            return
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if predicate(r)))
        os.replace(tmp, self.path)
