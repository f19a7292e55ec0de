"""The on-disk format of prepared datasets: ArrayRecord files of (JSON header, encoded image).

A record is `len(header) (4 bytes, little endian) + header (UTF-8 JSON: label, group, file) +
the image file's bytes as they were` (JPEG, PNG, ...), so preparation never re-encodes and no
record is ever unpickled. A split lives in `<dir>/<split>-NNNNN-of-MMMMM.array_record`;
`<dir>/info.json` holds the class names, group names and example counts. `<dir>` may be on a
local disk or in a bucket (gs://): ArrayRecord reads Cloud Storage itself.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, ImageOps

from saeft_jax import storage

INFO = "info.json"


def encode(image_bytes: bytes, label: int, group: int = -1, file: str = "") -> bytes:
    """One record."""
    header = json.dumps({"label": int(label), "group": int(group), "file": file}).encode()
    return struct.pack("<I", len(header)) + header + image_bytes


def decode(record: bytes) -> dict[str, Any]:
    """Record -> {"image": uint8 HWC RGB, "label", "group", "file"}."""
    (size,) = struct.unpack_from("<I", record)
    header = json.loads(record[4 : 4 + size])
    header["image"] = decode_image(record[4 + size :], header["file"])
    return header


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) as an image viewer shows them: turned by the file's
    EXIF orientation, 16-bit gray scaled to 8 bits (value / 257); 32-bit pixels, whose range no
    file states, and a file that does not decode are named in the error."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode.startswith("I;16"):  # PIL's convert("RGB") would clip every value above 255
                gray = np.round(np.asarray(image, np.float32) / 257).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            deep = image.mode if image.mode in ("I", "F") else None
            if deep is None:
                return np.asarray(image.convert("RGB"))
    except Exception as error:  # PIL raises several types for broken files
        raise ValueError(f"image {name or '(unnamed)'} does not decode: {error}") from error
    raise ValueError(
        f"image {name or '(unnamed)'} has 32-bit {'integer' if deep == 'I' else 'float'} pixels (PIL mode "
        f"{deep}), whose range the file does not state, so no 8-bit picture follows from it; convert it "
        f"to 8 or 16 bits per channel"
    )


def split_files(directory: epath.Path, split: str) -> list[epath.Path]:
    """The ArrayRecord files of one split, in order (on a disk or in a bucket); only this split's:
    `test-00000-of-00001.array_record` is split "test", not a shard of "test-extra"."""
    shard = re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.array_record")
    files = storage.path(directory).glob(f"{split}-*-of-*.array_record")
    return sorted((f for f in files if shard.fullmatch(f.name)), key=str)


def write_split(directory: epath.Path, split: str, records: Iterable[bytes], per_file: int = 10_000) -> int:
    """Streams records into the shards of `split` and returns how many it wrote. Shards are written
    under temporary names on a local disk and take their final `-of-` names only at the end (in a
    bucket: are uploaded then), replacing an earlier preparation of the split, so a stopped
    preparation leaves no file that looks complete."""
    from array_record.python.array_record_module import ArrayRecordWriter

    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=None if storage.is_remote(directory) else directory) as staging:
        partials, writer, written = [], None, 0
        for record in records:
            if written % per_file == 0:
                if writer is not None:
                    writer.close()
                partials.append(Path(staging) / f"{split}-{len(partials):05d}.partial")
                writer = ArrayRecordWriter(str(partials[-1]), "group_size:1")
            writer.write(record)
            written += 1
        if writer is not None:
            writer.close()
        for stale in split_files(directory, split):
            stale.unlink()
        for shard, partial in enumerate(partials):
            storage.publish(partial, directory / f"{split}-{shard:05d}-of-{len(partials):05d}.array_record")
    return written


def write_info(directory: epath.Path, info: dict[str, Any]) -> None:
    """Writes `info.json` last and atomically: its presence marks the dataset as complete."""
    storage.write_atomic(storage.path(directory) / INFO, json.dumps(info, indent=1))


def read_info(directory: epath.Path) -> dict[str, Any] | None:
    """`info.json` of a prepared dataset, or None when it is missing (not prepared or unfinished)."""
    path = storage.path(directory) / INFO
    return json.loads(path.read_text()) if path.exists() else None
