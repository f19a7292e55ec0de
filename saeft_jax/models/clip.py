"""CLIP image and text towers as pure-functional Flax linen modules (Hugging Face Flax names).

The parameter tree is the one of Hugging Face's (retired) Flax CLIP, so a checkpoint converts
by renaming and transposing only (see `saeft_jax.hf`). The math follows transformers' PyTorch
`CLIPModel` exactly: pre-norm blocks, `pre_layrnorm`, class-token pooling through
`post_layernorm`, text pooling at the first end-of-text token (or at the largest token id for
legacy configs whose `eos_token_id` is 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """Shape and numerics of one transformer tower (fields named as in transformers)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
    """The vision tower: a ViT over `image_size` square images cut in `patch_size` patches."""

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
    """The causal text tower; ids of the special tokens as the tokenizer assigns them."""

    vocab_size: int = 49408
    max_position_embeddings: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1
    pooling: str = "eos"  # "eos": the first end-of-text token; "argmax": the largest id (OpenAI, open_clip); "last"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers, the shared embedding size, and the initial logit scale."""

    vision: VisionConfig
    text: TextConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function transformers calls `name`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections, as transformers has it."""

    config: TowerConfig
    causal: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        heads = self.config.num_attention_heads
        head_dim = self.config.hidden_size // heads
        dense = lambda name: nn.Dense(self.config.hidden_size, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(*t.shape[:-1], heads, head_dim)
        q, k, v = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
        return dense("out_proj")(attend(q, k, v, self.causal).reshape(x.shape))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Softmax attention over (B, T, heads, head_dim) inputs, the same math on every backend.

    Accelerators use `jax.nn.dot_product_attention`, which dispatches to fused kernels. XLA:CPU
    runs its generic form about 2x slower than batched matmuls laid out heads-first, so the
    CPU takes that form (softmax in float32, as the fused kernels do).
    """
    if jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)).astype(jnp.float32) * q.shape[-1] ** -0.5
    if causal:
        length = scores.shape[-1]
        scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.matmul(weights, v).transpose(0, 2, 1, 3)


class EncoderLayer(nn.Module):
    """One pre-norm residual block: attention then MLP."""

    config: TowerConfig
    causal: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name)
        x = x + Attention(cfg, self.causal, self.dtype, name="self_attn")(norm("layer_norm1")(x))
        return x + MLP(cfg, self.dtype, name="mlp")(norm("layer_norm2")(x))


class MLP(nn.Module):
    """fc1 -> activation -> fc2."""

    config: TowerConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.config.intermediate_size, dtype=self.dtype, name="fc1")(x)
        x = activation(self.config.hidden_act)(x)
        return nn.Dense(self.config.hidden_size, dtype=self.dtype, name="fc2")(x)


class LayerStack(nn.Module):
    """The blocks, named "0", "1", ... as in the HF Flax tree; can record chosen outputs.

    `taps` lists block counts after which the hidden states are returned: 0 is the input of the
    first block, `i` the output of block `i`.
    """

    config: TowerConfig
    causal: bool
    dtype: Dtype
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, taps: Sequence[int] = ()) -> tuple[jax.Array, list[jax.Array]]:
        block = nn.remat(EncoderLayer) if self.remat else EncoderLayer
        tapped = [x] if 0 in taps else []
        for i in range(self.config.num_hidden_layers):
            x = block(self.config, self.causal, self.dtype, name=str(i))(x)
            if i + 1 in taps:
                tapped.append(x)
        return x, tapped


class Encoder(nn.Module):
    """Wraps the stack so that parameter paths read `encoder/layers/<i>/...`."""

    config: TowerConfig
    causal: bool
    dtype: Dtype
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, taps: Sequence[int] = ()) -> tuple[jax.Array, list[jax.Array]]:
        return LayerStack(self.config, self.causal, self.dtype, self.remat, name="layers")(x, taps)


