"""The one finiteness check of every tensor a run reads (weights, heads, SAEs, features): a NaN or
an infinity is refused by name (the file and the tensor) before anything uses it.

NaN spreads silently: a head with one NaN row scores every image at chance, and WiSE-FT's
`0 * NaN` is NaN, so a damaged input would end in a report of wrong numbers with exit code 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax.errors import UsageError

_CHUNK = 1 << 22  # elements counted at a time: a memory-mapped (N, d) file is never read whole


class NonFiniteError(UsageError):
    """A file holds NaN or infinite values; the message names the file, the tensor and what to do."""


def check_finite(tensors: Any, where: str, remedy: str) -> None:
    """Raises `NonFiniteError` naming `where` (the file or directory read), the first tensor of
    `tensors` (an array, or a nested mapping of arrays) that holds a NaN or an infinity, and
    `remedy` (how to fix it); integer tensors pass."""
    found = first_nonfinite(tensors)
    if found is not None:
        name, bad, size = found
        raise NonFiniteError(
            f"{where}{f': tensor {name}' if name else ''} holds {bad} non-finite "
            f"value{'s' if bad > 1 else ''} (NaN or infinity) of {size}, which would "
            f"silently spoil every score made from it; {remedy}"
        )


def first_nonfinite(tensors: Any) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first tensor of `tensors` (an array, or a nested
    mapping of arrays; the name joins the keys with "/", "" for a lone array) that holds a NaN or
    an infinity, else None."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tensors)[0]:
        bad = nonfinite_count(leaf)
        if bad:
            return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path), bad, int(np.size(leaf))
    return None


def nonfinite_count(array: Any) -> int:
    """How many entries of `array` are NaN or infinite (0 for an integer or boolean array)."""
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        return 0
    if isinstance(array, jax.Array):
        return int(jnp.sum(~jnp.isfinite(array)))
    flat = np.asarray(array).reshape(-1)  # a memory map stays one: reshape makes a view
    return sum(int(np.count_nonzero(~np.isfinite(flat[i : i + _CHUNK]))) for i in range(0, flat.size, _CHUNK))


def check_artifact(tensors: Any, workdir: Any, parts: tuple[str, ...], name: str, cause: str, command: str) -> None:
    """`check_finite` for file `name` of the run's artifact `parts` (under `workdir`): the message
    says what made it (`cause`) and that deleting the artifact lets `command` make it again."""
    check_finite(
        tensors,
        str(workdir.joinpath(*parts, name)),
        f"{cause}. Delete {workdir.joinpath(*parts)} and its stage makes it again on {command}.",
    )
