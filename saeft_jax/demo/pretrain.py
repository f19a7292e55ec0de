"""The demo's model: a small CLIP (or SigLIP) pretrained with its family's own loss on captioned
digits of every style, saved as a Hugging Face checkpoint (with its tokenizer and image settings)
that `models.load` opens like any other, and cached by its settings so a second run skips
pretraining."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

from saeft_jax import stopping
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.demo import digits
from saeft_jax.demo.tokenizer import build_tokenizer
from saeft_jax.models import ClipFamily, Model, SiglipFamily, siglip
from saeft_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig, init_params
from saeft_jax.models.family import constant
from saeft_jax.observe import progress
from saeft_jax.training.optim import make_optimizer

STYLE_WORDS = {
    "clean": "plain",
    "inverted": "inverted",
    "rotated": "rotated",
    "noisy": "noisy",
    "thick": "bold",
    "colored": "colorful",
}
CAPTIONS = (
    "a photo of the digit {d}.",
    "a {s} photo of the digit {d}.",
    "an image of the number {d}.",
    "a {s} image of the number {d}.",
    "the handwritten digit {d}.",
    "a {s} {d}.",
)
_VERSION = 1  # bump when the pretraining recipe changes, so caches are not reused


@dataclasses.dataclass(frozen=True)
class PretrainSetup:
    """Model family and shape, and the contrastive training recipe."""

    family: str = "clip"  # or "siglip"
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
    return Path(cache_dir).expanduser() / f"demo-{setup.family}-{key}"


def demo_model(
    cache_dir: str | Path, data: digits.DigitsSetup, setup: PretrainSetup, *, show_progress: bool = True
) -> Path:
    """The checkpoint directory for these settings, pretraining it first when it is not cached."""
    directory = checkpoint_dir(cache_dir, data, setup)
    if (directory / "model.safetensors").exists():
        return directory
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(_corpus(), Path(tmp) / "tokenizer")
        model = _pretrain(_initial(tokenizer, data, setup), data, setup, show_progress)
        model.save(directory, "hf")
    (directory / "demo_settings.json").write_text(json.dumps(_settings(data, setup), indent=1))
    return directory


def _corpus() -> list[str]:
    return [c.format(d=d, s=s) for c in CAPTIONS for d in digits.NAMES for s in STYLE_WORDS.values()] + [
        t.format(d) for t in digits.TEMPLATES for d in digits.NAMES
    ]


def _initial(tokenizer, data: digits.DigitsSetup, setup: PretrainSetup) -> Model:
    """The randomly initialised model of `setup.family` (SigLIP: its GELU, LayerNorm eps and a
    squash to the image size with mean and std 0.5; its embedding is the image tower's width)."""
    siglip_family = setup.family == "siglip"
    act, eps = ("gelu_pytorch_tanh", 1e-6) if siglip_family else ("quick_gelu", 1e-5)
    vision = VisionConfig(
        hidden_size=setup.width,
        num_hidden_layers=setup.layers,
        num_attention_heads=4,
        intermediate_size=4 * setup.width,
        image_size=data.image_size,
        patch_size=setup.patch_size,
        hidden_act=act,
        layer_norm_eps=eps,
    )
    text = TextConfig(
        hidden_size=setup.text_width,
        num_hidden_layers=setup.text_layers,
        num_attention_heads=4,
        intermediate_size=4 * setup.text_width,
        vocab_size=len(tokenizer),
        max_position_embeddings=setup.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act=act,
        layer_norm_eps=eps,
    )
    rng = jax.random.PRNGKey(setup.seed)
    if siglip_family:
        config = siglip.SiglipConfig(vision, text, projection_size=setup.width)
        spec = ImageSpec(data.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", "bicubic")
        params = siglip.init_params(config, rng)
        # SigLIP starts its bias at -10 for batches of 32k pairs, nearly all negatives; here one pair in
        # ten matches (the same digit), so the bias starts at those prior log-odds instead
        params["logit_bias"] = np.full((1,), np.log(1 / 9), np.float32)
        return Model(SiglipFamily(), config, params, constant(tokenizer), spec)
    config = CLIPConfig(vision, text, projection_dim=setup.projection_dim)
    return Model(
        ClipFamily(), config, init_params(CLIP(config), rng), constant(tokenizer), ImageSpec(size=data.image_size)
    )


def _caption_ids(tokenizer, context: int) -> np.ndarray:
    """Token ids of every caption, indexed [style, digit, caption template]."""
    texts = [c.format(d=d, s=STYLE_WORDS[s]) for s in digits.STYLES for d in digits.NAMES for c in CAPTIONS]
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=context, return_tensors="np")["input_ids"]
    return ids.reshape(len(digits.STYLES), len(digits.NAMES), len(CAPTIONS), context).astype(np.int32)


def _pretrain(model: Model, data: digits.DigitsSetup, setup: PretrainSetup, show_progress: bool) -> Model:
    images, labels, styles = digits.pretraining_set(data)
    spec = model.image_spec  # the digits are already at the model's size: a resize would change nothing
    pixels = (images.astype(np.float32) / 255 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    captions = _caption_ids(model.tokenizer, setup.context)
    params = model.params
    optimizer, _ = make_optimizer(setup.lr, setup.steps, warmup_steps=setup.warmup_steps)
    opt_state = optimizer.init(params)
    image_encoder, text_encoder = model.image_encoder(), model.text_encoder()

    @jax.jit
    def step(params, opt_state, images, ids, labels):
        def loss_fn(params):
            image = image_encoder.apply({"params": model.image_params(params)}, images)
            text = text_encoder.apply({"params": model.text_params(params)}, ids)
            same = labels[:, None] == labels[None, :]  # captions of the same digit are all positives
            return model.pretrain_loss(image, text, model.scale_params(params), same)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(setup.seed)
    bar = progress(setup.steps, f"pretrain demo {setup.family}", enabled=show_progress)
    for done in range(setup.steps):
        stopping.check(f"in the demo's pretraining at step {done} of {setup.steps}")  # nothing is cached yet
        rows = rng.choice(len(pixels), setup.batch_size, replace=False)
        ids = captions[styles[rows], labels[rows], rng.integers(0, len(CAPTIONS), len(rows))]
        params, opt_state, loss = step(params, opt_state, pixels[rows], ids, labels[rows])
        bar.update(1)
        if bar.n % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    return model.with_params(jax.device_get(params))
