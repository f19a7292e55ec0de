"""The fine-tuning optimizer of the WiSE-FT protocol: global-norm clipping + AdamW, warmup + cosine."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax


def wiseft_schedule(lr: float, warmup_steps: int, total_steps: int) -> Callable:
    """The reference's learning rate: `lr * (step + 1) / warmup` during warmup, then cosine
    from `lr` to 0 over the remaining steps (WiSE-FT's `cosine_lr`)."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")

    def schedule(step):
        warm = lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return jnp.where(step < warmup_steps, warm, 0.5 * (1 + jnp.cos(jnp.pi * progress)) * lr)

    return schedule


def make_optimizer(
    lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 500,
    weight_decay: float = 0.1,
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay_mask: Callable | None = None,
) -> tuple[optax.GradientTransformation, Callable]:
    """`(optimizer, schedule)`: clip at `clip_norm`, AdamW with decay on every parameter (or
    where `decay_mask(params)` is True), the schedule counted in updates (gradient accumulation
    happens inside the step)."""
    schedule = wiseft_schedule(lr, warmup_steps, total_steps)
    optimizer = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )
    return optimizer, schedule
