"""SAE quality on a set of embeddings: FVU, MSE, L0, dead latents and firing frequencies.

FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the inputs as the SAE sees them (unit-norm
rows; docs/method.md, "The sparse autoencoder"). Used on the training features after SAE
training and on the zero-shot and fine-tuned embeddings of every evaluated dataset.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax import parallel
from saeft_jax.sae import model
from saeft_jax.sae.frozen import FrozenSAE

_CHUNK = 65536


def unit_rows(x: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Rows as float64, divided by their norm (+ 1e-8) when `normalize`: what an SAE is given."""
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8) if normalize else x


def data_statistics(features: np.ndarray, normalize: bool = True) -> dict[str, Any]:
    """Mean and total variance of the rows (unit-normalized first when `normalize`), in one
    float64 pass over chunks."""
    n, d = features.shape
    total, total_sq = np.zeros(d), 0.0
    for start in range(0, n, _CHUNK):
        x = unit_rows(features[start : start + _CHUNK], normalize)
        total += x.sum(0)
        total_sq += float((x**2).sum())
    mean = total / n
    return {
        "n": n,
        "d": d,
        "mean": mean.astype(np.float32),
        "variance_per_example": (total_sq - n * float(mean @ mean)) / n,
    }


def geometric_median(features: np.ndarray, seed: int = 0, max_rows: int = _CHUNK, iters: int = 100) -> np.ndarray:
    """Weiszfeld's geometric median of (a random subsample of) the unit-normalized rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), min(max_rows, len(features)), replace=False))
    x = unit_rows(features[rows])
    median = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / np.maximum(np.linalg.norm(x - median, axis=-1), 1e-12)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median.astype(np.float32)


def evaluate_sae(
    sae: FrozenSAE, features: np.ndarray, *, batch_size: int = 1024, mesh=None, stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metrics of `sae` on all rows of `features` (raw embeddings, given to the SAE as it was trained)."""
    mesh = mesh or parallel.data_mesh()
    stats = stats or data_statistics(features, sae.normalize_inputs)
    n, d = features.shape
    dict_size = sae.dict_size
    params = jax.device_put(sae.params, parallel.replicated(mesh))
    k, relu, normalize = sae.k, sae.relu, sae.normalize_inputs

    @jax.jit
    def chunk_sums(params, raw, valid):
        x = model.unit_norm(raw) if normalize else raw
        x_hat, values, indices = model.reconstruct(params, x, k, relu=relu)
        fired = (values != 0) & valid[:, None]
        fires = jnp.zeros(dict_size, jnp.int32).at[indices].add(fired.astype(jnp.int32))
        return jnp.sum(((x_hat - x) ** 2).sum(-1) * valid), jnp.sum(fired), fires

    sse, active, fires = 0.0, 0, np.zeros(dict_size, np.int64)
    for start in range(0, n, batch_size):
        raw = np.asarray(features[start : start + batch_size], np.float32)
        valid = np.arange(batch_size) < len(raw)
        raw = np.pad(raw, ((0, batch_size - len(raw)), (0, 0)))
        s, a, f = jax.device_get(chunk_sums(params, jax.device_put(raw, parallel.batch_sharding(mesh)), valid))
        sse, active, fires = sse + float(s), active + int(a), fires + f
    return {
        "fvu": sse / (stats["variance_per_example"] * n),
        "mse": sse / (n * d),
        "l0": active / n,
        "dead_fraction": float(np.mean(fires == 0)),
        "firing_frequency": fires / n,
    }
