"""Random-access sources of decoded examples, `{"image": uint8 HWC RGB, "label": int, "group": int}`,
for TFDS datasets (ArrayRecord data sources, no TensorFlow needed) and prepared folders.

Grayscale images come out as RGB from both kinds (a prepared image is converted when decoded, a
TFDS one here), so every consumer, the model's transforms and the report's thumbnails, sees three
channels.

Both kinds pickle (they reopen their files in each grain worker) and raise
`DatasetNotPrepared` with the preparation command when the files are not there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from saeft_jax import storage
from saeft_jax.data import records
from saeft_jax.data.locations import prepared_dir, resolve_data_dir
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.errors import UsageError


class DatasetNotPrepared(UsageError, FileNotFoundError):
    """A dataset's files are missing; the message names the command that prepares them."""


def open_source(spec: DatasetSpec, data_dir: str | os.PathLike | None = None):
    """The examples of `spec`'s split, read from `data_dir` (default: the one `spec` carries, else
    `resolve_data_dir`'s default): a local directory or a bucket (gs://...)."""
    data_dir = resolve_data_dir(data_dir or spec.data_dir)
    if spec.source == "tfds":
        return TfdsSource(spec, data_dir)
    return PreparedSource(spec, data_dir)


def _not_prepared(spec: DatasetSpec, data_dir: str, where: str | Path, why: str) -> DatasetNotPrepared:
    return DatasetNotPrepared(
        f"dataset {spec.name!r} ({spec.location}, split {spec.split}) {why} (looked in "
        f"{where}). Prepare it once with: {spec.preparation(data_dir)}"
    )


class _Reopens:
    """Pickles as (spec, data dir) and reopens its files on unpickling, in each grain worker."""

    spec: DatasetSpec
    data_dir: str

    def __getstate__(self):
        return {"spec": self.spec, "data_dir": self.data_dir}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["data_dir"])


class TfdsSource(_Reopens):
    """A TFDS split through `tfds.data_source` (built with `--file_format=array_record`)."""

    def __init__(self, spec: DatasetSpec, data_dir: str):
        import tensorflow_datasets as tfds

        self.spec, self.data_dir = spec, data_dir
        try:
            with storage.deadline(data_dir, f"opening {spec.name}'s records"):  # ArrayRecord: google-cloud-cpp
                self._source = tfds.data_source(spec.location, split=spec.split, data_dir=data_dir, download=False)
        except Exception as error:  # TFDS raises several types; tell the user which case it is
            builder = tfds.builder(spec.location, data_dir=data_dir)
            if not builder.is_prepared():
                raise _not_prepared(spec, data_dir, builder.data_dir, "is not prepared") from error
            raise _not_prepared(
                spec, data_dir, builder.data_dir, f"cannot be read at random ({error}); rebuild it as ArrayRecord"
            ) from error

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with storage.deadline(self.data_dir, f"reading example {index} of {self.spec.name}"):
            example = self._source[index]
        label = int(example[self.spec.label_key])
        if self.spec.label_of is not None:
            label = self.spec.label_of[label]
        return {"image": rgb(example["image"], self.spec.binary), "label": label, "group": -1}


def rgb(image: np.ndarray, binary: bool = False) -> np.ndarray:
    """uint8 (H, W, 3) from a TFDS image: (H, W, 1) or (H, W) repeated over three channels; a
    `binary` one (0/1 pixels, as dSprites stores them) read as 0/255."""
    image = np.asarray(image)
    if binary:
        image = np.where(image > 0, 255, 0).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


class PreparedSource(_Reopens):
    """A split of a dataset written by `saeft_jax.data.prepare` (or the demo's data builder)."""

    def __init__(self, spec: DatasetSpec, data_dir: str):
        import grain

        self.spec, self.data_dir = spec, data_dir
        directory = prepared_dir(data_dir, spec.location)
        self.info = records.read_info(directory)
        parts = {split: records.split_files(directory, split) for split in spec.split.split("+")}  # read in order
        missing = [split for split, files in parts.items() if not files]
        if self.info is None or missing:
            raise _not_prepared(
                spec,
                data_dir,
                directory,
                "is not prepared"
                if self.info is None
                else f"has no split {' '.join(map(repr, missing))} (it has {sorted(self.info['splits'])})",
            )
        if len(self.info["classnames"]) != len(spec.classnames):
            raise ValueError(
                f"{directory} holds {len(self.info['classnames'])} classes but {spec.name} has "
                f"{len(spec.classnames)}; prepare it again with: {spec.preparation(data_dir)}"
            )
        with storage.deadline(data_dir, f"opening {spec.name}'s records"):  # google-cloud-cpp retries 15 minutes
            self._records = grain.sources.ArrayRecordDataSource([str(f) for files in parts.values() for f in files])

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with storage.deadline(self.data_dir, f"reading example {index} of {self.spec.name}"):
            record = self._records[index]
        example = records.decode(record)
        return {"image": example["image"], "label": example["label"], "group": example["group"]}


class Subset:
    """Rows `indices` of another source, in that order (a validation split held out of a training
    set, and the training rows left); pickles as the source and the indices."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[int(self.indices[index])]


def held_out(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of a source of `count` examples: a `fraction` drawn at
    random with `seed`, each part in ascending order, disjoint and together all rows."""
    order = np.random.default_rng([seed, 7]).permutation(count)
    held = int(round(count * fraction))
    return np.sort(order[held:]), np.sort(order[:held])
