"""Builds the zero-shot head from each class's prompts through the text tower (and tokenizes those
prompts, also FLYP's captions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax.models.clip import CLIP
from saeft_jax.models.heads import Head, zeroshot_weights
from saeft_jax.observe import progress


def build_zeroshot_head(model: CLIP, params: dict, tokenizer: Any, prompts: Sequence[Sequence[str]], *,
                        batch_size: int = 256, show_progress: bool = True) -> Head:
    """Embeds every prompt of every class (`prompts[c]`: class c's prompts, as
    `DatasetSpec.prompts()` gives them; in batches of `batch_size` prompts, padded to the model's
    context length as CLIP was trained) and turns the embeddings into a head (`zeroshot_weights`)."""
    per_class = caption_ids(tokenizer, prompts, model.config.text.max_position_embeddings)
    flat = per_class.reshape(-1, per_class.shape[-1])
    encode = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=model.encode_text))
    chunks = []
    bar = progress(len(flat), "zero-shot head", enabled=show_progress, unit="prompt")
    for start in range(0, len(flat), batch_size):
        ids = flat[start:start + batch_size]
        padded = np.pad(ids, ((0, batch_size - len(ids)), (0, 0)), constant_values=tokenizer.pad_token_id)
        chunks.append(np.asarray(encode(params, jnp.asarray(padded)))[: len(ids)])
        bar.update(len(ids))
    bar.close()
    embeddings = np.concatenate(chunks).reshape(*per_class.shape[:2], -1)
    return zeroshot_weights(jnp.asarray(embeddings), params["logit_scale"])


def caption_ids(tokenizer: Any, prompts: Sequence[Sequence[str]], context: int) -> np.ndarray:
    """(C, T, context) int32 token ids of class c's prompt t (`prompts[c][t]`; every class has the
    same T), padded to the model's context length as CLIP was trained."""
    if not prompts or not prompts[0]:
        raise ValueError("a zero-shot head needs at least one class and one prompt per class")
    counts = {len(p) for p in prompts}
    if len(counts) > 1:
        raise ValueError(f"every class needs the same number of prompts; these classes have {sorted(counts)}")
    flat = [text for per_class in prompts for text in per_class]
    ids = tokenizer(flat, padding="max_length", truncation=True, max_length=context,
                    return_tensors="np")["input_ids"].astype(np.int32)
    return ids.reshape(len(prompts), len(prompts[0]), context)
