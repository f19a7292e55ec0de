"""FLYP: CLIP's contrastive loss against PyTorch, captions paired by label and template, and the
same loss over the global batch on 1 device, 8 devices and 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, subprocess_env

from saeft_jax import regularizers
from saeft_jax.data.preprocess import ImageSpec
from saeft_jax.models import ClipFamily, Model
from saeft_jax.models.clip import CLIP, image_encoder, image_params, init_params, text_encoder, text_params
from saeft_jax.models.clip_family import contrastive_loss
from saeft_jax.models.family import constant
from saeft_jax.training.flyp import make_flyp_loss

CLASSES, TEMPLATES = 3, 2


def torch_clip_loss(image, text, logit_scale):
    """CLIP's loss as open_clip writes it, with the scale clamped to [0, ln 100] first."""
    import torch
    import torch.nn.functional as F

    scale = logit_scale.clamp(0, np.log(100.0)).exp()
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    targets = torch.arange(len(image))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@pytest.mark.parametrize("logit_scale", [2.0, 5.0])  # 5 > ln 100: clamped, no gradient
def test_contrastive_loss_and_gradients_match_pytorch(logit_scale):
    import torch

    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    ours, grads = jax.value_and_grad(lambda i, t, s: contrastive_loss(i, t, s)[0], argnums=(0, 1, 2))(
        image, text, jnp.float32(logit_scale)
    )
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (image, text, np.float64(logit_scale))]
    reference = torch_clip_loss(*tensors)
    reference.backward()
    assert float(ours) == pytest.approx(reference.item(), rel=1e-5)
    for got, tensor in zip(grads, tensors):
        np.testing.assert_allclose(np.asarray(got), tensor.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert (float(grads[2]) == 0.0) == (logit_scale > np.log(100))


def setup_flyp(seed: int = 0):
    """A tiny CLIP (its trainable copy perturbed), captions of 3 classes x 2 templates, and a batch."""
    zeroshot = init_params(CLIP(TINY), jax.random.key(seed))
    model = Model(ClipFamily(), TINY, zeroshot, constant(None), ImageSpec(size=32))
    rng = np.random.default_rng(seed)
    perturb = lambda tree: jax.tree.map(lambda p: p + 0.05 * rng.normal(size=p.shape).astype(np.float32), tree)
    params = {
        "encoder": perturb(image_params(zeroshot)),
        "text": perturb(text_params(zeroshot)),
        "scales": {"logit_scale": jnp.float32(np.log(20.0))},
    }
    context = TINY.text.max_position_embeddings
    captions = rng.integers(0, 512, (CLASSES, TEMPLATES, context)).astype(np.int32)
    captions[..., rng.integers(3, context)] = TINY.text.eos_token_id  # where each caption is pooled
    frozen = {"encoder": image_params(zeroshot), "sae": None, "captions": captions}
    batch = {
        "images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "labels": rng.integers(0, CLASSES, 8).astype(np.int32),
        "templates": rng.integers(0, TEMPLATES, 8).astype(np.int32),
    }
    return model, params, frozen, batch


def test_each_image_is_paired_with_the_caption_of_its_label_under_its_template():
    import torch

    model, params, frozen, batch = setup_flyp()
    penalty = regularizers.get("mse").bind({})
    loss = make_flyp_loss(model, penalty, reg_lambda=3.0)
    total, metrics = loss(params, frozen, batch)

    image = np.asarray(image_encoder(model.module).apply({"params": params["encoder"]}, batch["images"]))
    image0 = np.asarray(image_encoder(model.module).apply({"params": frozen["encoder"]}, batch["images"]))
    ids = np.stack(
        [frozen["captions"][label, template] for label, template in zip(batch["labels"], batch["templates"])]
    )
    text = np.asarray(text_encoder(model.module).apply({"params": params["text"]}, ids))
    clip = torch_clip_loss(*(torch.tensor(x, dtype=torch.float64) for x in (image, text, np.log(20.0)))).item()
    reg = float(penalty(jnp.asarray(image), jnp.asarray(image0))[0])
    assert float(metrics["ce"]) == pytest.approx(clip, rel=1e-5)
    assert float(total) == pytest.approx(clip + 3.0 * reg, rel=1e-5) and reg > 0


# Three FLYP steps on the same global batch, its rows split over the processes, on every device.
WORKER = """
import json, sys
from saeft_jax import distributed
process_id, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if processes > 1:
    distributed.initialize(f"127.0.0.1:{port}", processes, process_id)
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from saeft_jax import parallel, regularizers
from saeft_jax.training.flyp import make_flyp_loss
from saeft_jax.training.optim import make_optimizer
from saeft_jax.training.step import init_state, make_train_step
from test_flyp import setup_flyp
model, params, frozen, batch = setup_flyp()
mesh = parallel.data_mesh()
optimizer, schedule = make_optimizer(1e-3, 10, warmup_steps=1)
loss = make_flyp_loss(model, regularizers.get("none").bind({}), 0.0)
step = make_train_step(loss, optimizer, schedule, mesh)
state, frozen = jax.device_put((init_state(params, optimizer), frozen), parallel.replicated(mesh))
rows = slice(process_id * 8 // processes, (process_id + 1) * 8 // processes)
sharding = parallel.batch_sharding(mesh)
local = {name: jax.make_array_from_process_local_data(sharding, x[rows]) for name, x in batch.items()}
losses = []
for _ in range(3):
    state, metrics = step(state, frozen, local)
    losses.append(float(metrics["loss"]))
print("RESULT " + json.dumps({"losses": losses, "devices": jax.device_count(),
                              "logit_scale": float(metrics["logit_scale"])}), flush=True)
"""


def run_workers(processes: int, devices_each: int) -> list[dict]:
    from test_multihost import free_port

    port = free_port()
    env = subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(processes), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for worker in workers:
        output, _ = worker.communicate(timeout=400)
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert worker.returncode == 0 and lines, output[-3000:]
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return results


@pytest.mark.slow
def test_the_same_flyp_steps_on_one_device_eight_devices_and_two_processes():
    (one,) = run_workers(1, 1)
    (eight,) = run_workers(1, 8)
    two = run_workers(2, 4)
    assert (one["devices"], eight["devices"], two[0]["devices"]) == (1, 8, 8)
    assert one["losses"][0] != one["losses"][2]  # it trains
    for other in (eight, *two):
        np.testing.assert_allclose(other["losses"], one["losses"], rtol=1e-5)
