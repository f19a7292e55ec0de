"""Hugging Face CLIP checkpoints in and out: config, weights, tokenizer and image settings.

`load_clip` opens a local directory or a hub id (downloaded with huggingface_hub, which honours
HF_HUB_OFFLINE) holding `model.safetensors` (also sharded with an index), `flax_model.msgpack`
(HF Flax layout) or, with torch installed, `pytorch_model.bin` read with `weights_only=True`.
Nothing is ever unpickled. `save_clip` writes what `transformers.CLIPModel.from_pretrained`
opens. Every mismatch between a checkpoint and its config is reported in full.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
import transformers
from etils import epath
from flax import traverse_util

from saeft_jax import hf_layout, storage
from saeft_jax.errors import UsageError
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models.clip import CLIP, CLIPConfig, TextConfig, TowerConfig, VisionConfig, param_shapes

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "flax_model.msgpack", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_TOWER_FIELDS = [f.name for f in TowerConfig.__dataclass_fields__.values()]


class CheckpointError(UsageError):
    """A checkpoint that cannot be used as asked; the message says what to do."""


def load_clip(name_or_path: str | os.PathLike, dtype: Any = jnp.float32, *, remat: bool = False) -> tuple[CLIP, dict]:
    """Loads a CLIP checkpoint as `(model, params)`; `dtype` is the compute dtype.

    Parameters are float32 whatever the file stores (fp16/bf16 checkpoints are upcast), so
    fine-tuning keeps full-precision master weights; `dtype=jnp.bfloat16` computes in bf16.
    """
    directory = resolve(name_or_path)
    model = CLIP(read_config(directory), dtype=dtype, remat=remat)
    expected = {p: s.shape for p, s in traverse_util.flatten_dict(param_shapes(model)).items()}
    flat = _read_flat_params(directory, expected)
    params = {p: jnp.asarray(v, jnp.float32) for p, v in flat.items()}
    return model, traverse_util.unflatten_dict(params)


def save_clip(model: CLIP, params: dict, out_dir: str | os.PathLike, *, tokenizer: Any = None,
              image_spec: ImageSpec | None = None) -> epath.Path:
    """Writes `config.json` + `model.safetensors` (PyTorch layout), plus tokenizer and image
    settings when given, atomically: a local `out_dir` appears complete or not at all; a URL's
    files are uploaded once all are written."""
    out_dir = storage.path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    local_parent = None if storage.is_remote(out_dir) else out_dir.parent  # None: the system's temp dir
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=local_parent))
    flat = traverse_util.flatten_dict(jax.device_get(params))
    state = hf_layout.flax_to_pt_state({p: np.asarray(v, np.float32) for p, v in flat.items()})
    safetensors.numpy.save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
    config_to_hf(model.config).save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    if image_spec is not None:
        (staging / "preprocessor_config.json").write_text(json.dumps(image_spec.hf_processor_config(), indent=2))
    storage.publish(staging, out_dir)
    return out_dir


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
        raise CheckpointError(f"{path} is a file; pass the directory that holds config.json and the weights.")
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.startswith("."):
        raise CheckpointError(f"No checkpoint directory at {path}.")
    return _download(name)


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub import errors

    try:
        snapshot = huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"])
        if not any((Path(snapshot) / f).exists() for f in WEIGHT_FILES[:2]):
            snapshot = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(WEIGHT_FILES[2:]))
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise CheckpointError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache, and downloads are off "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r} or no network). Download it where the "
            f"network allows (`hf download {repo_id}`) or pass a local directory.") from e
    except (errors.RepositoryNotFoundError, errors.HfHubHTTPError, errors.HFValidationError) as e:
        raise CheckpointError(f"Could not fetch {repo_id!r} from the Hugging Face hub: {e}") from e
    return Path(snapshot)


def read_config(directory: Path) -> CLIPConfig:
    """Our `CLIPConfig` from the checkpoint's `config.json`."""
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} has no config.json; a CLIP checkpoint holds config.json and one of "
                              f"{', '.join(WEIGHT_FILES)}.")
    try:
        hf = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)  # never run its code
    except (ValueError, OSError) as error:  # unreadable JSON, no model_type, ...
        raise CheckpointError(f"{directory}/config.json is not a usable model config ({error}); a CLIP checkpoint "
                              f"holds the config.json that CLIPModel.save_pretrained writes.") from error
    if not isinstance(hf, transformers.CLIPConfig):
        raise CheckpointError(f"{directory}/config.json describes a {type(hf).__name__} (model_type "
                              f"{hf.model_type!r}); load_clip needs a CLIPModel checkpoint (model_type 'clip').")
    return config_from_hf(hf)


