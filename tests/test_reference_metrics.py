"""The reference's documented evaluation beside WILDS's (Fabian-Mor/sae-ft `src/testing_models.py`:
scikit-learn's macro-F1, the worst region over every region; `src/representation.py`'s CKA over the
feature dimensions), on small cases worked out by hand, and how the report records them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from saeft_jax.evaluation import interpret, metrics
from saeft_jax.evaluation.evaluate import DatasetEvaluation
from saeft_jax.rendering.markdown import _reference_numbers
from saeft_jax.stages.report import _run_scores, legend


def test_macro_f1_wilds_against_the_references_union_of_classes():
    truth = np.array([0, 0, 1, 1])
    predictions = np.array([0, 2, 1, 1])  # class 2 is predicted once and never true
    # WILDS: classes 0 (F1 2*1/(1+2) = 2/3) and 1 (F1 1); the reference also counts class 2 (F1 0)
    assert metrics.macro_f1(predictions, truth) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.macro_f1_union(predictions, truth) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics.score("macro_f1_union", predictions, truth) == pytest.approx(5 / 9)
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 12, 300), rng.integers(0, 15, 300)
    assert metrics.macro_f1_union(p, t) == pytest.approx(f1_score(t, p, average="macro"))


def test_worst_region_wilds_leaves_out_other_the_reference_keeps_it():
    truth = np.array([1, 1, 2, 2, 3, 3])
    predictions = np.array([1, 0, 2, 2, 0, 0])
    groups = np.array([0, 0, 1, 1, 5, 5])  # 5 = "Other": 0/2 right; region 0: 1/2; region 1: 2/2
    assert metrics.score("worst_group", predictions, truth, groups, ignored_groups=(5,)) == 0.5
    assert metrics.score("worst_group_all", predictions, truth, groups, ignored_groups=(5,)) == 0.0
    assert metrics.REFERENCE_DEFINITIONS == {"macro_f1": "macro_f1_union", "worst_group": "worst_group_all"}


def _feature_cka(x, y):
    """CKA of the transposed matrices, by the centering matrix over the d features (Kornblith et al.'s
    HSIC formula applied to X^T and Y^T, as the reference's `cka` transposes first)."""
    d = x.shape[1]
    h = np.eye(d) - np.ones((d, d)) / d
    gram_x, gram_y = x.T @ x, y.T @ y
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(gram_x, gram_y) / np.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_cka_of_a_rotated_copy_standard_one_reference_lower():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 16) * np.linspace(0.5, 3, 16) + 1.0
    q, _ = np.linalg.qr(rng.randn(16, 16))
    rotated = x @ q
    assert interpret.linear_cka(x, rotated) == pytest.approx(1.0)
    assert interpret.reference_cka(x, rotated) == pytest.approx(_feature_cka(x, rotated))
    assert interpret.reference_cka(x, rotated) < 0.9
    assert interpret.reference_cka(x, x) == pytest.approx(1.0)
    y = rng.randn(200, 16)
    assert interpret.reference_cka(x, y) == pytest.approx(_feature_cka(x, y))


def test_report_records_both_definitions_labelled():
    record = {
        "datasets": {
            "iwildcam_id": {
                "metric": "macro_f1",
                "scores": {"0.0": 0.4, "1.0": 0.5},
                "reference": {"metric": "macro_f1_union", "scores": {"0.0": 0.3, "1.0": 0.45}},
            },
            "iwildcam_ood": {"metric": "macro_f1", "scores": {"0.0": 0.2, "1.0": 0.3}},  # evaluated before: none
        }
    }
    scores = _run_scores(record, "1.0", ["iwildcam_id", "iwildcam_ood"], ["iwildcam_ood"])
    assert scores == {
        "metrics": {"iwildcam_id": 0.5, "iwildcam_ood": 0.3},
        "avg_ood": 0.3,
        "reference_metrics": {"iwildcam_id": 0.45},
    }
    report = {
        "id_dataset": "iwildcam_id",
        "ood_datasets": ["iwildcam_ood"],
        "reference_dataset_metrics": {"iwildcam_id": "macro_f1_union"},
        "runs": {
            "zeroshot": _run_scores(record, "0.0", ["iwildcam_id", "iwildcam_ood"], ["iwildcam_ood"]),
            "none": {**scores, "fixed_alpha": {"alpha": 0.5, **scores}},
        },
    }
    text = "\n".join(_reference_numbers(report, legend()))
    assert "the reference's macro-F1 (over true and predicted classes)" in text
    assert "| zero-shot | 30.0 |" in text and "| `none` | 45.0 |" in text and "| `none`, fixed a=0.5 | 45.0 |" in text
    assert _reference_numbers({**report, "reference_dataset_metrics": {}}, legend()) == []


def test_evaluation_summary_names_the_references_metric():
    empty = np.zeros(0)
    result = DatasetEvaluation(
        "fmow_ood",
        "worst_group",
        (0.0, 1.0),
        {0.0: 0.3, 1.0: 0.4},
        empty,
        empty,
        empty,
        np.zeros((2, 0)),
        empty,
        empty,
        reference_scores={0.0: 0.1, 1.0: 0.2},
    )
    assert result.summary()["reference"] == {"metric": "worst_group_all", "scores": {"0.0": 0.1, "1.0": 0.2}}
    assert (
        "reference"
        not in DatasetEvaluation(
            "imagenet", "top1", (1.0,), {1.0: 0.5}, empty, empty, empty, np.zeros((1, 0)), empty, empty
        ).summary()
    )


def test_a_metric_registered_alone_is_scored_and_named_in_the_report():
    """Adding a metric is one `register` call: it is scored by name, and report.md names it by its
    label (with its reference definition beside it, when it declares one)."""
    from saeft_jax.rendering.markdown import _numbers

    balanced = lambda p, y, g, ignored: float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))
    metrics.register("balanced", balanced, label="balanced accuracy (mean recall)", reference="top1")
    try:
        truth, predictions = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
        assert metrics.score("balanced", predictions, truth) == pytest.approx((2 / 3 + 1) / 2)
        assert metrics.REFERENCE_DEFINITIONS["balanced"] == "top1"
        scores = {"metrics": {"id": 0.5}, "avg_ood": None}
        report = {
            "id_dataset": "id",
            "ood_datasets": [],
            "dataset_metrics": {"id": "balanced"},
            "runs": {"zeroshot": scores},
        }
        text = "\n".join(_numbers(report, legend()))
    finally:
        del metrics.REGISTRY["balanced"]
    assert "Scores in percent (balanced accuracy (mean recall));" in text
    assert "balanced" not in metrics.REFERENCE_DEFINITIONS
