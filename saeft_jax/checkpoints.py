"""The one place that talks to Orbax: numbered checkpoints of a state pytree plus JSON metadata.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-write never damages the last good checkpoint; `max_to_keep` prunes older ones. A checkpoint
damaged afterwards (a truncated or missing file, found against the file sizes recorded beside
each complete checkpoint in `<directory>.sizes/`, or any file Orbax cannot read) is skipped on
resume in favour of the newest one that restores, with a warning naming it; so is one holding a NaN
or an infinity (the train loop stops without saving when a step diverges, so such a checkpoint was
damaged after it was written, and the one before it is the last good state). A save that would
not fit on a local disk is refused before it starts, and a save that fails for lack of space or permission ends as a
`StorageError` naming the directory; the newest complete checkpoint stays either way. SIGTERM
and Ctrl-C that arrive while Orbax saves only request a stop (`saeft_jax.stopping`), handled once
it has finished: an exception raised inside its waits leaves a save half-finalised and Orbax
logging tracebacks. In a bucket every call to Orbax has a deadline (`storage.deadline`): TensorStore
alone retries a request that hangs for many minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from saeft_jax import stopping, storage
from saeft_jax.errors import UsageError
from saeft_jax.finite import first_nonfinite
from saeft_jax.storage import StorageError


class CheckpointsUnusable(UsageError):
    """Checkpoints exist but none restores; the message names the directory."""


class Checkpoints:
    """Numbered checkpoints under `directory` (local or any path Orbax supports, e.g. gs://)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True):
        path = str(directory)
        if "://" not in path:
            path = os.path.abspath(path)
        self.directory = path
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        with storage.deadline(path, "opening its checkpoints"):
            self._manager = ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))
        self._nbytes = 0  # of the last state saved or restored: the bucket's deadline grows with it

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        with storage.deadline(self.directory, "listing its checkpoints"):
            return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Saves `state` (a pytree of arrays) and JSON-serialisable `meta` as `step` (asynchronously)."""
        with self._storage_errors(f"saving checkpoint {step}"):
            self._manager.wait_until_finished()  # Orbax waits for the previous save anyway; then list its files
            self._record_sizes()
            self._nbytes = _nbytes(state)
            self._check_space()
            self._manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
            )

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """`(state, meta)` of `step`; `like` gives the tree structure, shapes, dtypes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        self._nbytes = _nbytes(like)
        with storage.deadline(self.directory, f"restoring checkpoint {step}", self._nbytes):
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        return restored.state, dict(restored.meta)

    def restore_latest(self, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """`(step, state, meta)` of the newest checkpoint that restores, or None when there is none.

        A newer checkpoint that does not restore is reported and deleted once an older one has
        restored (so the run continues and saves that step again); when none restores, nothing is
        deleted and `CheckpointsUnusable` names the directory."""
        failures = []
        with storage.deadline(self.directory, "listing its checkpoints"):
            steps = sorted(self._manager.all_steps(), reverse=True)
        for step in steps:
            damage = self._damage(step)
            if damage:
                failures.append((step, damage))
                continue
            try:
                state, meta = self.restore(step, like)
            except Exception as error:  # Orbax and TensorStore raise many types for damaged files
                failures.append((step, _first_line(error)))
                continue
            nonfinite = first_nonfinite(state)
            if nonfinite is not None:  # never saved so (a diverged step stops unsaved): damaged since
                failures.append((step, f"tensor {nonfinite[0]} holds {nonfinite[1]} NaN or infinite values"))
                continue
            for bad, why in failures:
                print(
                    f"warning: checkpoint {bad} in {self.directory} does not restore ({why}); continuing from "
                    f"checkpoint {step} and deleting it",
                    file=sys.stderr,
                    flush=True,
                )
                with storage.deadline(self.directory, f"deleting checkpoint {bad}"):
                    self._manager.delete(bad)
                self._sizes_file(bad).unlink(missing_ok=True)
            return step, state, meta
        if failures:
            listed = "; ".join(f"step {s}: {why}" for s, why in failures)
            raise CheckpointsUnusable(
                f"no checkpoint in {self.directory} restores ({listed}). If the files are "
                f"damaged, delete that directory to start this stage over; if they cannot be "
                f"reached, check the disk or bucket and rerun."
            )
        return None

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster (e.g. a TPU maintenance event) asks every process to save now."""
        with storage.deadline(self.directory, "asking whether to save now"):
            return self._manager.reached_preemption(step)

    def close(self) -> None:
        """Finishes pending saves, records their file sizes and releases the manager."""
        with self._storage_errors("finishing a checkpoint save"):
            self._manager.wait_until_finished()
            self._record_sizes()
            self._manager.close()

    def _sizes_file(self, step: int) -> epath.Path:
        return epath.Path(self.directory + ".sizes") / f"{step}.json"

    def _record_sizes(self) -> None:
        """Writes the size of every file of each complete checkpoint not yet recorded (process 0),
        so a truncated or missing file is found on resume without asking Orbax to read it."""
        if jax.process_index() != 0:
            return
        for step in self._manager.all_steps():
            record = self._sizes_file(step)
            if not record.exists():
                record.parent.mkdir(parents=True, exist_ok=True)
                folder = epath.Path(self.directory) / str(step)
                sizes = {str(f.relative_to(folder)): storage.size_of(f) for f in storage.files_under(folder)}
                storage.write_atomic(record, json.dumps(sizes))

    def _damage(self, step: int) -> str | None:
        """What differs from the recorded sizes of checkpoint `step` (None: nothing, or not recorded)."""
        record = self._sizes_file(step)
        if not record.exists():
            return None
        folder = epath.Path(self.directory) / str(step)
        for name, size in json.loads(record.read_text()).items():
            found = storage.size_of(folder / name)
            if found != size:
                return f"{name} is missing" if found is None else f"{name} has {found} bytes, {size} when saved"
        return None

    def _check_space(self) -> None:
        if "://" in self.directory or not os.path.isdir(self.directory):
            return
        needed = self._nbytes * 1.1 + 2**20
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise StorageError(
                f"{self.directory} has {free / 2**20:.1f} MiB free, and a checkpoint needs about "
                f"{needed / 2**20:.1f} MiB. Free space (or point --workdir elsewhere) and rerun: "
                f"the newest complete checkpoint is kept and the run continues from it."
            )

    @contextlib.contextmanager
    def _storage_errors(self, doing: str) -> Iterator[None]:
        with (
            stopping.installed(),  # a signal waits for the save
            storage.failures_named(self.directory, doing),
            storage.deadline(self.directory, doing, self._nbytes),  # the previous save's bytes, then this one's
        ):
            yield


def _nbytes(tree: Any) -> int:
    """The bytes of a pytree's arrays (or of their shape and dtype structs)."""
    return sum(
        int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0].split(" See full TensorStore details")[0] if text else type(error).__name__)[:300]
