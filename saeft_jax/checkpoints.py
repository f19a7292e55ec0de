"""The one place that talks to Orbax: numbered checkpoints of a state pytree plus JSON metadata.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-write never damages the last good checkpoint; `max_to_keep` prunes older ones.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Numbered checkpoints under `directory` (local or any path Orbax supports, e.g. gs://)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True):
        path = str(directory)
        if "://" not in path:
            path = os.path.abspath(path)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Saves `state` (a pytree of arrays) and JSON-serialisable `meta` as `step` (asynchronously)."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta or {})))

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """`(state, meta)` of `step`; `like` gives the tree structure, shapes, dtypes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                       meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster (e.g. a TPU maintenance event) asks every process to save now."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.close()
