"""Where datasets live: the data dir (`config.data_dir`, `--data_dir`; its default is spelt here
only) and a prepared dataset's directory in it."""

from __future__ import annotations

import os

from etils import epath

from saeft_jax import storage

DEFAULT_DATA_DIR = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """Where datasets are read and prepared: `data_dir` ("" or None: `$TFDS_DATA_DIR` or
    ~/tensorflow_datasets), `~` expanded, a bucket URL as it is. A run resolves its data dir once
    and every spec and source it opens carries the result; the command-line tools resolve theirs."""
    return os.fspath(storage.path(data_dir or DEFAULT_DATA_DIR))


def prepared_dir(data_dir: str | os.PathLike, name: str) -> epath.Path:
    """Where prepared dataset `name` lives (a local directory or a gs:// prefix)."""
    return storage.path(data_dir) / "saeft" / name
