"""The datasets' metrics over predicted and true labels, one registry entry each: top-1 accuracy,
macro-F1 over the classes present (iWildCam, as WILDS computes it) and worst-group accuracy (FMoW's
regions), and beside the last two the reference's documented definitions of them.

An entry (`register`) names its function, its label in the report and, where the reference
defines the metric otherwise, the entry of that definition (`REFERENCE_DEFINITIONS`); a dataset
names its metric in `DatasetSpec.metric`. Adding a metric is one `register` call here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

# (predictions, labels, groups, ignored groups) -> value
Compute = Callable[[np.ndarray, np.ndarray, np.ndarray | None, Sequence[int]], float]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One registry entry: how the metric is computed, its label in the report, and the name of
    the reference's definition of it (None where the reference computes it alike)."""

    name: str
    compute: Compute
    label: str
    reference: str | None = None


REGISTRY: dict[str, Metric] = {}


def register(name: str, compute: Compute, *, label: str, reference: str | None = None) -> Metric:
    """Adds metric `name` (`label` names it in report.md; `reference`: the registered metric that is
    the reference's definition of it)."""
    if name in REGISTRY:
        raise ValueError(f"metric {name!r} is registered already")
    REGISTRY[name] = Metric(name, compute, label, reference)
    return REGISTRY[name]


def get(name: str) -> Metric:
    """The registry entry `name`; an unknown name is a `ValueError` that lists the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def report_labels() -> dict[str, str]:
    """Each metric's label in the report, by name."""
    return {name: metric.label for name, metric in REGISTRY.items()}


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
register("top1", lambda p, y, g, ignored: top1(p, y), label="top-1 accuracy")
register(
    "macro_f1", lambda p, y, g, ignored: macro_f1(p, y), label="macro-F1 (classes present)", reference="macro_f1_union"
)
register(
    "worst_group",
    lambda p, y, g, ignored: worst_group(p, y, g, ignored),
    label="worst-group accuracy",
    reference="worst_group_all",
)
register(
    "macro_f1_union",
    lambda p, y, g, ignored: macro_f1_union(p, y),
    label="the reference's macro-F1 (over true and predicted classes)",
)
register(
    "worst_group_all",
    lambda p, y, g, ignored: worst_group(p, y, g),
    label="the reference's worst-group accuracy (every group, FMoW's \"Other\" included)",
)


class _ReferenceDefinitions(Mapping):
    """{metric: the metric that is the reference's definition of it}, read from the registry."""

    def _pairs(self) -> dict[str, str]:
        return {name: m.reference for name, m in REGISTRY.items() if m.reference is not None}

    def __getitem__(self, name: str) -> str:
        return self._pairs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs())

    def __len__(self) -> int:
        return len(self._pairs())


REFERENCE_DEFINITIONS: Mapping[str, str] = _ReferenceDefinitions()


def score(
    metric: str,
    predictions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    ignored_groups: Sequence[int] = (),
) -> float:
    """The value of registered metric `metric` ("top1", "macro_f1", "worst_group", or the reference's
    "macro_f1_union" and "worst_group_all", which leaves out no group)."""
    return get(metric).compute(predictions, labels, groups, ignored_groups)
