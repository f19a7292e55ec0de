"""The one signal policy: SIGTERM and Ctrl-C request a stop that the run acts on at known points.

The first SIGTERM (a preemption notice, SLURM's time limit) or Ctrl-C only records a request; no
handler ever raises, so no signal can surface as a traceback inside a library callback (JAX's
garbage-collection hook, an atexit function) or be dropped there. The run acts on the request
where it checks (`check()`): before each stage, after each batch of features and evaluation,
after each SAE epoch, and in the train loop after each step, which saves a checkpoint first. It
then raises `Stopped`, which `saeft_jax.main` turns into exit code 3 for a SIGTERM (launch/
slurm.sbatch requeues on 3) or 130 for a Ctrl-C. Further signals are absorbed, except that a
second Ctrl-C ends the process at once with 130.

In the command-line process (`install()`), a watcher thread learns of each signal through
Python's wakeup file descriptor, even while the main thread is blocked in native code (a bucket
that does not answer), and ends the process with the same exit code when the run has not stopped
`GRACE_S` seconds after the first signal (`SAVE_GRACE_S` inside `longer_grace()`: the train loop's
step in flight and its checkpoint); its message says what the run was doing (`doing()`: the
stage) and the last point it passed. Every artifact is written atomically and marked complete
only when whole, so such an end loses only the work in flight.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator

GRACE_S = 20.0
SAVE_GRACE_S = 90.0  # under SLURM's notice (--signal=TERM@120)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 3, signal.SIGINT: 130}


class Stopped(RuntimeError):
    """The run stopped on a signal at a known point (in fine-tuning, at a checkpoint); the same
    command continues it. `exit_code`: 3 after a SIGTERM, 130 after a Ctrl-C."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signum, 3)


class _Policy:
    """The handlers in place, what they replaced, and the first signal received."""

    def __init__(self, continue_hint: str | None):
        self.continue_hint = continue_hint  # set in the command-line process, which has a watcher
        self.first: int | None = None
        self.observed = False
        self.longer_grace = 0
        self.doing = "the run's start-up"  # what the watcher's message says the run was doing
        self.last_point: str | None = None
        self.previous = {number: signal.getsignal(number) for number in SIGNALS}
        for number, handler in self.previous.items():
            if handler != signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
                signal.signal(number, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.first is None:
            self.first = signum
        elif (
            self.continue_hint is None
            and signum == signal.SIGINT == self.first
            and callable(self.previous[signal.SIGINT])
        ):
            self.previous[signal.SIGINT](signum, frame)  # a library caller's second Ctrl-C: its own handler

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


_policy: _Policy | None = None


def install(continue_hint: str) -> None:
    """Makes this process's policy for good, with its watcher; `continue_hint` ends the message of
    a stop the watcher has to force (e.g. "python -m saeft_jax.main ... continues the run")."""
    global _policy
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("stopping.install() must be called from the main thread")
    _policy = _Policy(continue_hint)
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)  # the C handler writes each signal's number
    threading.Thread(target=_watch, args=(_policy, read), name="saeft-stop-watcher", daemon=True).start()
    atexit.register(_ignore_signals)  # runs after the other atexit functions registered later


