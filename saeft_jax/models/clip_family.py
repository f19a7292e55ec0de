"""The CLIP family: OpenAI-architecture CLIP in transformers' layout (`config.json` with model_type
"clip") and in open_clip's (`open_clip_config.json` + `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`), its tokenizer, image settings, zero-shot head and contrastive loss.

open_clip's state dict differs from transformers' in names only, except the fused attention
projection (`in_proj_weight` = q, k, v stacked) and the projections (`proj` is x @ W, PyTorch
Linear is x @ W^T); `open_clip_state` / `hf_state` convert in both directions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers
from flax import traverse_util

from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models import pt_layout, weights
from saeft_jax.models.clip import (
    CLIP,
    IMAGE_PARAMS,
    TEXT_PARAMS,
    CLIPConfig,
    ImageEncoder,
    TextConfig,
    TextEncoder,
    TowerConfig,
    VisionConfig,
    param_shapes,
)
from saeft_jax.models.family import Family, Model
from saeft_jax.models.heads import Head, zeroshot_weights
from saeft_jax.models.weights import CheckpointError

HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")
HF_FLAX_WEIGHTS = "flax_model.msgpack"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_TOKENIZER = "openai/clip-vit-base-patch32"  # CLIP's BPE, for open_clip directories without tokenizer files
MAX_LOGIT_SCALE = math.log(100.0)
_TOWER_FIELDS = [f.name for f in TowerConfig.__dataclass_fields__.values()]
# open_clip options that change the architecture away from OpenAI's; any of them set is refused
_OPEN_CLIP_VISION_DEFAULTS = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "timm_model_name": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "head_width": 64,
    "mlp_ratio": 4.0,
}
_OPEN_CLIP_TEXT_DEFAULTS = {
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "proj_bias": False,
    "proj_type": "linear",
    "hf_model_name": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "mlp_ratio": 4.0,
}
_OPEN_CLIP_ARCHITECTURE = set(_OPEN_CLIP_VISION_DEFAULTS) - {"head_width", "mlp_ratio"}
_OPEN_CLIP_MODEL_DEFAULTS = {"custom_text": False, "init_logit_bias": None, "multimodal_cfg": None}


class ClipFamily(Family):
    """OpenAI-architecture CLIP: class-token ViT, causal text tower, softmax contrastive loss."""

    name = "clip"
    loss_params = ("logit_scale",)
    image_keys = IMAGE_PARAMS
    text_keys = TEXT_PARAMS

    def detect(self, directory: Path) -> bool:
        open_clip_only = (directory / OPEN_CLIP_CONFIG).exists() and not (directory / "config.json").exists()
        return open_clip_only or _model_type(directory) == "clip"

    def read(self, directory: Path, dtype: Any, remat: bool) -> Model:
        if not (directory / "config.json").exists():
            return _read_open_clip(self, directory, dtype, remat)
        config = read_hf_config(directory)
        params = _read_hf_params(directory, CLIP(config))
        return Model(
            self, config, params, lambda: load_hf_tokenizer(directory), hf_image_spec(directory, config), dtype, remat
        )

    def module(self, config: CLIPConfig, dtype: Any = jnp.float32, remat: bool = False) -> CLIP:
        return CLIP(config, dtype=dtype, remat=remat)

    def image_module(self, config: CLIPConfig, dtype: Any = jnp.float32, remat: bool = False) -> ImageEncoder:
        return ImageEncoder(config, dtype, remat)

    def text_module(self, config: CLIPConfig, dtype: Any = jnp.float32, remat: bool = False) -> TextEncoder:
        return TextEncoder(config, dtype, remat)

    def describe(self, config: CLIPConfig) -> dict[str, int]:
        return {
            "embed_dim": config.projection_dim,
            "vision_layers": config.vision.num_hidden_layers,
            "context_length": config.text.max_position_embeddings,
        }

    def same_image_tower(self, config: CLIPConfig, other: CLIPConfig) -> bool:
        return (config.vision, config.projection_dim) == (other.vision, other.projection_dim)

    def save(self, model: Model, params: dict, out_dir: Path, format: str) -> None:
        flat = {p: np.asarray(v, np.float32) for p, v in traverse_util.flatten_dict(params).items()}
        state = pt_layout.flax_to_pt_state(flat)
        if format == "open_clip":
            (out_dir / OPEN_CLIP_CONFIG).write_text(
                json.dumps(open_clip_config(model.config, model.image_spec), indent=2)
            )
            weights.save_safetensors(out_dir / OPEN_CLIP_WEIGHTS[0], open_clip_state(state, model.config))
        else:
            weights.save_safetensors(out_dir / HF_WEIGHTS[1], state)
            config_to_hf(model.config).save_pretrained(out_dir)
            (out_dir / "preprocessor_config.json").write_text(
                json.dumps(model.image_spec.hf_processor_config(), indent=2)
            )
        save_tokenizer(model, out_dir)

    def published_scales(self, scales: dict, clamp: bool = True) -> dict:
        scale = np.asarray(scales["logit_scale"])
        return {"logit_scale": np.clip(scale, 0.0, MAX_LOGIT_SCALE) if clamp else scale}

    def zeroshot_head(self, text_embeddings: jax.Array, params: dict) -> Head:
        return zeroshot_weights(text_embeddings, params["logit_scale"])

    def pretrain_loss(
        self, image: jax.Array, text: jax.Array, scales: dict, positives: jax.Array, clamp: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        return contrastive_loss(
            image, text, scales["logit_scale"], positives, max_logit_scale=MAX_LOGIT_SCALE if clamp else None
        )


def contrastive_loss(
    image: jax.Array,
    text: jax.Array,
    logit_scale: jax.Array,
    positives: jax.Array | None = None,
    *,
    max_logit_scale: float | None = MAX_LOGIT_SCALE,
) -> tuple[jax.Array, jax.Array]:
    """(loss, logits): CLIP's symmetric cross-entropy of (B, d) image and text embeddings; logits
    (B, B) are exp(logit_scale clamped to [0, max_logit_scale]) * cosine (None: unclamped, as FLYP's
    code). `positives` (B, B) marks matching pairs (default: row i of each), each row's target
    spread evenly over its positives."""
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    scale = logit_scale if max_logit_scale is None else jnp.clip(logit_scale, 0.0, max_logit_scale)
    logits = jnp.exp(scale) * unit(image) @ unit(text).T
    same = jnp.eye(logits.shape[0]) if positives is None else positives.astype(jnp.float32)
    per_image = optax.softmax_cross_entropy(logits, same / same.sum(-1, keepdims=True))
    per_text = optax.softmax_cross_entropy(logits.T, same.T / same.T.sum(-1, keepdims=True))
    return (jnp.mean(per_image) + jnp.mean(per_text)) / 2, logits


def save_tokenizer(model: Model, out_dir: Path) -> None:
    """The model's tokenizer files beside its weights, when it has a tokenizer."""
    try:
        tokenizer = model.tokenizer
    except CheckpointError:  # a checkpoint without tokenizer files is saved without them
        return
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


