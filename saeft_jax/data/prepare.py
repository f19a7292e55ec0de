"""Prepares image folders, WILDS folders and image arrays as ArrayRecord datasets, once, checking counts.

    python -m saeft_jax.data.prepare objectnet     --source=/data/objectnet-1.0 --data_dir=~/tensorflow_datasets
    python -m saeft_jax.data.prepare iwildcam      --source=/data/iwildcam_v2.0  --data_dir=...
    python -m saeft_jax.data.prepare fmow          --source=/data/fmow_v1.1      --data_dir=...
    python -m saeft_jax.data.prepare fgvc_aircraft --source=/data/fgvc-aircraft-2013b --data_dir=...
    python -m saeft_jax.data.prepare cifar10_2     --source=/data/cifar-10.2     --data_dir=...   # cifar102_test.npz
    python -m saeft_jax.data.prepare cifar10_c     --source=/data/CIFAR-10-C     --data_dir=...   # <corruption>.npy
    python -m saeft_jax.data.prepare cifar100_c    --source=/data/CIFAR-100-C    --data_dir=...
    python -m saeft_jax.data.prepare folder        --source=/data/mine --name=mine --split=test --data_dir=...
                                                   [--templates=prompts.txt]

Images held in arrays (CIFAR-10.2's .npz, CIFAR-C's .npy, memory-mapped) are stored as PNG, so
they read back exactly. CIFAR-10-C / -100-C become one split per corruption and severity,
`<corruption>_<severity>` (`fog_5`), 10,000 images each; every corruption file in the folder is
prepared, the 15 of the benchmark are required (see `labels.CORRUPTIONS`).

The result lives in `DATA_DIR/saeft/<name>/` (see `saeft_jax.data.records`); splits prepared one
at a time under the same name accumulate in its `info.json`. Every image is decoded once here,
so a broken file is named now rather than midway through training (`--skip_corrupt` counts and
skips such files instead). Images read as a viewer shows them: turned by their EXIF orientation,
16-bit gray scaled to 8 bits; 32-bit pixels are refused by name (`records.decode_image`). Class
folder names must be UTF-8 text. Image and class counts are checked against the published ones
(`--no_count_check` for a subset of your own); a folder dataset is checked against
`--expected_images` / `--expected_classes` when given. Files that are not images, class folders
without images and links that lead out of the source folder are listed in a summary (links are
refused), and a `--name` must be a plain folder name. A folder dataset is then named
`NAME/SPLIT` in a run's config (`saeft_jax.data.folders`); `--templates` gives its prompt
templates (a text file, one a line with `{}` for the class name), kept for every split.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from saeft_jax import stopping, storage
from saeft_jax.data import folders, labels, records
from saeft_jax.data.locations import DEFAULT_DATA_DIR, prepared_dir, resolve_data_dir
from saeft_jax.errors import UsageError
from saeft_jax.observe import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Published sizes: ObjectNet's 113 ImageNet-overlapping classes; the WILDS v2.0 / v1.1 splits.
EXPECTED: dict[str, dict[str, Any]] = {
    "objectnet": {"classes": 113, "splits": {"test": 18574}},
    "iwildcam": {
        "classes": 182,
        "splits": {"train": 129809, "val": 14961, "test": 42791, "id_val": 7314, "id_test": 8154},
    },
    "fmow": {"classes": 62, "splits": {"train": 76863, "id_val": 11483, "id_test": 11327, "val": 19915, "test": 22108}},
    # FGVC-Aircraft 2013b's variant splits; CIFAR-10.2's test set; CIFAR-C: 10,000 per corruption and severity.
    "fgvc_aircraft": {"classes": 100, "splits": {"train": 3334, "val": 3333, "test": 3333}},
    "cifar10_2": {"classes": 10, "splits": {"test": 2000}},
    **{
        name: {
            "classes": classes,
            "splits": {labels.corruption_split(c, s): 10_000 for c in labels.CORRUPTIONS for s in labels.SEVERITIES},
        }
        for name, classes in (("cifar10_c", 10), ("cifar100_c", 100))
    },
}


class PreparationError(UsageError):
    """The source folder is not what the preparation expects; the message says what differs."""


@dataclasses.dataclass(frozen=True, slots=True)  # slots: CIFAR-10-C lists 950,000 of them
class Example:
    """One image with its label and group (a location or region; -1 when none): the image file
    `path`, or row `row` of `pixels`, the uint8 (N, H, W, C) array read from the file `path`."""

    path: Path
    label: int
    group: int = -1
    row: int = -1
    pixels: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass
class Listing:
    """What a source folder holds, before any image is read, and what it holds besides images."""

    splits: dict[str, list[Example]]
    classnames: tuple[str, ...]
    group_names: tuple[str, ...] = ()
    ignored: list[str] = dataclasses.field(default_factory=list)  # files that are not images
    empty_classes: list[str] = dataclasses.field(default_factory=list)


def prepare(
    kind: str,
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    name: str | None = None,
    split: str = "test",
    check_counts: bool = True,
    skip_corrupt: bool = False,
    expected: dict[str, int] | None = None,
    show_progress: bool = True,
    templates: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Prepares `source` (layout `kind`: one of `LAYOUTS` or folder) and returns its info.

    `expected` ({"images": N, "classes": C}, either may be left out) states a folder dataset's
    size. The splits prepared join those already in the dataset's `info.json`; `templates` (the
    prompts of a folder dataset) replace those recorded before, which are kept when none are given."""
    name = _checked_name(name or kind, "--name")
    _checked_name(split, "--split")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise PreparationError(f"{source} is not a directory; pass the unpacked dataset folder as --source")
    listing = _folder(source, split) if kind == "folder" else LAYOUTS[kind](source)
    _refuse_links_out(source, listing)
    if check_counts and kind in EXPECTED:
        _check_counts(kind, EXPECTED[kind], listing)
    if expected:
        _check_counts(name, {"classes": expected.get("classes"), "splits": {split: expected.get("images")}}, listing)
    out = prepared_dir(data_dir, name)
    info = _joined_info(out, name, listing)
    if templates:
        info["templates"] = list(templates)
    if set(info["splits"]) & set(listing.splits):  # withdrawn first: a stop while its shards change leaves it unlisted
        kept = {s: n for s, n in info["splits"].items() if s not in listing.splits}
        records.write_info(out, {**info, "splits": kept})
    for split_name, examples in listing.splits.items():
        skipped: list[str] = []
        bar = progress(len(examples), f"{name}/{split_name}", enabled=show_progress, unit="img")
        info["splits"][split_name] = records.write_split(
            out, split_name, _encoded(examples, skip_corrupt, skipped, bar)
        )
        bar.close()
        info["skipped"][split_name] = skipped
        info["ignored"][split_name] = listing.ignored
        info["empty_classes"][split_name] = listing.empty_classes
    records.write_info(out, info)
    return info