def _ignore_signals() -> None:
    """At the interpreter's end Python puts back the default handlers, so a late SIGTERM would end the
    process with -15: ignore the signals instead; the exit code is already decided."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def _watch(policy: _Policy, read: int) -> None:
    """The watcher thread: the order of the signals as they arrive, and the deadline of a stop."""
    first, first_at = None, 0.0
    while True:
        if select.select([read], [], [], None if first is None else 0.25)[0]:
            for signum in os.read(read, 64):
                if first is None and signum in SIGNALS:
                    first, first_at = signum, time.monotonic()
                    if policy.first is None:  # the main thread's handler has not run yet
                        policy.first = signum
                elif signum == signal.SIGINT == first:
                    _end_now(signal.SIGINT, "a second Ctrl-C", policy)
        grace = SAVE_GRACE_S if policy.longer_grace else GRACE_S
        if first is not None and time.monotonic() - first_at > grace:
            _end_now(
                first,
                f"{signal_name(first)} during {policy.doing}, which had not reached a point to stop at "
                f"{grace:.0f} s later (the last point passed: "
                f"{'none' if policy.last_point is None else repr(policy.last_point)})",
                policy,
            )


def _end_now(signum: int, why: str, policy: _Policy) -> None:
    """Ends the process at once with `signum`'s exit code: one paragraph on stderr, written without
    Python's stream locks (the main thread may hold them)."""
    message = (
        f"\nstopped: {why}; finished work is kept (every artifact is written whole or not at all), "
        f"and {policy.continue_hint}.\n"
    )
    with contextlib.suppress(OSError):
        os.write(2, message.encode())
    os._exit(EXIT_CODES[signum])


def exit_code(stop: Stopped, hint: str) -> int:
    """A command-line tool's stop, said in one paragraph on stderr ending with `hint` (how to go
    on); its exit code."""
    print(f"\nstopped: {stop}; {hint}.", file=sys.stderr, flush=True)
    return stop.exit_code


def signal_name(signum: int) -> str:
    """How a message names the signal: "SIGTERM" or "Ctrl-C"."""
    return "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"


def requested() -> int | None:
    """The signal (SIGTERM or SIGINT) of a pending stop request, or None."""
    if _policy is None or _policy.first is None:
        return None
    _policy.observed = True
    return _policy.first


def doing(what: str) -> None:
    """Records what the run is doing now (e.g. "stage features"), for the watcher's message."""
    if _policy is not None:
        _policy.doing = what


def check(what: str) -> None:
    """Raises `Stopped` when a stop was requested; `what` says where the run is (e.g. "before
    stage features") for the message, and for the watcher's should the run not reach another."""
    if _policy is not None:
        _policy.last_point = what
    signum = requested()
    if signum is not None:
        raise Stopped(f"{signal_name(signum)} {what}; every finished artifact is kept", signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """The policy for a block of library code (the train loop, a checkpoint save) when the
    command line has not installed it: signals only record a request inside the block. After
    it, the caller's handlers are back, and a request the block did not look at (`requested()`)
    goes to them, unless the block failed (its error is what the caller sees)."""
    global _policy
    if _policy is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _policy = policy = _Policy(None)
    failed = True
    try:
        yield
        failed = False
    finally:
        _policy = None
        policy.restore()
        if policy.first is not None and not policy.observed and not failed:
            handler = policy.previous[policy.first]
            if callable(handler):
                handler(policy.first, None)
            elif handler == signal.SIG_DFL:  # the process gets it as it would have
                signal.raise_signal(policy.first)


@contextlib.contextmanager
def longer_grace() -> Iterator[None]:
    """A block that acts on a stop by itself and may need longer than `GRACE_S` to get there (the
    train loop: the step in flight, then a checkpoint); the watcher waits `SAVE_GRACE_S`."""
    policy = _policy
    if policy is None:
        yield
        return
    policy.longer_grace += 1
    try:
        yield
    finally:
        policy.longer_grace -= 1


def stop_of(error: BaseException) -> Stopped | None:
    """The stop that `error` is, wraps (a stop raised inside a library's call may come back wrapped
    in its error) or followed (after a signal, what failed is taken as its consequence: grain's
    worker processes get SLURM's SIGTERM too), else None."""
    stop, seen = error, set()
    while stop is not None and not isinstance(stop, Stopped) and id(stop) not in seen:
        seen.add(id(stop))
        stop = stop.__cause__ or stop.__context__
    signum = requested()
    if not isinstance(stop, Stopped) and signum is not None:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return Stopped(
            f"{signal_name(signum)}, and while stopping: {type(error).__name__} "
            f"{first_line}; every finished artifact is kept",
            signum,
        )
    return stop if isinstance(stop, Stopped) else None
