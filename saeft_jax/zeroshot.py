"""Builds the zero-shot head from class names and prompt templates through a model's text tower
(and tokenizes those prompts, also FLYP's captions), for any model family."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax.models.family import Model
from saeft_jax.models.heads import Head
from saeft_jax.observe import progress


def build_zeroshot_head(model: Model, classnames: Sequence[str], templates: Sequence[str], *,
                        params: dict | None = None, batch_size: int = 256, show_progress: bool = True) -> Head:
    """Embeds `template.format(classname)` for every class and template (in batches of
    `batch_size` prompts, padded to the model's context length as it was trained) with `params`
    (default: the model's own) and turns the embeddings into the family's head."""
    if not classnames or not templates:
        raise ValueError("a zero-shot head needs at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' where the class name goes; these do not: {bad}")
    params = model.params if params is None else params
    prompts = caption_ids(model, classnames, templates)
    prompts = prompts.reshape(-1, prompts.shape[-1])
    text = model.text_encoder()
    encode = jax.jit(lambda p, ids: text.apply({"params": p}, ids))
    chunks = []
    bar = progress(len(prompts), "zero-shot head", enabled=show_progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        ids = prompts[start:start + batch_size]
        padded = np.pad(ids, ((0, batch_size - len(ids)), (0, 0)), constant_values=model.pad_token_id)
        chunks.append(np.asarray(encode(model.text_params(params), jnp.asarray(padded)))[: len(ids)])
        bar.update(len(ids))
    bar.close()
    embeddings = np.concatenate(chunks).reshape(len(classnames), len(templates), -1)
    return model.zeroshot_head(jnp.asarray(embeddings), params)


def caption_ids(model: Model, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, T, context) int32 token ids of `template.format(classname)` for every class and template."""
    ids = model.tokenize([t.format(c) for c in classnames for t in templates])
    return ids.reshape(len(classnames), len(templates), ids.shape[-1])
