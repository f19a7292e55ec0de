"""CLIP image-embedding throughput: our jit-compiled forward vs transformers' PyTorch forward.

    python -m benchmarks.clip_forward --model vitb16 --batch 8 --steps 5 --json OUT
    python -m benchmarks.clip_forward --model vitb32 --batch 8 --steps 5 --backward   # forward + backward

Both run on the same random weights (a transformers `CLIPModel` at the published shape, saved
and reopened with `saeft_jax.hf.load_clip`) on the CPU, fp32. `--backward` times the gradient of
the summed embeddings with respect to every image-encoder parameter instead (what fine-tuning
adds to the forward).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import torch

from benchmarks.common import median_seconds, peak_rss_mib, random_clip_pair, report
from saeft_jax.models.clip import image_params
from saeft_jax.models.clip_shapes import SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vitb16", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch_model, model, params = random_clip_pair(args.model)
    size = model.config.vision.image_size
    images = np.random.RandomState(0).randn(args.batch, size, size, 3).astype(np.float32)

    encode = lambda p, x: model.apply({"params": p}, x, method=model.encode_image)
    images_jax = jax.device_put(images)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    if args.backward:
        encoder = image_params(params)
        grad = jax.jit(jax.grad(lambda p, x: encode({**params, **p}, x).sum()))
        jax_s = median_seconds(lambda: jax.block_until_ready(grad(encoder, images_jax)), args.steps)

        def torch_step():
            torch_model.zero_grad()
            out = torch_model.get_image_features(pixel_values=pixels)
            getattr(out, "pooler_output", out).sum().backward()  # transformers 5 returns an output object

        torch_s = median_seconds(torch_step, args.steps)
    else:
        forward = jax.jit(encode)
        jax_s = median_seconds(lambda: forward(params, images_jax).block_until_ready(), args.steps)
        with torch.inference_mode():
            torch_s = median_seconds(lambda: torch_model.get_image_features(pixel_values=pixels), args.steps)

    report({
        "benchmark": "clip_backward" if args.backward else "clip_forward", "model": args.model,
        "batch": args.batch, "steps": args.steps,
        "jax_ms_per_batch": 1e3 * jax_s, "torch_ms_per_batch": 1e3 * torch_s,
        "jax_images_per_s": args.batch / jax_s, "torch_images_per_s": args.batch / torch_s,
        "speedup_vs_torch": torch_s / jax_s, "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    }, args.json)


if __name__ == "__main__":
    main()
