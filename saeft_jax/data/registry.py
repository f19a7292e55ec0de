"""Every dataset of the evaluation suites and the training sets: where it is read from, its
class names and templates, its metric, and how ImageNet-head logits map to its label space.

`dataset_spec(name)` is the one entry point; `suite(name)` gives a suite's in-distribution and
out-of-distribution dataset names. ImageNet-R and -A are scored on their 200-class subsets
(logits restricted, in ascending ImageNet order, the order of their labels); ObjectNet on its 113
ImageNet-overlapping classes, each the maximum over its ImageNet classes, after a 2-pixel border
crop (its images carry a 1-pixel frame).

Each transfer set of `TRANSFER_SETS` can be the fine-tuning set: `<name>_train` trains, `<name>`
tests, `<name>_val` validates where the dataset has a validation split of its own (else
`finetune.val_fraction` holds one out of the training split), and suite `transfer_<name>` scores
its test split and its shifts (CIFAR-10: CIFAR-10.1, -10.2, -10-C; CIFAR-100: CIFAR-100-C).
CIFAR-10-C / -100-C read the corruptions and severity `with_corruptions` selects (the run's
`config.corruptions`). dSprites, one TFDS split of 737,280 images, gives five tasks (one per
latent factor), split 80/10/10 into train, validation and test by TFDS split slicing: TFDS stores
the examples in an order shuffled at preparation, so each slice is a random sample of the factors.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

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
    `ignored_groups`). `split` may join several prepared splits with "+" (CIFAR-10-C's
    corruptions, read one after another) or slice a TFDS split ("train[:80%]"). `label_key` names
    the TFDS feature holding the label (dSprites has one per factor); `binary` marks images stored
    as 0/1 pixels (dSprites), read as 0/255. `prompt_names` are the class names as the reference
    (Fabian-Mor/sae-ft) writes them into its prompts, where they differ from `classnames`
    (FMoW's and CIFAR-100's underscores, iWildCam's lower case, FGVC-Aircraft's "/" as a space).
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
    data_dir: str | None = (
        None  # where its examples and TFDS class names are read (None: locations.resolve_data_dir's default)
    )
    label_key: str = "label"
    binary: bool = False
    prompt_names: tuple[str, ...] | None = None

    @property
    def classnames(self) -> tuple[str, ...]:
        """Names of this dataset's classes, in label order."""
        if self.fixed_classnames is not None:
            return self.fixed_classnames
        return _tfds_classnames(self.location, self.data_dir, self.label_key)

    def prompts(self) -> tuple[tuple[str, ...], ...]:
        """Per class, in label order, the exact strings the zero-shot head encodes: every template
        filled with the class's prompt name (`labels.prompt`)."""
        nameless = [t for t in self.templates if "{}" not in t and "{a}" not in t]
        if nameless:
            raise ValueError(
                f"dataset {self.name!r}: templates must contain '{{}}' (or '{{a}}') where the class "
                f"name goes; these do not: {nameless}"
            )
        names = self.prompt_names if self.prompt_names is not None else self.classnames
        return tuple(tuple(labels.prompt(template, name) for template in self.templates) for name in names)

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
def _tfds_classnames(location: str, data_dir: str | None, label_key: str) -> tuple[str, ...]:
    """The label names TFDS recorded when it prepared the dataset, underscores read as spaces."""
    import tensorflow_datasets as tfds

    names = tfds.builder(location, data_dir=data_dir).info.features[label_key].names
    return tuple(n.replace("_", " ") for n in names)


def _imagenet(name: str, location: str, split: str, **kw) -> DatasetSpec:
    return DatasetSpec(
        name,
        "tfds",
        location,
        split,
        "imagenet",
        labels.templates("openai_imagenet"),
        fixed_classnames=labels.imagenet_classnames(),
        **kw,
    )


def _imagenet_subset(name: str) -> DatasetSpec:
    subset = labels.imagenet_subset(name)
    position = {imagenet: i for i, imagenet in enumerate(subset)}
    names = labels.imagenet_classnames()
    return dataclasses.replace(
        _imagenet(name, name, "test"),
        logit_sets=tuple((i,) for i in subset),
        label_of=tuple(position.get(i, -1) for i in range(1000)),
        fixed_classnames=tuple(names[i] for i in subset),
    )


def _objectnet() -> DatasetSpec:
    classes, imagenet_ids, _ = labels.objectnet()
    return DatasetSpec(
        "objectnet",
        "prepared",
        "objectnet",
        "test",
        "imagenet",
        labels.templates("openai_imagenet"),
        logit_sets=imagenet_ids,
        border_crop=2,
        fixed_classnames=classes,
        prepare_kind="objectnet",
    )


