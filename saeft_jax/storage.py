"""Workdir files on a local disk or an object store (gs://, s3://): one path type, atomic writes,
and local copies for the libraries that need a real file (memory maps, Hugging Face loading).

Paths are `etils.epath.Path`: pathlib on local disks, fsspec (gcsfs, s3fs) for URLs. On a local
disk a file is written under a temporary name and renamed into place; an object store replaces
an object whole, so there the object is written directly. Either way a reader never sees half a
file.

Every wait on a bucket is bounded: gcsfs waits at most `REQUEST_TIMEOUT_S` for a connection or
for the next bytes of an answer (instead of aiohttp's five minutes, six times over), and a run
first checks that each bucket it names answers within `PROBE_TIMEOUT_S` (`check_reachable`), so an
unreachable bucket ends in one paragraph naming its URL before any work starts. gcsfs logs a
traceback for each request it gives up on; those are dropped here, since the error it then
raises becomes that paragraph.

TensorStore (Orbax's checkpoints) and google-cloud-cpp (ArrayRecord's gs:// reads) retry for many
minutes by themselves (TensorStore up to 32 times per request, google-cloud-cpp for 15 minutes,
neither settable from here except TensorStore's stall limit, set below), so each of their calls
runs under `deadline(url, ...)`: a watchdog that, when the call has not returned in time, prints
one paragraph naming the URL and ends the process with exit code 2, as a `StorageError` would. A
thread blocked in native code cannot be made to raise, and a run that goes on without its data or
its checkpoint has nothing to go on with.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from etils import epath

from saeft_jax import stopping
from saeft_jax.errors import UsageError

CACHE = "~/.cache/saeft_jax/remote"
REQUEST_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 30.0
DEADLINE_S = 120.0  # a call of TensorStore or google-cloud-cpp on a bucket, plus the time its bytes take:
MIN_BYTES_PER_S = 4e6  # a bucket slower than this for a checkpoint counts as not answering
# How Orbax and TensorStore word an OSError they report as another type.
_SPACE_OR_ACCESS = (
    "RESOURCE_EXHAUSTED",
    "No space left",
    "Disk quota",
    "PERMISSION_DENIED",
    "Permission denied",
    "Read-only file system",
)


PLAIN_NAME_RULE = "letters, digits, '_', '.', '-', not starting with '.'"


def is_plain_name(name: str) -> bool:
    """Whether `name` can be one folder's name inside a workdir or data dir ("a/b" and ".." cannot)."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None


class StorageError(UsageError):
    """A file could not be written or read (space, permission, reachability); the message says where."""


@contextlib.contextmanager
def failures_named(where: str, doing: str):
    """Turns an OSError (or an Orbax/TensorStore error wrapping one) raised while `doing` into one
    `StorageError` paragraph naming `where` (or the file the error names) and what is needed."""
    try:
        yield
    except UsageError:
        raise
    except Exception as error:
        if not (isinstance(error, OSError) or any(marker in str(error) for marker in _SPACE_OR_ACCESS)):
            raise
        path = getattr(error, "filename", None) or where
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:300]
        raise StorageError(
            f"{path}: {reason} (while {doing}). {_remedy(error)} and rerun the same command: finished "
            f"work is kept, and the run continues from its last complete artifact or "
            f"checkpoint."
        ) from error


def _remedy(error: Exception) -> str:
    """What to do about a storage failure, by its kind."""
    code, text = getattr(error, "errno", None), str(error)
    if code in (errno.ENOSPC, errno.EDQUOT) or "RESOURCE_EXHAUSTED" in text or "No space" in text:
        return "Free space there (or point --workdir elsewhere)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "PERMISSION" in text.upper() or "Read-only" in text:
        return "Make it writable for this user"
    if code == errno.ENOENT:
        return "A file the run had made was removed while it ran; leave the workdir alone"
    return "Check the disk, or the bucket's name, your credentials and the connection"


def _bound_bucket_waits() -> None:
    """Sets gcsfs's wait per connection and per read (fsspec's defaults for every gs:// filesystem it
    makes) and keeps its retry tracebacks out of the output."""
    try:
        import aiohttp
        import fsspec.config
    except ImportError:  # no gcsfs installed: no bucket to wait on
        return
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=REQUEST_TIMEOUT_S)
    fsspec.config.conf.setdefault("gs", {}).setdefault("requests_timeout", timeout)
    logging.getLogger("gcsfs").addFilter(lambda record: record.exc_info is None)


