"""The SigLIP family (SigLIP and fixed-resolution SigLIP 2 in transformers' `SiglipModel` layout):
its towers as Flax modules with transformers' parameter names, its checkpoints in and out, its
tokenizer and image settings, zero-shot head (with the learned bias) and sigmoid loss.

The math follows transformers' PyTorch `SiglipModel`: no class token and no pre-norm in the image
tower, a patch convolution with bias, `post_layernorm` over every token, then the attention-pooling
head (one learned probe attending over the tokens, LayerNorm, MLP, residual); the text tower is not
causal and pools its last position (prompts are padded to the context length, as SigLIP was
trained) through a linear `head`. Logits are exp(logit_scale) * cosine + logit_bias.
NaFlex SigLIP 2 (`model_type` "siglip2": variable resolution and aspect) is not covered.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import traverse_util

from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models import pt_layout, weights
from saeft_jax.models.clip import (
    MLP,
    Encoder,
    TextConfig,
    TextTransformer,
    TowerConfig,
    VisionConfig,
    attend,
    patch_embedding,
)
from saeft_jax.models.clip_family import save_tokenizer
from saeft_jax.models.family import Family, Model
from saeft_jax.models.heads import Head
from saeft_jax.models.weights import CheckpointError

Dtype = Any
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")
IMAGE_PARAMS = ("vision_model",)
TEXT_PARAMS = ("text_model",)
_TOWER_FIELDS = [f.name for f in TowerConfig.__dataclass_fields__.values()]


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Both towers; `projection_size` is the text head's output (the image embedding's width)."""

    vision: VisionConfig
    text: TextConfig
    projection_size: int

    @property
    def embed_dim(self) -> int:
        return self.vision.hidden_size


class VisionEmbeddings(nn.Module):
    """Patch convolution (with bias) plus learned positions; no class token."""

    config: VisionConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        patches = patch_embedding(cfg, self.dtype, images, use_bias=True)
        positions = nn.Embed(patches.shape[1], cfg.hidden_size, dtype=self.dtype, name="position_embedding")
        return patches + positions(jnp.arange(patches.shape[1]))


class PoolingAttention(nn.Module):
    """`torch.nn.MultiheadAttention` (fused `in_proj_weight`, batch first) of queries over keys."""

    config: VisionConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, queries: jax.Array, tokens: jax.Array) -> jax.Array:
        width, heads = self.config.hidden_size, self.config.num_attention_heads
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-1, out_axis=-2)
        w = self.param("in_proj_weight", init, (3 * width, width)).astype(self.dtype)
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * width,)).astype(self.dtype)
        (wq, wk, wv), (bq, bk, bv) = jnp.split(w, 3), jnp.split(b, 3)
        split = lambda t: t.reshape(*t.shape[:-1], heads, width // heads)
        q, k, v = split(queries @ wq.T + bq), split(tokens @ wk.T + bk), split(tokens @ wv.T + bv)
        out = attend(q, k, v, False).reshape(queries.shape)
        return nn.Dense(width, dtype=self.dtype, name="out_proj")(out)


class AttentionPoolingHead(nn.Module):
    """SigLIP's image pooling: a learned probe attends over the tokens, then LayerNorm + MLP with a residual."""

    config: VisionConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.config
        probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, cfg.hidden_size)).astype(self.dtype)
        x = PoolingAttention(cfg, self.dtype, name="attention")(
            jnp.broadcast_to(probe, (tokens.shape[0], 1, cfg.hidden_size)), tokens
        )
        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layernorm")(x)
        return (x + MLP(cfg, self.dtype, name="mlp")(y))[:, 0]


class VisionTransformer(nn.Module):
    """The image tower up to the pooled embedding; `taps` as `clip.LayerStack`'s."""

    config: VisionConfig
    dtype: Dtype
    remat: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[int] = ()) -> tuple[jax.Array, list[jax.Array]]:
        cfg = self.config
        x = VisionEmbeddings(cfg, self.dtype, name="embeddings")(images.astype(self.dtype))
        x, tapped = Encoder(cfg, False, self.dtype, self.remat, name="encoder")(x, taps)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(x)
        return AttentionPoolingHead(cfg, self.dtype, name="head")(x), tapped


