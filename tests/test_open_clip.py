"""open_clip checkpoints in and out, against open_clip itself: random models of the real
ViT-B-16-quickgelu layout and of a small gelu configuration, saved as the hub stores them
(`open_clip_config.json` + `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`), read
here with embeddings equal to open_clip's `encode_image` / `encode_text`; saved back by the
project, they load into open_clip with `strict=True` and give the same embeddings. A transformers
CLIP exported to open_clip's layout gives transformers' embeddings there.

open_clip imports torchvision, whose PyPI wheel beside this machine's CPU torch only imports with
its fake-kernel registration skipped: conftest.py does that once for the session.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip  # a test dependency (pip install '.[test]'); after conftest's torchvision import
import pytest
import safetensors.torch
import torch
from conftest import TINY, random_hf_clip, write_char_tokenizer

from saeft_jax import models

SMALL_GELU = {
    "embed_dim": 32,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 514, "width": 48, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
}
PREPROCESS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic", "resize_mode": "shortest"}


def random_open_clip(model_cfg: dict, seed: int = 0) -> torch.nn.Module:
    """An open_clip CLIP whose every parameter is perturbed away from its init."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_as_hub(model: torch.nn.Module, model_cfg: dict, directory, weights: str = "safetensors") -> None:
    """The files the hub holds for an open_clip model."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        safetensors.torch.save_file(state, directory / "open_clip_model.safetensors")
    else:
        torch.save(state, directory / "open_clip_pytorch_model.bin")


def inputs(model_cfg: dict, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NHWC pixels and token ids whose end-of-text token (the largest id) sits at varying places."""
    rng = np.random.default_rng(seed)
    size, text = model_cfg["vision_cfg"]["image_size"], model_cfg["text_cfg"]
    pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    ids = rng.integers(1, text["vocab_size"] - 1, (batch, text["context_length"]))
    ids[np.arange(batch), rng.integers(2, text["context_length"], batch)] = text["vocab_size"] - 1
    return pixels, ids.astype(np.int32)


def open_clip_embeddings(model: torch.nn.Module, pixels: np.ndarray, ids: np.ndarray):
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).numpy()
        text = model.encode_text(torch.from_numpy(ids).long()).numpy()
    return image, text


