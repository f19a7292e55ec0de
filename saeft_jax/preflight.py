"""The checks a run passes before any stage starts: its data are there, every batch divides
over the devices and processes that share it, every duration is at least one step, and the
model's weights are finite.

What `config.finish` cannot know, because it depends on the machine or the data, is checked
here, so that a run that cannot work stops at once with one paragraph instead of a traceback
hours in, after earlier stages have run.
"""

from __future__ import annotations

import dataclasses

import jax

from saeft_jax import models, storage
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.errors import ConfigError, UsageError
from saeft_jax.finite import check_finite
from saeft_jax.sae import kinds
from saeft_jax.stages.context import Run
from saeft_jax.stages.finetune import total_steps


def check(run: Run) -> None:
    """Raises a `UsageError` naming the first thing that would make a stage fail."""
    try:
        specs = [run.train_spec, *run.eval_specs()]
    except KeyError as error:
        raise UsageError(f"config.train_dataset / config.eval_suite: {error.args[0]}") from error
    sources = [run.source(spec) for spec in specs]  # a missing dataset fails now, naming its preparation
    _check_validation(run, specs[1:])
    for name, method in run.methods.items():
        if method.checkpoint:
            _check_checkpoint_method(run, name, method.checkpoint)
    _check_batches(run)
    _check_durations(run, len(sources[0]))
    _check_sae_widths(run)
    _check_model_finite(run)


def _check_model_finite(run: Run) -> None:
    """The configured model's weights are finite: every stage reads them (loaded once per run)."""
    check_finite(
        run.model.params,
        f"{run.model_path} (config.model)",
        "config.model must name an intact checkpoint: "
        "for a Hugging Face id, delete its copy in the Hugging Face cache to download it again; for the "
        "demo, delete its checkpoint in config.demo.cache_dir to pretrain it again.",
    )


def _check_sae_widths(run: Run) -> None:
    """What each SAE's kind allows of the model's embedding width (a PCA basis: at most as many
    directions as the embeddings have dimensions)."""
    if "sae" not in run.config.stages:
        return
    for name, sae in run.saes.items():
        kinds.get(sae.kind).check_width(
            f"config.saes.{name}", dataclasses.asdict(sae), run.model.embed_dim, str(run.model_path)
        )


def _check_validation(run: Run, tests: list[DatasetSpec]) -> None:
    cfg = run.config.finetune
    if cfg.val_dataset:
        try:
            spec = run.validation
        except KeyError as error:
            raise ConfigError(f"config.finetune.val_dataset: {error.args[0]}") from error
        examples = _examples(spec)  # an alias of the same split peeks as much as the split itself
        if examples in map(_examples, tests) or examples == _examples(run.train_spec):
            role = "test" if examples in map(_examples, tests) else "training"
            raise ConfigError(
                f"config.finetune.val_dataset {spec.name!r} is also the {role} set of this run; "
                f"selecting on it would peek. Name a split of its own (e.g. iwildcam_id_val) or use "
                f"config.finetune.val_fraction."
            )
        if spec.label_space != run.train_spec.label_space:
            raise ConfigError(
                f"config.finetune.val_dataset {spec.name!r} has the classes of {spec.label_space!r}, "
                f"the training set those of {run.train_spec.label_space!r}; a validation split scores "
                f"the fine-tuned head, so it shares the training classes."
            )
        run.source(spec)
    elif cfg.val_fraction and len(run.source(run.validation)) == 0:
        raise ConfigError(
            f"config.finetune.val_fraction ({cfg.val_fraction}) holds out no example of "
            f"{run.config.train_dataset}; raise it."
        )


def _examples(spec: DatasetSpec) -> tuple[str, str, str]:
    """Where `spec`'s examples come from: two names with the same answer hold the same examples."""
    return spec.source, spec.location, spec.split


