"""Every dataset of the evaluation suites and the training sets: where it is read from, its
class names and templates, its metric, and how ImageNet-head logits map to its label space.

`dataset_spec(name)` is the one entry point; `suite(name)` gives a suite's in-distribution and
out-of-distribution dataset names. ImageNet-R and -A are scored on their 200-class subsets
(logits restricted, in ascending ImageNet order, the order of their labels); ObjectNet on its 113
ImageNet-overlapping classes, each the maximum over its ImageNet classes, after a 2-pixel border
crop (its images carry a 1-pixel frame).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from saeft_jax.data import labels

TFDS_BUILD = "tfds build {name} --file_format=array_record --data_dir={data_dir}"
PREPARE = "python -m saeft_jax.data.prepare {kind} --source=SOURCE_DIR --data_dir={data_dir}"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One split of one dataset, as the pipelines and the evaluator read it.

    `source` is "tfds" (a TFDS data source named `location`) or "prepared" (ArrayRecord files
    written by `saeft_jax.data.prepare` under `data_dir/saeft/<location>`). `label_space` names
    the classes of the head that scores it ("imagenet" for ImageNet and its shifts); `logit_sets`
    lists, per class of this dataset, the head classes whose maximum is its logit (None: identity).
    `label_of` maps stored labels to this dataset's classes where they differ (TFDS stores
    ImageNet-R/-A labels as ImageNet indices). `metric` is "top1", "macro_f1" (over classes
    present) or "worst_group" (accuracy of the worst `group`, e.g. FMoW's regions, leaving out
    `ignored_groups`).
    """

    name: str
    source: str
    location: str
    split: str
    label_space: str
    templates: tuple[str, ...]
    metric: str = "top1"
    logit_sets: tuple[tuple[int, ...], ...] | None = None
    label_of: tuple[int, ...] | None = None
    border_crop: int = 0
    ignored_groups: tuple[int, ...] = ()
    fixed_classnames: tuple[str, ...] | None = None
    prepare_kind: str = ""
    data_dir: str | None = None  # where TFDS class names are read from (None: TFDS's default)

    @property
    def classnames(self) -> tuple[str, ...]:
        """Names of this dataset's classes, in label order."""
        if self.fixed_classnames is not None:
            return self.fixed_classnames
        return _tfds_classnames(self.location, self.data_dir)

    def project(self, logits):
        """(B, head classes) logits -> (B, dataset classes); works on NumPy and JAX arrays."""
        if self.logit_sets is None:
            return logits
        width = max(len(s) for s in self.logit_sets)
        if width == 1:
            return logits[..., np.asarray([s[0] for s in self.logit_sets])]
        padded = np.asarray([s + (s[0],) * (width - len(s)) for s in self.logit_sets])  # repeats: max unchanged
        return logits[..., padded].max(axis=-1)

    def preparation(self, data_dir: str) -> str:
        """The command that prepares this dataset in `data_dir`."""
        if self.source == "tfds":
            return TFDS_BUILD.format(name=self.location, data_dir=data_dir)
        return PREPARE.format(kind=self.prepare_kind, data_dir=data_dir)


@functools.cache
def _tfds_classnames(location: str, data_dir: str | None) -> tuple[str, ...]:
    """The label names TFDS recorded when it prepared the dataset, underscores read as spaces."""
    import tensorflow_datasets as tfds

    return tuple(n.replace("_", " ") for n in tfds.builder(location, data_dir=data_dir).info.features["label"].names)


def _imagenet(name: str, location: str, split: str, **kw) -> DatasetSpec:
    return DatasetSpec(name, "tfds", location, split, "imagenet", labels.templates("openai_imagenet"),
                       fixed_classnames=labels.imagenet_classnames(), **kw)


def _imagenet_subset(name: str) -> DatasetSpec:
    subset = labels.imagenet_subset(name)
    position = {imagenet: i for i, imagenet in enumerate(subset)}
    names = labels.imagenet_classnames()
    return dataclasses.replace(
        _imagenet(name, name, "test"), logit_sets=tuple((i,) for i in subset),
        label_of=tuple(position.get(i, -1) for i in range(1000)), fixed_classnames=tuple(names[i] for i in subset))