def _bound_tensorstore_stalls() -> None:
    """TensorStore's HTTP transport gives up on a request that moves no byte for REQUEST_TIMEOUT_S
    (read when it first makes a request; without them a stalled request waits on TCP's own
    timeouts, tensorstore issue 291); a user's own values stay."""
    for name, value in {
        "TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS": REQUEST_TIMEOUT_S,
        "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": REQUEST_TIMEOUT_S,
        "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": 1,
    }.items():
        os.environ.setdefault(name, str(int(value)))


_bound_bucket_waits()
_bound_tensorstore_stalls()


class _Watchdog:
    """The deadlines of the calls in flight (`deadline`), looked at by one daemon thread per process
    (started on first use, again in a forked grain worker)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[float, str]] = {}
        self.next_token = 0
        self.pid: int | None = None

    def add(self, seconds: float, message: str) -> int:
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.pending = os.getpid(), {}
                threading.Thread(target=self._watch, name="saeft-bucket-deadline", daemon=True).start()
            self.next_token += 1
            self.pending[self.next_token] = (time.monotonic() + seconds, message)
            return self.next_token

    def remove(self, token: int) -> None:
        with self.lock:
            self.pending.pop(token, None)

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            with self.lock:
                late = [message for due, message in self.pending.values() if time.monotonic() > due]
            if late:
                with contextlib.suppress(
                    OSError
                ):  # written without Python's stream locks: the main thread may hold them
                    os.write(2, f"\nerror: {late[0]}\n".encode())
                os._exit(2)


_watchdog = _Watchdog()


@contextlib.contextmanager
def deadline(url: str | os.PathLike, doing: str, nbytes: int = 0):
    """Ends the process with one paragraph naming `url` and exit code 2 when the block (a call of a
    client without a bound of its own on a bucket: TensorStore, google-cloud-cpp) has not finished
    `DEADLINE_S` seconds after it began, plus `nbytes` at `MIN_BYTES_PER_S`; on a local disk, no limit."""
    if not is_remote(url):
        yield
        return
    seconds = DEADLINE_S + nbytes / MIN_BYTES_PER_S
    token = _watchdog.add(
        seconds,
        f"{url}: its bucket did not answer within {seconds:.0f} s (while {doing}). Check the bucket, your "
        f"credentials and the connection (and the emulator variables, if set), then rerun the same command: "
        f"finished work is kept, and the run continues from its last complete artifact or checkpoint.",
    )
    try:
        yield
    finally:
        _watchdog.remove(token)


def check_reachable(url: str | os.PathLike, what: str) -> None:
    """Raises `StorageError` naming `what` (e.g. "--workdir") and `url` when `url` is in a bucket
    that does not answer within `PROBE_TIMEOUT_S` or answers with an error; a local path, or a
    bucket that answers (also "no such object"), passes. A stop request (`saeft_jax.stopping`)
    ends the wait."""
    if not is_remote(url):
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            path(url).stat()
            outcome.append(None)
        except FileNotFoundError:
            outcome.append(None)
        except BaseException as error:  # reported by the caller's thread
            outcome.append(error)

    waiting = threading.Thread(target=probe, name="saeft-bucket-probe", daemon=True)  # abandoned if it hangs
    waiting.start()
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while waiting.is_alive() and time.monotonic() < deadline:
        waiting.join(0.25)
        stopping.check(f"while waiting for {url} to answer")
    if not outcome:
        answer = f"did not answer within {PROBE_TIMEOUT_S:.0f} s"
    elif outcome[0] is not None:
        text = str(outcome[0]).strip()
        reason = getattr(outcome[0], "strerror", None) or (
            text.splitlines()[0][:300] if text else type(outcome[0]).__name__
        )
        answer = f"could not be reached ({reason})"
    else:
        return
    raise StorageError(
        f"{what} {url}: its bucket {answer}. Check the URL, your credentials and the connection "
        f"(and STORAGE_EMULATOR_HOST, if set), then rerun; nothing was started."
    )


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as a path that may be a URL (`gs://bucket/run`) or a local path (`~` expanded)."""
    return epath.Path(p) if is_remote(p) else epath.Path(os.path.expanduser(os.fspath(p)))


def is_remote(p: str | os.PathLike) -> bool:
    """True for object-store URLs such as gs://bucket/dir."""
    return "://" in os.fspath(p)


def write_atomic(target: epath.Path, data: bytes | str) -> None:
    """Writes `data` to `target` so that readers see the old file or the new one, never a part."""
    payload = data.encode() if isinstance(data, str) else data
    if is_remote(target):
        target.write_bytes(payload)
        return
    partial = target.with_name(target.name + ".partial")
    try:
        partial.write_bytes(payload)
        os.replace(partial, target)
    except OSError:  # out of space, permission: leave no half-written file behind
        partial.unlink(missing_ok=True)
        raise


