"""The feature browser's data: every SAE feature some method added or removed, as a card of
numbers (its nearest text names, how often each method gained and lost it overall, per dataset
and per class, the measured effect on accuracy of undoing each method's change of it, its
top-activating images, activation histogram and firing density under the zero-shot and each
fine-tuned model). `saeft_jax.rendering.html` draws the cards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from saeft_jax.evaluation import interpret

BINS = 12  # activation histogram bins, from 0 to the feature's largest activation under any model


def changed_features(changes: dict[str, dict[str, interpret.FeatureChanges]], limit: int) -> tuple[list[int], int]:
    """(the `limit` features most often added plus removed, over every method and dataset, most
    changed first; how many changed in all). `changes` is {method: {dataset: FeatureChanges}}."""
    total = sum(c.added_count + c.removed_count for by_dataset in changes.values() for c in by_dataset.values())
    changed = np.flatnonzero(total)
    order = changed[np.argsort(-total[changed], kind="stable")]
    return [int(f) for f in order[:limit]], len(changed)


def model_view(codes: interpret.Codes, features: Sequence[int], scale: np.ndarray, images: int) -> dict[int, dict]:
    """Per feature of `features`: the share of rows whose code holds it (a nonzero value, as the
    gained and lost counts read codes), its top-activating rows (at most `images`, highest
    first) and the histogram of its positive activations over BINS equal bins of
    [0, scale[feature]] (`scale` has one entry per feature of the dictionary)."""
    values, indices = np.asarray(codes[0]), np.asarray(codes[1])
    slot = np.full(len(scale), -1)
    slot[list(features)] = np.arange(len(features))
    held = slot[indices][(slot[indices] >= 0) & (values != 0)]
    density = np.bincount(held, minlength=len(features)) / len(values)
    rows, position = np.nonzero((slot[indices] >= 0) & (values > 0))
    feature_slot, activation = slot[indices[rows, position]], values[rows, position]
    order = np.lexsort((-activation, feature_slot))  # by feature, then by activation, highest first
    rows, feature_slot, activation = rows[order], feature_slot[order], activation[order]
    starts = np.searchsorted(feature_slot, np.arange(len(features) + 1))
    out = {}
    for i, f in enumerate(features):
        mine = slice(starts[i], starts[i + 1])
        top = scale[f] if scale[f] > 0 else 1.0
        bins = np.minimum((activation[mine] / top * BINS).astype(int), BINS - 1)
        out[f] = {
            "rows": rows[mine][:images].tolist(),
            "density": float(density[i]),
            "histogram": np.bincount(bins, minlength=BINS).tolist(),
            "scale": float(scale[f]),
        }
    return out


def feature_cards(
    codes: dict[str, interpret.Codes],
    changes: dict[str, dict[str, interpret.FeatureChanges]],
    dataset: str,
    classnames: Sequence[str],
    names: dict[int, list[tuple[str, float]]],
    features: Sequence[int],
    *,
    dict_size: int,
    images: int,
    effects: dict[str, list[dict[str, Any]]] | None = None,
    ood: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One card per feature of `features`. `codes` holds the codes of `dataset`'s images (the rows
    the cards' images index) under "zeroshot" and each method; `changes` every method's changes per
    dataset; `names` each feature's nearest vocabulary entries; `effects` each method's measured
    `feature_effects` (report.json), shown on the cards of their features with their mean over the
    shifts `ood`."""
    measured = {(m, e["feature"]): {} for m, entries in (effects or {}).items() for e in entries}
    for m, entries in (effects or {}).items():
        for e in entries:
            average = float(np.mean([e["effects"][d] for d in ood])) if ood else None
            measured[m, e["feature"]][e["change"]] = {"by_dataset": e["effects"], "avg_ood": average}
    scale = np.zeros(dict_size)
    for values, indices in codes.values():
        np.maximum.at(scale, np.asarray(indices).ravel(), np.asarray(values, np.float64).ravel())
    views = {model: model_view(model_codes, features, scale, images) for model, model_codes in codes.items()}
    cards = []
    for f in features:
        methods = {}
        for method, by_dataset in changes.items():
            here = by_dataset[dataset]
            classes = np.flatnonzero(here.class_added[:, f] + here.class_removed[:, f])
            methods[method] = {
                "added": int(sum(c.added_count[f] for c in by_dataset.values())),
                "removed": int(sum(c.removed_count[f] for c in by_dataset.values())),
                "by_dataset": {d: [int(c.added_count[f]), int(c.removed_count[f])] for d, c in by_dataset.items()},
                "by_class": sorted(
                    ([classnames[c], int(here.class_added[c, f]), int(here.class_removed[c, f])] for c in classes),
                    key=lambda row: -(row[1] + row[2]),
                ),
            }
            if (method, f) in measured:
                methods[method]["effects"] = measured[method, f]
        cards.append(
            {
                "feature": f,
                "names": [[name, similarity] for name, similarity in names[f]],
                "models": {model: view[f] for model, view in views.items()},
                "methods": methods,
            }
        )
    return cards
