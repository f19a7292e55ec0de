"""Builds the zero-shot head from class names and prompt templates through the text tower (and
tokenizes those prompts, also FLYP's captions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax.models.clip import CLIP
from saeft_jax.models.heads import Head, zeroshot_weights
from saeft_jax.observe import progress


def build_zeroshot_head(model: CLIP, params: dict, tokenizer: Any, classnames: Sequence[str],
                        templates: Sequence[str], *, batch_size: int = 256, show_progress: bool = True) -> Head:
    """Embeds `template.format(classname)` for every class and template (in batches of
    `batch_size` prompts, padded to the model's context length as CLIP was trained) and turns
    the embeddings into a head (`zeroshot_weights`)."""
    if not classnames or not templates:
        raise ValueError("a zero-shot head needs at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' where the class name goes; these do not: {bad}")
    prompts = caption_ids(tokenizer, classnames, templates, model.config.text.max_position_embeddings)
    prompts = prompts.reshape(-1, prompts.shape[-1])
    encode = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=model.encode_text))
    chunks = []
    bar = progress(len(prompts), "zero-shot head", enabled=show_progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        ids = prompts[start:start + batch_size]
        padded = np.pad(ids, ((0, batch_size - len(ids)), (0, 0)), constant_values=tokenizer.pad_token_id)
        chunks.append(np.asarray(encode(params, jnp.asarray(padded)))[: len(ids)])
        bar.update(len(ids))
    bar.close()
    embeddings = np.concatenate(chunks).reshape(len(classnames), len(templates), -1)
    return zeroshot_weights(jnp.asarray(embeddings), params["logit_scale"])


def caption_ids(tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], context: int) -> np.ndarray:
    """(C, T, context) int32 token ids of `template.format(classname)` for every class and template,
    padded to the model's context length as CLIP was trained."""
    prompts = [t.format(c) for c in classnames for t in templates]
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=context,
                    return_tensors="np")["input_ids"].astype(np.int32)
    return ids.reshape(len(classnames), len(templates), context)
