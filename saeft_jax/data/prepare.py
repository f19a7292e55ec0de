"""Prepares image folders and WILDS folders as ArrayRecord datasets, once, checking counts.

    python -m saeft_jax.data.prepare objectnet --source=/data/objectnet-1.0 --data_dir=~/tensorflow_datasets
    python -m saeft_jax.data.prepare iwildcam  --source=/data/iwildcam_v2.0  --data_dir=...
    python -m saeft_jax.data.prepare fmow      --source=/data/fmow_v1.1      --data_dir=...
    python -m saeft_jax.data.prepare folder    --source=/data/mine --name=mine --split=test --data_dir=...

The result lives in `DATA_DIR/saeft/<name>/` (see `saeft_jax.data.records`); splits prepared one
at a time under the same name accumulate in its `info.json`. Every image is decoded once here,
so a broken file is named now rather than midway through training (`--skip_corrupt` counts and
skips such files instead). Image and class counts are checked against the published ones
(`--no_count_check` for a subset of your own); a folder dataset is checked against
`--expected_images` / `--expected_classes` when given. Files that are not images, class folders
without images and links that lead out of the source folder are listed in a summary (links are
refused), and a `--name` must be a plain folder name.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from etils import epath

from saeft_jax import storage
from saeft_jax.data import labels, records
from saeft_jax.errors import UsageError
from saeft_jax.observe import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Published sizes: ObjectNet's 113 ImageNet-overlapping classes; the WILDS v2.0 / v1.1 splits.
EXPECTED: dict[str, dict[str, Any]] = {
    "objectnet": {"classes": 113, "splits": {"test": 18574}},
    "iwildcam": {"classes": 182, "splits": {"train": 129809, "val": 14961, "test": 42791, "id_val": 7314,
                                            "id_test": 8154}},
    "fmow": {"classes": 62, "splits": {"train": 76863, "id_val": 11483, "id_test": 11327, "val": 19915,
                                       "test": 22108}},
}


class PreparationError(UsageError):
    """The source folder is not what the preparation expects; the message says what differs."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One image file with its label and group (a location or region; -1 when none)."""

    path: Path
    label: int
    group: int = -1


@dataclasses.dataclass
class Listing:
    """What a source folder holds, before any image is read, and what it holds besides images."""

    splits: dict[str, list[Example]]
    classnames: tuple[str, ...]
    group_names: tuple[str, ...] = ()
    ignored: list[str] = dataclasses.field(default_factory=list)  # files that are not images
    empty_classes: list[str] = dataclasses.field(default_factory=list)


def prepared_dir(data_dir: str | os.PathLike, name: str) -> epath.Path:
    """Where prepared dataset `name` lives (a local directory or a gs:// prefix)."""
    return storage.path(data_dir) / "saeft" / name


