"""Run observability: progress with rate and ETA (a bar on a terminal, plain lines in a log),
and metrics as JSON lines (mirrored into TensorBoard event files, `saeft_jax.curves`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import tqdm

from saeft_jax import storage
from saeft_jax.curves import Curves

LINE_EVERY_S = 30.0  # how often a log (not a terminal) gets a progress line


def progress(
    total: int, desc: str, *, enabled: bool = True, initial: int = 0, unit: str = "step", stream: TextIO | None = None
) -> tqdm.tqdm | ProgressLines:
    """Progress towards `total`: a tqdm bar when `stream` (default stderr) is a terminal, and
    periodic plain lines otherwise, since a bar's carriage returns make one endless line in a
    SLURM or nohup log. Silent when not `enabled`. Both take `update(n)`, `set_postfix(**values)`
    and `close()`."""
    stream = stream or sys.stderr
    if enabled and not getattr(stream, "isatty", lambda: False)():
        return ProgressLines(total, desc, initial=initial, unit=unit, stream=stream)
    return tqdm.tqdm(
        total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True, file=stream
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLines:
    """Progress as one plain line every `every_s` seconds and one at the end, e.g.
    `finetune: 120/500 step (24%), 3.10 step/s, ETA 2m03s, loss=0.4100`; the rate counts only
    this run's work (a resumed run's `initial` steps are not in it)."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        initial: int = 0,
        unit: str = "step",
        stream: TextIO,
        every_s: float = LINE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every_s, self.clock = every_s, clock
        self.n, self._initial, self._postfix = initial, initial, ""
        self._started = self._printed = clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self._closed and self.clock() - self._printed >= self.every_s:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print(final=True)

    def line(self, *, final: bool = False) -> str:
        """The progress line as it would be printed now."""
        elapsed = self.clock() - self._started
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}{share}", f"{rate:.2f} {self.unit}/s"]
        if final:
            parts.append(f"took {_duration(elapsed)}")
        elif rate > 0 and self.total:
            parts.append(f"ETA {_duration(max(self.total - self.n, 0) / rate)}")
        return ", ".join(parts + ([self._postfix] if self._postfix else []))

    def _print(self, *, final: bool = False) -> None:
        print(self.line(final=final), file=self.stream, flush=True)
        self._printed = self.clock()


class JsonLines:
    """Appends one JSON object per line; can drop records a resumed run will write again.

    An object store cannot append, so for a URL the lines gather in memory and the object is
    rewritten whole at most every `flush_every_s` seconds and at `flush()`; callers flush when
    they checkpoint and when they finish. With `curves_step` (the records' step key) the same
    records become TensorBoard scalars in the file's directory; `close()` when done.
    """

    def __init__(self, path: str | os.PathLike | None, flush_every_s: float = 30.0, *, curves_step: str | None = None):
        self.path = storage.path(path) if path else None
        self._pending: list[str] = []
        self._flush_every_s, self._flushed_at = flush_every_s, time.monotonic()
        self._curves = Curves(self.path.parent, step_key=curves_step) if self.path and curves_step else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._curves is not None:
            self._curves.add(record)
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
        """Writes the lines held back for an object store (and the pending curves)."""
        if self._pending:
            before = self.path.read_text() if self.path.exists() else ""
            storage.write_atomic(self.path, before + "".join(self._pending))
            self._pending = []
        if self._curves is not None:
            self._curves.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        """Flushes, and closes the event file."""
        self.flush()
        if self._curves is not None:
            self._curves.close()

    def keep_only(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrites the file (atomically) keeping the records for which `predicate` holds, and
        the curves to match."""
        if self.path is None:
            return
        self.flush()
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [record for record in map(json.loads, filter(str.strip, lines)) if predicate(record)]
        if self.path.exists():
            storage.write_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        if self._curves is not None:
            self._curves.restart(kept)
