"""Image-embedding throughput: our jit-compiled forward vs transformers' PyTorch forward.

    python -m benchmarks.clip_forward --model vitb16 --batch 8 --steps 5 --json OUT
    python -m benchmarks.clip_forward --model vitb32 --batch 8 --steps 5 --backward   # forward + backward
    python -m benchmarks.clip_forward --model siglip_b16 --batch 8 --steps 5          # SigLIP B/16

Both run on the same random weights (a transformers `CLIPModel` or `SiglipModel` at the published
shape, saved and reopened with `saeft_jax.models.load`) on the same chip (the GPU when there is one); at
`--dtype bfloat16` ours computes in bf16 with fp32 weights and PyTorch runs under autocast.
`--backward` times the gradient of the summed embeddings with respect to every image-encoder
parameter instead (what fine-tuning adds to the forward).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import (
    MODEL_SHAPES,
    jax_peak_device_mib,
    median_seconds,
    peak_rss_mib,
    random_model_pair,
    report,
    torch_autocast,
    torch_device,
    torch_image_embeddings,
    torch_peak_device_mib,
    torch_timed,
    utilisation,
    vit_forward_flops,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vitb16", choices=MODEL_SHAPES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's peak at --dtype, for MFU")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch_model, model = random_model_pair(args.model)
    size = model.config.vision.image_size
    images = np.random.RandomState(0).randn(args.batch, size, size, 3).astype(np.float32)

    compute = dataclasses.replace(model, dtype=jnp.dtype(args.dtype)).image_encoder()
    encode = lambda p, x: compute.apply({"params": p}, x)
    params = model.image_params()
    images_jax = jax.device_put(images)
    device = torch_device()
    torch_model.to(device)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    autocast = torch_autocast(args.dtype)
    if args.backward:
        grad = jax.jit(jax.grad(lambda p, x: encode(p, x).sum()))
        jax_s = median_seconds(lambda: jax.block_until_ready(grad(params, images_jax)), args.steps)

        def torch_step():
            torch_model.zero_grad()
            with autocast:
                out = torch_image_embeddings(torch_model, pixels)
            out.float().sum().backward()

        torch_s = median_seconds(torch_timed(torch_step), args.steps)
    else:
        forward = jax.jit(encode)
        jax_s = median_seconds(lambda: forward(params, images_jax).block_until_ready(), args.steps)
        with torch.inference_mode(), autocast:
            torch_s = median_seconds(torch_timed(lambda: torch_image_embeddings(torch_model, pixels)), args.steps)
    flops = (3 if args.backward else 1) * vit_forward_flops(model.config.vision, args.batch)

    report(
        {
            "benchmark": "clip_backward" if args.backward else "clip_forward",
            "model": args.model,
            "batch": args.batch,
            "steps": args.steps,
            "dtype": args.dtype,
            "torch_device": device,
            "jax_ms_per_batch": 1e3 * jax_s,
            "torch_ms_per_batch": 1e3 * torch_s,
            "jax_images_per_s": args.batch / jax_s,
            "torch_images_per_s": args.batch / torch_s,
            "speedup_vs_torch": torch_s / jax_s,
            **utilisation(flops, jax_s, args.peak_tflops),
            **utilisation(flops, torch_s, args.peak_tflops, prefix="torch_"),
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mib": peak_rss_mib(),
            "peak_device_mib": jax_peak_device_mib(),
            "torch_peak_device_mib": torch_peak_device_mib(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
