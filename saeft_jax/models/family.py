"""The model-family interface: what a family (CLIP, SigLIP, ...) provides, the loaded `Model`
the stages, trainers and evaluators work with, and the registry that picks a family from a
checkpoint directory.

A family owns everything model-specific: its towers, its checkpoint layouts in and out, its
tokenizer, its image preprocessing (`ImageSpec`), how a zero-shot head is built from its text
embeddings, and its pre-training loss. Everything else asks a `Model`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax import storage
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models import weights
from saeft_jax.models.heads import Head

FORMATS = ("hf", "open_clip")


class Family(abc.ABC):
    """One model family. Subclasses are stateless; register an instance with `register`."""

    name: str
    #: Parameters of the pre-training loss (temperature, bias), trained by FLYP and kept from weight decay.
    loss_params: tuple[str, ...] = ("logit_scale",)
    #: Top-level parameter names of the image side and the text side.
    image_keys: tuple[str, ...] = ()
    text_keys: tuple[str, ...] = ()

    @abc.abstractmethod
    def detect(self, directory: Path) -> bool:
        """Whether `directory` holds a checkpoint of this family (in any layout it reads)."""

    @abc.abstractmethod
    def read(self, directory: Path, dtype: Any, remat: bool) -> Model:
        """The model in `directory`: config, float32 parameters, tokenizer and image spec."""

    @abc.abstractmethod
    def module(self, config: Any, dtype: Any = jnp.float32, remat: bool = False) -> Any:
        """The Flax module of both towers (`encode_image`, `encode_text` methods)."""

    @abc.abstractmethod
    def image_module(self, config: Any, dtype: Any = jnp.float32, remat: bool = False) -> Any:
        """The image side alone: `apply({"params": image_params}, images, taps=())`."""

    @abc.abstractmethod
    def text_module(self, config: Any, dtype: Any = jnp.float32, remat: bool = False) -> Any:
        """The text side alone: `apply({"params": text_params}, ids)`."""

    @abc.abstractmethod
    def describe(self, config: Any) -> dict[str, int]:
        """`embed_dim`, `vision_layers`, `context_length` of a config."""

    @abc.abstractmethod
    def save(self, model: Model, params: dict, out_dir: Path, format: str) -> None:
        """Writes `params` in `format` ("hf" or "open_clip") into the empty local `out_dir`."""

    @abc.abstractmethod
    def zeroshot_head(self, text_embeddings: jax.Array, params: dict) -> Head:
        """The head from (C, T, d) text embeddings of every class under every template."""

    @abc.abstractmethod
    def pretrain_loss(
        self, image: jax.Array, text: jax.Array, scales: dict, positives: jax.Array, clamp: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """(loss, logits (B, B)) of the family's pre-training objective on (B, d) image and text
        embeddings; `scales` holds `loss_params`, `positives` (B, B) marks matching pairs; `clamp`:
        the scales within the range the family's own training keeps them in (where it has one)."""

    def same_image_tower(self, config: Any, other: Any) -> bool:
        """Whether two configs' image sides have the same architecture (WiSE-FT can mix them)."""
        return config == other

    def published_scales(self, scales: dict, clamp: bool = True) -> dict:
        """Trained `loss_params` as they are published (where the loss clamps them, clamped)."""
        return scales


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A loaded model: its family, config, float32 parameters, tokenizer and image spec.

    `encode_image` takes (B, H, W, 3) float32 pixels preprocessed as `image_spec` says and gives
    (B, d) unnormalised embeddings; `encode_text` takes (B, L) int32 ids from `tokenize`.
    """

    family: Family
    config: Any
    params: dict
    load_tokenizer: Callable[[], Any]  # read when first used: a checkpoint without one still encodes images
    image_spec: ImageSpec
    dtype: Any = jnp.float32
    remat: bool = False
    source: str = ""

    @functools.cached_property
    def tokenizer(self) -> Any:
        return self.load_tokenizer()

    @property
    def embed_dim(self) -> int:
        return self.family.describe(self.config)["embed_dim"]

    @property
    def vision_layers(self) -> int:
        return self.family.describe(self.config)["vision_layers"]

    @property
    def context_length(self) -> int:
        return self.family.describe(self.config)["context_length"]

    @property
    def module(self) -> Any:
        return self.family.module(self.config, self.dtype, self.remat)

    def image_encoder(self) -> Any:
        """The image side's Flax module; its parameters are `image_params(...)`."""
        return self.family.image_module(self.config, self.dtype, self.remat)

    def text_encoder(self) -> Any:
        """The text side's Flax module; its parameters are `text_params(...)`."""
        return self.family.text_module(self.config, self.dtype, self.remat)

    def image_params(self, params: dict | None = None) -> dict:
        params = self.params if params is None else params
        return {k: params[k] for k in self.family.image_keys}

    def text_params(self, params: dict | None = None) -> dict:
        params = self.params if params is None else params
        return {k: params[k] for k in self.family.text_keys}

    def scale_params(self, params: dict | None = None) -> dict:
        """The pre-training loss's own parameters (`Family.loss_params`)."""
        params = self.params if params is None else params
        return {k: params[k] for k in self.family.loss_params}

    def with_params(self, params: dict) -> Model:
        return dataclasses.replace(self, params=params, load_tokenizer=lambda: self.tokenizer)

    def encode_image(self, pixels: jax.Array, params: dict | None = None) -> jax.Array:
        encoder = self.image_encoder()
        return encoder.apply({"params": self.image_params(params)}, jnp.asarray(pixels, jnp.float32))

    def encode_text(self, ids: jax.Array, params: dict | None = None) -> jax.Array:
        encoder = self.text_encoder()
        return encoder.apply({"params": self.text_params(params)}, jnp.asarray(ids, jnp.int32))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """(N, context_length) int32 ids, padded to the context length as the family was trained."""
        return self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="np"
        )["input_ids"].astype(np.int32)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def zeroshot_head(self, text_embeddings: jax.Array, params: dict | None = None) -> Head:
        return self.family.zeroshot_head(text_embeddings, self.params if params is None else params)

    def pretrain_loss(
        self, image: jax.Array, text: jax.Array, scales: dict, positives: jax.Array | None = None, *, clamp: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        positives = jnp.eye(image.shape[0], dtype=bool) if positives is None else positives
        return self.family.pretrain_loss(image, text, scales, positives, clamp)

    def published_scales(self, scales: dict, clamp: bool = True) -> dict:
        return self.family.published_scales(scales, clamp)

    def same_image_tower(self, other: Model) -> bool:
        """Whether WiSE-FT can mix this model's image side with `other`'s."""
        return self.family.name == other.family.name and self.family.same_image_tower(self.config, other.config)

    def save(
        self, out_dir: str | os.PathLike, format: str = "hf", params: dict | None = None, *, overwrite: bool = False
    ) -> Any:
        """Writes the model (with `params` in place of its own, when given), its tokenizer and image
        settings as a checkpoint of `format` ("hf": transformers' layout; "open_clip": the
        directory open_clip's `create_model("local-dir:...")` opens), atomically. An existing
        `out_dir` is refused unless `overwrite` (then it is replaced whole)."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
        if not overwrite and storage.path(out_dir).exists():
            raise weights.CheckpointError(
                f"{out_dir} already exists; save into a new directory (or pass overwrite=True to replace it whole)."
            )
        params = jax.device_get(self.params if params is None else params)
        return weights.publish_dir(out_dir, lambda staging: self.family.save(self, params, staging, format))


FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    """Adds a family to those `load` recognises (in order; the first that detects wins)."""
    FAMILIES.append(family)
    return family


def family_of(directory: Path) -> Family:
    """The family whose checkpoint `directory` holds."""
    for family in FAMILIES:
        if family.detect(directory):
            return family
    config = directory / "config.json"
    found = (
        f"its config.json describes model_type {weights.read_json(config).get('model_type')!r}"
        if config.exists()
        else "it has neither config.json nor open_clip_config.json"
    )
    raise weights.CheckpointError(
        f"{directory} holds no checkpoint of a known model family ({', '.join(f.name for f in FAMILIES)}): {found}. "
        f"Expected a Hugging Face checkpoint whose config.json has one of those model types (SigLIP 2 with "
        f"model_type 'siglip'), or an open_clip directory (open_clip_config.json with open_clip_model.safetensors "
        f"or open_clip_pytorch_model.bin)."
    )


def load(name_or_path: str | os.PathLike, dtype: Any = jnp.float32, *, remat: bool = False) -> Model:
    """The model at a hub id, local directory or gs:// URL; family and layout are detected.

    Parameters are float32 whatever the file stores; `dtype` is the compute dtype.
    """
    directory = weights.resolve(name_or_path)
    model = family_of(directory).read(directory, dtype, remat)
    return dataclasses.replace(model, source=str(name_or_path))


def constant(value: Any) -> Callable[[], Any]:
    """A `load_tokenizer` for a tokenizer already in hand (or None: the model has none)."""
    return lambda: value