# --- transformers' layout ---------------------------------------------------------------------


def _model_type(directory: Path) -> str | None:
    file = directory / "config.json"
    return weights.read_json(file).get("model_type") if file.exists() else None


def read_hf_config(directory: Path) -> CLIPConfig:
    """Our `CLIPConfig` from a transformers `config.json` (model_type "clip")."""
    if not (directory / "config.json").exists():
        raise CheckpointError(
            f"{directory} has no config.json; a CLIP checkpoint holds config.json and one of "
            f"{', '.join(HF_WEIGHTS + (HF_FLAX_WEIGHTS,))}."
        )
    try:
        hf = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)  # never run its code
    except (ValueError, OSError) as error:  # unreadable JSON, no model_type, ...
        raise CheckpointError(
            f"{directory}/config.json is not a usable model config ({error}); a CLIP checkpoint "
            f"holds the config.json that CLIPModel.save_pretrained writes."
        ) from error
    if not isinstance(hf, transformers.CLIPConfig):
        raise CheckpointError(
            f"{directory}/config.json describes a {type(hf).__name__} (model_type "
            f"{hf.model_type!r}); the CLIP family reads CLIPModel checkpoints (model_type 'clip')."
        )
    return config_from_hf(hf)


def config_from_hf(hf: transformers.CLIPConfig) -> CLIPConfig:
    """The fields of transformers' `CLIPConfig` that change the math (and the token ids)."""
    tower = lambda c: {f: getattr(c, f) for f in _TOWER_FIELDS}
    v, t = hf.vision_config, hf.text_config
    return CLIPConfig(
        vision=VisionConfig(**tower(v), image_size=v.image_size, patch_size=v.patch_size, num_channels=v.num_channels),
        text=TextConfig(
            **tower(t),
            vocab_size=t.vocab_size,
            max_position_embeddings=t.max_position_embeddings,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
            pooling="argmax" if t.eos_token_id == 2 else "eos",
        ),
        projection_dim=hf.projection_dim,
        logit_scale_init_value=hf.logit_scale_init_value,
    )


