"""The measured effect of undoing feature changes: against a brute-force NumPy count on random
embeddings, SAEs and heads, a change that moves nothing, and a case worked out by hand."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from saeft_jax.evaluation import analyses, effects
from saeft_jax.sae import model as sae_model
from saeft_jax.sae.frozen import FrozenSAE

D, F, K, CLASSES = 6, 16, 3, 5
SUBSET = np.array([4, 0, 2])  # a dataset scored over three of the head's classes (a label-space projection)


def project_subset(logits):
    return logits[..., SUBSET]


def identity(logits):
    return logits


def dense(codes) -> np.ndarray:
    out = np.zeros((len(codes[0]), F))
    np.put_along_axis(out, np.asarray(codes[1]), np.asarray(codes[0], np.float64), axis=1)
    return out


def brute_accuracy(x: np.ndarray, labels: np.ndarray, head: dict, subset) -> float:
    """Top-1 accuracy of the head on embeddings x, row by row in float64."""
    correct = 0
    for row, label in zip(x, labels):
        logits = (row / np.linalg.norm(row)) @ np.asarray(head["W"], np.float64).T + np.asarray(head["b"])
        correct += int(np.argmax(logits if subset is None else logits[subset]) == label)
    return correct / len(labels)


def brute_undo(inputs, s0, st, atoms, labels, head, subset, feature, kind):
    """(rows the change happened on, accuracy with it undone there): a loop over rows."""
    moved, changed = inputs.astype(np.float64).copy(), 0
    for n in range(len(inputs)):
        happened = (
            (st[n, feature] != 0 and s0[n, feature] == 0)
            if kind == "added"
            else (s0[n, feature] != 0 and st[n, feature] == 0)
        )
        if happened:
            moved[n] += (s0[n, feature] - st[n, feature]) * atoms[feature]
            changed += 1
    return changed, brute_accuracy(moved, labels, head, subset)


def random_dataset(rng, sae, n, classes, scale):
    """Zero-shot and fine-tuned embeddings (raw, of norm about `scale`) and labels."""
    zeroshot = rng.normal(size=(n, D)) * scale
    tuned = zeroshot + rng.normal(size=(n, D)) * scale * 0.6
    return (
        analyses.Embeddings(zeroshot.astype(np.float32), sae),
        analyses.Embeddings(tuned.astype(np.float32), sae),
        rng.integers(0, classes, n),
    )


@pytest.mark.parametrize("normalize_inputs", [True, False], ids=["unit_norm_inputs", "raw_inputs"])
def test_effects_match_a_brute_force_count(normalize_inputs):
    rng = np.random.default_rng(1)
    params = sae_model.init_params(jax.random.PRNGKey(0), D, F)
    params["b_pre"] = rng.normal(size=D).astype(np.float32) * 0.1
    sae = FrozenSAE(params, K, normalize_inputs=normalize_inputs)
    head = {
        "W": rng.normal(size=(CLASSES, D)).astype(np.float32) * 3,
        "b": rng.normal(size=CLASSES).astype(np.float32) * 0.3,
    }
    other_head = {"W": rng.normal(size=(3, D)).astype(np.float32) * 3, "b": np.zeros(3, np.float32)}
    datasets = {
        "id": (*random_dataset(rng, sae, 80, CLASSES, 3.0), effects.Scorer(head, identity), None),
        "shift": (*random_dataset(rng, sae, 70, 3, 2.0), effects.Scorer(head, project_subset), SUBSET),
        "other_space": (*random_dataset(rng, sae, 60, 3, 1.0), effects.Scorer(other_head, identity), None),
    }
    comparisons = {
        name: analyses.Comparison(zeroshot, tuned, labels, CLASSES)
        for name, (zeroshot, tuned, labels, *_) in datasets.items()
    }
    method = analyses.MethodComparison(
        comparisons, {name: d[3] for name, d in datasets.items()}, "id", types.SimpleNamespace(effects_top=7)
    )
    figures = analyses.run_method_analyses(["feature_changes", "feature_effects"], method)

    atoms = np.asarray(params["W_dec"], np.float64)
    s0_id, st_id = dense(datasets["id"][0].codes), dense(datasets["id"][1].codes)
    counts = {
        (f, kind): int(
            (
                (st_id[:, f] != 0) & (s0_id[:, f] == 0) if kind == "added" else (s0_id[:, f] != 0) & (st_id[:, f] == 0)
            ).sum()
        )
        for f in range(F)
        for kind in effects.CHANGES
    }
    ranked = sorted((c for c in counts if counts[c]), key=lambda c: (-counts[c], c[0], c[1] != "added"))[:7]
    assert [(e["feature"], e["change"]) for e in figures["feature_effects"]] == ranked
    assert {kind for _, kind in ranked} == {"added", "removed"}

    undone_all = {kind: {} for kind in ("added", "removed", "both")}
    for name, (zeroshot, tuned, labels, scorer, subset) in datasets.items():
        inputs = tuned.values
        if normalize_inputs:
            inputs = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
        s0, st = dense(zeroshot.codes), dense(tuned.codes)
        base = brute_accuracy(inputs, labels, scorer.head, subset)
        for entry in figures["feature_effects"]:
            rows, accuracy = brute_undo(
                inputs, s0, st, atoms, labels, scorer.head, subset, entry["feature"], entry["change"]
            )
            assert entry["images"][name] == rows
            assert entry["effects"][name] == pytest.approx(accuracy - base, abs=1e-12)
        added = ((st != 0) & (s0 == 0)) * (s0 - st)
        removed = ((s0 != 0) & (st == 0)) * (s0 - st)
        for kind, coefficients in (("added", added), ("removed", removed), ("both", added + removed)):
            undone_all[kind][name] = brute_accuracy(inputs + coefficients @ atoms, labels, scorer.head, subset) - base
    for kind, by_dataset in undone_all.items():
        assert figures["undo_all"][kind] == pytest.approx(by_dataset, abs=1e-12)
    assert any(e["effects"][name] != 0 for e in figures["feature_effects"] for name in datasets)  # not vacuous


def hand_codes(pairs: list[dict[int, float]]):
    """(values, indices) of two slots per row from {feature: value}."""
    values = np.zeros((len(pairs), 2), np.float32)
    indices = np.zeros((len(pairs), 2), np.int32)
    for row, pair in enumerate(pairs):
        for slot, (feature, value) in enumerate(sorted(pair.items())):
            indices[row, slot], values[row, slot] = feature, value
    return values, indices


def test_one_feature_that_separates_two_classes_worked_out_by_hand():
    """Atoms: #0 = +e1, #1 = e2, #2 = -e1, #3 = -e2. Zero-shot, every image is e2 (code #1 at 1);
    fine-tuning adds #0 (0.6) to the class-0 images and #2 (0.6) to the class-1 ones, the #1 code
    falling to 0.8: x_ft = (+-0.6, 0.8). The head reads the first coordinate (W = [[1, 0], [-1, 0]])
    with a bias 0.1 towards class 1, so as tuned all four are right. Undoing #0 on the two class-0
    images puts them at (0, 0.8): logits (0, 0.1), class 1, wrong: effect -2/4. Undoing #2 puts the
    class-1 ones at (0, 0.8): still class 1, effect 0. Undoing all added ones: -2/4; nothing was
    removed (#1 stays in both codes), so undoing the removed ones changes nothing."""
    atoms = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
    labels = np.array([0, 0, 1, 1])
    inputs = np.array([[0.6, 0.8], [0.6, 0.8], [-0.6, 0.8], [-0.6, 0.8]], np.float32)
    codes0 = hand_codes([{1: 1.0}, {1: 1.0}, {1: 1.0}, {1: 1.0}])
    codes_t = hand_codes([{0: 0.6, 1: 0.8}, {0: 0.6, 1: 0.8}, {2: 0.6, 1: 0.8}, {2: 0.6, 1: 0.8}])
    head = {"W": np.array([[1, 0], [-1, 0]], np.float32), "b": np.array([0, 0.1], np.float32)}
    changes = [(0, "added"), (2, "added"), (1, "removed"), (3, "added")]
    result = effects.dataset_effects(inputs, codes0, codes_t, atoms, labels, effects.Scorer(head, identity), changes)
    assert result.accuracy == 1.0
    assert result.images.tolist() == [2, 2, 0, 0]
    assert result.effects.tolist() == [-0.5, 0.0, 0.0, 0.0]
    assert result.undo_all == {"added": -0.5, "removed": 0.0, "both": -0.5}


def test_undoing_a_change_that_moved_no_image_has_no_effect():
    """Changes that happened on no row of a dataset (a feature that only changed in value, one in
    neither code) leave every prediction as it was, whatever the head."""
    rng = np.random.default_rng(2)
    n = 50
    shared = np.stack([rng.choice(F, 2, replace=False) for _ in range(n)])
    codes0 = (rng.normal(size=(n, 2)).astype(np.float32), shared.astype(np.int32))
    codes_t = (rng.normal(size=(n, 2)).astype(np.float32), shared.astype(np.int32))  # same support, other values
    inputs = rng.normal(size=(n, D)).astype(np.float32)
    head = {"W": rng.normal(size=(CLASSES, D)).astype(np.float32), "b": np.zeros(CLASSES, np.float32)}
    changes = [(int(f), kind) for f in range(F) for kind in effects.CHANGES]
    result = effects.dataset_effects(
        inputs,
        codes0,
        codes_t,
        rng.normal(size=(F, D)),
        rng.integers(0, CLASSES, n),
        effects.Scorer(head, identity),
        changes,
    )
    assert result.images.tolist() == [0] * len(changes)
    assert result.effects.tolist() == [0.0] * len(changes)
    assert result.undo_all == {"added": 0.0, "removed": 0.0, "both": 0.0}


def test_the_report_tables_rank_the_costliest_and_most_useful_changes():
    """report.md's tables: the changes whose undoing raises average OOD accuracy, most first, and
    those whose undoing lowers ID accuracy, most first; the line of undoing all at once."""
    from saeft_jax.rendering.markdown import _effects

    def entry(feature, change, id_effect, a, b):
        return {
            "feature": feature,
            "change": change,
            "images": {"id": 9, "a": 1, "b": 1, "val": 1},
            "effects": {"id": id_effect, "a": a, "b": b, "val": 0.0},
        }

    measured = [
        entry(1, "added", -0.02, 0.01, 0.01),
        entry(2, "removed", 0.0, 0.04, 0.0),
        entry(3, "added", -0.05, -0.01, -0.01),
        entry(4, "removed", 0.01, 0.03, 0.05),
    ]
    together = {
        kind: {"id": value, "a": 0.1, "b": 0.2, "val": 0.0}
        for kind, value in (("added", -0.1), ("removed", 0.0), ("both", -0.2))
    }
    report = {
        "ood_datasets": ["a", "b"],
        "validation": "val",
        "runs": {
            "zeroshot": {"avg_ood": 0.5},
            "m": {"avg_ood": 0.4, "feature_effects": measured, "undo_all": together},
        },
    }
    lines = _effects(report, ["m"], "id", {3: [("three", 0.9), ("3", 0.8), ("trois", 0.7)]})
    rows = [line for line in lines if line.startswith("| #")]
    costly, useful = rows[:3], rows[3:]
    assert [r.split(" | ")[0] for r in costly] == ["| #4 removed", "| #2 removed", "| #1 added"]
    assert costly[0].endswith("| +4.0 |")  # (3 + 5) / 2 points
    assert [r.split(" | ")[0] for r in useful] == ["| #3 added", "| #1 added"]
    assert useful[0].startswith("| #3 added | three, 3 | 9 | -5.0 | -1.0 | -1.0 | +0.0 | -1.0 |")
    undo = next(line for line in lines if line.startswith("Undoing every change"))
    assert "all added: ID -10.0, average OOD +15.0" in undo and "both: ID -20.0" in undo
    assert "fine-tuning moved average OOD by -10.0" in undo
