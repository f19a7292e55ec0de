"""The benchmarks as gpu.sh runs them, on the CPU at batch 1: each model family's train step and
forward against transformers' PyTorch model, ours and theirs timed and reported as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # two B/16 towers built in JAX and in PyTorch: about a minute each


def run_benchmark(module: str, out, *args: str) -> dict:
    command = [sys.executable, "-m", module, *args, "--steps", "1", "--json", str(out)]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_siglip_train_step_against_pytorch(tmp_path):
    result = run_benchmark(
        "benchmarks.train_step",
        tmp_path / "step.json",
        "--model",
        "siglip_b16",
        "--batch",
        "1",
        "--regularizer",
        "sae_add_remove",
    )
    assert result["model"] == "siglip_b16" and result["ms_per_step"] > 0 and result["torch_ms_per_step"] > 0
    assert result["speedup_vs_torch"] == pytest.approx(result["torch_ms_per_step"] / result["ms_per_step"])


def test_siglip_forward_against_pytorch(tmp_path):
    result = run_benchmark(
        "benchmarks.clip_forward", tmp_path / "forward.json", "--model", "siglip_b16", "--batch", "1"
    )
    assert result["jax_ms_per_batch"] > 0 and result["torch_ms_per_batch"] > 0