def relative(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


def check_round_trip(model_cfg: dict, tmp_path, weights: str = "safetensors") -> None:
    theirs = random_open_clip(model_cfg)
    save_as_hub(theirs, model_cfg, tmp_path / "hub", weights)
    ours = models.load(tmp_path / "hub")
    assert ours.family.name == "clip" and ours.config.text.pooling == "argmax"
    pixels, ids = inputs(model_cfg)
    image, text = open_clip_embeddings(theirs, pixels, ids)
    assert relative(ours.encode_image(pixels), image) < 1e-5
    assert relative(ours.encode_text(ids), text) < 1e-5

    ours.save(tmp_path / "back", format="open_clip")
    saved = json.loads((tmp_path / "back" / "open_clip_config.json").read_text())
    reopened = open_clip.CLIP(**saved["model_cfg"]).eval()
    reopened.load_state_dict(
        safetensors.torch.load_file(tmp_path / "back" / "open_clip_model.safetensors"), strict=True
    )
    again_image, again_text = open_clip_embeddings(reopened, pixels, ids)
    assert relative(again_image, image) < 1e-5 and relative(again_text, text) < 1e-5
    assert saved["preprocess_cfg"] == PREPROCESS
    created = open_clip.create_model(f"local-dir:{tmp_path / 'back'}").eval()  # open_clip's own loader
    created_image, created_text = open_clip_embeddings(created, pixels, ids)
    assert relative(created_image, image) < 1e-5 and relative(created_text, text) < 1e-5


def test_small_gelu_open_clip_in_and_out(tmp_path):
    check_round_trip(SMALL_GELU, tmp_path)


def test_pytorch_bin_is_read_without_unpickling_objects(tmp_path):
    check_round_trip({**SMALL_GELU, "quick_gelu": True}, tmp_path, weights="bin")


def test_preprocessing_comes_from_preprocess_cfg(tmp_path):
    save_as_hub(random_open_clip(SMALL_GELU), SMALL_GELU, tmp_path)
    spec = models.load(tmp_path).image_spec
    assert (spec.size, spec.mean, spec.std, spec.resize, spec.interpolation) == (
        32,
        (0.5, 0.4, 0.3),
        (0.2, 0.25, 0.3),
        "crop",
        "bicubic",
    )


def test_tokenizer_files_in_the_directory_are_used(tmp_path):
    save_as_hub(random_open_clip(SMALL_GELU), SMALL_GELU, tmp_path)
    write_char_tokenizer(tmp_path)
    ids = models.load(tmp_path).tokenize(["a cat"])
    assert ids.shape == (1, 16) and ids[0, 0] == 512 and 513 in ids[0]  # start, characters, end of text


def test_hf_clip_exports_to_open_clip_with_transformers_embeddings(tmp_path):
    hf_model = random_hf_clip(TINY, hidden_act="gelu")
    hf_model.save_pretrained(tmp_path / "hf")
    write_char_tokenizer(tmp_path / "hf")
    models.load(tmp_path / "hf").save(tmp_path / "oc", format="open_clip")
    saved = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    reopened = open_clip.CLIP(**saved["model_cfg"]).eval()
    reopened.load_state_dict(safetensors.torch.load_file(tmp_path / "oc" / "open_clip_model.safetensors"), strict=True)
    pixels, ids = inputs(saved["model_cfg"])
    image, text = open_clip_embeddings(reopened, pixels, ids)
    with torch.no_grad():
        nchw = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
        hf_image = hf_model.get_image_features(pixel_values=nchw).pooler_output.numpy()
        hf_text = hf_model.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
    assert relative(image, hf_image) < 1e-5 and relative(text, hf_text) < 1e-5
    assert models.load(tmp_path / "oc").tokenize(["a"]).shape == (1, 16)  # tokenizer files travel along


def test_unsupported_open_clip_architectures_are_refused_by_name(tmp_path):
    cfg = {**SMALL_GELU, "vision_cfg": {**SMALL_GELU["vision_cfg"], "attentional_pool": True}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(models.CheckpointError, match="vision_cfg.attentional_pool=True"):
        models.load(tmp_path)


@pytest.mark.slow
def test_vit_b16_quickgelu_layout_in_and_out(tmp_path):
    model_cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-B-16-quickgelu")))
    check_round_trip(model_cfg, tmp_path)


def test_eos_pooling_with_open_clips_default_end_token(tmp_path):
    cfg = {**SMALL_GELU, "text_cfg": {**SMALL_GELU["text_cfg"], "pool_type": "eos"}}  # eos_id: open_clip's 2
    theirs = random_open_clip(cfg)
    save_as_hub(theirs, cfg, tmp_path / "hub")
    ours = models.load(tmp_path / "hub")
    pixels, ids = inputs(cfg)
    ids[:, 5] = 2  # the end token before the largest id: eos and argmax pooling differ
    _, text = open_clip_embeddings(theirs, pixels, ids)
    assert relative(ours.encode_text(ids), text) < 1e-5


def test_odd_mlp_widths_export_to_a_model_open_clip_opens_strictly(tmp_path):
    hf_model = random_hf_clip(
        dataclasses.replace(
            TINY, vision=dataclasses.replace(TINY.vision, hidden_size=188, num_attention_heads=4, intermediate_size=384)
        ),
        hidden_act="gelu",
    )
    hf_model.save_pretrained(tmp_path / "hf")
    models.load(tmp_path / "hf").save(tmp_path / "oc", format="open_clip")
    saved = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    reopened = open_clip.CLIP(**saved["model_cfg"]).eval()
    reopened.load_state_dict(safetensors.torch.load_file(tmp_path / "oc" / "open_clip_model.safetensors"), strict=True)
    assert models.load(tmp_path / "oc").config.vision.intermediate_size == 384


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: {"model_cfg": [1]}, "not a usable open_clip config"),
        (lambda c: {"model_cfg": {**c, "vision_cfg": "ViT-B-16"}}, "not a usable open_clip config"),
        (lambda c: {"model_cfg": {**c, "custom_text": True}}, "custom_text=True"),
        (lambda c: {"model_cfg": {**c, "init_logit_bias": -10}}, "init_logit_bias=-10"),
        (lambda c: {"model_cfg": {**c, "quick_gelu": "false"}}, "quick_gelu is 'false'"),
    ],
)
def test_damaged_or_unsupported_open_clip_configs_are_one_paragraph(tmp_path, change, says):
    save_as_hub(random_open_clip(SMALL_GELU), SMALL_GELU, tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(change(SMALL_GELU)))
    with pytest.raises(models.CheckpointError, match=says):
        models.load(tmp_path)


def test_a_scalar_mean_and_std_as_open_clip_accepts(tmp_path):
    save_as_hub(random_open_clip(SMALL_GELU), SMALL_GELU, tmp_path)
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(mean=0.5, std=0.25)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    spec = models.load(tmp_path).image_spec
    assert (spec.mean, spec.std) == ((0.5,) * 3, (0.25,) * 3)


def test_save_refuses_an_existing_directory_and_leaves_nothing_behind(tmp_path):
    save_as_hub(random_open_clip(SMALL_GELU), SMALL_GELU, tmp_path / "hub")
    model = models.load(tmp_path / "hub")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(models.CheckpointError, match="already exists"):
        model.save(tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    model.save(tmp_path / "taken", overwrite=True)
    assert not (tmp_path / "taken" / "mine.txt").exists() and (tmp_path / "taken" / "model.safetensors").exists()