def prepare(kind: str, source: str | os.PathLike, data_dir: str | os.PathLike, *, name: str | None = None,
            split: str = "test", check_counts: bool = True, skip_corrupt: bool = False,
            expected: dict[str, int] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Prepares `source` (layout `kind`: objectnet, iwildcam, fmow or folder) and returns its info.

    `expected` ({"images": N, "classes": C}, either may be left out) states a folder dataset's
    size. The splits prepared join those already in the dataset's `info.json`."""
    name = _checked_name(name or kind, "--name")
    _checked_name(split, "--split")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise PreparationError(f"{source} is not a directory; pass the unpacked dataset folder as --source")
    listing = {"objectnet": _objectnet, "iwildcam": _iwildcam, "fmow": _fmow,
               "folder": lambda s: _folder(s, split)}[kind](source)
    _refuse_links_out(source, listing)
    if check_counts and kind in EXPECTED:
        _check_counts(kind, EXPECTED[kind], listing)
    if expected:
        _check_counts(name, {"classes": expected.get("classes"), "splits": {split: expected.get("images")}}, listing)
    out = prepared_dir(data_dir, name)
    info = _joined_info(out, name, listing)
    if set(info["splits"]) & set(listing.splits):  # withdrawn first: a stop while its shards change leaves it unlisted
        kept = {s: n for s, n in info["splits"].items() if s not in listing.splits}
        records.write_info(out, {**info, "splits": kept})
    for split_name, examples in listing.splits.items():
        skipped: list[str] = []
        bar = progress(len(examples), f"{name}/{split_name}", enabled=show_progress, unit="img")
        info["splits"][split_name] = records.write_split(
            out, split_name, _encoded(examples, skip_corrupt, skipped, bar))
        bar.close()
        info["skipped"][split_name] = skipped
        info["ignored"][split_name] = listing.ignored
        info["empty_classes"][split_name] = listing.empty_classes
    records.write_info(out, info)
    return info


def _checked_name(name: str, flag: str) -> str:
    if not storage.is_plain_name(name):
        raise PreparationError(f"{flag} {name!r} is not a plain name ({storage.PLAIN_NAME_RULE}); the dataset goes "
                               f"to DATA_DIR/saeft/<name>/<split>-*.array_record, and a name with '/' or '..' "
                               f"would write elsewhere.")
    return name


def _joined_info(out: epath.Path, name: str, listing: Listing) -> dict[str, Any]:
    """The dataset's info with this preparation's classes, keeping the splits prepared before."""
    info = {"name": name, "classnames": list(listing.classnames), "group_names": list(listing.group_names),
            "splits": {}, "skipped": {}, "ignored": {}, "empty_classes": {}}
    before = records.read_info(out)
    if before is None:
        return info
    if before["classnames"] != info["classnames"]:
        raise PreparationError(f"{out} holds splits {sorted(before['splits'])} with other classes "
                               f"({len(before['classnames'])}: {before['classnames'][:5]}...) than {name!r} has now "
                               f"({len(info['classnames'])}: {info['classnames'][:5]}...); every split of a dataset "
                               f"shares its classes. Use another --name, or the same class folders.")
    for key in ("splits", "skipped", "ignored", "empty_classes"):
        info[key] = dict(before.get(key, {}))
    return info


def _refuse_links_out(source: Path, listing: Listing) -> None:
    root = source.resolve()
    outside = [str(e.path) for examples in listing.splits.values() for e in examples
               if not e.path.resolve().is_relative_to(root)]
    if outside:
        raise PreparationError(f"{len(outside)} image path(s) under {source} lead outside it through links, e.g. "
                               f"{outside[:3]}; copy those images into the source folder (or remove the links) "
                               f"so that the dataset holds what the folder shows.")


def _encoded(examples: list[Example], skip_corrupt: bool, skipped: list[str], bar) -> Iterator[bytes]:
    """Records of `examples` in order; each image is decoded (in threads) to prove it is intact."""
    def load(example: Example) -> tuple[Example, bytes, Exception | None]:
        data = example.path.read_bytes()
        try:
            records.decode_image(data, str(example.path))
            return example, data, None
        except ValueError as error:
            return example, data, error

    with ThreadPoolExecutor(8) as pool:
        for example, data, error in pool.map(load, examples):
            bar.update(1)
            if error is not None:
                if not skip_corrupt:
                    raise PreparationError(f"{error}. Replace the file, or pass --skip_corrupt to skip and count "
                                           f"such files.")
                skipped.append(str(example.path))
                continue
            yield records.encode(data, example.label, example.group, example.path.name)


def _check_counts(name: str, expected: dict[str, Any], listing: Listing) -> None:
    """Classes with images and images per split against `expected` (None entries are not checked)."""
    found = {split: len(examples) for split, examples in listing.splits.items()}
    present = {e.label for examples in listing.splits.values() for e in examples}
    problems = []
    if expected.get("classes") is not None and len(present) != expected["classes"]:
        problems.append(f"{len(present)} classes with images, expected {expected['classes']}")
    problems += [f"split {split}: {found.get(split, 0)} images, expected {count}"
                 for split, count in expected["splits"].items() if count is not None and found.get(split, 0) != count]
    if problems:
        raise PreparationError(f"{name} does not have the expected size: {'; '.join(problems)}. A partial "
                               f"download or the wrong folder? Pass --no_count_check (or other --expected_* "
                               f"values) to prepare it anyway.")


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
    ignored = [str(p) for p in entries if p not in classes]
    per_class = {folder: _images(folder, ignored) for folder in classes}
    examples = [Example(path, label) for label, folder in enumerate(classes) for path in per_class[folder]]
    empty = [folder.name for folder, images in per_class.items() if not images]
    return Listing({split: examples}, tuple(p.name.replace("_", " ") for p in classes), ignored=sorted(ignored),
                   empty_classes=empty)


def _objectnet(source: Path) -> Listing:
    images = source / "images" if (source / "images").is_dir() else source
    classnames, _, folder_class = labels.objectnet()
    missing = sorted(f for f in folder_class if not (images / f).is_dir())
    if missing:
        raise PreparationError(f"{images} lacks {len(missing)} of the 113 ObjectNet class folders that overlap "
                               f"ImageNet, e.g. {missing[:5]}; expected the objectnet-1.0 layout "
                               f"(images/<class folder>/*.png)")
    examples = [Example(path, folder_class[f]) for f in sorted(folder_class) for path in _images(images / f)]
    return Listing({"test": examples}, classnames)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise PreparationError(f"{path} is missing; expected the WILDS folder layout as downloaded by the "
                               f"wilds package (pip install wilds; wilds.get_dataset(..., download=True))")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _iwildcam(source: Path) -> Listing:
    rows = _read_csv(source / "metadata.csv")
    splits: dict[str, list[Example]] = {}
    for row in rows:
        splits.setdefault(row["split"], []).append(
            Example(source / "train" / row["filename"], int(row["y"]), int(row.get("location_remapped") or -1)))
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
        splits.setdefault(split, []).append(Example(source / "images" / f"rgb_img_{index}.png",
                                                    label_of[row["category"].replace("_", " ")], group))
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


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m saeft_jax.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["objectnet", "iwildcam", "fmow", "folder"])
    parser.add_argument("--source", required=True, help="the unpacked dataset folder")
    parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    parser.add_argument("--name", help="dataset name (default: the kind); required for folder")
    parser.add_argument("--split", default="test", help="split name for a folder dataset")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip and count images that do not decode")
    parser.add_argument("--no_count_check", action="store_true", help="do not compare with the published sizes")
    parser.add_argument("--expected_images", type=int, help="a folder dataset's image count, checked")
    parser.add_argument("--expected_classes", type=int, help="a folder dataset's class count, checked")
    args = parser.parse_args(argv)
    if args.kind == "folder" and not args.name:
        parser.error("a folder dataset needs --name")
    expected = {key: value for key, value in (("images", args.expected_images), ("classes", args.expected_classes))
                if value is not None}
    try:
        info = prepare(args.kind, args.source, args.data_dir, name=args.name, split=args.split,
                       check_counts=not args.no_count_check, skip_corrupt=args.skip_corrupt, expected=expected)
    except (PreparationError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(summary(info, prepared_dir(args.data_dir, info["name"])))
    return 0


def summary(info: dict[str, Any], where: Path) -> str:
    """What was prepared, and every file left out and why, as lines for the terminal."""
    lines = [f"prepared {info['name']} in {where}: " + ", ".join(f"{s} {n} images" for s, n in info["splits"].items())]
    for key, what in (("skipped", "corrupt images skipped"), ("ignored", "files that are not images, ignored"),
                      ("empty_classes", "class folders without images (their classes keep their labels)")):
        for split, items in info.get(key, {}).items():
            if items:
                lines.append(f"  {split}: {len(items)} {what}: " + ", ".join(items[:10])
                             + (f" ... (all in {where / records.INFO})" if len(items) > 10 else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
