"""Which feature changes matter: the accuracy a method loses or gains on each dataset when one
feature change (or all added, all removed, both) is undone in the SAE's input space (docs/method.md,
"Which changes matter").

Undoing feature j's change on an image moves its embedding, as the SAE takes it, by
`(s0_j - st_j) * W_dec[j]` (s0, st: the zero-shot and fine-tuned codes), on the images whose
top-k support gained j ("added") or lost it ("removed") and on no other; the moved embedding is
classified by the method's own head. It is a first-order counterfactual in embedding space, not
a retraining.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax.evaluation import interpret
from saeft_jax.models.heads import Head, classify

CHANGES = ("added", "removed")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["head"], meta_fields=["project"])
@dataclasses.dataclass(frozen=True)
class Scorer:
    """How a method classifies one dataset: its head and the dataset's label-space projection
    (`DatasetSpec.project`, from the head's classes to the dataset's). A pytree: the head is data,
    the projection static (one compilation per projection)."""

    head: Head
    project: Callable[[jax.Array], jax.Array]


def top_changes(changes: interpret.FeatureChanges, count: int) -> list[tuple[int, str]]:
    """The `count` most frequent changes (feature, "added" | "removed") by images affected, most
    first (ties: the lower feature, added before removed); changes that moved no image are left out."""
    images = np.stack([changes.added_count, changes.removed_count], axis=1)  # (F, 2)
    order = np.argsort(-images.ravel(), kind="stable")[:count]
    return [(int(i // 2), CHANGES[i % 2]) for i in order if images.ravel()[i] > 0]


def _value_of(values: jax.Array, indices: jax.Array, features: jax.Array) -> jax.Array:
    """(N, J): each row's code value of each of `features` (0 where its top-k does not hold it)."""
    return jnp.sum(jnp.where(indices[:, :, None] == features[None, None, :], values[:, :, None], 0.0), axis=1)


@jax.jit
def undo_coefficients(
    codes0: interpret.Codes, codes_t: interpret.Codes, features: jax.Array, added: jax.Array
) -> jax.Array:
    """(N, J): how far undoing change j moves each row along W_dec[features[j]]: s0 - st where the
    change happened on the row (`added[j]`: st holds the feature and s0 not; else the converse),
    0 elsewhere."""
    s0 = _value_of(*codes0, features)
    st = _value_of(*codes_t, features)
    happened = jnp.where(added[None, :], (st != 0) & (s0 == 0), (s0 != 0) & (st == 0))
    return jnp.where(happened, s0 - st, 0.0)


@jax.jit
def undo_all_shifts(codes0: interpret.Codes, codes_t: interpret.Codes, atoms: jax.Array) -> jax.Array:
    """(2, N, d): each row's move when every added feature is undone at once, and every removed one:
    the sum over its changed support of (s0_j - st_j) W_dec[j]."""
    (v0, i0), (vt, it) = codes0, codes_t
    s0_at_t = jnp.sum(jnp.where(it[:, :, None] == i0[:, None, :], v0[:, None, :], 0.0), axis=2)  # (N, k)
    st_at_0 = jnp.sum(jnp.where(i0[:, :, None] == it[:, None, :], vt[:, None, :], 0.0), axis=2)
    added = jnp.where((vt != 0) & (s0_at_t == 0), -vt, 0.0)  # s0 - st, with s0 = 0
    removed = jnp.where((v0 != 0) & (st_at_0 == 0), v0, 0.0)  # s0 - st, with st = 0

    def move(coefficients: jax.Array, indices: jax.Array) -> jax.Array:  # slot by slot: (N, d) at a time
        return sum(coefficients[:, slot, None] * atoms[indices[:, slot]] for slot in range(indices.shape[1]))

    return jnp.stack([move(added, it), move(removed, i0)])


@jax.jit
def _correct(scorer: Scorer, x: jax.Array, labels: jax.Array) -> jax.Array:
    """How many rows of `x` (embeddings, any norm: the head normalises) `scorer` classifies right."""
    return jnp.sum(jnp.argmax(scorer.project(classify(scorer.head, x)), -1) == labels)


