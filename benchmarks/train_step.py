"""SAE-FT train step time: our jit step vs the same step done the PyTorch way.

    python -m benchmarks.train_step --model vitb32 --batch 8 --regularizer sae_add_remove --steps 5 --json OUT

Both fine-tune the full image encoder and a 1000-class head from the same random weights with
cross-entropy + reg_lambda * R, global-norm clipping at 1.0 and AdamW (`--model siglip_b16`: a
SigLIP B/16, transformers' `SiglipVisionModel` on the PyTorch side). The PyTorch way is the
reference's: transformers' `CLIPVisionModelWithProjection`, a frozen deep copy run under
`no_grad` for f0, dense Top-K SAE codes, on the GPU when there is one (bfloat16: under autocast).
Reported: median ms per step after warm-up, images/s, model TFLOP/s (and MFU given
`--peak-tflops`), peak host memory after our part and after both, and peak device memory.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from benchmarks import torch_reference
from benchmarks.common import (
    MODEL_SHAPES,
    jax_peak_device_mib,
    median_seconds,
    peak_rss_mib,
    random_model_pair,
    report,
    torch_autocast,
    torch_device,
    torch_peak_device_mib,
    torch_timed,
    utilisation,
    vit_forward_flops,
)
from saeft_jax import parallel, regularizers
from saeft_jax.sae import model as sae
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.training.optim import make_optimizer
from saeft_jax.training.step import init_state, make_loss, make_train_step

CLASSES, REG_LAMBDA = 1000, 70.0


def ours(model, images, labels, head, sae_params, name: str, steps: int, dtype, teacher_cache: bool = False) -> float:
    encoder = dataclasses.replace(model, dtype=dtype).image_encoder()
    entry = regularizers.get(name)
    taps = entry.taps(model.vision_layers) if entry.taps else ()
    sae_value = FrozenSAE(sae_params, sae_params["W_enc"].shape[0] // 32)  # k = d / 32
    optimizer, schedule = make_optimizer(1e-5, total_steps=1000, warmup_steps=500)
    mesh = parallel.data_mesh()
    step = make_train_step(make_loss(encoder, entry.bind({}), REG_LAMBDA, taps=taps), optimizer, schedule, mesh)
    # Everything on the device first, as the training loop has it: the timing is the step alone.
    frozen = jax.device_put({"encoder": model.image_params(), "sae": sae_value}, parallel.replicated(mesh))
    batch = jax.device_put({"images": images, "labels": labels}, parallel.batch_sharding(mesh))
    carry = {"state": init_state({"encoder": model.image_params(), "head": head}, optimizer)}
    if teacher_cache:
        batch["teacher"] = jax.jit(encoder.apply)({"params": frozen["encoder"]}, batch["images"])

    def one_step():
        carry["state"], metrics = step(carry["state"], frozen, batch)
        jax.block_until_ready(metrics["loss"])

    return median_seconds(one_step, steps)


def pytorch(torch_model, images, labels, head, sae_params, name: str, steps: int, dtype: str) -> float:
    """The reference's step on `torch_device()`; bfloat16 runs the model under autocast, fp32 weights."""
    device = torch_device()
    siglip = isinstance(torch_model, transformers.SiglipModel)
    vision_class = transformers.SiglipVisionModel if siglip else transformers.CLIPVisionModelWithProjection
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        encoder = vision_class.from_pretrained(tmp, trust_remote_code=False)
        encoder = encoder.train().to(device)
    embed = (
        (lambda model, x: model(pixel_values=x).pooler_output)
        if siglip
        else (lambda model, x: model(pixel_values=x).image_embeds)
    )
    frozen = copy.deepcopy(encoder).eval().requires_grad_(False)
    to_torch = lambda a: torch.from_numpy(np.array(a)).to(device)
    head_w, head_b = torch.nn.Parameter(to_torch(head["W"])), torch.nn.Parameter(torch.zeros(CLASSES, device=device))
    trainable = [*encoder.parameters(), head_w, head_b]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.1)
    sae_t = {n: to_torch(v) for n, v in sae_params.items()}
    k = sae_t["W_enc"].shape[0] // 32
    pixels, targets = to_torch(images.transpose(0, 3, 1, 2)), to_torch(labels).long()
    autocast = torch_autocast(dtype)
    penalizes = regularizers.get(name).penalizes

    def one_step():
        with autocast:
            f = embed(encoder, pixels).float()
            with torch.no_grad():  # plain fine-tuning needs no zero-shot forward (XLA drops ours too)
                f0 = f.detach() if not penalizes else embed(frozen, pixels).float()
        logits = torch_reference.unit(f) @ head_w.T + head_b
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss = loss + REG_LAMBDA * torch_reference.regularizer(name, f, f0, sae_t, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return median_seconds(torch_timed(one_step), steps)


def step_flops(vision, batch: int, regularizer: str, teacher_cache: bool) -> float:
    """Model FLOPs of one step: forward and backward (3 forwards) of the trained encoder, plus the
    frozen encoder's forward unless the regularizer needs none or the teacher cache replaces it."""
    forward = vit_forward_flops(vision, batch)
    return (3 + (regularizers.get(regularizer).penalizes and not teacher_cache)) * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vitb32", choices=MODEL_SHAPES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--regularizer", default="sae_add_remove", choices=list(regularizers.REGISTRY))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--teacher-cache",
        action="store_true",
        help="read f0 from a precomputed cache instead of running the frozen encoder",
    )
    parser.add_argument("--skip-torch", action="store_true", help="time only our step")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the chip's peak at --dtype, to report model FLOPs utilisation (H100/H200 bf16: 989)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch_model, model = random_model_pair(args.model)
    d, size = model.embed_dim, model.config.vision.image_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, args.batch).astype(np.int32)
    w = rng.normal(size=(CLASSES, d)).astype(np.float32)
    head = {"W": jnp.asarray(100 * w / np.linalg.norm(w, axis=-1, keepdims=True)), "b": jnp.zeros(CLASSES)}
    sae_params = jax.device_get(sae.init_params(jax.random.key(0), d, 4 * d))

    ours_s = ours(
        model, images, labels, head, sae_params, args.regularizer, args.steps, jnp.dtype(args.dtype), args.teacher_cache
    )
    flops = step_flops(model.config.vision, args.batch, args.regularizer, args.teacher_cache)
    result = {
        "benchmark": "train_step",
        "model": args.model,
        "batch": args.batch,
        "regularizer": args.regularizer,
        "dtype": args.dtype,
        "teacher_cache": args.teacher_cache,
        "steps": args.steps,
        "ms_per_step": 1e3 * ours_s,
        "images_per_s": args.batch / ours_s,
        "model_flops_per_step": flops,
        **utilisation(flops, ours_s, args.peak_tflops),
        "peak_rss_mib": peak_rss_mib(),
        "peak_device_mib": jax_peak_device_mib(),
    }
    if not args.skip_torch:
        torch_s = pytorch(torch_model, images, labels, head, sae_params, args.regularizer, args.steps, args.dtype)
        torch_flops = step_flops(model.config.vision, args.batch, args.regularizer, teacher_cache=False)
        result.update(
            torch_device=torch_device(),
            torch_ms_per_step=1e3 * torch_s,
            speedup_vs_torch=torch_s / ours_s,
            torch_images_per_s=args.batch / torch_s,
            **utilisation(torch_flops, torch_s, args.peak_tflops, prefix="torch_"),
            torch_threads=torch.get_num_threads(),
            peak_rss_mib_with_torch=peak_rss_mib(),
            torch_peak_device_mib=torch_peak_device_mib(),
        )
    report(result, args.json)


if __name__ == "__main__":
    main()
