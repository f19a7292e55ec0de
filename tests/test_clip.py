"""The Flax CLIP towers against transformers' PyTorch CLIPModel on the same random weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY, VITB16, random_hf_clip

from saeft_jax import hf


def rel_err(ours, ref) -> float:
    """Largest elementwise error relative to the largest reference magnitude."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def torch_image_features(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
        return model.get_image_features(pixel_values=pixels).pooler_output.numpy()


def torch_text_features(model, ids: np.ndarray, attention_mask=None) -> np.ndarray:
    mask = None if attention_mask is None else torch.from_numpy(attention_mask)
    with torch.no_grad():
        ids = torch.from_numpy(ids).long()
        return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.numpy()


def load_pair(tmp_path, shape, act="quick_gelu", **text_overrides):
    torch_model = random_hf_clip(shape, act, **text_overrides)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_clip(tmp_path)
    return torch_model, model, params


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_tiny_image_and_text_match_transformers(tmp_path, act):
    torch_model, model, params = load_pair(tmp_path, TINY, act)
    images = random_images(4, 32)
    ours = model.apply({"params": params}, jnp.asarray(images), method=model.encode_image)
    assert rel_err(ours, torch_image_features(torch_model, images)) < 1e-5

    rng = np.random.RandomState(1)
    for length in (3, 7, 16):
        ids = rng.randint(0, 512, size=(5, length)).astype(np.int32)
        ids[:, 0] = 512
        ends = rng.randint(1, length, size=5)
        for row, end in enumerate(ends):
            ids[row, end:] = 513 if row % 2 else 0  # end-of-text padding (OpenAI) or another pad id
            ids[row, end] = 513
        mask = (np.arange(length)[None] <= ends[:, None]).astype(np.int64)
        ours = model.apply({"params": params}, jnp.asarray(ids), method=model.encode_text)
        assert rel_err(ours, torch_text_features(torch_model, ids)) < 1e-5
        assert rel_err(ours, torch_text_features(torch_model, ids, mask)) < 1e-5


def test_legacy_eos_token_id_pools_at_largest_id(tmp_path):
    torch_model, model, params = load_pair(tmp_path, TINY, eos_token_id=2, pooling="argmax")
    ids = np.array([[512, 5, 513, 7, 7], [512, 513, 3, 4, 0]], np.int32)
    ours = model.apply({"params": params}, jnp.asarray(ids), method=model.encode_text)
    assert rel_err(ours, torch_text_features(torch_model, ids)) < 1e-5


def test_tokenizer_ids_match_transformers(tiny_clip_dir):
    path, torch_model = tiny_clip_dir
    model, params = hf.load_clip(path)
    tokenizer = hf.load_tokenizer(path)
    ids = tokenizer(["a", "a photo of a cat", "drawings!"], padding="max_length", max_length=16, return_tensors="np")[
        "input_ids"
    ].astype(np.int32)
    assert (ids[:, -1] == tokenizer.eos_token_id).all()  # padded with end-of-text, as OpenAI's
    ours = model.apply({"params": params}, jnp.asarray(ids), method=model.encode_text)
    assert rel_err(ours, torch_text_features(torch_model, ids)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vitb16_shape_matches_transformers(tmp_path, act):
    torch_model, model, params = load_pair(tmp_path, VITB16, act)
    images = random_images(2, 224)
    ours = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))(params, images)
    assert rel_err(ours, torch_image_features(torch_model, images)) < 1e-5
    ids = np.full((2, 77), 49407, np.int32)
    ids[:, 0] = 49406
    ids[0, 1:9] = np.arange(100, 108)
    ids[1, 1:40] = np.arange(2000, 2039)
    ours = model.apply({"params": params}, jnp.asarray(ids), method=model.encode_text)
    assert rel_err(ours, torch_text_features(torch_model, ids)) < 1e-5


def test_token_taps_match_transformers_hidden_states(tiny_clip_dir):
    path, torch_model = tiny_clip_dir
    model, params = hf.load_clip(path)
    images = random_images(2, 32)
    embeddings, taps = model.apply({"params": params}, jnp.asarray(images), (0, 2), method=model.encode_image)
    with torch.no_grad():
        hidden = torch_model.vision_model(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True
        ).hidden_states
    assert rel_err(taps[0], hidden[0].numpy()) < 1e-5  # input of the first block (after pre_layrnorm)
    assert rel_err(taps[1], hidden[2].numpy()) < 1e-5  # output of block 2
    assert rel_err(embeddings, torch_image_features(torch_model, images)) < 1e-5


def test_image_encoder_alone_equals_encode_image(tiny_clip_dir):
    from saeft_jax.models.clip import image_encoder, image_params

    model, params = hf.load_clip(tiny_clip_dir[0])
    images = jnp.asarray(random_images(2, 32))
    alone = image_encoder(model).apply({"params": image_params(params)}, images)
    np.testing.assert_array_equal(alone, model.apply({"params": params}, images, method=model.encode_image))


def test_remat_changes_neither_values_nor_gradients(tiny_clip_dir):
    path, _ = tiny_clip_dir
    plain, params = hf.load_clip(path)
    remat, _ = hf.load_clip(path, remat=True)
    images = jnp.asarray(random_images(2, 32))

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, images, method=model.encode_image) ** 2)

    (v1, g1), (v2, g2) = (jax.value_and_grad(loss(m))(params) for m in (plain, remat))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# Measured on ViT-B/16-shaped random weights: worst element 1.3e-2 of the largest, cosine 0.9999.
BF16_REL_TOL = 3e-2


@pytest.mark.slow
def test_bf16_compute_stays_close_to_fp32(tmp_path):
    torch_model = random_hf_clip(VITB16)
    torch_model.save_pretrained(tmp_path)
    images = jnp.asarray(random_images(2, 224))
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model, params = hf.load_clip(tmp_path, dtype=dtype)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
        outs[dtype] = np.asarray(model.apply({"params": params}, images, method=model.encode_image))
    fp32, bf16 = outs[jnp.float32], outs[jnp.bfloat16]
    cosine = (fp32 * bf16).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(bf16, axis=-1)
    assert rel_err(bf16, fp32) < BF16_REL_TOL
    assert cosine.min() > 0.999
    assert rel_err(bf16, fp32) > 1e-4  # bf16 was really used
