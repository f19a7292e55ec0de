"""One run per workdir: `WORKDIR/run.lock`, held by process 0 of the run that uses it.

The lock names its holder (host, process id, start time) and carries a heartbeat the holder
refreshes every `HEARTBEAT_S` seconds. A second run on the same workdir stops at once with one
paragraph naming the holder. A lock left behind by a run that died is taken over: on the same
host as soon as its process is gone, from any host once its heartbeat is older than
`STALE_AFTER_S`. The other processes of a multi-host run share process 0's lock.

On a local or network disk the lock is created atomically (`O_EXCL`); an object store has no
such operation, so there a run writes its lock and reads it back a moment later, and the run
whose token is not there gives way.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from saeft_jax import storage
from saeft_jax.errors import UsageError

NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class WorkdirBusy(UsageError):
    """Another run holds the workdir."""


class WorkdirLock:
    """The lock of `workdir`; `acquire()` takes it (or raises `WorkdirBusy`), `release()` frees it."""

    def __init__(self, workdir: epath.Path):
        self.path = workdir / NAME
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started": self._started,
            "heartbeat": now,
        }

    def acquire(self) -> None:
        """Takes the lock, taking over a stale one; raises `WorkdirBusy` naming a live holder."""
        self._started = time.time()
        for _ in range(3):  # a stale lock is removed, then the create is tried again
            if self._create():
                break
            holder = self._holder()
            if holder is not None and not _stale(holder):
                raise WorkdirBusy(
                    f"{self.path.parent} is in use by another run (process {holder.get('pid')} on "
                    f"{holder.get('host')}, started {_when(holder.get('started'))}, last seen "
                    f"{_ago(holder.get('heartbeat'))} ago). Wait for it to finish or stop it, or use another "
                    f"--workdir. A lock left by a run that died is taken over by itself (same host: at once; "
                    f"another host: {STALE_AFTER_S / 60:.0f} minutes after its last heartbeat)."
                )
            self.path.unlink(missing_ok=True)
        else:
            raise WorkdirBusy(
                f"{self.path} changes hands too fast to take; another run is starting on "
                f"{self.path.parent}. Use another --workdir or wait."
            )
        self._beating = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._beating.start()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still this run's."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        payload = json.dumps(self._record()).encode()
        if storage.is_remote(self.path):
            if self.path.exists():
                return False
            self.path.write_bytes(payload)
            time.sleep(1.0)  # let a run that wrote at the same moment be seen
            holder = self._holder()
            return holder is not None and holder.get("token") == self.token
        try:
            descriptor = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # unreadable: written half by a run that died; stale

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = self._holder()
            if holder is None or holder.get("token") != self.token:
                return  # taken over (this run was presumed dead); nothing to refresh
            storage.write_atomic(self.path, json.dumps(self._record()))


def _stale(holder: dict[str, Any]) -> bool:
    """Whether the run that wrote `holder` is gone: its heartbeat is old, or it ran on this host
    and its process no longer exists."""
    if not holder or time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "at an unknown time"


def _ago(stamp: float | None) -> str:
    return f"{time.time() - stamp:.0f} s" if stamp else "an unknown time"