def _checked_name(name: str, flag: str) -> str:
    if not storage.is_plain_name(name):
        raise PreparationError(
            f"{flag} {name!r} is not a plain name ({storage.PLAIN_NAME_RULE}); the dataset goes "
            f"to DATA_DIR/saeft/<name>/<split>-*.array_record, and a name with '/' or '..' "
            f"would write elsewhere."
        )
    return name


def _joined_info(out: epath.Path, name: str, listing: Listing) -> dict[str, Any]:
    """The dataset's info with this preparation's classes, keeping the splits prepared before."""
    info = {
        "name": name,
        "classnames": list(listing.classnames),
        "group_names": list(listing.group_names),
        "splits": {},
        "skipped": {},
        "ignored": {},
        "empty_classes": {},
    }
    before = records.read_info(out)
    if before is None:
        return info
    if before["classnames"] != info["classnames"]:
        raise PreparationError(
            f"{out} holds splits {sorted(before['splits'])} with other classes "
            f"({len(before['classnames'])}: {before['classnames'][:5]}...) than {name!r} has now "
            f"({len(info['classnames'])}: {info['classnames'][:5]}...); every split of a dataset "
            f"shares its classes. Use another --name, or the same class folders."
        )
    for key in ("splits", "skipped", "ignored", "empty_classes"):
        info[key] = dict(before.get(key, {}))
    if before.get("templates"):
        info["templates"] = before["templates"]
    return info


