"""The SAE-FT train step: cross-entropy of the head plus `reg_lambda` times a regularizer that
compares the trainable image encoder with the frozen zero-shot one on the same batch.

The frozen encoder runs inside the same jit program under stop-gradient (or its embeddings
come from the teacher cache). The step is data-parallel over the mesh (batch split on the data
axis; train state replicated or FSDP-sharded), donates the train state, and never leaves the
device. A non-finite loss or gradient freezes the state at its
last good values and records the failing step in `state["bad_step"]` (-1 while all is well),
which the loop reads when it logs or checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from saeft_jax import parallel
from saeft_jax.models.heads import classify


def init_state(params: dict, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """`params` = {"encoder": `image_params(...)`, "head": head}; adds optimizer state and step.

    The parameters are copied: the train step donates its state, which must not take the
    caller's arrays (e.g. the zero-shot weights) with it."""
    params = jax.tree.map(jnp.copy, params)
    return {
        "params": params,
        "opt": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        "bad_step": jnp.full((), -1, jnp.int32),
    }


def make_loss(
    encoder: nn.Module,
    regularizer: Callable,
    reg_lambda: float,
    *,
    label_smoothing: float = 0.0,
    taps: tuple[int, ...] = (),
) -> Callable:
    """`loss(params, frozen, batch) -> (loss, metrics)`; `frozen` = {"encoder": zero-shot image
    params, "sae": the `FrozenSAE` or None}; `batch` = {"images", "labels"[, "teacher"]}.

    `regularizer(f, f0, *, sae, tokens, tokens0) -> (R, metrics)` is a penalty with its
    hyperparameters bound (`Regularizer.bind`); `taps` are the layers whose token features it compares.
    `batch["teacher"]`, when present, holds the zero-shot embeddings f0 of this batch (the teacher cache:
    read from the features stage instead of running the frozen encoder). It is exact (up to float
    rounding) when the training preprocessing is deterministic, an approximation under random
    crops (f0 of the uncropped image stands for f0 of the crop), and cannot serve `ldifs`, which
    needs the frozen encoder's token features.
    """

    penalized = make_penalized(encoder, regularizer, taps)

    def loss(params, frozen, batch):
        f, reg, reg_metrics = penalized(params["encoder"], frozen, batch)
        labels = batch["labels"]
        logits = classify(params["head"], f)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        ce = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        total = ce + reg_lambda * reg
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return total, {"loss": total, "ce": ce, "reg": reg, "accuracy": accuracy, **reg_metrics}

    return loss


def make_penalized(encoder: nn.Module, regularizer: Callable, taps: tuple[int, ...] = ()) -> Callable:
    """`penalized(encoder_params, frozen, batch) -> (f, R, metrics)`: the trainable encoder's
    embeddings of `batch["images"]` and the penalty comparing them with the frozen encoder's (or
    the teacher cache's), as `make_loss` describes; shared by every recipe's loss."""

    def encode(params, images):
        out = encoder.apply({"params": params}, images, taps)
        return out if taps else (out, None)

    def penalized(params, frozen, batch):
        images, teacher = batch["images"], batch.get("teacher")
        f, tokens = encode(params, images)
        if teacher is not None and taps:
            raise ValueError("the teacher cache holds embeddings only; ldifs needs the frozen encoder's tokens")
        zeroshot = (teacher, None) if teacher is not None else encode(frozen["encoder"], images)
        f0, tokens0 = jax.lax.stop_gradient(zeroshot)
        reg, metrics = regularizer(f, f0, sae=frozen["sae"], tokens=tokens, tokens0=tokens0)
        return f, reg, metrics

    return penalized


def make_train_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    schedule: Callable,
    mesh,
    state_sharding: Any = None,
    accumulate_steps: int = 1,
) -> Callable:
    """The jit-compiled `step(state, frozen, batch) -> (state, metrics)`: one optimizer update.

    The batch's arrays are split over the data axis; the state is replicated unless
    `state_sharding` (e.g. `parallel.state_shardings(state, mesh, fsdp=True)`) says otherwise,
    and keeps its sharding across steps. With `accumulate_steps` A > 1 the batch is taken as A
    micro-batches, whose gradients are computed one after another (`lax.scan`, so only one
    micro-batch's activations are alive) and averaged before the single update: every loss term
    is a mean over the batch, so this is the gradient of the whole batch, and the schedule, the
    step count and the logged learning rate all count updates."""

    def gradients(params, frozen, batch):
        if accumulate_steps == 1:
            return jax.value_and_grad(loss, has_aux=True)(params, frozen, batch)[::-1]
        micro = jax.tree.map(lambda x: _micro_batches(x, accumulate_steps, mesh), batch)

        def one(total, micro_batch):
            grads, (_, metrics) = jax.value_and_grad(loss, has_aux=True)(params, frozen, micro_batch)[::-1]
            return jax.tree.map(jnp.add, total, grads), metrics

        total, metrics = jax.lax.scan(one, jax.tree.map(jnp.zeros_like, params), micro)
        mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
        return jax.tree.map(lambda g: g / accumulate_steps, total), (None, mean(metrics))

    def step(state, frozen, batch):
        grads, (_, metrics) = gradients(state["params"], frozen, batch)
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        healthy = finite & (state["bad_step"] < 0)
        new = {
            "params": optax.apply_updates(state["params"], updates),
            "opt": opt,
            "step": state["step"] + 1,
            "bad_step": state["bad_step"],
        }
        new = jax.tree.map(lambda a, b: jnp.where(healthy, a, b), new, state)
        first_bad = jnp.where(finite, state["bad_step"], state["step"])
        new["bad_step"] = jnp.where(state["bad_step"] >= 0, state["bad_step"], first_bad)
        return new, {**metrics, "grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}

    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state_sharding = state_sharding or replicated
    return jax.jit(
        step,
        in_shardings=(state_sharding, replicated, batch),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def _micro_batches(x: jax.Array, count: int, mesh) -> jax.Array:
    """(B, ...) -> (count, B / count, ...), micro-batch j holding rows j, j + count, ...: each
    device's rows then hold an equal part of every micro-batch, so nothing moves between devices."""
    devices = mesh.shape[parallel.DATA_AXIS]
    if x.shape[0] % (count * devices):
        raise ValueError(
            f"a batch of {x.shape[0]} rows does not split into {count} micro-batches that each divide "
            f"over the {devices} devices; use a batch size that is a multiple of {count * devices}."
        )
    rows = x.shape[0] // count
    micro = jnp.swapaxes(x.reshape(rows, count, *x.shape[1:]), 0, 1)
    return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, PartitionSpec(None, parallel.DATA_AXIS)))