def save_npz(target: epath.Path, **arrays: np.ndarray) -> None:
    """`np.savez` of `arrays`, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(target, buffer.getvalue())


def save_npy(target: epath.Path, array: np.ndarray) -> None:
    """`np.save` of `array`, written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(target, buffer.getvalue())


def load_npz(source: epath.Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, read whole."""
    with np.load(io.BytesIO(source.read_bytes())) as arrays:
        return {name: arrays[name] for name in arrays.files}


def save_safetensors(target: epath.Path, arrays: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """`arrays` as float32 tensors in a safetensors file, written atomically."""
    tensors = {name: np.asarray(value, np.float32) for name, value in arrays.items()}
    write_atomic(target, safetensors.numpy.save(tensors, metadata=metadata))


def load_safetensors(source: epath.Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (read whole; never unpickles)."""
    return safetensors.numpy.load(source.read_bytes())


def digest(target: epath.Path) -> dict[str, int | str]:
    """{"bytes", "sha256"} of a file, read in 16 MiB pieces (feature files are gigabytes)."""
    sha, size = hashlib.sha256(), 0
    with target.open("rb") as reader:
        for piece in iter(lambda: reader.read(1 << 24), b""):
            sha.update(piece)
            size += len(piece)
    return {"bytes": size, "sha256": sha.hexdigest()}


def size_of(target: epath.Path) -> int | None:
    """The size of a file in bytes, or None when it does not exist."""
    try:
        return target.stat().length
    except FileNotFoundError:
        return None


def files_under(target: epath.Path) -> list[epath.Path]:
    """`target` itself when it is a file, else every file below it."""
    return _files(target) if target.is_dir() else [target]


def cache_path(source: epath.Path) -> Path:
    """Where `local_copy` keeps its copy of the URL `source`."""
    digest = hashlib.sha256(os.fspath(source).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(CACHE)) / digest / source.name


def local_copy(source: epath.Path) -> Path:
    """A local path holding `source` (a file or a directory): `source` itself on a local disk; for
    a URL, a copy at `cache_path(source)`, fetched once and fetched again when the object's size
    or modification time changes; a directory's copy loses the files the bucket no longer holds."""
    if not is_remote(source):
        return Path(source)
    local = cache_path(source)
    if not source.is_dir():
        _fetch(source, local)
        return local
    files = {os.fspath(local / file.relative_to(source)): file for file in _files(source)}
    stale = [f for f in local.rglob("*") if f.is_file() and os.fspath(f) not in files] if local.is_dir() else []
    for file in stale:
        if not file.name.endswith(".partial"):  # another process's fetch in flight
            file.unlink(missing_ok=True)
    for target, file in files.items():
        _fetch(file, Path(target))
    return local


def upload(local: Path, target: epath.Path) -> None:
    """Copies the local file or directory `local` to the URL `target`, file by file; each local
    file then carries its object's modification time, so `local_copy` can use it as the copy."""
    for file in [f for f in local.rglob("*") if f.is_file()] if local.is_dir() else [local]:
        remote = target / file.relative_to(local).as_posix() if local.is_dir() else target
        remote.parent.mkdir(parents=True, exist_ok=True)
        _stream(epath.Path(file), remote)
        mtime = remote.stat().mtime
        os.utime(file, (mtime, mtime))


def publish(local: Path, target: epath.Path) -> None:
    """Moves the finished local file or directory `local` to `target`, replacing what was there: a
    rename on a local disk; for a URL an upload, after which `local` is removed."""
    if not is_remote(target):
        if Path(target).is_dir():
            shutil.rmtree(target)
        os.replace(local, target)
        return
    upload(local, target)
    if local.is_dir():
        shutil.rmtree(local)
    else:
        local.unlink()


def _files(directory: epath.Path) -> list[epath.Path]:
    """Every file under `directory`, by listing (object stores refuse recursive glob patterns)."""
    return [f for item in directory.iterdir() for f in (_files(item) if item.is_dir() else [item])]


def _fetch(source: epath.Path, local: Path) -> None:
    """Streams the object `source` to `local` unless `local` already matches its size and time."""
    stat = source.stat()
    if local.exists() and (local.stat().st_size, int(local.stat().st_mtime)) == (stat.length, int(stat.mtime)):
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    _stream(source, epath.Path(partial))
    os.utime(partial, (stat.mtime, stat.mtime))
    os.replace(partial, local)


def _stream(source: epath.Path, destination: epath.Path) -> None:
    """Copies one file in 16 MiB pieces (features files are gigabytes)."""
    with source.open("rb") as reader, destination.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 24)
