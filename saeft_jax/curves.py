"""Training curves as TensorBoard event files, written beside each stage's `metrics.jsonl`.

The writer and the reader are the `tensorboard` package's own (`tensorboard.summary.Writer`, no
TensorFlow needed), so `tensorboard --logdir=WORKDIR` shows every method of a run side by side as
the runs `finetune/<method>` and `sae/<name>`. A scalar's tag is its key in `metrics.jsonl` and its
step that record's step (fine-tuning) or epoch (SAE training). When a run starts or resumes,
`metrics.jsonl` is trimmed to its checkpoint and the event files are written again from what it
kept (`restart`), so the curves always equal `metrics.jsonl`: TensorBoard itself would show both
attempts of the steps after the checkpoint. Event files cannot be appended to in an object store:
for a `gs://` workdir they are written locally and uploaded whole at each flush.

With `config.wandb_project` set, `wandb_logging` also sends every curve to that W&B project, one
W&B run per workdir (its id kept in `WORKDIR/wandb.json`, so a rerun continues it), each stage's
numbers under its directory's name (`finetune/<method>/loss` against `finetune/<method>/step`).
W&B cannot take points back: after a resume its curves show the steps after the checkpoint twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from etils import epath
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.summary import DirectoryOutput, Writer
from tensorboard.util import tensor_util

from saeft_jax import storage
from saeft_jax.errors import UsageError

EVENT_FILES = "events.out.tfevents."  # how TensorBoard's event files begin


class Curves:
    """Scalars of metric records into the event files of `directory`."""

    def __init__(self, directory: str | epath.Path, *, step_key: str = "step"):
        self.directory, self.step_key = storage.path(directory), step_key
        self._staging = Path(tempfile.mkdtemp(prefix="saeft-events-")) if storage.is_remote(self.directory) else None
        self._local = self._staging or Path(self.directory)
        self._local.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(DirectoryOutput(str(self._local)))

    def restart(self, records: list[dict[str, Any]]) -> None:
        """Replaces the directory's event files by ones holding exactly `records`."""
        self._writer.close()
        for place in {storage.path(self._local), self.directory}:
            for file in place.iterdir() if place.exists() else ():
                if file.name.startswith(EVENT_FILES):
                    file.unlink()
        self._writer = Writer(DirectoryOutput(str(self._local)))
        for record in records:  # W&B has them already
            self._write(record)
        self.flush()

    def add(self, record: dict[str, Any]) -> None:
        """Every finite number of `record` (a metrics line) as a scalar at its step, in the event
        file and in W&B when it is on; records without a step (the SAE's final summary) are not curves."""
        scalars = self._write(record)
        if _wandb is not None and scalars:
            _wandb.log(self.directory, self.step_key, *scalars)

    def _write(self, record: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
        step = record.get(self.step_key)
        if not isinstance(step, int) or isinstance(step, bool):
            return None
        values = {name: float(value) for name, value in record.items() if name != self.step_key and _is_number(value)}
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)
        return step, values

    def flush(self) -> None:
        """Writes what is pending (and, for a bucket, uploads the event files)."""
        self._writer.flush()
        if self._staging is not None:
            storage.upload(self._staging, self.directory)

    def close(self) -> None:
        self.flush()
        self._writer.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_scalars(directory: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the run in `directory` (after its purges)."""
    events = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return {
        tag: [(event.step, float(tensor_util.make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]
        for tag in events.Tags()[event_accumulator.TENSORS]
    }


class _WandbRun:
    """A W&B run taking each stage's curves under the stage directory's name within the workdir.
    W&B is a mirror: when it fails (its service gone, the network), a warning says so once and
    training goes on with the event files alone."""

    def __init__(self, run, workdir: epath.Path, errors: tuple[type[BaseException], ...]):
        self.run, self.workdir, self._defined, self.failed = run, workdir, set(), False
        self._errors = errors  # what W&B raises when it fails (never a stop request: that goes through)

    def log(self, directory: epath.Path, step_key: str, step: int, values: dict[str, float]) -> None:
        if self.failed:
            return
        inside = str(directory).startswith(str(self.workdir).rstrip("/") + "/")
        prefix = str(directory)[len(str(self.workdir).rstrip("/")) + 1 :] if inside else directory.name
        try:
            if prefix not in self._defined:  # each stage counts its own steps
                self.run.define_metric(f"{prefix}/{step_key}")
                self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/{step_key}")
                self._defined.add(prefix)
            self.run.log({f"{prefix}/{step_key}": step, **{f"{prefix}/{name}": v for name, v in values.items()}})
        except self._errors as error:
            self.failed = True
            print(
                f"warning: W&B stopped taking curves ({type(error).__name__}: {error}); the TensorBoard event "
                f"files and metrics.jsonl go on.",
                file=sys.stderr,
            )

    def finish(self) -> None:
        try:
            self.run.finish(exit_code=1 if self.failed else 0)
        except self._errors as error:
            print(f"warning: W&B could not close its run ({type(error).__name__}: {error}).", file=sys.stderr)


_wandb: _WandbRun | None = None  # while `wandb_logging` runs


@contextlib.contextmanager
def wandb_logging(project: str, workdir: epath.Path, config: dict[str, Any]) -> Iterator[None]:
    """Sends the curves of the stages run inside the block to W&B project `project` too (no-op
    for "" and on processes other than 0); W&B's own settings apply (`WANDB_MODE=offline`,
    `WANDB_ENTITY`, `wandb login`)."""
    global _wandb
    if not project or jax.process_index() != 0:
        yield
        return
    import wandb

    record = workdir / "wandb.json"
    try:
        run_id = json.loads(record.read_text())["id"] if record.exists() else uuid.uuid4().hex[:12]
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{record} is damaged ({error}); delete it to start a new W&B run for this workdir."
        ) from error
    local = Path(workdir) if not storage.is_remote(workdir) else storage.cache_path(workdir)  # W&B writes locally
    local.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=project, id=run_id, resume="allow", name=workdir.name, config=config, dir=str(local))
    except Exception as error:  # W&B's errors have no common base; any of them means no run
        raise UsageError(
            f"W&B could not start a run in project {project!r} ({error}); log in (`wandb login` or "
            f"WANDB_API_KEY), set WANDB_MODE=offline, or leave config.wandb_project empty."
        ) from error
    storage.write_atomic(record, json.dumps({"id": run_id, "project": project}))
    _wandb = _WandbRun(run, workdir, (OSError, wandb.Error))
    try:
        yield
    finally:
        _wandb.finish()
        _wandb = None