def patch_embedding(cfg: VisionConfig, dtype: Dtype, images: jax.Array, *, use_bias: bool) -> jax.Array:
    """(B, patches, width): the patch convolution (`patch_embedding`, a submodule of the calling
    module) of NHWC images of the configured shape, flattened row by row."""
    if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
        raise ValueError(
            f"encode_image expects NHWC images of shape (B, {cfg.image_size}, {cfg.image_size}, "
            f"{cfg.num_channels}); got {images.shape}. Resize with saeft_jax.data.preprocess."
        )
    p = cfg.patch_size
    patches = nn.Conv(
        cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=use_bias, dtype=dtype, name="patch_embedding"
    )(images)
    return patches.reshape(patches.shape[0], -1, cfg.hidden_size)


class VisionEmbeddings(nn.Module):
    """Patch convolution, class token and learned positions."""

    config: VisionConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        patches = patch_embedding(cfg, self.dtype, images, use_bias=False)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (patches.shape[0], 1, cfg.hidden_size))
        tokens = jnp.concatenate([cls, patches], axis=1)
        positions = nn.Embed(tokens.shape[1], cfg.hidden_size, dtype=self.dtype, name="position_embedding")
        return tokens + positions(jnp.arange(tokens.shape[1]))


class VisionTransformer(nn.Module):
    """The image tower up to `post_layernorm` of the class token."""

    config: VisionConfig
    dtype: Dtype
    remat: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[int] = ()) -> tuple[jax.Array, list[jax.Array]]:
        cfg = self.config
        norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=name)
        x = VisionEmbeddings(cfg, self.dtype, name="embeddings")(images.astype(self.dtype))
        x = norm("pre_layrnorm")(x)
        x, tapped = Encoder(cfg, False, self.dtype, self.remat, name="encoder")(x, taps)
        return norm("post_layernorm")(x[:, 0]), tapped


class TextTransformer(nn.Module):
    """The text tower up to `final_layer_norm` of the pooled token (CLIP: causal, the end-of-text
    token; SigLIP: bidirectional, the last position, then a linear `head` of `head_size` outputs)."""

    config: TextConfig
    dtype: Dtype
    remat: bool = False
    causal: bool = True
    head_size: int = 0  # 0: no head (CLIP projects outside the tower)

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        if input_ids.shape[-1] > cfg.max_position_embeddings:
            raise ValueError(
                f"token sequences are at most {cfg.max_position_embeddings} long; got {input_ids.shape[-1]}"
            )
        x = TextEmbeddings(cfg, self.dtype, name="embeddings")(input_ids)
        x, _ = Encoder(cfg, self.causal, self.dtype, self.remat, name="encoder")(x)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        pooled = x[jnp.arange(x.shape[0]), pooling_index(input_ids, cfg.eos_token_id, cfg.pooling)]
        return nn.Dense(self.head_size, dtype=self.dtype, name="head")(pooled) if self.head_size else pooled


class TextEmbeddings(nn.Module):
    """Token plus position embeddings of the text tower."""

    config: TextConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="token_embedding")
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype, name="position_embedding")
        return tokens(input_ids) + positions(jnp.arange(input_ids.shape[-1]))


