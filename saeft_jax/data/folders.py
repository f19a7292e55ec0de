"""Datasets prepared from image folders, addressed by name: `NAME/SPLIT` is split SPLIT of the
dataset `python -m saeft_jax.data.prepare folder --name=NAME --split=SPLIT` wrote.

Its class names are the preparation's (the class folders' names, underscores read as spaces);
its prompt templates those of the templates file given at preparation (`--templates=FILE`), or
of `config.templates_file`, else `DEFAULT_TEMPLATES`. Folder datasets with the same class names in
the same order share one label space, so a shift prepared under another name (`sketches/test`
beside `mine/train`) is scored by the fine-tuned head.
"""

from __future__ import annotations

import hashlib
import os

from saeft_jax import storage
from saeft_jax.data import labels, records
from saeft_jax.data.locations import prepared_dir, resolve_data_dir
from saeft_jax.errors import UsageError

DEFAULT_TEMPLATES = labels.templates("simple")  # ("a photo of a {}.",): CLIP's plain prompt
KIND = "folder"  # the preparation kind of these datasets


def is_folder_name(name: str) -> bool:
    """Whether dataset `name` addresses a prepared folder (`NAME/SPLIT`) rather than a registered dataset."""
    return "/" in name


def folder_spec(name: str, data_dir: str | os.PathLike | None = None):
    """The `DatasetSpec` of `NAME/SPLIT` prepared in `data_dir` (default `$TFDS_DATA_DIR` or
    ~/tensorflow_datasets). A name that was never prepared is a `KeyError` saying how to prepare it."""
    from saeft_jax.data.registry import DatasetSpec

    dataset, _, split = name.partition("/")
    data_dir = resolve_data_dir(data_dir)
    prepare = (
        f"python -m saeft_jax.data.prepare folder --source=YOUR_FOLDER --name={dataset or 'NAME'} "
        f"--split={split or 'SPLIT'} --data_dir={data_dir}"
    )
    if not (storage.is_plain_name(dataset) and storage.is_plain_name(split)):
        raise KeyError(
            f"unknown dataset {name!r}: a prepared folder is named NAME/SPLIT, two plain names "
            f"({storage.PLAIN_NAME_RULE}); prepare one with {prepare}"
        )
    directory = prepared_dir(data_dir, dataset)
    info = records.read_info(directory)
    if info is None:
        raise KeyError(
            f"unknown dataset {name!r}: no dataset {dataset!r} is prepared in {data_dir} (looked for "
            f"{directory / records.INFO}); prepare it with {prepare}, or pass the data_dir it was "
            f"prepared in"
        )
    if split not in info["splits"]:
        raise KeyError(
            f"unknown dataset {name!r}: {dataset!r} in {data_dir} has the splits "
            f"{', '.join(sorted(info['splits']))}, not {split!r}; prepare it with {prepare}"
        )
    classnames = tuple(info["classnames"])
    return DatasetSpec(
        name,
        "prepared",
        dataset,
        split,
        label_space(classnames),
        tuple(info.get("templates") or DEFAULT_TEMPLATES),
        fixed_classnames=classnames,
        prepare_kind=KIND,
        data_dir=data_dir,
    )


def label_space(classnames: tuple[str, ...]) -> str:
    """The label space of folder datasets with these class names: one per list of names."""
    digest = hashlib.sha256("\n".join(classnames).encode()).hexdigest()[:12]
    return f"folder_{digest}"


def read_templates(path: str | os.PathLike, flag: str) -> tuple[str, ...]:
    """The prompt templates of file `path`: one a line, each with one `{}` where the class name goes
    (blank lines and lines starting with `#` skipped). A file that cannot serve is a `UsageError`
    naming `flag`, the option or key that gave it."""
    try:
        text = storage.path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{flag} {os.fspath(path)!r} cannot be read ({error}); name a text file of prompt "
            f"templates, one a line, e.g. 'a photo of a {{}}.'"
        ) from error
    lines = [line.strip() for line in text.splitlines()]
    templates = tuple(line for line in lines if line and not line.startswith("#"))
    bad = [t for t in templates if t.count("{}") != 1 or set("{}") & set(t.replace("{}", ""))]
    if not templates or bad:
        what = f"lines without exactly one {{}} ({bad[:3]})" if bad else "no template"
        raise UsageError(
            f"{flag} {os.fspath(path)!r} holds {what}; each line is one prompt with {{}} where the "
            f"class name goes, e.g. 'a photo of a {{}}.'"
        )
    return templates
