"""grain pipelines: training batches (shuffled, repeating, resumable) and evaluation batches
(each example exactly once, the last batch padded and masked), split across processes.

Both are built on one global order of examples. Global batch t is positions [tB, (t+1)B) of that
order; process p of P reads the slice [tB + p B/P, tB + (p+1) B/P). The random crop of an example
is seeded by the pipeline seed and its global position, so the examples of every global batch,
and how they are cropped, do not depend on the number of processes or devices.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags


@dataclasses.dataclass(frozen=True)
class Share:
    """Which rows of each global batch this process reads."""

    global_batch: int
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def of_this_process(cls, global_batch: int) -> Share:
        """This JAX process's share."""
        return cls(global_batch, jax.process_index(), jax.process_count())

    @property
    def local_batch(self) -> int:
        if self.global_batch % self.process_count:
            raise ValueError(
                f"the global batch {self.global_batch} does not divide among "
                f"{self.process_count} processes; choose a multiple of {self.process_count}"
            )
        return self.global_batch // self.process_count

    def position(self, local: int) -> int:
        """Global position of this process's `local`-th example."""
        step, row = divmod(local, self.local_batch)
        return step * self.global_batch + self.process_index * self.local_batch + row


class _Select:
    """Picklable map: this process's local index -> the element at its global position."""

    def __init__(self, ordered: grain.MapDataset, share: Share):
        self.ordered, self.share = ordered, share

    def __call__(self, local: int):
        return self.ordered[self.share.position(local)]


class NpyRows:
    """Rows of a `.npy` file, memory-mapped on first use; pickles as its path, so grain workers
    each map the file instead of receiving a copy (the teacher cache of ImageNet is 2.6 GB)."""

    def __init__(self, path: str):
        self.path, self._rows = str(path), None

    def __len__(self) -> int:
        return len(self._array())

    def __getitem__(self, index):
        return self._array()[index]

    def _array(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        return self._rows

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


class _Read:
    """Picklable map: source index -> (image, label, source index[, teacher embedding])."""

    def __init__(self, source, teacher: np.ndarray | NpyRows | None):
        self.source, self.teacher = source, teacher

    def __call__(self, index: int) -> dict[str, Any]:
        example = self.source[index]
        out = {
            "image": example["image"],
            "label": np.int32(example["label"]),
            "group": np.int32(example["group"]),
            "index": np.int64(index),
        }
        if self.teacher is not None:
            out["teacher"] = np.asarray(self.teacher[index], np.float32)
        return out


def _local_iterator(
    ordered: grain.MapDataset, share: Share, length: int, num_workers: int, num_threads: int, first: int = 0
) -> grain.DatasetIterator:
    """Batches of this process's share. Batching comes before the workers split the work, so
    whole batches go to workers and their contents never depend on `num_workers`; without
    workers, `num_threads` batches are read ahead in threads (PIL decodes outside the GIL)."""
    local = grain.MapDataset.range(first, length).map(_Select(ordered, share)).batch(share.local_batch)
    dataset = local.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app use defaults
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_worker_init
        )
    return iter(dataset)


def _worker_init(worker_index: int, worker_count: int) -> None:
    """In each grain worker process: Ctrl-C reaches the whole process group, and only the main
    process acts on it (`saeft_jax.stopping`), ending the workers itself; a worker's own
    KeyboardInterrupt would print its traceback. A main process that ends at once (a second Ctrl-C,
    a deadline) cannot end its workers, so each ends itself when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), name="saeft-parent-watch", daemon=True).start()


def _end_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


TRAIN_FIELDS = {
    "image": "images",
    "label": "labels",
    "teacher": "teacher",  # element key -> batch key
    "template": "templates",
}


class _TrainBatches:
    """Batches as the train step takes them, `{"images", "labels"[, "teacher"][, "templates"]}`, with the
    iterator's `get_state`/`set_state`."""

    def __init__(self, batches: grain.DatasetIterator):
        self._batches = batches

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._batches)
        return {name: batch[key] for key, name in TRAIN_FIELDS.items() if key in batch}

    def get_state(self):
        return self._batches.get_state()

    def set_state(self, state) -> None:
        self._batches.set_state(state)


def train_batches(
    source,
    *,
    share: Share,
    seed: int,
    transform: Callable,
    teacher: np.ndarray | NpyRows | None = None,
    templates: int = 0,
    num_workers: int = 0,
    num_threads: int = 4,
) -> _TrainBatches:
    """Endless `{"images", "labels"[, "teacher"][, "templates"]}` batches of this process's share, in an
    order shuffled anew each epoch. `transform(image, rng)` makes the model input (e.g.
    `preprocess.train_transform`); `teacher` (N, d) (an array or `NpyRows`), indexed like `source`,
    adds each example's cached zero-shot embedding; `templates` T > 0 adds a caption template index
    in [0, T) for each example, drawn anew each epoch (FLYP's captions).
    The iterator has `get_state`/`set_state` and resumes exactly."""
    ordered = (
        grain.MapDataset.range(len(source))
        .seed(seed)
        .shuffle()
        .repeat(None)
        .map(_Read(source, teacher))
        .random_map(_Transform(transform, templates))
    )
    return _TrainBatches(_local_iterator(ordered, share, len(ordered) // share.process_count, num_workers, num_threads))


class _Transform:
    """Picklable random map: the image transformed, and with `templates` a template index drawn."""

    def __init__(self, transform: Callable, templates: int = 0):
        self.transform, self.templates = transform, templates

    def __call__(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = {**element, "image": self.transform(element["image"], rng)}
        if self.templates:
            out["template"] = np.int32(rng.integers(self.templates))
        return out


class _Padded:
    """Picklable map: global position -> example, or a copy of example 0 with mask 0 past the end."""

    def __init__(self, read: _Read, transform: Callable, size: int):
        self.read, self.transform, self.size = read, transform, size

    def __call__(self, position: int) -> dict[str, Any]:
        element = self.read(position if position < self.size else 0)
        return {**element, "image": self.transform(element["image"]), "mask": np.bool_(position < self.size)}


def eval_batches(
    source,
    *,
    share: Share,
    transform: Callable,
    num_workers: int = 0,
    num_threads: int = 4,
    first_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"image", "label", "group", "index", "mask"} of this process's share covering each
    example exactly once over all processes; rows past the end have mask False. `first_step`
    and `num_steps` select a range of the batches (to resume a pass chunk by chunk)."""
    steps = eval_steps(source, share.global_batch)
    last = steps if num_steps is None else min(steps, first_step + num_steps)
    ordered = grain.MapDataset.range(steps * share.global_batch).map(
        _Padded(_Read(source, None), transform, len(source))
    )
    return _local_iterator(
        ordered, share, last * share.local_batch, num_workers, num_threads, first_step * share.local_batch
    )


def eval_steps(source, global_batch: int) -> int:
    """How many batches `eval_batches` yields (the same on every process)."""
    return -(-len(source) // global_batch)
