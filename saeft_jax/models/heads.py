"""The zero-shot classification head (docs/method.md, "The pipeline"): weights from text, applied to
L2-normalized image embeddings.

Head parameters are `{"W": (C, d), "b": (C,)}`; `W` already carries `exp(logit_scale)`, so
logits are those of CLIP's image-text similarity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Head = dict[str, jax.Array]


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def zeroshot_weights(text_embeddings: jax.Array, logit_scale: jax.Array) -> Head:
    """Head from (C, T, d) embeddings of every class under every template: normalize each,
    average over templates, normalize, times exp(logit_scale); bias 0."""
    weights = _unit(jnp.mean(_unit(text_embeddings), axis=1)) * jnp.exp(logit_scale)
    return {"W": weights, "b": jnp.zeros(weights.shape[0], weights.dtype)}


def classify(head: Head, embeddings: jax.Array) -> jax.Array:
    """Logits (B, C) of raw image embeddings (B, d)."""
    return _unit(embeddings) @ head["W"].T + head["b"]
