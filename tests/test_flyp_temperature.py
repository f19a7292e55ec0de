"""FLYP's temperature: `finetune.flyp_logit_scale="flyp"` updates logit_scale as FLYP's code does
(locuslab/FLYP `src/models/flyp_loss.py`: `logit_scale.exp()` unclamped, torch AdamW with weight decay
on every parameter), against that update in PyTorch; "clip" (the default) clamps it at ln 100."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from saeft_jax.config import base_config, finish
from saeft_jax.errors import ConfigError
from saeft_jax.models.clip_family import contrastive_loss
from saeft_jax.training.optim import make_optimizer

LR, WD = 1e-3, 0.2


def _embeddings():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 8)).astype(np.float32)
    return image, (image + 0.7 * rng.normal(size=(6, 8))).astype(np.float32)


def _flyp_step_in_pytorch(image, text, start: float) -> float:
    """One step of FLYP's update of logit_scale alone: CLIP's loss with exp(logit_scale), AdamW."""
    scale = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = torch.optim.AdamW([scale], lr=LR, weight_decay=WD)
    i = torch.nn.functional.normalize(torch.tensor(image, dtype=torch.float64), dim=-1)
    t = torch.nn.functional.normalize(torch.tensor(text, dtype=torch.float64), dim=-1)
    logits = scale.exp() * i @ t.T
    targets = torch.arange(len(image))
    loss = (
        torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
    ) / 2
    loss.backward()
    optimizer.step()
    return float(scale.detach())


def _our_step(image, text, start: float, max_logit_scale, decay_mask) -> float:
    optimizer, _ = make_optimizer(LR, 10, warmup_steps=1, weight_decay=WD, decay_mask=decay_mask)
    params = {"logit_scale": jnp.float32(start)}
    grads = jax.grad(
        lambda p: contrastive_loss(
            jnp.asarray(image), jnp.asarray(text), p["logit_scale"], max_logit_scale=max_logit_scale
        )[0]
    )(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return float(params["logit_scale"] + updates["logit_scale"])


@pytest.mark.parametrize("start", [math.log(100.0), math.log(100.0) + 0.5, 2.0])
def test_flyp_mode_updates_logit_scale_as_flyp(start):
    image, text = _embeddings()
    expected = _flyp_step_in_pytorch(image, text, start)
    assert _our_step(image, text, start, None, None) == pytest.approx(expected, abs=2e-6)


def test_clip_mode_clamps_and_spares_logit_scale_decay():
    image, text = _embeddings()
    above = math.log(100.0) + 0.5
    no_decay = lambda params: {"logit_scale": False}
    assert _our_step(image, text, above, math.log(100.0), no_decay) == pytest.approx(above, abs=1e-7)  # no gradient
    _, logits = contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(above))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(logits, 100.0 * unit(image) @ unit(text).T, rtol=1e-5)
    _, free = contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(above), max_logit_scale=None)
    np.testing.assert_allclose(free, math.exp(above) * unit(image) @ unit(text).T, rtol=1e-5)


def test_the_switch_is_checked():
    c = base_config()
    assert c.finetune.flyp_logit_scale == "clip"
    c.finetune.flyp_logit_scale = "openclip"
    with pytest.raises(ConfigError, match="flyp_logit_scale.*'clip'.*'flyp'"):
        finish(c)
