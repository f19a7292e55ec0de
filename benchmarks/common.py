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

from saeft_jax.models import clip_shapes


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
    embed = 2 * patches * vision.patch_size**2 * vision.num_channels * d
    return float(batch * (vision.num_hidden_layers * layer + embed))


def utilisation(flops: float, seconds: float, peak_tflops: float | None, prefix: str = "") -> dict[str, float]:
    """Achieved TFLOP/s and, given the chip's peak, the model FLOPs utilisation (keys after `prefix`)."""
    achieved = flops / seconds / 1e12
    return {f"{prefix}tflops": achieved, **({f"{prefix}mfu": achieved / peak_tflops} if peak_tflops else {})}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import os

    import jax

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def import_torchvision_beside_cpu_torch() -> None:
    """Imports torchvision (open_clip's dependency) once, with its fake-kernel registration skipped.

    PyPI's torchvision wheel for torch 2.13 is a CUDA build; beside the CPU torch of this machine
    its `_meta_registrations` fails at import ("operator torchvision::nms does not exist"), and
    transformers then cannot import its PyTorch models either (it imports torchvision when it is
    installed). Those registrations only describe torchvision's detection operators for
    torch.compile, which no test or benchmark uses, so they are skipped while torchvision imports.
    """
    try:
        import torch.library
    except ImportError:
        return
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: lambda fn: fn
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    finally:
        torch.library.register_fake = register_fake


SIGLIP_SHAPES = ("siglip_b16",)  # transformers' SiglipConfig defaults: google/siglip-base-patch16-224's shape
MODEL_SHAPES = (*sorted(clip_shapes.SHAPES), *SIGLIP_SHAPES)


def random_model_pair(shape: str):
    """`(torch_model, model)`: a random transformers `CLIPModel` (or `SiglipModel`) at a published
    shape and the same weights loaded through `saeft_jax.models.load`."""
    import tempfile

    import_torchvision_beside_cpu_torch()
    import transformers

    from saeft_jax import models
    from saeft_jax.models.clip_family import config_to_hf

    if shape in SIGLIP_SHAPES:
        torch_model = transformers.SiglipModel(transformers.SiglipConfig()).eval()
    else:
        torch_model = transformers.CLIPModel(config_to_hf(clip_shapes.clip_shape(shape))).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model = models.load(tmp)
    return torch_model, model


def torch_image_embeddings(torch_model, pixels):
    """transformers' pooled image embeddings of NCHW `pixels` (CLIP: projected; SigLIP: the pooling head)."""
    out = torch_model.get_image_features(pixel_values=pixels)
    return getattr(out, "pooler_output", out)  # transformers 5 returns an output object


def report(result: dict[str, Any], json_path: str | None) -> None:
    """Prints `result` and writes it as JSON when asked."""
    result = {**result, "machine": machine()}
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