def text_transformer(config: SiglipConfig, dtype: Dtype, remat: bool, **kwargs) -> TextTransformer:
    """SigLIP's text tower: CLIP's layers, bidirectional, the last position through a linear `head`."""
    text = dataclasses.replace(config.text, pooling="last")
    return TextTransformer(text, dtype, remat, causal=False, head_size=config.projection_size, **kwargs)


class ImageEncoder(nn.Module):
    """The image side: `vision_model`; float32 (B, d) embeddings (and tapped token states)."""

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[int] = ()) -> Any:
        pooled, tapped = VisionTransformer(self.config.vision, self.dtype, self.remat, name="vision_model")(
            images, taps
        )
        pooled = pooled.astype(jnp.float32)
        return (pooled, tapped) if taps else pooled


class TextEncoder(nn.Module):
    """The text side: `text_model`; float32 (B, d) embeddings of int32 ids."""

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return text_transformer(self.config, self.dtype, self.remat, name="text_model")(input_ids).astype(jnp.float32)


class Siglip(nn.Module):
    """Both towers, `logit_scale` and `logit_bias` (shape (1,), as transformers stores them)."""

    config: SiglipConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = VisionTransformer(cfg.vision, self.dtype, self.remat)
        self.text_model = text_transformer(cfg, self.dtype, self.remat)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(10.0)), (1,))
        self.logit_bias = self.param("logit_bias", nn.initializers.constant(-10.0), (1,))

    def __call__(self, images: jax.Array, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(input_ids)

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.vision_model(images)[0].astype(jnp.float32)

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        return self.text_model(input_ids).astype(jnp.float32)


def init_params(config: SiglipConfig, rng: jax.Array) -> dict:
    """Randomly initialised float32 parameters (logit scale ln 10 and bias -10, as SigLIP starts)."""
    model = Siglip(config)
    v, t = config.vision, config.text
    images = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    ids = jnp.zeros((1, t.max_position_embeddings), jnp.int32)
    return jax.jit(model.init)(rng, images, ids)["params"]


def sigmoid_loss(
    image: jax.Array, text: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, positives: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(loss, logits): SigLIP's pairwise sigmoid loss of (B, d) image and text embeddings; logits
    (B, B, image rows) are exp(logit_scale) * cosine + logit_bias; every pair is a binary
    problem, matching (`positives`, default the diagonal) against not; the loss is the sum over
    pairs divided by B."""
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    logits = jnp.exp(jnp.reshape(logit_scale, ())) * unit(image) @ unit(text).T + jnp.reshape(logit_bias, ())
    same = jnp.eye(logits.shape[0], dtype=bool) if positives is None else positives
    signs = jnp.where(same, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0], logits


class SiglipFamily(Family):
    """SigLIP: attention-pooled ViT, bidirectional text tower, sigmoid loss with a learned bias."""

    name = "siglip"
    loss_params = ("logit_scale", "logit_bias")
    image_keys = IMAGE_PARAMS
    text_keys = TEXT_PARAMS

    def detect(self, directory: Path) -> bool:
        file = directory / "config.json"
        return file.exists() and weights.read_json(file).get("model_type") in ("siglip", "siglip2")

    def read(self, directory: Path, dtype: Any, remat: bool) -> Model:
        config = read_hf_config(directory)
        expected = {
            p: s.shape
            for p, s in traverse_util.flatten_dict(
                jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
            ).items()
        }
        state, file = weights.read_state(directory, HF_WEIGHTS)
        flat = weights.flax_params(state, expected, file)
        params = traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})
        return Model(self, config, params, lambda: _tokenizer(directory), _image_spec(directory, config), dtype, remat)

    def module(self, config: SiglipConfig, dtype: Any = jnp.float32, remat: bool = False) -> Siglip:
        return Siglip(config, dtype, remat)

    def image_module(self, config: SiglipConfig, dtype: Any = jnp.float32, remat: bool = False) -> ImageEncoder:
        return ImageEncoder(config, dtype, remat)

    def text_module(self, config: SiglipConfig, dtype: Any = jnp.float32, remat: bool = False) -> TextEncoder:
        return TextEncoder(config, dtype, remat)

    def describe(self, config: SiglipConfig) -> dict[str, int]:
        return {
            "embed_dim": config.embed_dim,
            "vision_layers": config.vision.num_hidden_layers,
            "context_length": config.text.max_position_embeddings,
        }

    def same_image_tower(self, config: SiglipConfig, other: SiglipConfig) -> bool:
        return config.vision == other.vision

    def save(self, model: Model, params: dict, out_dir: Path, format: str) -> None:
        if format != "hf":
            raise CheckpointError(
                "A SigLIP model is saved in transformers' layout only (format='hf'); open_clip's "
                "layout is written for CLIP-family models."
            )
        flat = {p: np.asarray(v, np.float32) for p, v in traverse_util.flatten_dict(params).items()}
        weights.save_safetensors(out_dir / "model.safetensors", pt_layout.flax_to_pt_state(flat))
        config_to_hf(model.config).save_pretrained(out_dir)
        (out_dir / "preprocessor_config.json").write_text(json.dumps(model.image_spec.hf_processor_config(), indent=2))
        save_tokenizer(model, out_dir)

    def zeroshot_head(self, text_embeddings: jax.Array, params: dict) -> Head:
        unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        w = unit(jnp.mean(unit(text_embeddings), axis=1)) * jnp.exp(jnp.reshape(params["logit_scale"], ()))
        return {"W": w, "b": jnp.full(w.shape[0], jnp.reshape(params["logit_bias"], ()), w.dtype)}

    def pretrain_loss(
        self, image: jax.Array, text: jax.Array, scales: dict, positives: jax.Array, clamp: bool = True
    ) -> tuple[jax.Array, jax.Array]:  # SigLIP clamps nothing
        return sigmoid_loss(image, text, scales["logit_scale"], scales["logit_bias"], positives)


def read_hf_config(directory: Path) -> SiglipConfig:
    """Our `SiglipConfig` from a transformers `config.json` (model_type "siglip")."""
    if weights.read_json(directory / "config.json").get("model_type") == "siglip2":
        raise CheckpointError(
            f"{directory} holds a NaFlex SigLIP 2 (model_type 'siglip2': variable resolution), "
            f"which this project does not cover; use a fixed-resolution SigLIP 2 checkpoint "
            f"(e.g. google/siglip2-base-patch16-224, model_type 'siglip')."
        )
    try:
        hf = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)  # never run its code
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{directory}/config.json is not a usable SigLIP config ({error}).") from error
    v, t = hf.vision_config, hf.text_config
    if not getattr(v, "vision_use_head", True):
        raise CheckpointError(
            f"{directory}/config.json has vision_use_head false: its image tower has no pooled "
            f"embedding, so it cannot be fine-tuned or classify."
        )
    tower = lambda c: {f: getattr(c, f) for f in _TOWER_FIELDS}
    projection = getattr(t, "projection_size", None) or t.hidden_size
    if projection != v.hidden_size:
        raise CheckpointError(
            f"{directory}/config.json: the text head's projection_size {projection} differs from "
            f"the image width {v.hidden_size}; the two embeddings must share a space."
        )
    return SiglipConfig(
        vision=VisionConfig(**tower(v), image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels),
        text=TextConfig(
            **tower(t),
            vocab_size=t.vocab_size,
            max_position_embeddings=t.max_position_embeddings,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
        ),
        projection_size=projection,
    )


def config_to_hf(config: SiglipConfig) -> transformers.SiglipConfig:
    """transformers' `SiglipConfig` for `config`."""
    text = {k: v for k, v in vars(config.text).items() if k != "pooling"}
    return transformers.SiglipConfig(
        text_config={**text, "projection_size": config.projection_size},
        vision_config={**vars(config.vision), "vision_use_head": True},
    )


def _tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    try:
        return transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError, ImportError) as e:
        raise CheckpointError(
            f"{directory}: its tokenizer could not be loaded ({e}). SigLIP checkpoints carry "
            f"tokenizer_config.json with spiece.model (SigLIP, needs the sentencepiece package) "
            f"or tokenizer.json (SigLIP 2)."
        ) from e


def _image_spec(directory: Path, config: SiglipConfig) -> ImageSpec:
    """`preprocessor_config.json` when present, else SigLIP's: a bicubic squash, mean and std 0.5."""
    default = ImageSpec(config.vision.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", "bicubic")
    return weights.image_spec(directory, config.vision.image_size, default)
