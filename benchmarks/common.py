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


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax
    import os

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "jax_devices": [str(d) for d in jax.devices()]}


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
