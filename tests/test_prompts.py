"""The prompts the zero-shot heads encode, character for character against the reference's
(Fabian-Mor/sae-ft, commit 7b0baf2, `src/templates/` and its datasets' class names), written out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from saeft_jax.data import labels
from saeft_jax.data.registry import dataset_spec

REGIONS = ("asia", "africa", "the americas", "europe", "oceania")


def _fmow_expected(raw: str, spaced_with_article: str) -> tuple[str, ...]:
    """FMoW's 16 prompts of one class: the reference's f-strings keep the underscores, its
    article templates read them as spaces."""
    return (
        f"satellite photo of a {raw}.",
        f"aerial photo of a {raw}.",
        f"satellite photo of {spaced_with_article}.",
        f"aerial photo of {spaced_with_article}.",
        *(f"{kind} photo of a {raw} in {region}." for region in REGIONS for kind in ("satellite", "aerial")),
        f"a photo of a {raw}.",
        f"{raw}.",
    )


def test_fmow_prompts_keep_underscores_and_choose_the_article():
    prompts = dataset_spec("fmow_ood").prompts()
    assert len(prompts) == 62 and all(len(p) == 16 for p in prompts)
    assert prompts[0] == _fmow_expected("airport", "an airport")
    assert prompts[0][2] == "satellite photo of an airport." and prompts[0][0] == "satellite photo of a airport."
    assert prompts[1] == _fmow_expected("airport_hangar", "an airport hangar")
    assert prompts[1][4] == "satellite photo of a airport_hangar in asia."
    assert prompts[6] == _fmow_expected("barn", "a barn")
    assert prompts[14] == _fmow_expected("educational_institution", "an educational institution")
    assert prompts[30] == _fmow_expected("multi-unit_residential", "a multi-unit residential")
    assert prompts[61] == _fmow_expected("zoo", "a zoo")
    assert dataset_spec("fmow_id").prompts() == prompts == dataset_spec("fmow_train").prompts()
    assert dataset_spec("fmow_ood").classnames[1] == "airport hangar"  # what reports show


def test_iwildcam_prompts_use_lower_case_names():
    prompts = dataset_spec("iwildcam_ood").prompts()
    assert len(prompts) == 182
    assert prompts[0] == ("a photo of empty.", "empty in the wild.")
    assert prompts[1] == ("a photo of white-lipped peccary.", "white-lipped peccary in the wild.")
    assert prompts[2] == ("a photo of central american agouti.", "central american agouti in the wild.")
    assert dataset_spec("iwildcam_ood").classnames[1] == "White-lipped peccary"


def test_imagenet_prompts_are_openais_80():
    for name in ("imagenet", "imagenet_train", "imagenet_v2", "imagenet_sketch"):
        prompts = dataset_spec(name).prompts()
        assert len(prompts) == 1000 and all(len(p) == 80 for p in prompts), name
        assert prompts[0][:3] == ("a bad photo of a tench.", "a photo of many tench.", "a sculpture of a tench."), name
        assert prompts[0][-1] == "a tattoo of the tench.", name
        assert prompts[1][0] == "a bad photo of a goldfish.", name


@pytest.mark.parametrize(
    "name, index, expected",
    [
        ("cifar10", 0, "a photo of a airplane."),
        ("cifar10_c", 9, "a photo of a truck."),
        ("cifar100", 1, "a photo of a aquarium_fish."),
        ("cifar100_c", 41, "a photo of a lawn_mower."),
        ("cifar100", 47, "a photo of a maple_tree."),
        ("fgvc_aircraft", None, "a photo of a F-16A B."),
        ("fgvc_aircraft", None, "a photo of a F A-18."),
    ],
)
def test_simple_template_prompts(name, index, expected):
    prompts = dataset_spec(name).prompts()
    assert all(len(p) == 1 for p in prompts)
    if index is None:
        assert (expected,) in prompts
    else:
        assert prompts[index] == (expected,)


def test_template_fields():
    assert labels.prompt("satellite photo of {a}.", "aquaculture") == "satellite photo of an aquaculture."
    assert labels.prompt("satellite photo of {a}.", "crop_field") == "satellite photo of a crop field."
    assert labels.prompt("{} in the wild.", "ocelot") == "ocelot in the wild."
    assert labels.prompt("a photo of a {}.", "Ice_cream") == "a photo of a Ice_cream."
    assert labels.with_article("Elephant") == "a Elephant"  # the reference looks at lower-case vowels only


def test_a_template_without_the_class_name_is_refused():
    spec = dataclasses.replace(dataset_spec("cifar10"), templates=("a photo of a {}.", "a photo"))
    with pytest.raises(ValueError, match=r"'cifar10'.*must contain '\{\}'.*'a photo'"):
        spec.prompts()
