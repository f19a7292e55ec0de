"""The linear probe: multinomial logistic regression of a head on frozen image embeddings (L-BFGS).

The head is the run's head format (`saeft_jax.models.heads`): logits = unit(f) @ W.T + b. The
objective is the mean cross-entropy over the N examples plus `l2 / 2 * ||W||^2` (the bias is not
penalized), which is scikit-learn's `LogisticRegression(C=1 / (N * l2))` up to the factor N. It is
strictly convex for `l2 > 0`, so L-BFGS (optax's, with its zoom line search) reaches the same head
from any start. The examples are summed in blocks, each recomputed in the backward pass, so memory
holds one block's logits rather than all N; they enter the compiled solver as arguments (not as
constants of the program), so one compilation serves every l2 of a run.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saeft_jax.models.heads import Head, classify

BLOCK_ROWS = 65536  # examples per block of the loss (the logits of one block are alive at a time)


class Blocks(NamedTuple):
    """The examples as (blocks, rows, ...) arrays; padding rows have weight 0."""

    features: jax.Array
    labels: jax.Array
    weights: jax.Array
    count: jax.Array  # the number of real examples


def blocks(features: np.ndarray, labels: np.ndarray, block_rows: int = BLOCK_ROWS) -> Blocks:
    """`features` (N, d) and `labels` (N,) padded to whole blocks of `block_rows` (at most N)."""
    count = len(features)
    rows = min(block_rows, count)
    number = -(-count // rows)
    pad = number * rows - count
    weights = (np.arange(number * rows) < count).astype(np.float32).reshape(number, rows)
    return Blocks(
        jnp.asarray(
            np.pad(np.asarray(features, np.float32), ((0, pad), (0, 0)), constant_values=1.0).reshape(number, rows, -1)
        ),
        jnp.asarray(np.pad(np.asarray(labels, np.int32), (0, pad)).reshape(number, rows)),
        jnp.asarray(weights),
        jnp.asarray(count, jnp.float32),
    )


def probe_objective(head: Head, data: Blocks, l2: jax.Array) -> jax.Array:
    """Mean cross-entropy of `classify(head, features)` over the examples + l2 / 2 * ||W||^2."""

    @jax.checkpoint
    def block_loss(block):
        x, y, w = block
        return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(classify(head, x), y))

    total = jax.lax.map(block_loss, (data.features, data.labels, data.weights)).sum()
    return total / data.count + 0.5 * l2 * jnp.sum(head["W"] ** 2)


def fit_probe(
    data: Blocks,
    classes: int,
    *,
    l2: float,
    max_iterations: int = 1000,
    tolerance: float = 1e-6,
    start: Head | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """The head minimizing `probe_objective` on `data` (`blocks(features, labels)`) on one
    device, and {"iterations", "objective", "grad_norm", "converged"}: L-BFGS from `start`
    (default zeros; the optimum is the same, a nearby start only takes fewer steps) until the
    gradient's norm is below `tolerance` or `max_iterations` steps."""
    if l2 <= 0:
        raise ValueError(f"the probe's l2 must be positive (the problem is then strictly convex); got {l2}")
    width = data.features.shape[-1]
    head: Head = (
        {"W": jnp.zeros((classes, width), jnp.float32), "b": jnp.zeros(classes, jnp.float32)}
        if start is None
        else {name: jnp.asarray(value, jnp.float32) for name, value in start.items()}
    )
    head, count, value, grad_norm = _solve(
        head, data, jnp.float32(l2), jnp.int32(max_iterations), jnp.float32(tolerance)
    )
    summary = {
        "iterations": int(count),
        "objective": float(value),
        "grad_norm": float(grad_norm),
        "converged": float(grad_norm) < tolerance,
    }
    return {name: np.asarray(value) for name, value in head.items()}, summary


@jax.jit
def _solve(start: Head, data: Blocks, l2: jax.Array, max_iterations: jax.Array, tolerance: jax.Array):
    """optax's L-BFGS in one `while_loop` on the device (no host round trip per iteration):
    (head, iterations, objective, gradient norm)."""
    objective = lambda head: probe_objective(head, data, l2)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(params, updates), state

    def going_on(carry):
        _, state = carry
        count, grad = optax.tree.get(state, "count"), optax.tree.get(state, "grad")
        return (count == 0) | ((count < max_iterations) & (optax.tree.norm(grad) >= tolerance))

    head, state = jax.lax.while_loop(going_on, step, (start, solver.init(start)))
    return head, optax.tree.get(state, "count"), objective(head), optax.tree.norm(optax.tree.get(state, "grad"))
