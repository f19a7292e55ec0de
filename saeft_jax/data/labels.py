"""Label spaces shipped as package data: ImageNet class names, prompt templates, the ImageNet-R
and -A class subsets, the ObjectNet-to-ImageNet mapping, the iWildCam, FMoW, CIFAR, FGVC-Aircraft
and dSprites class names, and the corruptions of CIFAR-10-C / CIFAR-100-C."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
from importlib import resources

_ASSETS = resources.files("saeft_jax.data") / "assets"
# WILDS FMoW's regions; its worst-region accuracy leaves out "Other" (few images, no single region).
FMOW_REGIONS = ("Asia", "Europe", "Africa", "Americas", "Oceania", "Other")
# Hendrycks' CIFAR-10-C / CIFAR-100-C: the 15 corruptions of the benchmark (the order of its paper),
# then the 4 extra ones released with them. Each `<name>.npy` holds the 10,000 test images at
# severity 1, then at 2, ..., 5.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
DSPRITES_TASKS = ("shape", "scale", "orientation", "x", "y")


def _read(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 ImageNet class names (OpenAI's cleaned list), in ImageNet (sorted wnid) order."""
    return tuple(json.loads(_read("imagenet_classnames.json")))


@functools.cache
def templates(name: str) -> tuple[str, ...]:
    """A prompt template set: `openai_imagenet` (80), `simple`, `iwildcam`, `fmow` (the
    reference's, Fabian-Mor/sae-ft `src/templates/`). `{}` takes the class name as it is, `{a}`
    the name after "a" or "an" (see `prompt`)."""
    sets = json.loads(_read("templates.json"))
    if name not in sets:
        raise KeyError(f"unknown template set {name!r}; known: {sorted(sets)}")
    return tuple(sets[name])


def with_article(name: str) -> str:
    """`name` with underscores read as spaces after "an" when it starts with a lower-case vowel,
    else after "a" (the reference's `append_proper_article`: "an airport hangar", "a barn")."""
    name = name.replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


def prompt(template: str, classname: str) -> str:
    """Template `template` filled with `classname`: `{}` takes the name unchanged (underscores
    kept, as the reference's f-strings keep them), `{a}` takes `with_article(classname)`."""
    return template.format(classname, a=with_article(classname))


@functools.cache
def imagenet_subset(name: str) -> tuple[int, ...]:
    """ImageNet indices of the 200 classes of `imagenet_r` or `imagenet_a`, ascending (the order of
    those datasets' own labels)."""
    return tuple(sorted(json.loads(_read(f"{name}_class_subset.json"))))


@functools.cache
def objectnet() -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], dict[str, int]]:
    """ObjectNet's 113 ImageNet-overlapping classes, sorted by name: (class names, the ImageNet
    indices each maps to, image folder name -> class index). Folders of the other 200 ObjectNet
    classes are absent from the map."""
    to_imagenet = json.loads(_read("objectnet_to_imagenet_1k.json"))
    folder_label = json.loads(_read("objectnet_folder_to_objectnet_label.json"))
    pytorch_to_2012 = json.loads(_read("objectnet_pytorch_to_imagenet_2012_id.json"))
    index_of_2012 = {v: int(k) for k, v in pytorch_to_2012.items()}
    names_2012 = [line.strip() for line in _read("objectnet_imagenet_to_label_2012_v2.txt").splitlines()]
    imagenet_index = {}
    for i, name in enumerate(names_2012):
        imagenet_index[name] = None if name in imagenet_index else index_of_2012[i]  # None: ambiguous
    classes = sorted(to_imagenet)
    ids = []
    for label in classes:
        indices = [imagenet_index[name] for name in to_imagenet[label].split("; ")]
        if None in indices:
            raise ValueError(f"ObjectNet class {label!r} maps to an ambiguous ImageNet name")
        ids.append(tuple(sorted(indices)))
    folders = {folder: classes.index(label) for folder, label in folder_label.items() if label in to_imagenet}
    return tuple(classes), tuple(ids), folders


@functools.cache
def iwildcam_classnames() -> tuple[str, ...]:
    """The 182 iWildCam (WILDS) class names, by label y (English common names)."""
    rows = [row for row in csv.DictReader(_read("iwildcam_labels.csv").splitlines()) if int(row["y"]) < 99999]
    rows.sort(key=lambda row: int(row["y"]))
    return tuple(row["english"] for row in rows)


@functools.cache
def fmow_classnames(*, underscores: bool = False) -> tuple[str, ...]:
    """The 62 FMoW (WILDS) categories, by label, with underscores read as spaces (`underscores`:
    kept, as WILDS spells them and the reference prompts them)."""
    names = json.loads(_read("fmow_classnames.json"))
    return tuple(names if underscores else (name.replace("_", " ") for name in names))


@functools.cache
def cifar_classnames(space: str, *, underscores: bool = False) -> tuple[str, ...]:
    """The classes of `cifar10` or `cifar100` (fine labels), in label order, underscores read as
    spaces (`underscores`: kept, as torchvision spells them and the reference prompts them;
    CIFAR-10.1, -10.2 and -C share CIFAR-10's labels; CIFAR-100-C CIFAR-100's)."""
    names = json.loads(_read("cifar_classnames.json"))[space]
    return tuple(names if underscores else (name.replace("_", " ") for name in names))


@functools.cache
def fgvc_aircraft_variants() -> tuple[str, ...]:
    """FGVC-Aircraft's 100 variants, in the order of its `variants.txt` (their labels)."""
    return tuple(line.strip() for line in _read("fgvc_aircraft_variants.txt").splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class DspritesTask:
    """One dSprites latent factor as a classification task: the TFDS feature holding its label,
    its class names (a text tower can read them) and its prompt templates."""

    label_key: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


@functools.cache
def dsprites(task: str) -> DspritesTask:
    """The dSprites task `task` (one of `DSPRITES_TASKS`): shapes by name; scales by value (0.5 to
    1); orientations in degrees (40 steps over [0, 360], both ends included, as dSprites has them);
    x and y positions in percent of the canvas (32 steps)."""
    if task not in DSPRITES_TASKS:
        raise KeyError(f"unknown dSprites task {task!r}; known: {DSPRITES_TASKS}")
    entry = json.loads(_read("dsprites.json"))[task]
    return DspritesTask(entry["label_key"], tuple(entry["classnames"]), tuple(entry["templates"]))


def corruption_split(name: str, severity: int) -> str:
    """The prepared split holding corruption `name` at `severity` (e.g. `fog_5`)."""
    return f"{name}_{severity}"
