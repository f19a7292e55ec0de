"""Quick start: write a small random CLIP in Hugging Face format, reopen it, embed a few images.

    python -m saeft_jax.quickstart --workdir=/tmp/saeft_quickstart

Exercises the path every real checkpoint takes (`save_clip` -> `load_clip` -> `clip_eval` ->
`encode_image`) without any download; prints the embeddings' norms and cosine similarities.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from saeft_jax import hf
from saeft_jax.data.preprocess import ImageSpec, clip_eval
from saeft_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig, init_params

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/saeft_quickstart", "Where the small checkpoint is written.")

SMALL = CLIPConfig(
    vision=VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                        image_size=32, patch_size=8),
    text=TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                    vocab_size=514, max_position_embeddings=16, bos_token_id=512, eos_token_id=513),
    projection_dim=32)


def sample_images() -> dict[str, np.ndarray]:
    """Four uint8 images of different sizes: two of one pattern, one colour shift, one noise."""
    y, x = np.mgrid[0:120, 0:160] / 160.0
    stripes = (np.sin(20 * x)[..., None] * 127 + 128) * np.ones(3)
    return {
        "stripes": stripes.astype(np.uint8),
        "stripes_small": stripes[::3, ::3].astype(np.uint8),
        "stripes_red": (stripes * [1.0, 0.3, 0.3]).astype(np.uint8),
        "noise": np.random.RandomState(0).randint(0, 256, (90, 70, 3), dtype=np.uint8),
    }


def main(argv: list[str]) -> None:
    del argv
    checkpoint = Path(_WORKDIR.value) / "small_clip"
    model = CLIP(SMALL)
    hf.save_clip(model, init_params(model, jax.random.key(0)), checkpoint, image_spec=ImageSpec(size=32))
    model, params = hf.load_clip(checkpoint)
    spec = hf.load_image_spec(checkpoint)
    images = sample_images()
    batch = jnp.stack([clip_eval(im, spec.size, spec.mean, spec.std) for im in images.values()])
    embeddings = np.asarray(model.apply({"params": params}, batch, method=model.encode_image))
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    names = list(images)
    print(json.dumps({
        "checkpoint": str(checkpoint),
        "files": sorted(p.name for p in checkpoint.iterdir()),
        "embedding_norms": dict(zip(names, np.linalg.norm(embeddings, axis=-1).astype(float).round(4).tolist())),
        "cosine_to_stripes": dict(zip(names, (unit @ unit[0]).astype(float).round(4).tolist())),
    }, indent=2))


if __name__ == "__main__":
    app.run(main)
