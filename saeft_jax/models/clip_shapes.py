"""Shapes of the published OpenAI CLIP checkpoints, for random models at their exact size.

Benchmarks and tests build random weights at these shapes without any download; real runs
read the same numbers from the checkpoint's config.json.
"""

from __future__ import annotations

from saeft_jax.models.clip import CLIPConfig, TextConfig, VisionConfig

_TEXT_B = TextConfig(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048)
_TEXT_L = TextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def _vit(width: int, layers: int, heads: int, patch: int, image: int = 224) -> VisionConfig:
    return VisionConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        image_size=image,
        patch_size=patch,
    )


SHAPES: dict[str, CLIPConfig] = {
    "vitb32": CLIPConfig(_vit(768, 12, 12, 32), _TEXT_B, projection_dim=512),
    "vitb16": CLIPConfig(_vit(768, 12, 12, 16), _TEXT_B, projection_dim=512),
    "vitl14": CLIPConfig(_vit(1024, 24, 16, 14), _TEXT_L, projection_dim=768),
    "vitl14_336": CLIPConfig(_vit(1024, 24, 16, 14, 336), _TEXT_L, projection_dim=768),
}


def clip_shape(name: str) -> CLIPConfig:
    """The config of the published checkpoint `name` (vitb32, vitb16, vitl14, vitl14_336)."""
    if name not in SHAPES:
        raise ValueError(f"unknown CLIP shape {name!r}; known: {sorted(SHAPES)}")
    return SHAPES[name]