def config_from_hf(hf: transformers.CLIPConfig) -> CLIPConfig:
    """The fields of transformers' `CLIPConfig` that change the math (and the token ids)."""
    tower = lambda c: {f: getattr(c, f) for f in _TOWER_FIELDS}
    v, t = hf.vision_config, hf.text_config
    return CLIPConfig(
        vision=VisionConfig(**tower(v), image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels),
        text=TextConfig(**tower(t), vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
                        bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id),
        projection_dim=hf.projection_dim, logit_scale_init_value=hf.logit_scale_init_value)


def config_to_hf(config: CLIPConfig) -> transformers.CLIPConfig:
    """transformers' `CLIPConfig` for `config`."""
    as_dict = lambda c: {**vars(c), "projection_dim": config.projection_dim}
    return transformers.CLIPConfig(text_config=as_dict(config.text), vision_config=as_dict(config.vision),
                                   projection_dim=config.projection_dim,
                                   logit_scale_init_value=config.logit_scale_init_value)


def load_tokenizer(name_or_path: str | os.PathLike) -> transformers.CLIPTokenizerFast:
    """The checkpoint's CLIP tokenizer (pads to the right, as CLIP was trained)."""
    directory = resolve(name_or_path)
    if not ((directory / "tokenizer.json").exists() or (directory / "vocab.json").exists()):
        raise CheckpointError(f"{directory} has no tokenizer: expected tokenizer.json or vocab.json + merges.txt.")
    return transformers.CLIPTokenizerFast.from_pretrained(directory, trust_remote_code=False)


def load_image_spec(name_or_path: str | os.PathLike) -> ImageSpec:
    """Input size, mean and std: `preprocessor_config.json` when present, else OpenAI's at the model's size."""
    directory = resolve(name_or_path)
    file = directory / "preprocessor_config.json"
    if file.exists():
        return ImageSpec.from_hf_processor(json.loads(file.read_text()))
    return ImageSpec(size=read_config(directory).vision.image_size)


def _read_flat_params(directory: Path, expected: dict[tuple[str, ...], tuple[int, ...]]) -> dict:
    index, single, msgpack, torch_bin = (directory / f for f in WEIGHT_FILES)
    if msgpack.exists() and not (index.exists() or single.exists()):
        flat = traverse_util.flatten_dict(_read_msgpack(msgpack))
        unexpected = sorted("/".join(p) for p in flat if p not in expected)
        source = msgpack
    else:
        if index.exists():
            state, source = _read_sharded(index), index
        elif single.exists():
            state, source = _read_safetensors(single), single
        elif torch_bin.exists():
            state, source = _read_torch_bin(torch_bin), torch_bin
        else:
            present = sorted(p.name for p in directory.iterdir())
            raise CheckpointError(f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}; "
                                  f"found {present}.")
        flat, unexpected = hf_layout.pt_to_flax_state(state, expected)
    _check_complete(source, flat, expected, unexpected)
    return flat


def _check_complete(source: Path, flat: dict, expected: dict, unexpected: list[str]) -> None:
    missing = ["/".join(p) for p in expected if p not in flat]
    wrong = [f"{'/'.join(p)}: file {tuple(flat[p].shape)} vs config {s}"
             for p, s in expected.items() if p in flat and tuple(flat[p].shape) != tuple(s)]
    if missing or unexpected or wrong:
        parts = [f"{name} ({len(items)}): {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if items]
        raise CheckpointError(f"{source} does not match its config.json; nothing was loaded. " + "; ".join(parts))


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e}); it may be truncated or "
                              f"corrupt: download or copy it again.") from e


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index} is not a safetensors index (a JSON object with a 'weight_map').") from e
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index.parent / shard).exists():
            raise CheckpointError(f"{index} names the shard {shard}, which is not in {index.parent}.")
        state.update(_read_safetensors(index.parent / shard))
    return state


def _read_msgpack(file: Path) -> dict:
    try:
        tree = flax.serialization.msgpack_restore(file.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on truncated input
        raise CheckpointError(f"{file} is not a readable Flax msgpack file ({e}); it may be truncated.") from e
    return tree.get("params", tree) if isinstance(tree, dict) else {}


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{file} is a PyTorch pickle; install torch to read it (with weights_only=True) or "
                              f"use a checkpoint that has model.safetensors.") from e
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise CheckpointError(f"{file} could not be read as plain tensors ({type(e).__name__}); it is corrupt or "
                              f"holds arbitrary Python objects, which are never unpickled. Convert it to "
                              f"safetensors where its source is trusted.") from e
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