def config_to_hf(config: CLIPConfig) -> transformers.CLIPConfig:
    """transformers' `CLIPConfig` for `config` (argmax pooling written as transformers' legacy
    `eos_token_id == 2`, which it pools the same way)."""
    text = {k: v for k, v in vars(config.text).items() if k != "pooling"}
    if config.text.pooling == "argmax":
        text["eos_token_id"] = 2
    elif config.text.eos_token_id == 2:
        raise CheckpointError(
            "this CLIP pools at its end-of-text token, id 2, which transformers' CLIPConfig "
            "reads as the legacy rule 'pool at the largest id'; save it with format='open_clip'."
        )
    return transformers.CLIPConfig(
        text_config={**text, "projection_dim": config.projection_dim},
        vision_config={**vars(config.vision), "projection_dim": config.projection_dim},
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def _expected(module: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {p: s.shape for p, s in traverse_util.flatten_dict(param_shapes(module)).items()}


def _read_hf_params(directory: Path, module: CLIP) -> dict:
    expected = _expected(module)
    if (directory / HF_FLAX_WEIGHTS).exists() and not any((directory / f).exists() for f in HF_WEIGHTS[:2]):
        file = directory / HF_FLAX_WEIGHTS
        flat = traverse_util.flatten_dict(_read_msgpack(file))
        weights.check_complete(file, flat, expected, sorted("/".join(p) for p in flat if p not in expected))
    else:
        state, file = weights.read_state(directory, HF_WEIGHTS)
        flat = weights.flax_params(state, expected, file)
    return traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})


def _read_msgpack(file: Path) -> dict:
    try:
        tree = flax.serialization.msgpack_restore(file.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on truncated input
        raise CheckpointError(f"{file} is not a readable Flax msgpack file ({e}); it may be truncated.") from e
    return tree.get("params", tree) if isinstance(tree, dict) else {}


def load_hf_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """The checkpoint's CLIP tokenizer (pads to the right, as CLIP was trained)."""
    if not ((directory / "tokenizer.json").exists() or (directory / "vocab.json").exists()):
        raise CheckpointError(f"{directory} has no tokenizer: expected tokenizer.json or vocab.json + merges.txt.")
    return transformers.CLIPTokenizerFast.from_pretrained(directory, trust_remote_code=False)


def hf_image_spec(directory: Path, config: CLIPConfig) -> ImageSpec:
    """`preprocessor_config.json` when present, else OpenAI's settings at the model's size."""
    return weights.image_spec(directory, config.vision.image_size, ImageSpec(size=config.vision.image_size))


# --- open_clip's layout -----------------------------------------------------------------------


def _read_open_clip(family: ClipFamily, directory: Path, dtype: Any, remat: bool) -> Model:
    file = directory / OPEN_CLIP_CONFIG
    settings = weights.read_json(file)
    try:
        config = config_from_open_clip(settings.get("model_cfg", settings), file)
        spec = image_spec_from_open_clip(settings.get("preprocess_cfg", {}), config, file)
    except (AttributeError, TypeError, ValueError, KeyError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"{file} is not a usable open_clip config ({type(error).__name__}: {error}); copy "
            f"it from the model's source again."
        ) from error
    state, weights_file = weights.read_state(directory, OPEN_CLIP_WEIGHTS)
    flat = weights.flax_params(hf_state(state, config, weights_file), _expected(CLIP(config)), weights_file)
    params = traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})
    return Model(family, config, params, lambda: _open_clip_tokenizer(directory), spec, dtype, remat)


