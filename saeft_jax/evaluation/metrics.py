"""The datasets' metrics over predicted and true labels: top-1 accuracy, macro-F1 over the
classes present (iWildCam, as WILDS computes it) and worst-group accuracy (FMoW's regions), and
beside the last two the reference's documented definitions of them (`REFERENCE_DEFINITIONS`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean F1 over the classes that occur in `labels` (a predicted class absent from the labels
    lowers the precision of no counted class but the recall of the true one)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in np.unique(labels):
        true_positive = np.sum((predictions == c) & (labels == c))
        predicted, actual = np.sum(predictions == c), np.sum(labels == c)
        denominator = predicted + actual
        scores.append(2.0 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


def macro_f1_union(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean F1 over the classes that occur in `labels` or in `predictions` (a predicted class that
    never occurs counts with F1 0): scikit-learn's `f1_score(average="macro")`, which the
    reference's `src/testing_models.py` reports for iWildCam."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in np.union1d(labels, predictions):
        true_positive = np.sum((predictions == c) & (labels == c))
        denominator = np.sum(predictions == c) + np.sum(labels == c)
        scores.append(2.0 * true_positive / denominator)
    return float(np.mean(scores))


def worst_group(predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray, ignored: Sequence[int] = ()) -> float:
    """The lowest accuracy over the groups present, leaving out `ignored` groups."""
    predictions, labels, groups = np.asarray(predictions), np.asarray(labels), np.asarray(groups)
    kept = [g for g in np.unique(groups) if g not in set(ignored)]
    if not kept:
        raise ValueError("worst-group accuracy needs at least one group outside the ignored ones")
    return float(min(np.mean(predictions[groups == g] == labels[groups == g]) for g in kept))


# The reference's documented evaluation (Fabian-Mor/sae-ft `src/testing_models.py`, `--metric f1` and
# `worst_region`) of the WILDS metrics: macro-F1 over the union of true and predicted classes; the
# worst region over every region present, "Other" included. Recorded beside the WILDS figures.
REFERENCE_DEFINITIONS = {"macro_f1": "macro_f1_union", "worst_group": "worst_group_all"}


def score(
    metric: str,
    predictions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    ignored_groups: Sequence[int] = (),
) -> float:
    """The value of metric `metric` ("top1", "macro_f1", "worst_group", or the reference's
    "macro_f1_union" and "worst_group_all", which leaves out no group)."""
    if metric == "top1":
        return top1(predictions, labels)
    if metric == "macro_f1":
        return macro_f1(predictions, labels)
    if metric == "worst_group":
        return worst_group(predictions, labels, groups, ignored_groups)
    if metric == "macro_f1_union":
        return macro_f1_union(predictions, labels)
    if metric == "worst_group_all":
        return worst_group(predictions, labels, groups)
    raise ValueError(f"unknown metric {metric!r}; known: top1, macro_f1, worst_group, macro_f1_union, worst_group_all")
