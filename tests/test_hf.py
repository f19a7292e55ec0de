"""Loading and saving Hugging Face CLIP checkpoints: formats, round trips and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import flax.serialization
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from conftest import TINY, random_hf_clip
from test_clip import random_images, rel_err, torch_image_features, torch_text_features

from saeft_jax import hf
from saeft_jax.data.preprocess import ImageSpec

IDS = np.array([[512, 70, 71, 72, 513, 513], [512, 80, 513, 513, 513, 513]], np.int32)


def embeddings(model, params, images=None):
    images = random_images(2, 32) if images is None else images
    image = model.apply({"params": params}, jnp.asarray(images), method=model.encode_image)
    return np.asarray(image), np.asarray(model.apply({"params": params}, jnp.asarray(IDS), method=model.encode_text))


def assert_matches_torch(model, params, torch_model):
    image, text = embeddings(model, params)
    assert rel_err(image, torch_image_features(torch_model, random_images(2, 32))) < 1e-5
    assert rel_err(text, torch_text_features(torch_model, IDS)) < 1e-5


def hf_flax_tree(torch_model) -> dict:
    """The HF Flax parameter tree built from the torch modules by type (not by our name rules)."""
    tree = {}

    def put(name, leaf, value):
        node = tree
        for part in name.split(".") if name else []:
            node = node.setdefault(part, {})
        node[leaf] = value.detach().numpy()

    for name, module in torch_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            put(name, "kernel", module.weight.T)
            if module.bias is not None:
                put(name, "bias", module.bias)
        elif isinstance(module, torch.nn.Conv2d):
            put(name, "kernel", module.weight.permute(2, 3, 1, 0))
        elif isinstance(module, torch.nn.LayerNorm):
            put(name, "scale", module.weight)
            put(name, "bias", module.bias)
        elif isinstance(module, torch.nn.Embedding):
            put(name, "embedding", module.weight)
    put("vision_model.embeddings", "class_embedding", torch_model.vision_model.embeddings.class_embedding)
    put("", "logit_scale", torch_model.logit_scale)
    return tree


def test_save_clip_reopens_in_transformers(tiny_clip_dir, tmp_path):
    path, torch_model = tiny_clip_dir
    model, params = hf.load_clip(path)
    params["visual_projection"]["kernel"] = params["visual_projection"]["kernel"] * 1.5  # as if fine-tuned
    out = hf.save_clip(
        model,
        params,
        tmp_path / "saved",
        tokenizer=hf.load_tokenizer(path),
        image_spec=ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    )
    reopened = transformers.CLIPModel.from_pretrained(out).eval()
    image = torch_image_features(reopened, random_images(2, 32))
    expected = 1.5 * torch_image_features(torch_model, random_images(2, 32))
    np.testing.assert_allclose(image, expected, rtol=1e-4, atol=1e-5)
    assert rel_err(torch_text_features(reopened, IDS), torch_text_features(torch_model, IDS)) < 1e-6
    assert hf.load_image_spec(out) == ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert hf.load_tokenizer(out)("a cat")["input_ids"] == hf.load_tokenizer(path)("a cat")["input_ids"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".saved.")]  # staging dir renamed


def test_hf_flax_msgpack_layout_loads(tiny_clip_dir, tmp_path):
    path, torch_model = tiny_clip_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    tree = hf_flax_tree(torch_model)
    assert tree["vision_model"]["encoder"]["layers"]["0"]["self_attn"]["q_proj"]["kernel"].shape == (64, 64)
    assert tree["vision_model"]["embeddings"]["patch_embedding"]["kernel"].shape == (8, 8, 3, 64)
    (tmp_path / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(tree))
    model, params = hf.load_clip(tmp_path)
    assert_matches_torch(model, params, torch_model)


def test_sharded_safetensors_load(tmp_path):
    torch_model = random_hf_clip(TINY)
    torch_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, params = hf.load_clip(tmp_path)
    assert_matches_torch(model, params, torch_model)


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    torch_model = random_hf_clip(TINY)
    torch_model.half().save_pretrained(tmp_path)
    model, params = hf.load_clip(tmp_path)
    assert params["logit_scale"].dtype == jnp.float32
    assert_matches_torch(model, params, torch_model.float())


def test_pytorch_bin_loads_with_weights_only(tiny_clip_dir, tmp_path):
    path, torch_model = tiny_clip_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    model, params = hf.load_clip(tmp_path)
    assert_matches_torch(model, params, torch_model)


class Payload:
    """Unpickling this would create a file: the check that nothing is ever unpickled."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_in_pytorch_bin_never_runs(tiny_clip_dir, tmp_path):
    path, _ = tiny_clip_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    Payload.marker = tmp_path / "pwned"
    torch.save({"vision_model.x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(hf.CheckpointError, match="never unpickled"):
        hf.load_clip(tmp_path)
    assert not Payload.marker.exists()


def test_hub_id_from_offline_cache(tiny_clip_dir, tmp_path, monkeypatch):
    path, torch_model = tiny_clip_dir
    repo = tmp_path / "hub" / "models--someone--tiny-clip"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    model, params = hf.load_clip("someone/tiny-clip")
    assert_matches_torch(model, params, torch_model)
    with pytest.raises(hf.CheckpointError, match="'someone/absent'.*HF_HUB_OFFLINE"):
        hf.load_clip("someone/absent")


def test_missing_path_and_directory_without_weights(tiny_clip_dir, tmp_path):
    with pytest.raises(hf.CheckpointError, match="No checkpoint directory"):
        hf.load_clip(tmp_path / "nothing_here")
    with pytest.raises(hf.CheckpointError, match="no checkpoint of a known model family.*config.json"):
        hf.load_clip(tmp_path)
    shutil.copy(tiny_clip_dir[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(hf.CheckpointError, match="holds no weights: expected one of model.safetensors.index.json"):
        hf.load_clip(tmp_path)
    with pytest.raises(hf.CheckpointError, match="is a file"):
        hf.load_clip(tmp_path / "config.json")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors_names_the_file(tiny_clip_dir, tmp_path, keep):
    path, _ = tiny_clip_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(hf.CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        hf.load_clip(tmp_path)


def test_mismatched_missing_and_unexpected_weights_are_listed(tiny_clip_dir, tmp_path):
    path, _ = tiny_clip_dir
    config = json.loads((path / "config.json").read_text())
    config["projection_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = safetensors.numpy.load_file(path / "model.safetensors")
    del state["text_model.final_layer_norm.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(hf.CheckpointError) as error:
        hf.load_clip(tmp_path)
    message = str(error.value)
    assert "missing (1): text_model/final_layer_norm/bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "visual_projection/kernel: file (64, 32) vs config (64, 16)" in message


def test_non_clip_config_is_rejected(tmp_path):
    transformers.BertConfig().save_pretrained(tmp_path)
    with pytest.raises(hf.CheckpointError, match="model_type .bert."):
        hf.load_clip(tmp_path)


def test_image_spec_defaults_to_openai_at_model_size(tiny_clip_dir):
    assert hf.load_image_spec(tiny_clip_dir[0]) == ImageSpec(size=32)


def test_directory_without_tokenizer_says_what_is_expected(tiny_clip_dir, tmp_path):
    shutil.copy(tiny_clip_dir[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(hf.CheckpointError, match="no tokenizer: expected tokenizer.json or vocab.json"):
        hf.load_tokenizer(tmp_path)


REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("the checkpoint's Python ran")  # transformers runs a copy elsewhere
from transformers import CLIPConfig

class EvilConfig(CLIPConfig):
    model_type = "evil_clip"
"""


@pytest.mark.parametrize("model_type", ["clip", "evil_clip"])
def test_a_checkpoint_that_asks_to_run_its_own_code_never_does(tiny_clip_dir, tmp_path, model_type):
    """config.json and tokenizer_config.json carry `auto_map` to Python in the checkpoint, and stdin
    answers "y" should transformers ask whether to run it: the code never runs."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_clip_dir[0], checkpoint)
    (checkpoint / "evil_config.py").write_text(REMOTE_CODE.format(marker=str(checkpoint / "CODE_RAN")))
    for name in ("config.json", "tokenizer_config.json"):
        path = checkpoint / name
        config = json.loads(path.read_text()) if path.exists() else {}
        config["auto_map"] = {"AutoConfig": "evil_config.EvilConfig", "AutoTokenizer": ["evil_config.EvilConfig", None]}
        if name == "config.json":
            config["model_type"] = model_type
        path.write_text(json.dumps(config))
    script = (
        "import sys\nfrom saeft_jax import hf\ntry:\n"
        "    hf.load_clip(sys.argv[1]); hf.load_tokenizer(sys.argv[1])\n"
        "    print('LOADED')\nexcept hf.CheckpointError as error:\n    print('REFUSED', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint)],
        input="y\ny\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert not (checkpoint / "CODE_RAN").exists(), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if model_type == "clip":
        assert "LOADED" in result.stdout, result.stdout + result.stderr  # the built-in CLIP classes serve it
    else:
        assert "REFUSED" in result.stdout and str(checkpoint) in result.stdout
