"""Label spaces, projections and metrics against hand-computed answers and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from saeft_jax.data import labels
from saeft_jax.data.registry import SUITES, dataset_spec, suite
from saeft_jax.evaluation import metrics


def test_every_suite_dataset_has_a_spec_with_names_and_templates():
    for in_distribution, shifts in SUITES.values():
        for dataset in ([in_distribution] if in_distribution else []) + list(shifts):
            spec = dataset_spec(dataset)
            assert spec.templates and all("{}" in t or "{a}" in t for t in spec.templates), dataset
            assert len(spec.prompts()) == len(spec.classnames), dataset
            if spec.fixed_classnames is not None:  # (ImageNet's and iWildCam's lists repeat a few names)
                assert all(isinstance(c, str) and c for c in spec.classnames), dataset
    shifts = ("imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a", "objectnet")
    assert suite("imagenet") == ("imagenet", shifts)
    assert len(dataset_spec("imagenet").classnames) == 1000  # OpenAI's list, which repeats two names
    assert len(dataset_spec("imagenet").templates) == 80
    with pytest.raises(KeyError, match="unknown dataset 'imagenet_c'"):
        dataset_spec("imagenet_c")


@pytest.mark.parametrize("name", ["imagenet_r", "imagenet_a"])
def test_subset_projection_keeps_the_200_classes_in_ascending_order(name):
    spec = dataset_spec(name)
    subset = labels.imagenet_subset(name)
    assert len(subset) == 200 and list(subset) == sorted(subset)
    logits = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000)
    projected = spec.project(logits)
    assert projected.shape == (2, 200)
    np.testing.assert_array_equal(projected[0], np.asarray(subset, np.float32))
    # TFDS stores these datasets' labels as ImageNet indices; label_of maps them to subset positions.
    assert spec.label_of[subset[0]] == 0 and spec.label_of[subset[-1]] == 199
    assert spec.classnames[0] == labels.imagenet_classnames()[subset[0]]
    # An image of ImageNet class subset[7] whose top logit is that class is scored correct.
    one_hot = np.zeros((1, 1000))
    one_hot[0, subset[7]] = 5.0
    assert spec.project(one_hot).argmax(-1)[0] == spec.label_of[subset[7]] == 7


def test_objectnet_projection_takes_the_max_over_its_imagenet_classes():
    spec = dataset_spec("objectnet")
    classnames, imagenet_ids, folders = labels.objectnet()
    assert len(classnames) == 113 and len(folders) == 113 and spec.border_crop == 2
    alarm = classnames.index("Alarm clock")
    names = labels.imagenet_classnames()
    assert sorted(names[i] for i in imagenet_ids[alarm]) == ["analog clock", "digital clock"]
    logits = np.zeros((2, 1000), np.float32)
    logits[0, imagenet_ids[alarm][1]] = 3.0  # only the second ImageNet class of "Alarm clock" fires
    logits[1, imagenet_ids[alarm][0]] = -1.0
    projected = spec.project(logits)
    assert projected.shape == (2, 113)
    assert projected[0, alarm] == 3.0 and projected[0].argmax() == alarm
    assert projected[1, alarm] == 0.0  # max(-1, 0)
    assert sum(map(len, imagenet_ids)) == 125  # 113 classes covering 125 ImageNet classes


def test_jax_arrays_project_like_numpy():
    import jax.numpy as jnp

    spec = dataset_spec("objectnet")
    logits = np.random.RandomState(0).randn(3, 1000).astype(np.float32)
    np.testing.assert_allclose(np.asarray(spec.project(jnp.asarray(logits))), spec.project(logits))


def test_top1_and_macro_f1_against_hand_and_sklearn():
    predictions = np.array([0, 1, 1, 2, 2, 2, 3])
    truth = np.array([0, 1, 2, 2, 2, 0, 0])
    assert metrics.top1(predictions, truth) == pytest.approx(4 / 7)
    # F1 by hand: class 0: TP 1, predicted 1, actual 3 -> 2/4; class 1: TP 1, 2, 1 -> 2/3;
    # class 2: TP 2, 3, 3 -> 4/6. Class 3 is predicted but absent from the labels: not averaged.
    assert metrics.macro_f1(predictions, truth) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    rng = np.random.RandomState(1)
    p, t = rng.randint(0, 12, 500), rng.randint(0, 9, 500)
    assert metrics.macro_f1(p, t) == pytest.approx(f1_score(t, p, average="macro", labels=np.unique(t)))


def test_worst_group_leaves_out_ignored_groups():
    predictions = np.array([0, 0, 1, 1, 0, 0])
    truth = np.array([0, 1, 1, 1, 1, 1])
    groups = np.array([0, 0, 1, 1, 5, 5])
    assert metrics.worst_group(predictions, truth, groups) == 0.0  # group 5: 0/2
    assert metrics.worst_group(predictions, truth, groups, ignored=(5,)) == 0.5  # group 0: 1/2
    assert metrics.score("worst_group", predictions, truth, groups, dataset_spec("fmow_ood").ignored_groups) == 0.5
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.score("top5", predictions, truth)


def test_wilds_label_spaces():
    assert len(dataset_spec("iwildcam_id").classnames) == 182 and dataset_spec("iwildcam_ood").metric == "macro_f1"
    assert len(dataset_spec("fmow_id").classnames) == 62 and dataset_spec("fmow_ood").metric == "worst_group"
    assert labels.FMOW_REGIONS[dataset_spec("fmow_ood").ignored_groups[0]] == "Other"


def test_every_spec_of_a_label_space_names_the_same_classes():
    """The zero-shot head of a label space is built from whichever of its specs a run meets first
    (saeft_jax.stages.zeroshot), so every spec with fixed names must give that space's names."""
    from saeft_jax.data import registry

    by_space: dict[str, set] = {}
    for name in registry._SPECS:
        spec = dataset_spec(name)
        if spec.fixed_classnames is not None and spec.logit_sets is None:
            by_space.setdefault(spec.label_space, set()).add(spec.classnames)
    assert all(len(names) == 1 for names in by_space.values()), {s: len(n) for s, n in by_space.items()}
    assert {"cifar10", "cifar100", "fgvc_aircraft", "dsprites_shape", "dsprites_y"} <= set(by_space)
    for name in registry.TRANSFER_SETS:  # training, validation and test splits share one head
        names = [n for n in (f"{name}_train", registry.validation_of(name), name) if n]
        assert {dataset_spec(n).label_space for n in names} == {name}
