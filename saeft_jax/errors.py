"""The one kind of error a user can fix: a wrong key, value, file or command.

Every such error is a `UsageError` (or a subclass named for where it arises) whose message is
one paragraph that names the key, file or value and says how to fix it. `saeft_jax.main` prints
it and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UsageError(ValueError):
    """The run cannot go on as asked; the message says what to change."""


class ConfigError(UsageError):
    """A config value that cannot work; the message names the key."""


def command_exit_code(work: Callable[[], Any]) -> int:
    """Runs a command-line tool's work: prints `done: <result>` and gives 0, or prints a user's
    mistake as one paragraph on stderr and gives 2, or a stop on a signal (`saeft_jax.stopping`)
    and gives 3 or 130."""
    from saeft_jax import stopping

    try:
        result = work()
    except stopping.Stopped as stop:
        return stopping.exit_code(stop, "nothing half-written is left, and the same command does the work again")
    except UsageError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"done: {result}")
    return 0
