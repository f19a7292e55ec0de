"""WiSE-FT: weight-space mixing of the zero-shot and fine-tuned models, and the single-pass
sweep that scores one batch under every mixing weight.

`theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft` over all parameters, head included. The
sweep mixes inside the jit program, one alpha after another (`lax.map`), so a batch is decoded
once, no pass over the data is repeated, and one mixed copy of the model exists at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saeft_jax import parallel
from saeft_jax.models.heads import classify

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def alpha_key(alpha: float) -> str:
    """The name of WiSE-FT weight `alpha` in JSON files and labels: one decimal, or two where
    it has two ("0.5", "0.25"); `config.finish` allows no finer weights, so names never collide."""
    one = f"{alpha:.1f}"
    return one if abs(float(one) - alpha) < 1e-9 else f"{alpha:.2f}"


def mix(theta0, theta_ft, alpha):
    """(1 - alpha) theta0 + alpha theta_ft, leaf by leaf; alpha 0 and 1 are the endpoints themselves,
    so the zero-shot row is the zero-shot model's whatever the other holds (`0 * inf` is NaN)."""

    def one(a, b):
        mixed = (1 - alpha) * a + alpha * b
        return jnp.where(alpha == 0, a, jnp.where(alpha == 1, b, mixed))

    return jax.tree.map(one, theta0, theta_ft)


def sweep_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The sorted alphas to evaluate: those asked for plus the endpoints (zero-shot, fine-tuned)."""
    return tuple(sorted({float(a) for a in alphas} | {0.0, 1.0}))


def make_sweep(encoder: nn.Module, project: Callable, alphas: Sequence[float], mesh) -> Callable:
    """The jit `sweep(theta0, theta_ft, images) -> (predictions (A, B), embeddings (2, B, d))`:
    the dataset-space prediction under each of `alphas` (from `sweep_alphas`), and the image
    embeddings at alpha 0 and 1. `theta` = {"encoder": image params, "head": head};
    `project` maps head logits to the dataset's classes (`DatasetSpec.project`)."""
    alphas = jnp.asarray(sweep_alphas(alphas), jnp.float32)

    def one(theta0, theta_ft, images, alpha):
        theta = mix(theta0, theta_ft, alpha)
        embeddings = encoder.apply({"params": theta["encoder"]}, images)
        return jnp.argmax(project(classify(theta["head"], embeddings)), -1).astype(jnp.int32), embeddings

    def sweep(theta0, theta_ft, images):
        predictions, embeddings = jax.lax.map(lambda a: one(theta0, theta_ft, images, a), alphas)
        return predictions, jnp.stack([embeddings[0], embeddings[-1]])

    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(sweep, in_shardings=(replicated, replicated, batch))


def as_numpy(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one NumPy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