def _objectnet() -> DatasetSpec:
    classes, imagenet_ids, _ = labels.objectnet()
    return DatasetSpec("objectnet", "prepared", "objectnet", "test", "imagenet", labels.templates("openai_imagenet"),
                       logit_sets=imagenet_ids, border_crop=2, fixed_classnames=classes, prepare_kind="objectnet")


def _wilds(name: str, split: str) -> DatasetSpec:
    dataset = name.split("_")[0]
    if dataset == "iwildcam":
        return DatasetSpec(name, "prepared", "iwildcam", split, "iwildcam", labels.templates("iwildcam"),
                           metric="macro_f1", fixed_classnames=labels.iwildcam_classnames(), prepare_kind="iwildcam")
    return DatasetSpec(name, "prepared", "fmow", split, "fmow", labels.templates("fmow"), metric="worst_group",
                       ignored_groups=(labels.FMOW_REGIONS.index("Other"),), fixed_classnames=labels.fmow_classnames(),
                       prepare_kind="fmow")


def _transfer(name: str, location: str, split: str = "test") -> DatasetSpec:
    return DatasetSpec(name, "tfds", location, split, name, labels.templates("simple"))


_SPECS: dict[str, Callable[[], DatasetSpec]] = {
    "imagenet_train": lambda: _imagenet("imagenet_train", "imagenet2012", "train"),
    "imagenet": lambda: _imagenet("imagenet", "imagenet2012", "validation"),
    "imagenet_v2": lambda: _imagenet("imagenet_v2", "imagenet_v2/matched-frequency", "test"),
    "imagenet_sketch": lambda: _imagenet("imagenet_sketch", "imagenet_sketch", "test"),
    "imagenet_r": lambda: _imagenet_subset("imagenet_r"),
    "imagenet_a": lambda: _imagenet_subset("imagenet_a"),
    "objectnet": _objectnet,
    "iwildcam_train": lambda: _wilds("iwildcam_train", "train"),
    "iwildcam_id": lambda: _wilds("iwildcam_id", "id_test"),
    "iwildcam_id_val": lambda: _wilds("iwildcam_id_val", "id_val"),
    "iwildcam_ood": lambda: _wilds("iwildcam_ood", "test"),
    "fmow_train": lambda: _wilds("fmow_train", "train"),
    "fmow_id": lambda: _wilds("fmow_id", "id_test"),
    "fmow_id_val": lambda: _wilds("fmow_id_val", "id_val"),
    "fmow_ood": lambda: _wilds("fmow_ood", "test"),
    **{name: functools.partial(_transfer, name, location, split) for name, location, split in [
        ("cifar10", "cifar10", "test"), ("cifar100", "cifar100", "test"), ("dtd", "dtd", "test"),
        ("stl10", "stl10", "test"), ("oxford_iiit_pet", "oxford_iiit_pet", "test"),
        ("oxford_flowers102", "oxford_flowers102", "test"), ("cars196", "cars196", "test"),
        ("caltech101", "caltech101", "test"), ("eurosat", "eurosat/rgb", "train")]},
}

SUITES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "imagenet": ("imagenet", ("imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a", "objectnet")),
    "wilds_iwildcam": ("iwildcam_id", ("iwildcam_ood",)),
    "wilds_fmow": ("fmow_id", ("fmow_ood",)),
    "transfer": (None, ("cifar10", "cifar100", "dtd", "stl10", "oxford_iiit_pet", "oxford_flowers102",
                        "cars196", "caltech101", "eurosat")),
}

_EXTRA: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    """Adds (or replaces) a dataset outside the built-in list, e.g. the demo's or a custom folder."""
    _EXTRA[spec.name] = spec


def register_suite(name: str, in_distribution: str | None, shifts: tuple[str, ...]) -> None:
    """Adds (or replaces) an evaluation suite of registered datasets."""
    SUITES[name] = (in_distribution, tuple(shifts))


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name` (a suite member, a training set or a registered one)."""
    if name in _EXTRA:
        return _EXTRA[name]
    if name not in _SPECS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(set(_SPECS) | set(_EXTRA))}")
    return _SPECS[name]()


def suite(name: str) -> tuple[str | None, tuple[str, ...]]:
    """(in-distribution dataset or None, the shift datasets) of evaluation suite `name`."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {sorted(SUITES)}")
    return SUITES[name]
