"""Evaluation of a zero-shot / fine-tuned pair on datasets: sharded jit inference over each
example once, every WiSE-FT alpha scored in the same pass, in each dataset's own label space
and metric; and the score of one model on one dataset (validation during fine-tuning)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax import parallel, stopping
from saeft_jax.data import pipeline
from saeft_jax.data.preprocess import ImageSpec, eval_transform
from saeft_jax.data.registry import DatasetSpec
from saeft_jax.evaluation import metrics, wise
from saeft_jax.models.heads import classify
from saeft_jax.observe import progress


@dataclasses.dataclass
class DatasetEvaluation:
    """What one pass over a dataset gives: the metric under each alpha (and the reference's
    definition of it where it differs, `metrics.REFERENCE_DEFINITIONS`), and per example the
    labels, groups, source indices, predictions and the zero-shot / fine-tuned embeddings."""

    name: str
    metric: str
    alphas: tuple[float, ...]
    scores: dict[float, float]
    labels: np.ndarray
    groups: np.ndarray
    indices: np.ndarray
    predictions: np.ndarray  # (A, N)
    zeroshot_embeddings: np.ndarray  # (N, d)
    finetuned_embeddings: np.ndarray  # (N, d)
    reference_scores: dict[float, float] | None = None  # the reference's definition, per alpha

    def summary(self) -> dict[str, Any]:
        """JSON-ready: metric name and value per alpha; under "reference", the reference's
        definition of the metric (its name and value per alpha) where it has its own."""
        summary = {
            "metric": self.metric,
            "n": int(len(self.labels)),
            "scores": {wise.alpha_key(a): s for a, s in self.scores.items()},
        }
        if self.reference_scores is not None:
            summary["reference"] = {
                "metric": metrics.REFERENCE_DEFINITIONS[self.metric],
                "scores": {wise.alpha_key(a): s for a, s in self.reference_scores.items()},
            }
        return summary


def dataset_score(
    spec: DatasetSpec, predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray, metric: str | None = None
) -> float:
    """`spec`'s metric (or `metric`) of predictions in its label space."""
    return metrics.score(metric or spec.metric, predictions, labels, groups, spec.ignored_groups)


def evaluate_dataset(
    encoder: nn.Module,
    theta0: dict,
    theta_ft: dict,
    spec: DatasetSpec,
    source,
    *,
    image_spec: ImageSpec,
    mesh,
    global_batch: int,
    alphas=wise.DEFAULT_ALPHAS,
    num_workers: int = 0,
    show_progress: bool = True,
    sweep=None,
) -> DatasetEvaluation:
    """Scores every alpha of `wise.sweep_alphas(alphas)` on all of `source` in one pass. Pass
    `sweep` (from `wise.make_sweep` with this spec's projection) to reuse its compilation."""
    sweep = sweep or wise.make_sweep(encoder, spec.project, alphas, mesh)
    alphas = wise.sweep_alphas(alphas)
    share = pipeline.Share.of_this_process(global_batch)
    batches = pipeline.eval_batches(
        source, share=share, transform=eval_transform(image_spec, spec.border_crop), num_workers=num_workers
    )
    sharding = parallel.batch_sharding(mesh)
    bar = progress(len(source), f"evaluate {spec.name}", enabled=show_progress, unit="img")
    keep: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "group", "index", "mask", "pred", "emb")}
    for batch in batches:
        stopping.check(f"while evaluating {spec.name}")
        images = jax.make_array_from_process_local_data(sharding, batch["image"])
        predictions, embeddings = sweep(theta0, theta_ft, images)
        for key in ("label", "group", "index", "mask"):
            keep[key].append(wise.as_numpy(jax.make_array_from_process_local_data(sharding, batch[key])))
        keep["pred"].append(wise.as_numpy(predictions))
        keep["emb"].append(wise.as_numpy(embeddings))
        bar.update(int(batch["mask"].sum()) * jax.process_count())
    bar.close()
    mask = np.concatenate(keep["mask"])
    labels, groups = np.concatenate(keep["label"])[mask], np.concatenate(keep["group"])[mask]
    predictions = np.concatenate(keep["pred"], axis=1)[:, mask]
    embeddings = np.concatenate(keep["emb"], axis=1)[:, mask]
    scores = {a: dataset_score(spec, predictions[i], labels, groups) for i, a in enumerate(alphas)}
    reference = metrics.REFERENCE_DEFINITIONS.get(spec.metric)
    reference_scores = (
        None
        if reference is None
        else {a: dataset_score(spec, predictions[i], labels, groups, reference) for i, a in enumerate(alphas)}
    )
    return DatasetEvaluation(
        spec.name,
        spec.metric,
        alphas,
        scores,
        labels,
        groups,
        np.concatenate(keep["index"])[mask],
        predictions,
        embeddings[0],
        embeddings[1],
        reference_scores,
    )


def make_scorer(
    encoder: nn.Module,
    spec: DatasetSpec,
    source,
    *,
    image_spec: ImageSpec,
    mesh,
    global_batch: int,
    num_workers: int = 0,
) -> Callable[[dict], float]:
    """`score(theta) -> float`: `spec`'s metric of the model theta = {"encoder", "head"} on all of
    `source`, one pass, compiled once; the parameters stay where they are (replicated or sharded)
    and only predictions come to the host. Every process calls it; each gets the same score."""
    transform = eval_transform(image_spec, spec.border_crop)
    share, sharding = pipeline.Share.of_this_process(global_batch), parallel.batch_sharding(mesh)

    @jax.jit
    def predict(theta, images):
        embeddings = encoder.apply({"params": theta["encoder"]}, images)
        return jnp.argmax(spec.project(classify(theta["head"], embeddings)), -1).astype(jnp.int32)

    def score_of(theta: dict) -> float:
        keep: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "group", "mask", "pred")}
        for batch in pipeline.eval_batches(source, share=share, transform=transform, num_workers=num_workers):
            images = jax.make_array_from_process_local_data(sharding, batch["image"])
            keep["pred"].append(wise.as_numpy(predict(theta, images)))
            for key in ("label", "group", "mask"):
                keep[key].append(wise.as_numpy(jax.make_array_from_process_local_data(sharding, batch[key])))
        mask = np.concatenate(keep["mask"])
        labels, groups = np.concatenate(keep["label"])[mask], np.concatenate(keep["group"])[mask]
        return dataset_score(spec, np.concatenate(keep["pred"])[mask], labels, groups)

    return score_of