@jax.jit
def _correct_undone(
    scorer: Scorer, x: jax.Array, labels: jax.Array, coefficients: jax.Array, atoms: jax.Array
) -> jax.Array:
    """(J,): correct rows with change j alone undone, x + coefficients[:, j] atoms[j], one change
    after another (one moved copy of x at a time)."""
    return jax.lax.map(
        lambda change: _correct(scorer, x + change[0][:, None] * change[1], labels), (coefficients.T, atoms)
    )


@dataclasses.dataclass(frozen=True)
class DatasetEffects:
    """Accuracy on one dataset as fine-tuned, and what undoing each change does to it."""

    accuracy: float  # with the fine-tuned embeddings
    images: np.ndarray  # (J,) rows each change happened on
    effects: np.ndarray  # (J,) accuracy with the change undone minus `accuracy`
    undo_all: dict[str, float]  # "added", "removed", "both": the same with all of them undone at once


def dataset_effects(
    inputs: np.ndarray,
    codes0: interpret.Codes,
    codes_t: interpret.Codes,
    atoms: np.ndarray,
    labels: np.ndarray,
    scorer: Scorer,
    changes: Sequence[tuple[int, str]],
) -> DatasetEffects:
    """The effects of undoing each of `changes` on one dataset: `inputs` (N, d) are the fine-tuned
    embeddings as the SAE takes them, `codes0` / `codes_t` the zero-shot and fine-tuned codes of
    the same rows, `atoms` the decoder's rows (F, d), `scorer` the method's head on this dataset."""
    x, labels, atoms = jnp.asarray(inputs, jnp.float32), jnp.asarray(labels), jnp.asarray(atoms, jnp.float32)
    features = jnp.asarray([f for f, _ in changes], jnp.int32).reshape(-1)
    added = jnp.asarray([kind == "added" for _, kind in changes], bool).reshape(-1)
    coefficients = undo_coefficients(codes0, codes_t, features, added)
    n, base = len(labels), int(_correct(scorer, x, labels))
    undone = np.asarray(_correct_undone(scorer, x, labels, coefficients, atoms[features]))
    added_shift, removed_shift = undo_all_shifts(codes0, codes_t, atoms)
    together = {"added": added_shift, "removed": removed_shift, "both": added_shift + removed_shift}
    undo_all = {kind: (int(_correct(scorer, x + shift, labels)) - base) / n for kind, shift in together.items()}
    return DatasetEffects(base / n, np.asarray(jnp.count_nonzero(coefficients, axis=0)), (undone - base) / n, undo_all)


def method_effects(datasets: dict[str, tuple], changes: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """The report's figures for one method: `datasets` maps each dataset to (zero-shot `Embeddings`,
    fine-tuned `Embeddings`, labels, `Scorer`) (`saeft_jax.evaluation.analyses`; the SAE's codes are
    theirs), `changes` are those to undo one at a time, most frequent first. Returns
    {"feature_effects": [{"feature", "change", "images": {dataset: rows}, "effects": {dataset: delta}},
    ...], "undo_all": {"added" | "removed" | "both": {dataset: delta}}}, deltas as fractions."""
    measured = {}
    for name, (zeroshot, finetuned, labels, scorer) in datasets.items():
        sae = finetuned.sae
        inputs = np.asarray(sae.inputs(jnp.asarray(finetuned.values, jnp.float32)))
        measured[name] = dataset_effects(
            inputs, zeroshot.codes, finetuned.codes, np.asarray(sae.atoms), labels, scorer, changes
        )
    entries = [
        {
            "feature": feature,
            "change": kind,
            "images": {name: int(m.images[i]) for name, m in measured.items()},
            "effects": {name: float(m.effects[i]) for name, m in measured.items()},
        }
        for i, (feature, kind) in enumerate(changes)
    ]
    undo_all = {kind: {name: m.undo_all[kind] for name, m in measured.items()} for kind in ("added", "removed", "both")}
    return {"feature_effects": entries, "undo_all": undo_all}
