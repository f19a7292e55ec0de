"""Stage probe: the linear probe's head (`probe/head.safetensors`), logistic regression on the
features stage's embeddings and labels, for the methods whose recipe reads it (the linear probe
and LP-FT, the recipes that declare `reads_probe`). Of several L2 weights (`probe.l2s`) the one with
the best score on the run's validation split is kept, as the WiSE-FT and LP-FT papers choose
theirs; `done.json` records every fit."""

from __future__ import annotations

import numpy as np
from etils import epath

from saeft_jax import stopping, storage
from saeft_jax.evaluation.evaluate import dataset_score
from saeft_jax.finite import check_artifact
from saeft_jax.models.heads import classify
from saeft_jax.stages import completion, features
from saeft_jax.stages.context import Run
from saeft_jax.training.probe import blocks, fit_probe

STAGE = "probe"


def wanted(run: Run) -> bool:
    """Whether some method of the run reads the probe."""
    return any(method.uses_probe for method in run.methods.values())


def run_stage(run: Run) -> None:
    """Fits the probe for each of `probe.l2s` (process 0, on one device), keeps the one best on the
    validation split (the only one without a split), and marks it complete."""
    cfg = run.config.probe
    labels, path = _labels(run), features.features_path(run)  # checked by every process: all stop together
    validation = features.embed(run, run.validation) if run.validation and len(cfg.l2s) > 1 else None
    record = None
    if run.is_writer:
        classes = len(run.train_spec.classnames)
        data, fits, head = blocks(np.load(path, mmap_mode="r"), labels), [], None
        for l2 in sorted(cfg.l2s, reverse=True):  # strongest first: each fit starts from the previous head
            stopping.check(f"in stage probe before the fit with l2 {l2:g}")
            head, fit = fit_probe(
                data, classes, l2=l2, max_iterations=cfg.max_iterations, tolerance=cfg.tolerance, start=head
            )
            fit = {"l2": l2, **fit, **({"validation": _score(run, head, validation)} if validation else {})}
            fits.append((fit, head))
            _say_fit(run, fit, len(labels), classes)
        best, head = max(fits, key=lambda pair: pair[0].get("validation", 0.0))  # a tie: the stronger l2
        storage.save_safetensors(run.dir(STAGE) / "head.safetensors", head)
        record = {
            "l2": best["l2"],
            "chosen_on": run.validation.name if validation else None,
            "fits": [fit for fit, _ in fits],
        }
    run.mark_done(record, STAGE, files=("head.safetensors",), inputs=(("features",),))


def _score(run: Run, head: dict[str, np.ndarray], validation: dict[str, np.ndarray]) -> float:
    """The validation split's metric of `head` on its zero-shot embeddings."""
    logits = run.validation.project(np.asarray(classify(head, validation["embedding"])))
    predictions = np.argmax(logits, axis=-1)
    return 100 * dataset_score(run.validation, predictions, validation["label"], validation["group"])


def _say_fit(run: Run, fit: dict, examples: int, classes: int) -> None:
    converged = (
        "converged"
        if fit["converged"]
        else (f"stopped at probe.max_iterations with gradient norm {fit['grad_norm']:.2e}, above probe.tolerance")
    )
    chosen = f", validation {fit['validation']:.1f}" if "validation" in fit else ""
    print(
        f"probe: l2 {fit['l2']:g} on {examples} embeddings of {classes} classes: {fit['iterations']} L-BFGS "
        f"iterations, {converged}, objective {fit['objective']:.4f}{chosen}",
        flush=True,
    )


def _labels(run: Run) -> np.ndarray:
    """The training labels of the features stage, one per training example."""
    labels = np.load(run.read((features.STAGE,), "labels.npy"))
    if labels.shape != (len(run.source(run.train_spec)),):
        if run.is_writer:
            completion.withdraw(run.workdir, (features.STAGE,), "labels.npy")
        raise completion.ArtifactDamaged(
            f"{run.workdir / features.STAGE / 'labels.npy'} holds {labels.shape} "
            f"labels, not one per training example; it is withdrawn, so {run.command} "
            f"computes the features again."
        )
    return labels


def probe_head(run: Run) -> dict[str, np.ndarray]:
    """The probe's head, checked against the hash its stage recorded and finite."""
    head = storage.load_safetensors(epath.Path(run.read((STAGE,), "head.safetensors")))
    check_artifact(
        head, run.workdir, (STAGE,), "head.safetensors", "it was fitted on the features stage's embeddings", run.command
    )
    return head
