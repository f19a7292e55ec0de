"""What fine-tuning changed, in SAE-feature terms (docs/method.md, "Reading the change"):
features added and removed per image, per class and overall, their names from the nearest text
embeddings, their top-activating images, and linear CKA between the zero-shot and fine-tuned
representations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

_CHUNK = 8192


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA over examples (rows): ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), centred columns."""
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0)
    cross = np.linalg.norm(x.T @ y) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The reference's `cka()` (Fabian-Mor/sae-ft `src/representation.py`): linear CKA of the
    transposed matrices, so over the d feature dimensions: the (d, d) Grams X^T X and Y^T Y of the
    uncentred embeddings, each double-centred (H G H over d), compared by ||.||_F-normalised inner
    product. Not invariant to rotating one representation, as `linear_cka` is."""

    def centred_gram(z: np.ndarray) -> np.ndarray:
        gram = z.T @ z
        return gram - gram.mean(0, keepdims=True) - gram.mean(1, keepdims=True) + gram.mean()

    gx, gy = centred_gram(np.asarray(x, np.float64)), centred_gram(np.asarray(y, np.float64))
    return float(np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def _dense(values: np.ndarray, indices: np.ndarray, dict_size: int) -> np.ndarray:
    out = np.zeros((len(values), dict_size), np.float32)
    np.put_along_axis(out, indices, values, axis=1)
    return out


@dataclasses.dataclass
class FeatureChanges:
    """Feature additions (`supp(st) minus supp(s0)`) and removals (`supp(s0) minus supp(st)`)."""

    added_per_image: float
    removed_per_image: float
    added_count: np.ndarray  # (F,) images that gained each feature
    removed_count: np.ndarray  # (F,) images that lost it
    mean_change: np.ndarray  # (F,) mean of st - s0 over images
    class_added: np.ndarray  # (C, F) per class: images that gained each feature
    class_removed: np.ndarray  # (C, F)
    class_images: np.ndarray  # (C,) images per class

    def top_per_class(self, classnames: Sequence[str], top: int = 3) -> list[dict[str, Any]]:
        """Per class present: added/removed per image and the features most often gained and lost."""
        rows = []
        for c in np.flatnonzero(self.class_images):
            n = self.class_images[c]
            gained = np.argsort(-self.class_added[c], kind="stable")[:top]
            lost = np.argsort(-self.class_removed[c], kind="stable")[:top]
            rows.append(
                {
                    "class": classnames[c],
                    "images": int(n),
                    "added_per_image": float(self.class_added[c].sum() / n),
                    "removed_per_image": float(self.class_removed[c].sum() / n),
                    "top_added": [(int(f), int(self.class_added[c, f])) for f in gained if self.class_added[c, f]],
                    "top_removed": [(int(f), int(self.class_removed[c, f])) for f in lost if self.class_removed[c, f]],
                }
            )
        return rows


def count_changes(
    codes0: tuple[np.ndarray, np.ndarray],
    codes_t: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    dict_size: int,
    num_classes: int,
) -> FeatureChanges:
    """Aggregates of the change from zero-shot codes `codes0` to fine-tuned codes `codes_t`
    (each (values, indices) of the same images, in order) over images and per class."""
    labels = np.asarray(labels)
    sums = {name: np.zeros(dict_size, np.float64) for name in ("added", "removed", "change")}
    class_added = np.zeros((num_classes, dict_size), np.int64)
    class_removed = np.zeros((num_classes, dict_size), np.int64)
    for start in range(0, len(labels), _CHUNK):
        rows = slice(start, start + _CHUNK)
        s0 = _dense(codes0[0][rows], codes0[1][rows], dict_size)
        st = _dense(codes_t[0][rows], codes_t[1][rows], dict_size)
        added, removed = (st != 0) & (s0 == 0), (s0 != 0) & (st == 0)
        sums["added"] += added.sum(0)
        sums["removed"] += removed.sum(0)
        sums["change"] += (st - s0).sum(0)
        np.add.at(class_added, labels[rows], added.astype(np.int64))
        np.add.at(class_removed, labels[rows], removed.astype(np.int64))
    n = len(labels)
    return FeatureChanges(
        float(sums["added"].sum() / n),
        float(sums["removed"].sum() / n),
        sums["added"].astype(np.int64),
        sums["removed"].astype(np.int64),
        sums["change"] / n,
        class_added,
        class_removed,
        np.bincount(labels, minlength=num_classes),
    )


def name_features(
    atoms: np.ndarray, text_embeddings: np.ndarray, vocabulary: Sequence[str], features: Sequence[int], top: int = 3
) -> dict[int, list[tuple[str, float]]]:
    """Each feature's `top` nearest vocabulary entries by cosine between its decoder atom and the
    entries' text embeddings (both in CLIP's joint space after the projection)."""
    text = np.asarray(text_embeddings, np.float64)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    names = {}
    for f in features:
        atom = np.asarray(atoms[f], np.float64)
        similarity = text @ (atom / (np.linalg.norm(atom) + 1e-12))
        best = np.argsort(-similarity, kind="stable")[:top]
        names[int(f)] = [(vocabulary[i], float(similarity[i])) for i in best]
    return names


def top_activating(codes: tuple[np.ndarray, np.ndarray], feature: int, count: int) -> np.ndarray:
    """Rows (images) on which `feature` is most active, highest first (only rows where it fires)."""
    values, indices = codes
    activation = np.where(indices == feature, values, 0.0).sum(axis=1)
    order = np.argsort(-activation, kind="stable")[:count]
    return order[activation[order] > 0]


Codes = tuple[np.ndarray, np.ndarray]


def explain(
    changes: FeatureChanges,
    codes0: Codes,
    codes_t: Codes,
    atoms: np.ndarray,
    text: np.ndarray,
    vocabulary: Sequence[str],
    classnames: Sequence[str],
    *,
    top_features: int,
    images_per_feature: int,
    classes_shown: int,
) -> dict[str, Any]:
    """The features most often gained and lost, each with its nearest vocabulary entries, its
    mean activation change and the rows of its top-activating images (fine-tuned codes for a
    gained feature, zero-shot codes for a lost one), and the classes that changed most."""
    gained = [int(f) for f in np.argsort(-changes.added_count, kind="stable")[:top_features] if changes.added_count[f]]
    lost = [
        int(f) for f in np.argsort(-changes.removed_count, kind="stable")[:top_features] if changes.removed_count[f]
    ]
    names = name_features(atoms, text, vocabulary, gained + lost)

    def entries(features: list[int], counts: np.ndarray, codes: Codes) -> list[dict[str, Any]]:
        return [
            {
                "feature": f,
                "images": int(counts[f]),
                "mean_change": float(changes.mean_change[f]),
                "names": names[f],
                "top_rows": top_activating(codes, f, images_per_feature).tolist(),
            }
            for f in features
        ]

    per_class = sorted(
        changes.top_per_class(classnames), key=lambda r: -(r["added_per_image"] + r["removed_per_image"])
    )[:classes_shown]
    return {
        "gained": entries(gained, changes.added_count, codes_t),
        "lost": entries(lost, changes.removed_count, codes0),
        "per_class": per_class,
    }