def config_from_open_clip(model_cfg: dict, file: Path) -> CLIPConfig:
    """Our `CLIPConfig` from open_clip's `model_cfg` (OpenAI-architecture towers only)."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    unsupported = [
        f"{key}={model_cfg[key]!r}"
        for key, default in _OPEN_CLIP_MODEL_DEFAULTS.items()
        if key in model_cfg and model_cfg[key] != default
    ]
    unsupported += [
        f"{tower}.block_type={cfg['block_type']!r}"
        for tower, cfg in (("vision_cfg", vision), ("text_cfg", text))
        if cfg.get("block_type") not in (None, "default")
    ]
    unsupported += [
        f"vision_cfg.{k}={vision[k]!r}"
        for k in _OPEN_CLIP_ARCHITECTURE
        if k in vision and vision[k] != _OPEN_CLIP_VISION_DEFAULTS[k]
    ]
    unsupported += [
        f"text_cfg.{k}={text[k]!r}"
        for k in _OPEN_CLIP_TEXT_DEFAULTS
        if k in text and k != "mlp_ratio" and text[k] != _OPEN_CLIP_TEXT_DEFAULTS[k]
    ]
    unsupported += (
        [f"text_cfg.pool_type={text['pool_type']!r}"]
        if text.get("pool_type", "argmax") not in ("argmax", "eos")
        else []
    )
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        unsupported += [f"vision_cfg.image_size={image_size!r} (not square)"] if len(set(image_size)) > 1 else []
        image_size = image_size[0]
    if not isinstance(vision.get("layers", 12), int):
        unsupported.append(f"vision_cfg.layers={vision['layers']!r} (a ResNet)")
    if unsupported:
        raise CheckpointError(
            f"{file} describes an open_clip model this project cannot build: {', '.join(unsupported)}. "
            f"Only OpenAI-architecture ViT CLIPs (ViT-B-16, ViT-L-14, their -quickgelu variants "
            f"and alike) are read from open_clip's layout."
        )
    if not isinstance(model_cfg.get("quick_gelu", False), bool):
        raise CheckpointError(f"{file}: quick_gelu is {model_cfg['quick_gelu']!r}; it must be true or false.")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    width, text_width = vision.get("width", 768), text.get("width", 512)
    tower = lambda w, layers, heads, ratio: {
        "hidden_size": w,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": int(w * ratio),
        "hidden_act": act,
    }
    pooling = text.get("pool_type", "argmax")
    return CLIPConfig(
        vision=VisionConfig(
            **tower(
                width, vision.get("layers", 12), width // vision.get("head_width", 64), vision.get("mlp_ratio", 4.0)
            ),
            image_size=int(image_size),
            patch_size=vision.get("patch_size", 16),
        ),
        text=TextConfig(
            **tower(text_width, text.get("layers", 12), text.get("heads", 8), text.get("mlp_ratio", 4.0)),
            vocab_size=text.get("vocab_size", 49408),
            max_position_embeddings=text.get("context_length", 77),
            eos_token_id=text.get("eos_id", 2) if pooling == "eos" else 49407,  # open_clip's defaults
            pad_token_id=text.get("pad_id", 0),
            pooling=pooling,
        ),
        projection_dim=model_cfg.get("embed_dim", 512),
    )


def _mlp_ratio(tower: TowerConfig) -> float:
    """open_clip's `mlp_ratio`, whose `int(width * ratio)` is the tower's MLP width (also where the
    plain quotient would land a hair below it in floating point)."""
    ratio = tower.intermediate_size / tower.hidden_size
    if int(tower.hidden_size * ratio) != tower.intermediate_size:
        ratio = (tower.intermediate_size + 0.5) / tower.hidden_size
    return ratio


def open_clip_config(config: CLIPConfig, spec: ImageSpec) -> dict:
    """open_clip's `open_clip_config.json` for `config` and its image settings."""
    v, t = config.vision, config.text
    acts = {v.hidden_act, t.hidden_act}
    if not acts <= {"quick_gelu", "gelu"} or len(acts) > 1 or {v.layer_norm_eps, t.layer_norm_eps} != {1e-5}:
        raise CheckpointError(
            f"open_clip's layout has one activation for both towers (gelu or quick_gelu) and "
            f"LayerNorm eps 1e-5; this model has {sorted(acts)} and eps "
            f"{v.layer_norm_eps}/{t.layer_norm_eps}. Export it with format='hf'."
        )
    text_cfg = {
        "context_length": t.max_position_embeddings,
        "vocab_size": t.vocab_size,
        "width": t.hidden_size,
        "heads": t.num_attention_heads,
        "layers": t.num_hidden_layers,
        "mlp_ratio": _mlp_ratio(t),
        "pad_id": t.pad_token_id,
    }
    if t.pooling == "eos" and t.eos_token_id != 2:
        text_cfg.update(pool_type="eos", eos_id=t.eos_token_id)
    return {
        "model_cfg": {
            "embed_dim": config.projection_dim,
            "quick_gelu": v.hidden_act == "quick_gelu",
            "vision_cfg": {
                "image_size": v.image_size,
                "layers": v.num_hidden_layers,
                "width": v.hidden_size,
                "head_width": v.hidden_size // v.num_attention_heads,
                "mlp_ratio": _mlp_ratio(v),
                "patch_size": v.patch_size,
            },
            "text_cfg": text_cfg,
        },
        "preprocess_cfg": {
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
            "resize_mode": "shortest" if spec.resize == "crop" else "squash",
        },
    }


