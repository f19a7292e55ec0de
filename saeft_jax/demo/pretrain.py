"""The demo's CLIP: a small ViT and text transformer pretrained contrastively on captioned
digits of every style, saved as a Hugging Face checkpoint (with its tokenizer and image
settings) that `hf.load_clip` opens like any other, and cached by its settings so a second run
skips pretraining."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saeft_jax import hf
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.demo import digits
from saeft_jax.demo.tokenizer import build_tokenizer
from saeft_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig, init_params
from saeft_jax.observe import progress
from saeft_jax.training.optim import make_optimizer

STYLE_WORDS = {"clean": "plain", "inverted": "inverted", "rotated": "rotated", "noisy": "noisy", "thick": "bold",
               "colored": "colorful"}
CAPTIONS = ("a photo of the digit {d}.", "a {s} photo of the digit {d}.", "an image of the number {d}.",
            "a {s} image of the number {d}.", "the handwritten digit {d}.", "a {s} {d}.")
_VERSION = 1  # bump when the pretraining recipe changes, so caches are not reused


@dataclasses.dataclass(frozen=True)
class PretrainSetup:
    """Model shape and the contrastive training recipe."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    width: int = 96
    layers: int = 3
    text_width: int = 64
    text_layers: int = 2
    projection_dim: int = 64
    patch_size: int = 6
    context: int = 16
    seed: int = 0


def _settings(data: digits.DigitsSetup, setup: PretrainSetup) -> dict:
    return {"data": dataclasses.asdict(data), "pretrain": dataclasses.asdict(setup), "version": _VERSION}


def checkpoint_dir(cache_dir: str | Path, data: digits.DigitsSetup, setup: PretrainSetup) -> Path:
    """Where the checkpoint for these settings is cached (present or not)."""
    key = hashlib.sha256(json.dumps(_settings(data, setup), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"demo-clip-{key}"


def demo_clip(cache_dir: str | Path, data: digits.DigitsSetup, setup: PretrainSetup, *,
              show_progress: bool = True) -> Path:
    """The checkpoint directory for these settings, pretraining it first when it is not cached."""
    directory = checkpoint_dir(cache_dir, data, setup)
    if (directory / "model.safetensors").exists():
        return directory
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(_corpus(), Path(tmp) / "tokenizer")
        model, params = _pretrain(tokenizer, data, setup, show_progress)
        hf.save_clip(model, params, directory, tokenizer=tokenizer, image_spec=ImageSpec(size=data.image_size))
    (directory / "demo_settings.json").write_text(json.dumps(_settings(data, setup), indent=1))
    return directory


def _corpus() -> list[str]:
    return [c.format(d=d, s=s) for c in CAPTIONS for d in digits.NAMES for s in STYLE_WORDS.values()] + \
           [t.format(d) for t in digits.TEMPLATES for d in digits.NAMES]


def _config(tokenizer, data: digits.DigitsSetup, setup: PretrainSetup) -> CLIPConfig:
    return CLIPConfig(
        vision=VisionConfig(hidden_size=setup.width, num_hidden_layers=setup.layers, num_attention_heads=4,
                            intermediate_size=4 * setup.width, image_size=data.image_size, patch_size=setup.patch_size),
        text=TextConfig(hidden_size=setup.text_width, num_hidden_layers=setup.text_layers, num_attention_heads=4,
                        intermediate_size=4 * setup.text_width, vocab_size=len(tokenizer),
                        max_position_embeddings=setup.context, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        projection_dim=setup.projection_dim)


def _caption_ids(tokenizer, context: int) -> np.ndarray:
    """Token ids of every caption, indexed [style, digit, caption template]."""
    texts = [c.format(d=d, s=STYLE_WORDS[s]) for s in digits.STYLES for d in digits.NAMES for c in CAPTIONS]
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=context, return_tensors="np")["input_ids"]
    return ids.reshape(len(digits.STYLES), len(digits.NAMES), len(CAPTIONS), context).astype(np.int32)


def _pretrain(tokenizer, data: digits.DigitsSetup, setup: PretrainSetup, show_progress: bool):
    images, labels, styles = digits.pretraining_set(data)
    spec = ImageSpec(size=data.image_size)
    pixels = (images.astype(np.float32) / 255 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    captions = _caption_ids(tokenizer, setup.context)
    model = CLIP(_config(tokenizer, data, setup))
    params = init_params(model, jax.random.PRNGKey(setup.seed))
    optimizer, _ = make_optimizer(setup.lr, setup.steps, warmup_steps=setup.warmup_steps)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, ids, labels):
        def loss_fn(params):
            image = model.apply({"params": params}, images, method=model.encode_image)
            text = model.apply({"params": params}, ids, method=model.encode_text)
            image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
            text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
            logits = jnp.exp(params["logit_scale"]) * image @ text.T
            # captions of the same digit are all positives (a batch holds many of each)
            same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
            targets = same / same.sum(-1, keepdims=True)
            return (optax.softmax_cross_entropy(logits, targets).mean()
                    + optax.softmax_cross_entropy(logits.T, targets).mean()) / 2

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(setup.seed)
    bar = progress(setup.steps, "pretrain demo CLIP", enabled=show_progress)
    for _ in range(setup.steps):
        rows = rng.choice(len(pixels), setup.batch_size, replace=False)
        ids = captions[styles[rows], labels[rows], rng.integers(0, len(CAPTIONS), len(rows))]
        params, opt_state, loss = step(params, opt_state, pixels[rows], ids, labels[rows])
        bar.update(1)
        if bar.n % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    return model, jax.device_get(params)
