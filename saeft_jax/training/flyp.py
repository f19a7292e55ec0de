"""FLYP's loss: CLIP's contrastive loss between each image and a caption of its label (a class
name in a template), over the global batch, plus the method's penalty on the image embeddings.

FLYP (Goyal et al., 2023) fine-tunes both towers and `logit_scale` the way CLIP was pre-trained:
the B images and B captions of a batch score each other, `exp(logit_scale)` times the cosine,
and the loss is the mean of the image->text and text->image cross-entropies with the matching
pair as the target. The batch is the global one: the arrays are split over the data axis (and
over processes), and XLA gathers what the (B, B) similarities need, so the loss is the same on 1
device, 8 devices or 2 processes. By default (`finetune.flyp_logit_scale="clip"`) `logit_scale` is
clamped to [0, ln 100] where it is used (CLIP's training clamps the stored value after each update:
the same while it is inside the range; a value pushed past ln 100 acts as ln 100 and is published
clamped) and has no weight decay; FLYP's code does neither (`"flyp"`: unclamped, decayed like
every parameter; `max_logit_scale=None` here).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from saeft_jax.models.clip import ImageEncoder, TextEncoder
from saeft_jax.training.step import make_penalized

MAX_LOGIT_SCALE = math.log(100.0)


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def contrastive_loss(image_embeddings: jax.Array, text_embeddings: jax.Array, logit_scale: jax.Array, *,
                     max_logit_scale: float | None = MAX_LOGIT_SCALE) -> tuple[jax.Array, jax.Array]:
    """(loss, logits): CLIP's symmetric cross-entropy of (B, d) image and text embeddings (row i
    of each a matching pair); logits (B, B) are exp(logit_scale clamped to [0, max_logit_scale])
    * cosine (None: unclamped, as FLYP's code)."""
    scale = jnp.exp(logit_scale if max_logit_scale is None else jnp.clip(logit_scale, 0.0, max_logit_scale))
    logits = scale * _unit(image_embeddings) @ _unit(text_embeddings).T
    targets = jnp.arange(logits.shape[0])
    per_image = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    per_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, targets)
    return (jnp.mean(per_image) + jnp.mean(per_text)) / 2, logits


def make_flyp_loss(image: ImageEncoder, text: TextEncoder, regularizer: Callable, reg_lambda: float, *,
                   taps: tuple[int, ...] = (), max_logit_scale: float | None = MAX_LOGIT_SCALE) -> Callable:
    """`loss(params, frozen, batch) -> (loss, metrics)` of FLYP: `params` = {"encoder": image
    params, "text": `text_params(...)`, "logit_scale"}; `frozen` as `make_loss`'s plus "captions",
    the (C, T, L) token ids of every class under every template (`zeroshot.caption_ids`);
    `batch` = {"images", "labels", "templates"[, "teacher"]}: each image is paired with the
    caption of its label under its drawn template. Metrics: "ce" is the contrastive loss, and
    "accuracy" the share of images whose best-scoring caption in the batch names their class."""
    penalized = make_penalized(image, regularizer, taps)

    def loss(params, frozen, batch):
        f, reg, reg_metrics = penalized(params["encoder"], frozen, batch)
        labels = batch["labels"]
        captions = frozen["captions"][labels, batch["templates"]]
        t = text.apply({"params": params["text"]}, captions)
        ce, logits = contrastive_loss(f, t, params["logit_scale"], max_logit_scale=max_logit_scale)
        total = ce + reg_lambda * reg
        accuracy = jnp.mean(labels[jnp.argmax(logits, -1)] == labels)
        return total, {"loss": total, "ce": ce, "reg": reg, "accuracy": accuracy,
                       "logit_scale": params["logit_scale"], **reg_metrics}

    return loss
