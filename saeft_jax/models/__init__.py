"""Model families (CLIP, SigLIP) behind one interface, `models.load`, and the classification head.

    from saeft_jax import models
    m = models.load("google/siglip-base-patch16-224")  # hub id, local dir or gs://; family and layout detected
    m.encode_image(pixels), m.encode_text(m.tokenize(["a photo of a dog."])), m.save(out_dir, format="hf")

A family is its own module(s) plus one `register` line below (docs/design.md, "A model family").
"""

from saeft_jax.models.clip_family import ClipFamily
from saeft_jax.models.family import FAMILIES, Family, Model, family_of, load, register
from saeft_jax.models.siglip import SiglipFamily
from saeft_jax.models.weights import CheckpointError

register(ClipFamily())
register(SiglipFamily())

__all__ = ["FAMILIES", "CheckpointError", "Family", "Model", "family_of", "load", "register"]