def _refuse_links_out(source: Path, listing: Listing) -> None:
    root = source.resolve()
    paths = {e.path for examples in listing.splits.values() for e in examples}  # an array file holds many images
    outside = sorted(str(p) for p in paths if not p.resolve().is_relative_to(root))
    if outside:
        raise PreparationError(
            f"{len(outside)} image path(s) under {source} lead outside it through links, e.g. "
            f"{outside[:3]}; copy those images into the source folder (or remove the links) "
            f"so that the dataset holds what the folder shows."
        )


def _encoded(examples: list[Example], skip_corrupt: bool, skipped: list[str], bar) -> Iterator[bytes]:
    """Records of `examples` in order; each image file is decoded (in threads) to prove it is
    intact, each array row encoded as PNG."""

    def load(example: Example) -> tuple[Example, bytes, Exception | None]:
        if example.pixels is not None:
            return example, _png(example.pixels[example.row]), None
        data = example.path.read_bytes()
        try:
            records.decode_image(data, str(example.path))
            return example, data, None
        except ValueError as error:
            return example, data, error

    with ThreadPoolExecutor(8) as pool:
        for example, data, error in pool.map(load, examples):
            stopping.check(f"while preparing {example.path}")  # the split's shards are not published yet
            bar.update(1)
            if error is not None:
                if not skip_corrupt:
                    raise PreparationError(
                        f"{error}. Replace the file, or pass --skip_corrupt to skip and count such files."
                    )
                skipped.append(str(example.path))
                continue
            name = example.path.name if example.pixels is None else f"{example.path.name}[{example.row}]"
            yield records.encode(data, example.label, example.group, name)


