"""Timing, memory and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def median_seconds(step: Callable[[], Any], steps: int, warmup: int = 2) -> float:
    """Median wall time of `step()` over `steps` calls after `warmup` untimed ones.

    `step` must block until its work is done (e.g. `jax.block_until_ready`).
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_peak_device_mib() -> float | None:
    """Peak memory JAX's allocator has held on the first accelerator, in MiB; None on the CPU."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def torch_device() -> str:
    """Where the PyTorch side runs: the GPU when there is one, so both sides use the same chip."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_autocast(dtype: str):
    """bfloat16 compute with fp32 weights for PyTorch (`torch.autocast`); a no-op at float32."""
    import torch

    return torch.autocast(torch_device(), dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def torch_timed(step: Callable[[], Any]) -> Callable[[], None]:
    """`step` made to block until its GPU work is done, as `median_seconds` needs."""
    import torch

    def blocking() -> None:
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return blocking


def torch_peak_device_mib() -> float | None:
    """Peak memory PyTorch's allocator has held on the GPU, in MiB; None without one."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def vit_forward_flops(vision: Any, batch: int) -> float:
    """Matmul FLOPs of one ViT image-tower forward over `batch` images (2 per multiply-add).

    Per layer: q, k, v and out projections 8TD^2, the MLP 4TDI, the attention scores and their
    weighted sum 4T^2D; plus the patch embedding. Model FLOPs as MFU counts them (no recomputation).
    """
    patches = (vision.image_size // vision.patch_size) ** 2
    t, d = patches + 1, vision.hidden_size
    layer = 8 * t * d * d + 4 * t * d * vision.intermediate_size + 4 * t * t * d
    embed = 2 * patches * vision.patch_size ** 2 * vision.num_channels * d
    return float(batch * (vision.num_hidden_layers * layer + embed))


def utilisation(flops: float, seconds: float, peak_tflops: float | None, prefix: str = "") -> dict[str, float]:
    """Achieved TFLOP/s and, given the chip's peak, the model FLOPs utilisation (keys after `prefix`)."""
    achieved = flops / seconds / 1e12
    return {f"{prefix}tflops": achieved, **({f"{prefix}mfu": achieved / peak_tflops} if peak_tflops else {})}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax
    import os

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "jax_devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def random_clip_pair(shape: str):
    """`(torch_model, model, params)`: a random transformers `CLIPModel` at a published shape
    and the same weights loaded through `saeft_jax.hf.load_clip`."""
    import tempfile

    import transformers

    from saeft_jax import hf
    from saeft_jax.models.clip_shapes import clip_shape

    torch_model = transformers.CLIPModel(hf.config_to_hf(clip_shape(shape))).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model, params = hf.load_clip(tmp)
    return torch_model, model, params


def report(result: dict[str, Any], json_path: str | None) -> None:
    """Prints `result` and writes it as JSON when asked."""
    result = {**result, "machine": machine()}
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