def _check_checkpoint_method(run: Run, name: str, checkpoint: str) -> None:
    """An imported method is a directory holding a model of this run's family (WiSE-FT mixes weights)."""
    if not storage.path(checkpoint).is_dir():
        raise ConfigError(
            f"config.finetune.methods.{name}.checkpoint: there is no directory at {checkpoint}; name "
            f"a checkpoint directory of this run's model family (its config and weights, and "
            f"head.safetensors or a tokenizer)."
        )
    family = models.family_of(models.weights.resolve(checkpoint))
    if family.name != run.model.family.name:
        raise ConfigError(
            f"config.finetune.methods.{name}.checkpoint: {checkpoint} holds a {family.name} model, "
            f"while this run's model {run.model_path} is a {run.model.family.name} model. WiSE-FT "
            f"mixes the two models' weights, so a checkpoint method must be a fine-tuned copy of this "
            f"run's model (same family and architecture)."
        )


def _check_batches(run: Run) -> None:
    devices, processes, local = jax.device_count(), jax.process_count(), jax.local_device_count()
    c = run.config
    shared = {
        "finetune.batch_size": c.finetune.batch_size,
        "features.batch_size": c.features.batch_size,
        "evaluate.batch_size": c.evaluate.batch_size,
    }
    for key, batch in shared.items():
        if batch % devices or batch % processes:
            raise ConfigError(
                f"config.{key} is {batch}, which does not divide over this run's {devices} devices in "
                f"{processes} process(es): every device takes an equal share of each batch. Use a "
                f"multiple of {devices} (e.g. {_multiple(batch, devices)})."
            )
    micro = c.finetune.accumulate_steps
    if c.finetune.batch_size % (devices * micro):
        raise ConfigError(
            f"config.finetune.batch_size ({c.finetune.batch_size}) must split into "
            f"config.finetune.accumulate_steps ({micro}) micro-batches that each divide over the "
            f"{devices} devices; use a multiple of {devices * micro} (e.g. "
            f"{_multiple(c.finetune.batch_size, devices * micro)})."
        )
    for name, sae in run.saes.items():  # an SAE trains on process 0's own devices (a PCA basis is not trained)
        if kinds.get(sae.kind).trained and sae.batch_size % local:
            raise ConfigError(
                f"config.saes.{name}.batch_size is {sae.batch_size}, which does not divide over the "
                f"{local} devices of process 0, where the SAE trains. Use a multiple of {local} (e.g. "
                f"{_multiple(sae.batch_size, local)})."
            )


def _check_durations(run: Run, examples: int) -> None:
    c = run.config
    if c.finetune.batch_size > examples:
        raise ConfigError(
            f"config.finetune.batch_size ({c.finetune.batch_size}) exceeds the {examples} examples of "
            f"{c.train_dataset}; lower it."
        )
    for name, sae in run.saes.items():
        if "sae" in c.stages and kinds.get(sae.kind).trained and sae.batch_size > examples:
            raise ConfigError(
                f"config.saes.{name}.batch_size ({sae.batch_size}) exceeds the {examples} training "
                f"embeddings the SAE learns from ({c.train_dataset}); lower it."
            )
    steps = total_steps(run, examples)
    length = "config.finetune.steps" if c.finetune.steps else f"{c.finetune.epochs} epochs of {examples} examples"
    if c.finetune.eval_every > steps:
        raise ConfigError(
            f"config.finetune.eval_every ({c.finetune.eval_every}) exceeds the run's {steps} fine-tuning "
            f"steps ({length} at batch {c.finetune.batch_size}), so the model would never be scored on "
            f"validation; lower it (e.g. --config.finetune.eval_every={max(1, steps // 5)})."
        )
    if c.finetune.warmup_steps >= steps:
        raise ConfigError(
            f"config.finetune.warmup_steps ({c.finetune.warmup_steps}) must be below the run's {steps} "
            f"fine-tuning steps ({length} at batch {c.finetune.batch_size}); lower it or lengthen the "
            f"run."
        )


def _multiple(value: int, divisor: int) -> int:
    return max(divisor, value // divisor * divisor)
