"""Trains the Top-K SAE on frozen CLIP embeddings (docs/method.md), data-parallel, resumable.

Defaults reproduce the reference: unit-norm inputs, MSE, AdamW (lr 1e-3, betas 0.9/0.999,
weight decay 0.01), batch 1024, 100 epochs, no schedule. The reference's known weaknesses are
fixed behind options that are off by default (`SAEOptions`). Each epoch visits a fresh
permutation of the data seeded by (seed, epoch) and drops the last partial batch, so a resumed
run sees exactly the batches of an uninterrupted one. The trainer writes no file: it returns the
frozen SAE and its metrics, saves its state through the `checkpoints` it is given and hands each
epoch's figures to `on_epoch`; the sae stage (`saeft_jax.stages.sae`) writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saeft_jax import parallel, stopping
from saeft_jax.observe import progress
from saeft_jax.sae import model
from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.quality import data_statistics, evaluate_sae, geometric_median


@dataclasses.dataclass(frozen=True)
class SAEOptions:
    """Switches of `train_sae` beyond the reference (all off by default) and how it runs.

    relu: ReLU after Top-K. b_enc: an encoder bias. tied_init: W_enc starts as W_dec^T.
    b_pre_init: "zeros" (reference), "mean" or "median" (geometric) of the normalized data.
    auxk: the AuxK loss of Gao et al. (2024) with coefficient auxk_coef over the k_aux (default
    d/2) largest pre-activations of latents silent for dead_after samples (capped at one epoch).
    auxk_normalized: both terms normalised as Gao et al.'s code (openai/sparse_autoencoder): the
    main MSE divided by the data's per-element variance, the AuxK MSE by the residual's variance
    over the batch (off: both unnormalised, which weighs AuxK about 0.2x as much).
    renorm_decoder: decoder rows back to unit norm after each step, with the gradient component
    along each row removed first. sparse: gather-based kernels (False: dense reference path).
    progress: a progress bar or lines. device_bytes: features up to this size live on the devices.
    devices: the devices to train on (default all).
    """

    relu: bool = False
    b_enc: bool = False
    tied_init: bool = False
    b_pre_init: str = "zeros"
    auxk: bool = False
    auxk_coef: float = 1 / 32
    auxk_normalized: bool = False
    k_aux: int | None = None
    dead_after: int = 1_000_000
    renorm_decoder: bool = False
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    sparse: bool = True
    progress: bool = True
    device_bytes: int = 2**30
    devices: tuple | None = None

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> SAEOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown train_sae options {unknown}; known: {sorted(known)}")
        if options.get("b_pre_init", "zeros") not in ("zeros", "mean", "median"):
            raise ValueError(f"b_pre_init must be 'zeros', 'mean' or 'median'; got {options['b_pre_init']!r}")
        return cls(**options)


class EpochCheckpoints(Protocol):
    """Where `train_sae` keeps its state after each epoch (`saeft_jax.checkpoints.Checkpoints` is one)."""

    def restore_latest(self, like: Any) -> tuple[int, Any, dict[str, Any]] | None: ...

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None: ...


def train_sae(
    features: np.ndarray,
    *,
    dict_size: int,
    k: int,
    batch_size: int = 1024,
    epochs: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoints: EpochCheckpoints | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> tuple[FrozenSAE, dict[str, Any]]:
    """Trains on an (N, d) array (in memory or memory-mapped) of raw embeddings.

    Returns the trained SAE (its parameters in NumPy, with `k` and `relu`) and the final model's
    metrics on all of `features`: `fvu`, `mse`, `l0`, `dead_fraction`, `firing_frequency` (F,),
    plus `epochs`. With `checkpoints`, training resumes after the newest epoch saved there and
    saves each epoch's state (the caller closes them); `on_epoch` receives each epoch's running
    figures `{"epoch", "fvu", "mse", "l0", "dead_fraction"}` once that epoch's save has begun (Orbax
    may still be writing it; a resumed run starts at the epoch after the restored one).
    """
    opts = SAEOptions.from_kwargs(options)
    n, d = features.shape
    if n < batch_size:
        raise ValueError(f"{n} feature rows are fewer than one batch of {batch_size}; lower batch_size.")
    mesh = parallel.data_mesh(list(opts.devices) if opts.devices else None)
    parallel.check_batch_divides(batch_size, mesh)
    stats = data_statistics(features)
    optimizer = optax.adamw(lr, b1=opts.b1, b2=opts.b2, eps=1e-8, weight_decay=opts.weight_decay)
    state = initial_state(features, d, dict_size, seed, opts, stats, optimizer, mesh)
    mse_scale = d / stats["variance_per_example"] if opts.auxk_normalized else 1.0  # Gao et al.'s 1 / variance
    step = make_step(optimizer, k, opts, min(opts.dead_after, n), mesh, mse_scale)
    steps_per_epoch = n // batch_size
    start = 0
    latest = checkpoints.restore_latest(state) if checkpoints is not None else None
    if latest is not None:
        _, state, meta = latest
        start = meta["epoch"] + 1
    batches = _Batches(features, batch_size, seed, mesh, opts.device_bytes)
    bar = progress(epochs * steps_per_epoch, "sae", enabled=opts.progress, initial=start * steps_per_epoch)
    try:
        for epoch in range(start, epochs):
            state, epoch_stats = _run_epoch(state, step, batches, epoch, dict_size, bar)
            record = {"epoch": epoch, **_epoch_metrics(epoch_stats, stats, steps_per_epoch * batch_size)}
            bar.set_postfix(fvu=f"{record['fvu']:.4f}", dead=f"{record['dead_fraction']:.3f}")
            if checkpoints is not None:
                checkpoints.save(epoch, state, {"epoch": epoch})
            if on_epoch is not None:
                on_epoch(record)
            stopping.check(f"after SAE epoch {epoch + 1} of {epochs}")
        sae = FrozenSAE(jax.device_get(state["params"]), k, relu=opts.relu)
        final = evaluate_sae(sae, features, batch_size=batch_size, mesh=mesh, stats=stats)
    finally:
        bar.close()
    return sae, {**final, "epochs": epochs}


def initial_state(
    features: np.ndarray,
    d: int,
    dict_size: int,
    seed: int,
    opts: SAEOptions,
    stats: dict[str, Any],
    optimizer: optax.GradientTransformation,
    mesh,
) -> dict[str, Any]:
    """Parameters, optimizer state and the per-latent samples-since-fired counter, replicated."""
    b_pre = {"zeros": lambda: None, "mean": lambda: stats["mean"], "median": lambda: geometric_median(features, seed)}[
        opts.b_pre_init
    ]()
    params = model.init_params(
        jax.random.key(seed), d, dict_size, b_enc=opts.b_enc, tied_init=opts.tied_init, b_pre=b_pre
    )
    state = {"params": params, "opt": optimizer.init(params), "since_fired": jnp.zeros(dict_size, jnp.int32)}
    return jax.device_put(state, parallel.replicated(mesh))


def make_step(
    optimizer: optax.GradientTransformation, k: int, opts: SAEOptions, dead_after: int, mesh, mse_scale: float = 1.0
):
    """The jit-compiled step `(state, acc, raw_batch) -> (state, acc)`; state and the epoch
    accumulators are donated, the batch is split over the mesh's data axis. The loss is
    `mse_scale * MSE` (+ the AuxK term)."""

    def loss_fn(params, x, dead):
        x_hat, values, indices = model.reconstruct(params, x, k, relu=opts.relu, sparse=opts.sparse)
        loss = mse_scale * jnp.mean((x_hat - x) ** 2)
        if opts.auxk:
            k_aux = opts.k_aux or x.shape[-1] // 2
            residual = jax.lax.stop_gradient(x - x_hat)
            loss = loss + opts.auxk_coef * model.auxk_loss(
                params, x, residual, dead, k_aux, relu=opts.relu, normalized=opts.auxk_normalized
            )
        return loss, (x_hat, values, indices)

    def step(state, acc, raw):
        x = model.unit_norm(raw)
        params = state["params"]
        dead = state["since_fired"] >= dead_after
        grads, (x_hat, values, indices) = jax.grad(loss_fn, has_aux=True)(params, x, dead)
        if opts.renorm_decoder:
            w = params["W_dec"]
            grads["W_dec"] = grads["W_dec"] - jnp.sum(grads["W_dec"] * w, -1, keepdims=True) * w
        updates, opt_state = optimizer.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        if opts.renorm_decoder:
            params["W_dec"] = params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
        fires = jnp.zeros_like(state["since_fired"]).at[indices].add((values != 0).astype(jnp.int32))
        since_fired = jnp.where(fires > 0, 0, state["since_fired"] + x.shape[0])
        acc = {
            "sse": acc["sse"] + jnp.sum((x_hat - x) ** 2),
            "fires": acc["fires"] + fires,
            "active": acc["active"] + jnp.sum(values != 0),
        }
        return {"params": params, "opt": opt_state, "since_fired": since_fired}, acc

    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, replicated, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=(0, 1),
    )


def _run_epoch(state, step, batches: _Batches, epoch: int, dict_size: int, bar):
    acc = {
        "sse": jnp.zeros((), jnp.float32),
        "fires": jnp.zeros(dict_size, jnp.int32),
        "active": jnp.zeros((), jnp.int32),
    }
    for i, batch in enumerate(batches.epoch(epoch)):
        state, acc = step(state, acc, batch)
        if i % 32 == 31:  # keep the dispatch queue short so the progress bar tells the truth
            acc["sse"].block_until_ready()
        bar.update(1)
    return state, jax.device_get(acc)


def _epoch_metrics(acc: dict[str, np.ndarray], stats: dict[str, Any], seen: int) -> dict[str, float]:
    """Running training metrics of one epoch (parameters change during it)."""
    return {
        "fvu": float(acc["sse"] / (stats["variance_per_example"] * seen)),
        "mse": float(acc["sse"] / (seen * stats["d"])),
        "l0": float(acc["active"] / seen),
        "dead_fraction": float(np.mean(acc["fires"] == 0)),
    }


class _Batches:
    """Batches of raw features in the order of (seed, epoch), from device memory when they fit,
    else gathered from the (possibly memory-mapped) host array one batch ahead."""

    def __init__(self, features: np.ndarray, batch_size: int, seed: int, mesh, device_bytes: int):
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.sharding = parallel.batch_sharding(mesh)
        self.on_device = None
        if features.nbytes <= device_bytes:
            self.on_device = jax.device_put(np.asarray(features, np.float32), parallel.replicated(mesh))
            self._take = jax.jit(lambda data, idx: data[idx], out_shardings=self.sharding)

    def order(self, epoch: int) -> np.ndarray:
        """Index batches of `epoch`: (steps, batch_size), each batch sorted for local reads."""
        rng = np.random.default_rng([self.seed, epoch])
        steps = len(self.features) // self.batch_size
        return np.sort(rng.permutation(len(self.features))[: steps * self.batch_size].reshape(steps, -1), axis=1)

    def epoch(self, epoch: int):
        order = self.order(epoch)
        if self.on_device is not None:
            for idx in order:
                yield self._take(self.on_device, idx)
            return
        gather = lambda idx: np.asarray(self.features[idx], np.float32)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(gather, order[0])
            for i in range(len(order)):
                host = pending.result()
                if i + 1 < len(order):
                    pending = pool.submit(gather, order[i + 1])
                yield jax.device_put(host, self.sharding)