def image_spec_from_open_clip(preprocess: dict, config: CLIPConfig, file: Path) -> ImageSpec:
    """The image settings of open_clip's `preprocess_cfg` (OpenAI's where it says nothing)."""
    modes = {"shortest": "crop", "squash": "squash"}
    mode = preprocess.get("resize_mode", "shortest")
    interpolation = preprocess.get("interpolation", "bicubic")
    if mode not in modes or interpolation not in ("bicubic", "bilinear"):
        raise CheckpointError(
            f"{file}: preprocess_cfg resize_mode {mode!r} / interpolation {interpolation!r} is not "
            f"supported; known: resize_mode {sorted(modes)}, interpolation bicubic or bilinear."
        )
    default = ImageSpec()
    triple = lambda v: (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(x) for x in v)
    return ImageSpec(
        config.vision.image_size,
        triple(preprocess.get("mean", default.mean)),
        triple(preprocess.get("std", default.std)),
        modes[mode],
        interpolation,
    )


def _open_clip_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """The directory's tokenizer files when it has them, else CLIP's BPE (OpenAI's vocabulary)."""
    if (directory / "tokenizer.json").exists() or (directory / "vocab.json").exists():
        return load_hf_tokenizer(directory)
    return load_hf_tokenizer(weights.download(OPENAI_TOKENIZER))


_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPEN_CLIP_NAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_PROJECTIONS = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_TOWERS = (
    ("visual.transformer.resblocks", "vision_model.encoder.layers"),
    ("transformer.resblocks", "text_model.encoder.layers"),
)
_NON_PARAMETERS = ("attn_mask",)  # open_clip's causal mask buffer, saved by some versions


def hf_state(state: dict[str, np.ndarray], config: CLIPConfig, source: Path) -> dict[str, np.ndarray]:
    """open_clip's state dict renamed (and split, transposed) into transformers' CLIP names."""
    out, unexpected = {}, []
    for key, value in state.items():
        if key in _OPEN_CLIP_NAMES:
            out[_OPEN_CLIP_NAMES[key]] = np.asarray(value).reshape(()) if key == "logit_scale" else value
        elif key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = np.asarray(value).T
        elif key.endswith(_NON_PARAMETERS):
            continue
        elif (block := _block_key(key)) is not None:
            prefix, layer, rest = block
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(np.asarray(value), 3)):
                    out[f"{prefix}.{layer}.self_attn.{name}.{kind}"] = part
            else:
                module, leaf = rest.rsplit(".", 1)
                if module not in _OPEN_CLIP_BLOCK:
                    unexpected.append(key)
                    continue
                out[f"{prefix}.{layer}.{_OPEN_CLIP_BLOCK[module]}.{leaf}"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"{source} has tensors an OpenAI-architecture open_clip model does not: "
            f"{', '.join(sorted(unexpected)[:20])}; nothing was loaded."
        )
    return out


def _block_key(key: str) -> tuple[str, str, str] | None:
    for theirs, ours in _TOWERS:
        if key.startswith(theirs + "."):
            layer, rest = key[len(theirs) + 1 :].split(".", 1)
            return ours, layer, rest
    return None


def open_clip_state(state: dict[str, np.ndarray], config: CLIPConfig) -> dict[str, np.ndarray]:
    """transformers' CLIP state dict in open_clip's names (the inverse of `hf_state`)."""
    names = {v: k for k, v in _OPEN_CLIP_NAMES.items()}
    projections = {v: k for k, v in _PROJECTIONS.items()}
    blocks = {v: k for k, v in _OPEN_CLIP_BLOCK.items()}
    out: dict[str, np.ndarray] = {}
    fused: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in state.items():
        if key in names:
            out[names[key]] = np.asarray(value).reshape(()) if key == "logit_scale" else value
        elif key in projections:
            out[projections[key]] = np.asarray(value).T
        else:
            ours = next(o for t, o in _TOWERS[::-1] if key.startswith(o + "."))  # every other key is in a block
            theirs = next(t for t, o in _TOWERS if o == ours)
            layer, rest = key[len(ours) + 1 :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            if module.startswith("self_attn.") and module != "self_attn.out_proj":
                fused.setdefault((f"{theirs}.{layer}", leaf), {})[module.split(".")[1]] = value
            else:
                out[f"{theirs}.{layer}.{blocks[module]}.{leaf}"] = value
    for (prefix, leaf), parts in fused.items():
        out[f"{prefix}.attn.in_proj_{leaf}"] = np.concatenate([parts[n] for n in ("q_proj", "k_proj", "v_proj")])
    return out
