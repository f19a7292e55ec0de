"""Checkpoint files, whatever the family: where a checkpoint is (local, gs://, hub), reading
tensors (safetensors, sharded safetensors, PyTorch `.bin` with `weights_only=True`), checking a
state against the parameters a config expects, and publishing a checkpoint directory atomically.

Nothing is ever unpickled; every mismatch between a checkpoint and its config is reported in full.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from saeft_jax import storage
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.errors import UsageError
from saeft_jax.models import pt_layout

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_HUB_BIN_PATTERNS = ["*.bin", "*.msgpack"]


class CheckpointError(UsageError):
    """A checkpoint that cannot be used as asked; the message says what to do."""


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local directory holding the checkpoint: `name_or_path` itself, a local copy of a URL
    (gs://...), or the hub snapshot."""
    if storage.is_remote(name_or_path):
        if not storage.path(name_or_path).is_dir():
            raise CheckpointError(f"No checkpoint directory at {name_or_path}.")
        return storage.local_copy(storage.path(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the directory that holds the config and the weights.")
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.startswith("."):
        raise CheckpointError(f"No checkpoint directory at {path}.")
    return download(name)


def download(repo_id: str) -> Path:
    """The hub snapshot of `repo_id` (configs, tokenizer files, safetensors; `.bin` only without those)."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        snapshot = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_BIN_PATTERNS))
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise CheckpointError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache, and downloads are off "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r} or no network). Download it where the "
            f"network allows (`hf download {repo_id}`) or pass a local directory."
        ) from e
    except (errors.RepositoryNotFoundError, errors.HfHubHTTPError, errors.HFValidationError) as e:
        raise CheckpointError(f"Could not fetch {repo_id!r} from the Hugging Face hub: {e}") from e
    return snapshot


def read_json(file: Path) -> dict:
    """A JSON object from `file`, or one paragraph saying it is not one."""
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not readable JSON ({e}); copy or download it again.") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} holds a JSON {type(value).__name__}, not an object.")
    return value


def read_state(directory: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], Path]:
    """(state dict as NumPy, the file read) from the first of `names` present in `directory`:
    a safetensors index (`*.index.json`), a safetensors file or a PyTorch `.bin`."""
    for name in names:
        file = directory / name
        if not file.exists():
            continue
        if name.endswith(".index.json"):
            return _read_sharded(file), file
        if name.endswith(".safetensors"):
            return _read_safetensors(file), file
        return _read_torch_bin(file), file
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"{directory} holds no weights: expected one of {', '.join(names)}; found {present}.")


def flax_params(
    state: Mapping[str, np.ndarray], expected: Mapping[tuple[str, ...], tuple[int, ...]], source: Path
) -> dict[tuple[str, ...], np.ndarray]:
    """The flat float32 Flax tree of a transformers-named state dict, checked complete against
    `expected` (leaf path -> shape)."""
    flat, unexpected = pt_layout.pt_to_flax_state(state, expected)
    check_complete(source, flat, expected, unexpected)
    return {p: np.asarray(v, np.float32) for p, v in flat.items()}


def check_complete(source: Path, flat: Mapping, expected: Mapping, unexpected: list[str]) -> None:
    """Refuses a state with missing, unexpected or wrongly shaped tensors, naming them all."""
    missing = ["/".join(p) for p in expected if p not in flat]
    wrong = [
        f"{'/'.join(p)}: file {tuple(np.shape(flat[p]))} vs config {tuple(s)}"
        for p, s in expected.items()
        if p in flat and tuple(np.shape(flat[p])) != tuple(s)
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{name} ({len(items)}): {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise CheckpointError(f"{source} does not match its config; nothing was loaded. " + "; ".join(parts))


def image_spec(directory: Path, size: int, default: ImageSpec) -> ImageSpec:
    """The image settings of `preprocessor_config.json` (transformers' image processor), else
    `default`; a processor for another input size than the model's `size` is refused."""
    file = directory / "preprocessor_config.json"
    if not file.exists():
        return default
    try:
        spec = ImageSpec.from_hf_processor(read_json(file))
    except (AttributeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{file} is not a usable image processor config ({error}).") from error
    if spec.size != size:
        raise CheckpointError(
            f"{file} prepares {spec.size}-pixel images, but the model takes {size}; fix its size "
            f"(and crop_size) or remove the file to use the model's own settings."
        )
    return spec


def publish_dir(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> epath.Path:
    """Calls `write(staging)` on an empty local directory, then publishes it as `out_dir`: a local
    `out_dir` appears complete or not at all; a URL's files are uploaded once all are written."""
    out_dir = storage.path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    local_parent = None if storage.is_remote(out_dir) else out_dir.parent  # None: the system's temp dir
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=local_parent))
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    storage.publish(staging, out_dir)
    return out_dir


def save_safetensors(file: Path, state: Mapping[str, np.ndarray]) -> None:
    """A PyTorch-format safetensors file of contiguous float32 tensors."""
    contiguous = {k: np.array(v, np.float32, order="C") for k, v in state.items()}  # ascontiguousarray makes 0-d 1-d
    safetensors.numpy.save_file(contiguous, file, metadata={"format": "pt"})


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({e}); it may be truncated or "
            f"corrupt: download or copy it again."
        ) from e


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a safetensors index (a JSON object with a 'weight_map').") from e
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index.parent / shard).exists():
            raise CheckpointError(f"{index} names the shard {shard}, which is not in {index.parent}.")
        state.update(_read_safetensors(index.parent / shard))
    return state


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{file} is a PyTorch pickle; install torch to read it (with weights_only=True) or "
            f"use a checkpoint that has safetensors weights."
        ) from e
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise CheckpointError(
            f"{file} could not be read as plain tensors ({type(e).__name__}); it is corrupt or "
            f"holds arbitrary Python objects, which are never unpickled. Convert it to "
            f"safetensors where its source is trusted."
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # open_clip training checkpoints
        state = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict of tensors.")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