def _wilds(name: str, split: str) -> DatasetSpec:
    dataset = name.split("_")[0]
    if dataset == "iwildcam":
        names = labels.iwildcam_classnames()
        return DatasetSpec(
            name,
            "prepared",
            "iwildcam",
            split,
            "iwildcam",
            labels.templates("iwildcam"),
            metric="macro_f1",
            fixed_classnames=names,
            prepare_kind="iwildcam",
            prompt_names=tuple(n.lower() for n in names),
        )
    return DatasetSpec(
        name,
        "prepared",
        "fmow",
        split,
        "fmow",
        labels.templates("fmow"),
        metric="worst_group",
        ignored_groups=(labels.FMOW_REGIONS.index("Other"),),
        fixed_classnames=labels.fmow_classnames(),
        prepare_kind="fmow",
        prompt_names=labels.fmow_classnames(underscores=True),
    )


def _transfer(name: str, split: str, *, dataset: str, location: str) -> DatasetSpec:
    return DatasetSpec(name, "tfds", location, split, dataset, labels.templates("simple"))


def _cifar(name: str, split: str, *, space: str, location: str, source: str = "tfds") -> DatasetSpec:
    """A dataset of CIFAR-10's or CIFAR-100's classes; prepared ones are prepared as `location`."""
    return DatasetSpec(
        name,
        source,
        location,
        split,
        space,
        labels.templates("simple"),
        fixed_classnames=labels.cifar_classnames(space),
        prepare_kind=location if source == "prepared" else "",
        prompt_names=labels.cifar_classnames(space, underscores=True),
    )


def _aircraft(name: str, split: str) -> DatasetSpec:
    variants = labels.fgvc_aircraft_variants()
    return DatasetSpec(
        name,
        "prepared",
        "fgvc_aircraft",
        split,
        "fgvc_aircraft",
        labels.templates("simple"),
        fixed_classnames=variants,
        prepare_kind="fgvc_aircraft",
        prompt_names=tuple(v.replace("/", " ") for v in variants),
    )


def _dsprites(name: str, split: str, *, task: str) -> DatasetSpec:
    factor = labels.dsprites(task)
    return DatasetSpec(
        name,
        "tfds",
        "dsprites",
        split,
        f"dsprites_{task}",
        factor.templates,
        fixed_classnames=factor.classnames,
        label_key=factor.label_key,
        binary=True,
    )


def corruption_splits(names: Sequence[str], severity: int) -> str:
    """The prepared splits of corruptions `names` at `severity`, joined by "+" (read in that order)."""
    return "+".join(labels.corruption_split(name, severity) for name in names)


CORRUPTED = ("cifar10_c", "cifar100_c")  # the datasets whose corruptions `with_corruptions` selects


def with_corruptions(spec: DatasetSpec, names: Sequence[str], severity: int) -> DatasetSpec:
    """`spec` reading corruptions `names` at `severity` when it is CIFAR-10-C or CIFAR-100-C (its
    examples: those corruptions' test images, one corruption after another, so with equal counts
    its top-1 is the mean over the corruptions); any other spec unchanged."""
    if spec.location not in CORRUPTED:
        return spec
    return dataclasses.replace(spec, split=corruption_splits(names, severity))


def _family(
    name: str, make: Callable[..., DatasetSpec], train: str, val: str, test: str, **kw
) -> dict[str, Callable[[], DatasetSpec]]:
    """`<name>_train`, `<name>_val` (only when `val` names the dataset's own validation split) and
    `<name>` (the test split), each made by `make(spec name, split, **kw)`."""
    splits = {f"{name}_train": train, **({f"{name}_val": val} if val else {}), name: test}
    return {spec: functools.partial(make, spec, split, **kw) for spec, split in splits.items()}