def pooling_index(input_ids: jax.Array, eos_token_id: int, pooling: str = "eos") -> jax.Array:
    """Where each sequence is pooled: the first end-of-text token, the largest id, or (SigLIP) the last position.

    OpenAI's code and open_clip take the largest id, the end-of-text token of the OpenAI vocabulary;
    transformers does so for configs written before its PR #24773, which say `eos_token_id == 2`
    (`clip_family.config_from_hf` reads those as "argmax"). Both rules are kept so that every
    published checkpoint pools as upstream.
    """
    if pooling == "last":
        return jnp.full(input_ids.shape[:1], input_ids.shape[-1] - 1)
    if pooling == "argmax":
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIP(nn.Module):
    """Both towers and their projections; call `encode_image` or `encode_text` through `apply`.

    `dtype` is the compute dtype (e.g. bfloat16); parameters keep the dtype they are given
    (float32 from `init_params` and `saeft_jax.hf.load_clip`), so bf16 runs cast per op.
    `remat` recomputes each block's activations in the backward pass.
    """

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        cfg = self.config
        self.vision_model = VisionTransformer(cfg.vision, self.dtype, self.remat)
        self.text_model = TextTransformer(cfg.text, self.dtype, self.remat)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), ())

    def __call__(self, images: jax.Array, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Both embeddings (used to initialise every parameter at once)."""
        return self.encode_image(images), self.encode_text(input_ids)

    def encode_image(self, images: jax.Array, taps: Sequence[int] = ()) -> Any:
        """Projected, unnormalized image embeddings (B, projection_dim) of CLIP-normalized NHWC images.

        With `taps` (block counts, see `LayerStack`) also returns the token features there.
        """
        return _encode_image(self.vision_model, self.visual_projection, images, taps)

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        """Projected, unnormalized text embeddings (B, projection_dim) of int32 token ids."""
        return self.text_projection(self.text_model(input_ids)).astype(jnp.float32)


class ImageEncoder(nn.Module):
    """The image side of `CLIP` alone: `vision_model` + `visual_projection`, the same names, so
    `image_params(clip_params)` is its parameter tree. What fine-tuning trains."""

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        self.vision_model = VisionTransformer(self.config.vision, self.dtype, self.remat)
        self.visual_projection = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype)

    def __call__(self, images: jax.Array, taps: Sequence[int] = ()) -> Any:
        """As `CLIP.encode_image`."""
        return _encode_image(self.vision_model, self.visual_projection, images, taps)


class TextEncoder(nn.Module):
    """The text side of `CLIP` alone: `text_model` + `text_projection`, the same names, so
    `text_params(clip_params)` is its parameter tree. What FLYP trains besides the image side."""

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        self.text_model = TextTransformer(self.config.text, self.dtype, self.remat)
        self.text_projection = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """As `CLIP.encode_text`."""
        return self.text_projection(self.text_model(input_ids)).astype(jnp.float32)


IMAGE_PARAMS = ("vision_model", "visual_projection")
TEXT_PARAMS = ("text_model", "text_projection")


def image_encoder(model: CLIP) -> ImageEncoder:
    """The `ImageEncoder` of `model` (same config, dtype and remat)."""
    return ImageEncoder(model.config, model.dtype, model.remat)


def image_params(clip_params: dict) -> dict:
    """The part of a CLIP parameter tree that `ImageEncoder` (and `encode_image`) uses."""
    return {name: clip_params[name] for name in IMAGE_PARAMS}


def text_encoder(model: CLIP) -> TextEncoder:
    """The `TextEncoder` of `model` (same config, dtype and remat)."""
    return TextEncoder(model.config, model.dtype, model.remat)


def text_params(clip_params: dict) -> dict:
    """The part of a CLIP parameter tree that `TextEncoder` (and `encode_text`) uses."""
    return {name: clip_params[name] for name in TEXT_PARAMS}


def _encode_image(vision_model: nn.Module, projection: nn.Module, images: jax.Array, taps: Sequence[int]) -> Any:
    pooled, tapped = vision_model(images, taps)
    embeddings = projection(pooled).astype(jnp.float32)
    return (embeddings, tapped) if taps else embeddings


def init_params(model: CLIP, rng: jax.Array) -> dict:
    """Randomly initialised parameters of `model` (float32)."""
    v, t = model.config.vision, model.config.text
    images = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    ids = jnp.zeros((1, t.max_position_embeddings), jnp.int32)
    return jax.jit(model.init)(rng, images, ids)["params"]  # jit: op-by-op init is ~10x slower


def param_shapes(model: CLIP) -> dict:
    """The parameter tree of `model` as `jax.ShapeDtypeStruct`s, computed without allocating."""
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
