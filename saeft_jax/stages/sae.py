"""Stage sae: each SAE of `config.saes`, trained on the training features into its own
directory (`sae/<name>/`: `sae.safetensors` + `sae.json`, per-epoch metrics, the firing
histogram), resumable epoch by epoch; an entry of kind "pca" is a PCA basis, computed in one pass."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import ml_collections

from saeft_jax import parallel
from saeft_jax.checkpoints import Checkpoints
from saeft_jax.observe import JsonLines
from saeft_jax.rendering.plots import firing_histogram
from saeft_jax.sae import artifact, kinds
from saeft_jax.sae.artifact import META_FILE, PARAMS_FILE, load_sae, save_sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.quality import evaluate_sae
from saeft_jax.sae.training import train_sae
from saeft_jax.stages.context import Run
from saeft_jax.stages.features import load_features

STAGE = "sae"
OPTIONS = ("auxk", "auxk_normalized", "renorm_decoder", "relu", "b_enc", "tied_init", "b_pre_init")


def run_stage(run: Run, name: str) -> None:
    """Trains SAE `name`. Process 0 trains on its own devices (an SAE is small next to
    fine-tuning); the others wait. Epoch checkpoints are kept on a single-process run only: Orbax
    saves arrays of all processes together, and these live on process 0 alone (a stopped
    multi-host SAE stage starts over)."""
    record = None
    if run.is_writer:
        cfg = run.config.saes[name]
        directory = run.dir(STAGE, name)
        if not kinds.get(cfg.kind).trained:
            features, options = load_features(run), {}
            sae = kinds.get(cfg.kind).make(features, cfg)
            metrics = evaluate_sae(sae, features, mesh=parallel.data_mesh(jax.local_devices()))
            firing_histogram(metrics["firing_frequency"], directory / "firing.png", title=f"PCA basis {name}")
        else:
            options = {option: cfg[option] for option in OPTIONS}
            sae, metrics = _train(run, cfg, options, directory)
            firing_histogram(metrics["firing_frequency"], directory / "firing.png")
        save_sae(directory, sae, kind=cfg.kind, options=options, metrics=metrics)
        record = {key: float(metrics[key]) for key in ("fvu", "mse", "l0", "dead_fraction")}  # settings: sae.json
    run.mark_done(record, STAGE, name, files=(PARAMS_FILE, META_FILE, "firing.png"), inputs=(("features",),))


def _train(
    run: Run, cfg: ml_collections.ConfigDict, options: dict[str, Any], directory
) -> tuple[FrozenSAE, dict[str, Any]]:
    """A Top-K SAE trained by `train_sae`, its state saved after every epoch in `checkpoints/` (a
    rerun continues from there) and its figures in `metrics.jsonl` and TensorBoard."""
    with contextlib.ExitStack() as opened:  # each closed on every path, also when the other cannot open
        log = EpochLog(directory / "metrics.jsonl")
        opened.callback(log.close)
        checkpoints = Checkpoints(str(directory / "checkpoints")) if jax.process_count() == 1 else None
        if checkpoints is not None:
            opened.callback(checkpoints.close)  # first: a save in flight finishes before the process ends
        sae, metrics = train_sae(
            load_features(run),
            dict_size=cfg.dict_size,
            k=cfg.k,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            lr=cfg.lr,
            seed=run.config.seed,
            checkpoints=checkpoints,
            on_epoch=log.epoch,
            progress=run.config.show_progress,
            devices=tuple(jax.local_devices()),
            **options,
        )
        log.final(metrics)
    return sae, metrics


class EpochLog:
    """An SAE's training figures: `metrics.jsonl` (one line per epoch, then the final model's) and
    the TensorBoard curves beside it. Lines of the epochs a resumed run trains again, and an earlier
    attempt's final line, are dropped before the first new line is written."""

    def __init__(self, path: str | os.PathLike):
        self._lines = JsonLines(path, curves_step="epoch")
        self._trimmed = False

    def epoch(self, record: dict[str, Any]) -> None:
        """Appends one epoch's record (`train_sae`'s `on_epoch`)."""
        self._trim(record["epoch"])
        self._lines.write(record)
        self._lines.flush()  # an epoch is long; its record should survive a preemption

    def final(self, metrics: dict[str, Any]) -> None:
        """Appends the final model's metrics (`train_sae`'s, less the per-latent firing frequencies)."""
        self._trim(metrics["epochs"])
        self._lines.write(
            {"final": True, **{k: v for k, v in metrics.items() if k not in ("firing_frequency", "epochs")}}
        )

    def close(self) -> None:
        self._lines.close()

    def _trim(self, start: int) -> None:
        """Keeps the lines of the epochs before `start`, the first epoch this attempt trains."""
        if not self._trimmed:
            self._lines.keep_only(lambda r: r.get("epoch", start) < start)
            self._trimmed = True


def report_sae(run: Run) -> str | None:
    """The SAE whose vocabulary the report reads every method in: the first Top-K SAE (in
    `sae_names` order); None when the run has PCA bases only, which have no sparse features to read."""
    return next((name for name, sae in run.saes.items() if kinds.get(sae.kind).vocabulary), None)


def load(run: Run, name: str) -> FrozenSAE:
    """SAE `name`, checked against its recorded hashes and the model's embedding width."""
    for file in (PARAMS_FILE, META_FILE):
        run.read((STAGE, name), file)
    return load_sae(run.workdir / STAGE / name, d=run.model.embed_dim)


def describe(run: Run, name: str) -> dict[str, Any]:
    """SAE `name`'s `sae.json` (checked against its recorded hash): the settings `load` builds the
    SAE from (dict_size, k, relu, kind, ...), which the report shows."""
    run.read((STAGE, name), META_FILE)
    return artifact.describe(run.workdir / STAGE / name)
