"""What every stage shares: the config, the workdir layout, the mesh, the model, the training
data, and the completion marks that let a rerun skip finished work."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from saeft_jax import distributed, hf, parallel, storage
from saeft_jax.data.registry import DatasetSpec, dataset_spec, suite
from saeft_jax.data.sources import open_source

DONE = "done.json"


class Run:
    """One run: `config` in `workdir`. Only process 0 writes shared files; all processes wait
    for each other at completion marks."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, model_path: str | None = None):
        self.config, self.workdir = config, storage.path(workdir)
        self.model_path = model_path or config.model

    @functools.cached_property
    def mesh(self):
        return parallel.data_mesh()

    @functools.cached_property
    def clip(self):
        """(model, zero-shot parameters) of the configured checkpoint."""
        return hf.load_clip(self.model_path, dtype=jnp.dtype(self.config.dtype), remat=self.config.remat)

    @functools.cached_property
    def tokenizer(self):
        return hf.load_tokenizer(self.model_path)

    @functools.cached_property
    def image_spec(self):
        return hf.load_image_spec(self.model_path)

    def spec(self, name: str) -> DatasetSpec:
        """Dataset `name`'s spec, reading TFDS metadata from this run's data dir."""
        return dataclasses.replace(dataset_spec(name), data_dir=self.config.data_dir or None)

    @property
    def train_spec(self) -> DatasetSpec:
        return self.spec(self.config.train_dataset)

    def eval_specs(self) -> list[DatasetSpec]:
        """The suite's datasets, in-distribution first."""
        in_distribution, shifts = suite(self.config.eval_suite)
        return [self.spec(n) for n in ([in_distribution] if in_distribution else []) + list(shifts)]

    def source(self, spec: DatasetSpec):
        return open_source(spec, self.config.data_dir or None)

    @property
    def is_writer(self) -> bool:
        return jax.process_index() == 0

    def dir(self, *parts: str) -> epath.Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, *parts: str) -> dict[str, Any] | None:
        """The completion record of artifact `parts`, or None when it is not complete."""
        path = self.workdir.joinpath(*parts, DONE)
        return json.loads(path.read_text()) if path.exists() else None

    def mark_done(self, record: dict[str, Any] | None, *parts: str) -> None:
        """Writes the completion record (atomically, by process 0), then waits for all processes."""
        if self.is_writer:
            write_json(self.dir(*parts) / DONE, record)
        self.barrier("/".join(parts))

    def barrier(self, name: str) -> None:
        distributed.barrier(f"{self.workdir}:{name}")


def write_json(path: epath.Path, record: Any) -> None:
    """JSON written atomically (`storage.write_atomic`)."""
    storage.write_atomic(path, json.dumps(record, indent=1))
