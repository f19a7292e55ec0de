"""FLYP's loss: the model family's own pre-training loss between each image and a caption of its
label (a class name in a template), over the global batch, plus the method's penalty on the image
embeddings.

FLYP (Goyal et al., 2023) fine-tunes both towers and the loss's temperature the way the model was
pre-trained: for CLIP the B images and B captions of a batch score each other, `exp(logit_scale)`
times the cosine, and the loss is the mean of the image->text and text->image cross-entropies with
the matching pair as the target; for SigLIP it is SigLIP's pairwise sigmoid loss with its learned
bias (this carries FLYP's idea to SigLIP; docs/method.md). The batch is the global one: the arrays
are split over the data axis (and over processes), and XLA gathers what the (B, B) similarities
need, so the loss is the same on 1 device, 8 devices or 2 processes. With `clamp_scales` (the
default, `finetune.flyp_logit_scale="clip"`) CLIP's `logit_scale` is clamped to [0, ln 100] where it
is used (CLIP's training clamps the stored value after each update: the same while it is inside the
range; a value pushed past ln 100 acts as ln 100 and is published clamped); FLYP's code does not
clamp (`"flyp"`). SigLIP clamps nothing either way.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from saeft_jax.models.family import Model
from saeft_jax.training.step import make_penalized


def make_flyp_loss(
    model: Model, regularizer: Callable, reg_lambda: float, *, taps: tuple[int, ...] = (), clamp_scales: bool = True
) -> Callable:
    """`loss(params, frozen, batch) -> (loss, metrics)` of FLYP: `params` = {"encoder": image
    params, "text": `model.text_params(...)`, "scales": `model.scale_params(...)`}; `frozen` as
    `make_loss`'s plus "captions", the (C, T, L) token ids of every class under every template
    (`zeroshot.caption_ids`); `batch` = {"images", "labels", "templates"[, "teacher"]}: each image
    is paired with the caption of its label under its drawn template. Metrics: "ce" is the
    family's contrastive loss, and "accuracy" the share of images whose best-scoring caption in
    the batch names their class."""
    penalized = make_penalized(model.image_encoder(), regularizer, taps)
    text = model.text_encoder()

    def loss(params, frozen, batch):
        f, reg, reg_metrics = penalized(params["encoder"], frozen, batch)
        labels = batch["labels"]
        captions = frozen["captions"][labels, batch["templates"]]
        t = text.apply({"params": params["text"]}, captions)
        ce, logits = model.pretrain_loss(f, t, params["scales"], clamp=clamp_scales)
        total = ce + reg_lambda * reg
        accuracy = jnp.mean(labels[jnp.argmax(logits, -1)] == labels)
        scales = {k: jnp.reshape(v, ()) for k, v in params["scales"].items()}
        return total, {"loss": total, "ce": ce, "reg": reg, "accuracy": accuracy, **scales, **reg_metrics}

    return loss