DSPRITES_SPLITS = ("train[:80%]", "train[80%:90%]", "train[90%:]")  # train, validation, test
# TFDS transfer sets: name -> (TFDS location, training split, own validation split or "", test split)
_TFDS_TRANSFER = {
    "dtd": ("dtd", "train", "validation", "test"),
    "stl10": ("stl10", "train", "", "test"),
    "oxford_iiit_pet": ("oxford_iiit_pet", "train", "", "test"),
    "oxford_flowers102": ("oxford_flowers102", "train", "validation", "test"),
    "cars196": ("cars196", "train", "", "test"),
    "caltech101": ("caltech101", "train", "", "test"),
}

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
    **_family("cifar10", _cifar, "train", "", "test", space="cifar10", location="cifar10"),
    "cifar10_1": functools.partial(_cifar, "cifar10_1", "test", space="cifar10", location="cifar10_1/v6"),
    "cifar10_2": functools.partial(
        _cifar, "cifar10_2", "test", space="cifar10", location="cifar10_2", source="prepared"
    ),
    "cifar10_c": functools.partial(
        _cifar,
        "cifar10_c",
        corruption_splits(labels.CORRUPTIONS, 5),
        space="cifar10",
        location="cifar10_c",
        source="prepared",
    ),
    **_family("cifar100", _cifar, "train", "", "test", space="cifar100", location="cifar100"),
    "cifar100_c": functools.partial(
        _cifar,
        "cifar100_c",
        corruption_splits(labels.CORRUPTIONS, 5),
        space="cifar100",
        location="cifar100_c",
        source="prepared",
    ),
    **{
        spec: make
        for name, (location, *splits) in _TFDS_TRANSFER.items()
        for spec, make in _family(name, _transfer, *splits, dataset=name, location=location).items()
    },
    "eurosat": functools.partial(_transfer, "eurosat", "train", dataset="eurosat", location="eurosat/rgb"),
    **_family("fgvc_aircraft", _aircraft, "train", "val", "test"),
    **{
        spec: make
        for task in labels.DSPRITES_TASKS
        for spec, make in _family(f"dsprites_{task}", _dsprites, *DSPRITES_SPLITS, task=task).items()
    },
}

# The sets `configs/transfer_vitb16.py` fine-tunes on (EuroSAT has one TFDS split only, its test set).
TRANSFER_SETS = (
    "cifar10",
    "cifar100",
    "dtd",
    "stl10",
    "fgvc_aircraft",
    "oxford_iiit_pet",
    "oxford_flowers102",
    "cars196",
    "caltech101",
    *(f"dsprites_{task}" for task in labels.DSPRITES_TASKS),
)
_TRANSFER_SHIFTS = {"cifar10": ("cifar10_1", "cifar10_2", "cifar10_c"), "cifar100": ("cifar100_c",)}

SUITES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "imagenet": ("imagenet", ("imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a", "objectnet")),
    "wilds_iwildcam": ("iwildcam_id", ("iwildcam_ood",)),
    "wilds_fmow": ("fmow_id", ("fmow_ood",)),
    "transfer": (
        None,
        (
            "cifar10",
            "cifar100",
            "dtd",
            "stl10",
            "oxford_iiit_pet",
            "oxford_flowers102",
            "cars196",
            "caltech101",
            "eurosat",
            "fgvc_aircraft",
        ),
    ),
    **{f"transfer_{name}": (name, _TRANSFER_SHIFTS.get(name, ())) for name in TRANSFER_SETS},
}


def validation_of(name: str) -> str | None:
    """The spec of transfer set `name`'s own validation split (`<name>_val`), or None when it has
    none (then `finetune.val_fraction` holds one out of `<name>_train`)."""
    return f"{name}_val" if f"{name}_val" in _SPECS else None


_EXTRA: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    """Adds (or replaces) a dataset outside the built-in list, e.g. the demo's or a custom folder."""
    _EXTRA[spec.name] = spec


def register_suite(name: str, in_distribution: str | None, shifts: tuple[str, ...]) -> None:
    """Adds (or replaces) an evaluation suite of registered datasets."""
    SUITES[name] = (in_distribution, tuple(shifts))


def dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """The spec of dataset `name` (a suite member, a training set, a registered one, or a
    folder prepared in `data_dir` as `NAME/SPLIT`: `saeft_jax.data.folders`)."""
    if name in _EXTRA:
        return _EXTRA[name]
    from saeft_jax.data import folders  # it builds DatasetSpecs, so it imports this module

    if folders.is_folder_name(name):
        return folders.folder_spec(name, data_dir)
    if name not in _SPECS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(set(_SPECS) | set(_EXTRA))}")
    return _SPECS[name]()


def suite(name: str) -> tuple[str | None, tuple[str, ...]]:
    """(in-distribution dataset or None, the shift datasets) of evaluation suite `name`, or of a
    list of dataset names, `a,b,c` or a single `NAME/SPLIT`: the first in distribution, the rest
    shifts (the names are checked where their specs are made)."""
    if name in SUITES:
        return SUITES[name]
    if "," in name or "/" in name:
        first, *shifts = [part.strip() for part in name.split(",")]
        if not first or not all(shifts):
            raise KeyError(
                f"the suite {name!r} lists an empty dataset name; write dataset names separated by commas, "
                f"e.g. mine/test,sketches/test (the first in distribution, the rest shifts)"
            )
        return first, tuple(shifts)
    raise KeyError(
        f"unknown suite {name!r}; known: {sorted(SUITES)}, a prepared folder's NAME/SPLIT, or dataset "
        f"names separated by commas (the first in distribution, the rest shifts)"
    )