def _png(pixels: np.ndarray) -> bytes:
    """An image array as PNG bytes (lossless: it reads back exactly)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_counts(name: str, expected: dict[str, Any], listing: Listing) -> None:
    """Classes with images and images per split against `expected` (None entries are not checked)."""
    found = {split: len(examples) for split, examples in listing.splits.items()}
    present = {e.label for examples in listing.splits.values() for e in examples}
    problems = []
    if expected.get("classes") is not None and len(present) != expected["classes"]:
        problems.append(f"{len(present)} classes with images, expected {expected['classes']}")
    problems += [
        f"split {split}: {found.get(split, 0)} images, expected {count}"
        for split, count in expected["splits"].items()
        if count is not None and found.get(split, 0) != count
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise PreparationError(
            f"{name} does not have the expected size: {shown}. A partial "
            f"download or the wrong folder? Pass --no_count_check (or other --expected_* "
            f"values) to prepare it anyway."
        )


def _images(folder: Path, ignored: list[str] | None = None) -> list[Path]:
    """The image files of `folder`, sorted; everything else in it (other files, folders, links to
    nothing) goes to `ignored` when given."""
    entries = sorted(folder.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if ignored is not None:
        ignored += [str(p) for p in entries if p not in images]
    return images


def _folder(source: Path, split: str) -> Listing:
    entries = sorted(source.iterdir())
    classes = [p for p in entries if p.is_dir() and not p.name.startswith(".")]  # .ipynb_checkpoints is no class
    if not classes:
        raise PreparationError(f"{source} has no class folders; expected one sub-folder of images per class")
    not_text = [os.fsencode(p.name) for p in classes if not _is_text(p.name)]
    if not_text:
        raise PreparationError(
            f"{len(not_text)} class folder name(s) under {source} are not valid UTF-8 text, e.g. "
            f"{not_text[:3]}; a class name becomes the text of the zero-shot prompts, so rename "
            f"those folders to the class names in UTF-8."
        )
    ignored = [str(p) for p in entries if p not in classes]
    per_class = {folder: _images(folder, ignored) for folder in classes}
    examples = [Example(path, label) for label, folder in enumerate(classes) for path in per_class[folder]]
    empty = [folder.name for folder, images in per_class.items() if not images]
    return Listing(
        {split: examples},
        tuple(p.name.replace("_", " ") for p in classes),
        ignored=sorted(ignored),
        empty_classes=empty,
    )


def _is_text(name: str) -> bool:
    """Whether a file name read from the disk is UTF-8 text (Python keeps other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _objectnet(source: Path) -> Listing:
    images = source / "images" if (source / "images").is_dir() else source
    classnames, _, folder_class = labels.objectnet()
    missing = sorted(f for f in folder_class if not (images / f).is_dir())
    if missing:
        raise PreparationError(
            f"{images} lacks {len(missing)} of the 113 ObjectNet class folders that overlap "
            f"ImageNet, e.g. {missing[:5]}; expected the objectnet-1.0 layout "
            f"(images/<class folder>/*.png)"
        )
    examples = [Example(path, folder_class[f]) for f in sorted(folder_class) for path in _images(images / f)]
    return Listing({"test": examples}, classnames)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise PreparationError(
            f"{path} is missing; expected the WILDS folder layout as downloaded by the "
            f"wilds package (pip install wilds; wilds.get_dataset(..., download=True))"
        )
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _iwildcam(source: Path) -> Listing:
    rows = _read_csv(source / "metadata.csv")
    splits: dict[str, list[Example]] = {}
    for row in rows:
        splits.setdefault(row["split"], []).append(
            Example(source / "train" / row["filename"], int(row["y"]), int(row.get("location_remapped") or -1))
        )
    return Listing(splits, labels.iwildcam_classnames())


def _fmow(source: Path) -> Listing:
    rows = _read_csv(source / "rgb_metadata.csv")
    region_of = {r["alpha-3"]: r["region"] for r in _read_csv(source / "country_code_mapping.csv")}
    label_of = {name: i for i, name in enumerate(labels.fmow_classnames())}
    splits: dict[str, list[Example]] = {}
    for index, row in enumerate(rows):
        split = _fmow_split(row["split"], int(row["timestamp"][:4]))
        if split is None:
            continue
        region = region_of.get(row["country_code"], "Other")
        group = labels.FMOW_REGIONS.index(region if region in labels.FMOW_REGIONS else "Other")
        splits.setdefault(split, []).append(
            Example(source / "images" / f"rgb_img_{index}.png", label_of[row["category"].replace("_", " ")], group)
        )
    return Listing(splits, labels.fmow_classnames(), labels.FMOW_REGIONS)


def _fmow_split(split: str, year: int) -> str | None:
    """WILDS FMoW splits by year: before 2013 in distribution, 2013-2015 OOD val, 2016 on OOD test."""
    if split == "seq":
        return None
    if year < 2013:
        return {"train": "train", "val": "id_val", "test": "id_test"}[split]
    if year < 2016:
        return "val" if split == "val" else None
    return "test" if split == "test" else None


def _fgvc_aircraft(source: Path) -> Listing:
    """fgvc-aircraft-2013b: data/images/<id>.jpg and data/images_variant_<split>.txt ("<id> <variant>")."""
    data = source / "data" if (source / "data").is_dir() else source
    variants_file = data / "variants.txt"
    if not variants_file.exists():
        raise PreparationError(
            f"{variants_file} is missing; expected the fgvc-aircraft-2013b folder "
            f"(data/variants.txt, data/images_variant_{{train,val,test}}.txt, data/images/*.jpg)"
        )
    variants = tuple(line.strip() for line in variants_file.read_text().splitlines() if line.strip())
    if variants != labels.fgvc_aircraft_variants():
        raise PreparationError(
            f"{variants_file} lists {len(variants)} variants that differ from FGVC-Aircraft 2013b's "
            f"100 (saeft_jax/data/assets/fgvc_aircraft_variants.txt), e.g. "
            f"{sorted(set(variants) ^ set(labels.fgvc_aircraft_variants()))[:3]}; use the 2013b "
            f"release, whose variant names and order are the labels here."
        )
    label_of = {variant: i for i, variant in enumerate(variants)}
    splits = {}
    for split in ("train", "val", "test"):
        listed = data / f"images_variant_{split}.txt"
        if not listed.exists():
            raise PreparationError(f"{listed} is missing; expected the fgvc-aircraft-2013b folder layout")
        rows = [line.strip().split(" ", 1) for line in listed.read_text().splitlines() if line.strip()]
        unknown = sorted({row[-1] for row in rows if len(row) < 2 or row[1] not in label_of})
        if unknown:
            raise PreparationError(f"{listed} names variants that variants.txt lacks: {unknown[:5]}")
        splits[split] = [Example(data / "images" / f"{image}.jpg", label_of[variant]) for image, variant in rows]
    missing = [str(e.path) for examples in splits.values() for e in examples if not e.path.is_file()]
    if missing:
        raise PreparationError(
            f"{len(missing)} images the split files list are missing, e.g. {missing[:3]}; "
            f"unpack the whole fgvc-aircraft-2013b archive."
        )
    return Listing(splits, variants)


def _cifar10_2(source: Path) -> Listing:
    """The CIFAR-10.2 test set: cifar102_test.npz ("images" (2000, 32, 32, 3) uint8, "labels")."""
    path = source / "cifar102_test.npz"
    if not path.exists():
        older = (
            " (cifar102_test.npy is the older, pickled layout, which is not read)"
            if (source / "cifar102_test.npy").exists()
            else ""
        )
        raise PreparationError(
            f"{path} is missing{older}; download cifar102_test.npz from "
            f"github.com/modestyachts/cifar-10.2 into that folder."
        )
    with np.load(path) as arrays:  # no pickles: images and labels are plain arrays
        images, truth = _images_array(path, arrays["images"]), arrays["labels"]
    return Listing({"test": _rows(path, images, truth)}, labels.cifar_classnames("cifar10"))


def _corrupted(source: Path, space: str) -> Listing:
    """Hendrycks' CIFAR-10-C / CIFAR-100-C folder: labels.npy and `<corruption>.npy`, each of them
    the test set at severities 1 to 5, one after another; one split per corruption and severity."""
    labels_file = source / "labels.npy"
    files = {
        c: source / f"{c}.npy" for c in labels.CORRUPTIONS + labels.EXTRA_CORRUPTIONS if (source / f"{c}.npy").exists()
    }
    if not labels_file.exists() or not files:
        raise PreparationError(
            f"{source} lacks labels.npy or every <corruption>.npy (e.g. fog.npy); expected the "
            f"unpacked CIFAR-10-C / CIFAR-100-C folder of zenodo.org/record/2535967 / 3555552."
        )
    truth = np.load(labels_file)
    per_severity, rest = divmod(len(truth), len(labels.SEVERITIES))
    if rest:
        raise PreparationError(
            f"{labels_file} holds {len(truth)} labels, not {len(labels.SEVERITIES)} equal blocks "
            f"(one per severity); a partial download?"
        )
    splits = {}
    for corruption, path in files.items():
        images = _images_array(path, np.load(path, mmap_mode="r"))  # memory-mapped: read as it is encoded
        if len(images) != len(truth):
            raise PreparationError(
                f"{path} holds {len(images)} images but labels.npy {len(truth)} labels; each "
                f"corruption file holds the test set at every severity. A partial download?"
            )
        for severity in labels.SEVERITIES:
            rows = range((severity - 1) * per_severity, severity * per_severity)
            splits[labels.corruption_split(corruption, severity)] = _rows(path, images, truth, rows)
    return Listing(splits, labels.cifar_classnames(space))


def _images_array(path: Path, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise PreparationError(
            f"{path} holds a {images.dtype} array of shape {images.shape}; expected uint8 images "
            f"(N, height, width, channels)."
        )
    return images


def _rows(path: Path, images: np.ndarray, truth: np.ndarray, rows: range | None = None) -> list[Example]:
    """Examples of rows `rows` (default: all) of `images`, labelled by the same rows of `truth`."""
    if len(images) != len(truth):
        raise PreparationError(f"{path} holds {len(images)} images and {len(truth)} labels; they pair up row by row.")
    rows = range(len(images)) if rows is None else rows
    return [Example(path, int(truth[r]), row=r, pixels=images) for r in rows]


LAYOUTS = {
    "objectnet": _objectnet,
    "iwildcam": _iwildcam,
    "fmow": _fmow,
    "fgvc_aircraft": _fgvc_aircraft,
    "cifar10_2": _cifar10_2,
    "cifar10_c": lambda s: _corrupted(s, "cifar10"),
    "cifar100_c": lambda s: _corrupted(s, "cifar100"),
}  # and "folder", which takes its --split


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=[*LAYOUTS, "folder"])
    parser.add_argument("--source", required=True, help="the unpacked dataset folder")
    parser.add_argument(
        "--data_dir",
        default=DEFAULT_DATA_DIR,
        help="where datasets are prepared ($TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    parser.add_argument("--name", help="dataset name (default: the kind); required for folder")
    parser.add_argument("--split", default="test", help="split name for a folder dataset")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip and count images that do not decode")
    parser.add_argument("--no_count_check", action="store_true", help="do not compare with the published sizes")
    parser.add_argument("--expected_images", type=int, help="a folder dataset's image count, checked")
    parser.add_argument("--expected_classes", type=int, help="a folder dataset's class count, checked")
    parser.add_argument(
        "--templates",
        help="a folder dataset's prompt templates: a text file, one a line with {} "
        "for the class name (default: 'a photo of a {}.')",
    )
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)  # "" means the default here as it does in a run
    if args.kind == "folder" and not args.name:
        parser.error("a folder dataset needs --name")
    if args.templates and args.kind != "folder":
        parser.error(f"--templates is for a folder dataset; {args.kind} has its own prompts")
    expected = {
        key: value
        for key, value in (("images", args.expected_images), ("classes", args.expected_classes))
        if value is not None
    }
    try:
        templates = folders.read_templates(args.templates, "--templates") if args.templates else None
        info = prepare(
            args.kind,
            args.source,
            data_dir,
            name=args.name,
            split=args.split,
            check_counts=not args.no_count_check,
            skip_corrupt=args.skip_corrupt,
            expected=expected,
            templates=templates,
        )
    except stopping.Stopped as stop:
        return stopping.exit_code(stop, "the split was not written, and the same command prepares it again")
    except (UsageError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(summary(info, prepared_dir(data_dir, info["name"])))
    if args.kind == "folder":
        print(
            f"use it as {info['name']}/{args.split}, e.g. --config.train_dataset={info['name']}/{args.split} "
            f"--config.data_dir={data_dir}"
        )
    return 0


def summary(info: dict[str, Any], where: Path) -> str:
    """What was prepared, and every file left out and why, as lines for the terminal."""
    lines = [f"prepared {info['name']} in {where}: " + ", ".join(f"{s} {n} images" for s, n in info["splits"].items())]
    for key, what in (
        ("skipped", "corrupt images skipped"),
        ("ignored", "files that are not images, ignored"),
        ("empty_classes", "class folders without images (their classes keep their labels)"),
    ):
        for split, items in info.get(key, {}).items():
            if items:
                lines.append(
                    f"  {split}: {len(items)} {what}: "
                    + ", ".join(items[:10])
                    + (f" ... (all in {where / records.INFO})" if len(items) > 10 else "")
                )
    return "\n".join(lines)


if __name__ == "__main__":
    stopping.install("the same command prepares it again")
    sys.exit(main())
