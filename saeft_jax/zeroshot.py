"""Builds the zero-shot head from each class's prompts through a model's text tower (and tokenizes
those prompts, also FLYP's captions), for any model family."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax import stopping
from saeft_jax.models.family import Model
from saeft_jax.models.heads import Head
from saeft_jax.observe import progress


def build_zeroshot_head(
    model: Model,
    prompts: Sequence[Sequence[str]],
    *,
    params: dict | None = None,
    batch_size: int = 256,
    show_progress: bool = True,
) -> Head:
    """Embeds every prompt of every class (`prompts[c]`: class c's prompts, as
    `DatasetSpec.prompts()` gives them; in batches of `batch_size` prompts, padded to the model's
    context length as it was trained) with `params` (default: the model's own) and turns the
    embeddings into the family's head."""
    params = model.params if params is None else params
    per_class = caption_ids(model, prompts)
    flat = per_class.reshape(-1, per_class.shape[-1])
    text = model.text_encoder()
    encode = jax.jit(lambda p, ids: text.apply({"params": p}, ids))
    chunks = []
    bar = progress(len(flat), "zero-shot head", enabled=show_progress, unit="prompt")
    for start in range(0, len(flat), batch_size):
        stopping.check(f"while building a zero-shot head at prompt {start} of {len(flat)}")
        ids = flat[start : start + batch_size]
        padded = np.pad(ids, ((0, batch_size - len(ids)), (0, 0)), constant_values=model.pad_token_id)
        chunks.append(np.asarray(encode(model.text_params(params), jnp.asarray(padded)))[: len(ids)])
        bar.update(len(ids))
    bar.close()
    embeddings = np.concatenate(chunks).reshape(*per_class.shape[:2], -1)
    return model.zeroshot_head(jnp.asarray(embeddings), params)


def caption_ids(model: Model, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """(C, T, context) int32 token ids of class c's prompt t (`prompts[c][t]`; every class has the
    same T), padded to the model's context length as it was trained."""
    if not prompts or not prompts[0]:
        raise ValueError("a zero-shot head needs at least one class and one prompt per class")
    counts = {len(p) for p in prompts}
    if len(counts) > 1:
        raise ValueError(f"every class needs the same number of prompts; these classes have {sorted(counts)}")
    ids = model.tokenize([text for per_class in prompts for text in per_class])
    return ids.reshape(len(prompts), len(prompts[0]), ids.shape[-1])
