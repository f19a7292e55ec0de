"""The one kind of error a user can fix: a wrong key, value, file or command.

Every such error is a `UsageError` (or a subclass named for where it arises) whose message is
one paragraph that names the key, file or value and says how to fix it. `saeft_jax.main` prints
it and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """The run cannot go on as asked; the message says what to change."""


class ConfigError(UsageError):
    """A config value that cannot work; the message names the key."""
