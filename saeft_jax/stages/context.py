"""What every stage shares: the config, the workdir layout, the mesh, the model, the training
data, the methods, and the completion marks that let a rerun skip finished work (with their
integrity checks, `saeft_jax.stages.completion`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from saeft_jax import distributed, models, parallel, storage
from saeft_jax.config import RunConfig
from saeft_jax.data import folders
from saeft_jax.data.locations import resolve_data_dir
from saeft_jax.data.registry import DatasetSpec, dataset_spec, suite, with_corruptions
from saeft_jax.data.sources import Subset, held_out, open_source
from saeft_jax.methods import Method
from saeft_jax.sae import kinds
from saeft_jax.stages import completion


class Run:
    """One run of a checked configuration (`config.finish`'s `RunConfig`) in `workdir`: `config`,
    and the `methods` and `saes` parsed from it once. Only process 0 writes shared files; all
    processes wait for each other at completion marks."""

    def __init__(
        self,
        checked: RunConfig,
        workdir: str | os.PathLike,
        model_path: str | None = None,
        command: str = "rerunning the same command",
    ):
        self.config, self.workdir = checked.config, storage.path(workdir)
        self.methods: Mapping[str, Method] = checked.methods  # in order
        self.saes: Mapping[str, kinds.Settings] = checked.saes  # the default first
        self.model_path = model_path or self.config.model
        self.data_dir = resolve_data_dir(self.config.data_dir)  # every spec carries it to its source
        self.command = command  # how a user reruns this run, for messages
        self._verified: dict[tuple, Path] = {}
        self._specs: dict[str, DatasetSpec] = {}  # a folder's spec reads its info.json once

    @functools.cached_property
    def mesh(self):
        return parallel.data_mesh()

    @functools.cached_property
    def model(self) -> models.Model:
        """The configured checkpoint (any family) with its zero-shot parameters, tokenizer and image spec."""
        return models.load(self.model_path, dtype=jnp.dtype(self.config.dtype), remat=self.config.remat)

    def spec(self, name: str) -> DatasetSpec:
        """Dataset `name`'s spec, reading TFDS metadata and prepared folders (`NAME/SPLIT`) from this
        run's data dir (CIFAR-10-C / -100-C: the corruptions and severity of `config.corruptions`;
        a folder: the prompts of `config.templates_file` when it names one)."""
        if name not in self._specs:
            corruptions = self.config.corruptions
            spec = with_corruptions(dataset_spec(name, self.data_dir), tuple(corruptions.names), corruptions.severity)
            if spec.prepare_kind == folders.KIND and self.config.templates_file:
                spec = dataclasses.replace(
                    spec, templates=folders.read_templates(self.config.templates_file, "config.templates_file")
                )
            self._specs[name] = dataclasses.replace(spec, data_dir=self.data_dir)
        return self._specs[name]

    @property
    def train_spec(self) -> DatasetSpec:
        return self.spec(self.config.train_dataset)

    def eval_specs(self) -> list[DatasetSpec]:
        """The suite's datasets, in-distribution first."""
        in_distribution, shifts = suite(self.config.eval_suite)
        return [self.spec(n) for n in ([in_distribution] if in_distribution else []) + list(shifts)]

    def source(self, spec: DatasetSpec):
        """The examples of `spec`; the training set without the rows held out for validation."""
        if self._held_out is not None:  # only with val_fraction, whose validation name cannot fail
            if spec.name == self.config.train_dataset:
                return Subset(self._full(spec), self._held_out[0])
            if spec.name == self.validation.name:
                return Subset(self._full(self.train_spec), self._held_out[1])
        return self._full(spec)

    def _full(self, spec: DatasetSpec):
        return open_source(spec)

    @functools.cached_property
    def _held_out(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(training rows, validation rows) of the training set with `finetune.val_fraction`."""
        fraction = self.config.finetune.val_fraction
        if not fraction:
            return None
        return held_out(len(self._full(self.train_spec)), fraction, self.config.seed)

    @functools.cached_property
    def validation(self) -> DatasetSpec | None:
        """The validation split every selection is made on: `finetune.val_dataset`, or the rows
        `finetune.val_fraction` holds out of the training set; None without either."""
        cfg = self.config.finetune
        if cfg.val_dataset:
            return self.spec(cfg.val_dataset)
        if cfg.val_fraction:
            return dataclasses.replace(self.train_spec, name=f"{self.config.train_dataset}_held_out")
        return None

    @property
    def is_writer(self) -> bool:
        return jax.process_index() == 0

    def dir(self, *parts: str) -> epath.Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, *parts: str) -> dict[str, Any] | None:
        """The completion record of artifact `parts`, or None when it is not complete (never made,
        a file it lists missing or resized, or made from an artifact that has changed since)."""
        return completion.status(self.workdir, parts)[0]

    def problem(self, *parts: str) -> completion.Problem | None:
        """Why a marked artifact `parts` no longer counts as complete (None: complete or never made)."""
        return completion.status(self.workdir, parts)[1]

    def mark_done(
        self,
        record: dict[str, Any] | None,
        *parts: str,
        files: tuple[str, ...] = (),
        inputs: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        """Writes the completion record with the size and hash of each of `files` (under the
        artifact's directory) and of the artifacts `inputs` it was made from (atomically, by
        process 0), then waits for all processes."""
        if self.is_writer:
            directory = self.dir(*parts)
            write_json(
                directory / completion.DONE,
                {
                    **(record or {}),
                    "files": completion.digests(directory, files),
                    "inputs": completion.input_hashes(self.workdir, inputs),
                },
            )
        self.barrier("/".join(parts))

    def read(self, parts: tuple[str, ...], name: str) -> Path:
        """A local path holding file or directory `name` of artifact `parts`, checked against the
        hashes its stage recorded (once per run); see `completion.verified`."""
        if (parts, name) not in self._verified:
            self._verified[parts, name] = completion.verified(self.workdir, parts, name, self.command)
        return self._verified[parts, name]

    def barrier(self, name: str) -> None:
        distributed.barrier(f"{self.workdir}:{name}")


def write_json(path: epath.Path, record: Any) -> None:
    """JSON written atomically (`storage.write_atomic`)."""
    storage.write_atomic(path, json.dumps(record, indent=1))
