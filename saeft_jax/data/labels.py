"""Label spaces shipped as package data: ImageNet class names, prompt templates, the ImageNet-R
and -A class subsets, the ObjectNet-to-ImageNet mapping, and the iWildCam and FMoW class names."""

from __future__ import annotations

import csv
import functools
import json
from importlib import resources

_ASSETS = resources.files("saeft_jax.data") / "assets"
# WILDS FMoW's regions; its worst-region accuracy leaves out "Other" (few images, no single region).
FMOW_REGIONS = ("Asia", "Europe", "Africa", "Americas", "Oceania", "Other")


def _read(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 ImageNet class names (OpenAI's cleaned list), in ImageNet (sorted wnid) order."""
    return tuple(json.loads(_read("imagenet_classnames.json")))


@functools.cache
def templates(name: str) -> tuple[str, ...]:
    """A prompt template set: `openai_imagenet` (80), `simple`, `iwildcam`, `fmow`."""
    sets = json.loads(_read("templates.json"))
    if name not in sets:
        raise KeyError(f"unknown template set {name!r}; known: {sorted(sets)}")
    return tuple(sets[name])


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
def fmow_classnames() -> tuple[str, ...]:
    """The 62 FMoW (WILDS) categories, by label, with underscores read as spaces."""
    return tuple(name.replace("_", " ") for name in json.loads(_read("fmow_classnames.json")))
