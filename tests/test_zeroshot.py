"""The zero-shot head against transformers' text features and the formula of docs/method.md in NumPy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from saeft_jax import models
from saeft_jax.models.heads import classify
from saeft_jax.zeroshot import build_zeroshot_head

CLASSES = ["cat", "dog", "red car"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}", "{}!"]
PROMPTS = [[t.format(c) for t in TEMPLATES] for c in CLASSES]


def test_head_matches_transformers_text_features(tiny_clip_dir):
    path, torch_model = tiny_clip_dir
    model = models.load(path)
    tokenizer = model.tokenizer
    head = build_zeroshot_head(model, PROMPTS, batch_size=4, show_progress=False)

    ids = tokenizer(
        [t.format(c) for c in CLASSES for t in TEMPLATES],
        padding="max_length",
        max_length=16,
        truncation=True,
        return_tensors="pt",
    )["input_ids"]
    with torch.no_grad():
        text = torch_model.get_text_features(input_ids=ids).pooler_output.numpy().astype(np.float64)
    text = text.reshape(3, 3, -1)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    weights = text.mean(1)
    weights /= np.linalg.norm(weights, axis=-1, keepdims=True)
    weights *= np.exp(torch_model.logit_scale.item())
    np.testing.assert_allclose(head["W"], weights, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(head["b"]))

    image = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    expected = image / np.linalg.norm(image, axis=-1, keepdims=True) @ weights.T
    np.testing.assert_allclose(classify(head, jnp.asarray(image)), expected, rtol=1e-4, atol=1e-4)


def test_uneven_and_empty_prompts(tiny_clip_dir):
    path, _ = tiny_clip_dir
    model = models.load(path)
    with pytest.raises(ValueError, match=r"same number of prompts.*\[1, 2\]"):
        build_zeroshot_head(model, [["a cat"], ["a dog", "the dog"]], show_progress=False)
    with pytest.raises(ValueError, match="at least one class"):
        build_zeroshot_head(model, [], show_progress=False)
