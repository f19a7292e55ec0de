"""Hugging Face CLIP checkpoints as `(module, params)`: thin aliases over `saeft_jax.models` (the
CLIP family), kept for callers of the first releases. New code uses `models.load` and `Model.save`."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import transformers
from etils import epath

from saeft_jax import models
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models import clip_family, weights
from saeft_jax.models.clip import CLIP
from saeft_jax.models.clip_family import config_to_hf  # noqa: F401  (a public name of this module)
from saeft_jax.models.family import constant
from saeft_jax.models.weights import CheckpointError  # noqa: F401  (a public name of this module)


def load_clip(name_or_path: str | os.PathLike, dtype: Any = jnp.float32, *, remat: bool = False) -> tuple[CLIP, dict]:
    """`models.load` of a CLIP-family checkpoint, as `(CLIP module, float32 params)`."""
    model = models.load(name_or_path, dtype, remat=remat)
    if model.family.name != "clip":
        raise CheckpointError(
            f"{name_or_path} holds a {model.family.name} model; load_clip reads CLIP checkpoints "
            f"only (use saeft_jax.models.load for every family)."
        )
    return model.module, model.params


def save_clip(
    model: CLIP, params: dict, out_dir: str | os.PathLike, *, tokenizer: Any = None, image_spec: ImageSpec | None = None
) -> epath.Path:
    """`Model.save(out_dir, format="hf")` of a CLIP module and its parameters."""
    spec = image_spec or ImageSpec(size=model.config.vision.image_size)
    family = clip_family.ClipFamily()
    return models.Model(family, model.config, params, constant(tokenizer), spec).save(out_dir, "hf", overwrite=True)


def load_tokenizer(name_or_path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of a CLIP checkpoint in transformers' layout."""
    return clip_family.load_hf_tokenizer(weights.resolve(name_or_path))


def load_image_spec(name_or_path: str | os.PathLike) -> ImageSpec:
    """The image settings of a CLIP checkpoint in transformers' layout."""
    directory = weights.resolve(name_or_path)
    return clip_family.hf_image_spec(directory, clip_family.read_hf_config(directory))
