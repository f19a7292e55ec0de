"""Shared fixtures: small random Hugging Face CLIP checkpoints written with `save_pretrained`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

import dataclasses

import jax
import pytest

from saeft_jax.hf import config_to_hf
from saeft_jax.models.clip import CLIPConfig, TextConfig, VisionConfig
from saeft_jax.models.clip_shapes import clip_shape

TINY = CLIPConfig(
    vision=VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        image_size=32, patch_size=8),
    text=TextConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    vocab_size=514, max_position_embeddings=16, bos_token_id=512, eos_token_id=513,
                    pad_token_id=513),
    projection_dim=32,
)
VITB16 = clip_shape("vitb16")

# The tests compare formulas with fp32/fp64 references. On GPUs and TPUs XLA's default precision
# lets fp32 matmuls run as TF32 or bf16 passes (about 1e-4 relative off); the CPU is exact either way.
jax.config.update("jax_default_matmul_precision", "highest")


def random_hf_clip(shape: CLIPConfig, hidden_act: str = "quick_gelu", seed: int = 0, **text_overrides):
    """A `transformers.CLIPModel` whose every parameter is perturbed away from its neat init
    (LayerNorm scales not 1, biases not 0), so a mis-mapped leaf cannot go unnoticed."""
    import torch
    import transformers

    torch.manual_seed(seed)
    shape = dataclasses.replace(shape, vision=dataclasses.replace(shape.vision, hidden_act=hidden_act),
                                text=dataclasses.replace(shape.text, hidden_act=hidden_act, **text_overrides))
    model = transformers.CLIPModel(config_to_hf(shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_char_tokenizer(directory) -> None:
    """A CLIP BPE tokenizer with no merges (byte-level characters only): 514 ids, <|endoftext|>
    = 513 also used for padding, as OpenAI's tokenizer does."""
    import json

    from tokenizers import pre_tokenizers

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny quick_gelu CLIP checkpoint directory and the PyTorch model it holds."""
    model = random_hf_clip(TINY)
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    write_char_tokenizer(path)
    return path, model
