"""The Top-K sparse autoencoder's formulas (docs/method.md): parameters, encode, decode, loss.

Parameters are a flat dict `W_enc (d, F)`, `W_dec (F, d)`, `b_pre (d,)`, optional `b_enc (F,)`.
`encode`/`decode` are the dense reference formulas (callers normalize inputs). The sparse
path (`encode_sparse`/`decode_sparse`) returns and consumes only the k selected
(value, index) pairs per row: the decoder gathers the k atoms of each example instead of an
F-wide matmul, forward and backward. The encoder's pre-activations are needed densely for the
selection anyway; the k values are read from them, so the encoder's gradient is one dense
matmul whose cotangent is zero off the selected entries (measured faster on XLA:CPU than
gathering k encoder columns and scatter-adding their gradients), and both paths share it. The
paths differ in the decoder only and give the same values and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


def init_params(
    key: jax.Array,
    d: int,
    dict_size: int,
    *,
    b_enc: bool = False,
    tied_init: bool = False,
    b_pre: jax.Array | None = None,
) -> Params:
    """Decoder rows (atoms) at unit norm; encoder as torch's `nn.Linear` default or the
    decoder's transpose (`tied_init`); `b_pre` zero unless given (e.g. the data mean)."""
    k_dec, k_enc = jax.random.split(key)
    w_dec = jax.random.normal(k_dec, (dict_size, d), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
    bound = d**-0.5
    w_enc = w_dec.T if tied_init else jax.random.uniform(k_enc, (d, dict_size), jnp.float32, -bound, bound)
    params = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_pre": jnp.zeros(d, jnp.float32) if b_pre is None else jnp.asarray(b_pre, jnp.float32),
    }
    if b_enc:
        params["b_enc"] = jnp.zeros(dict_size, jnp.float32)
    return params


def unit_norm(x: jax.Array) -> jax.Array:
    """x / (||x|| + 1e-8) per row: the SAE's input normalisation."""
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)


def pre_activations(params: Params, x: jax.Array) -> jax.Array:
    """(x - b_pre) @ W_enc (+ b_enc), all F latents.

    Written as x @ W_enc - b_pre @ W_enc so that b_pre's gradient is a vector-matrix product
    rather than a second batch-wide matmul.
    """
    pre = x @ params["W_enc"] - params["b_pre"] @ params["W_enc"]
    return pre + params["b_enc"] if "b_enc" in params else pre


def encode(params: Params, x: jax.Array, k: int, *, relu: bool = False) -> jax.Array:
    """Dense codes (B, F): the k largest pre-activations per row, every other entry zero."""
    return densify(*top_k(pre_activations(params, x), k, relu=relu), params["W_dec"].shape[0])


def decode(params: Params, s: jax.Array) -> jax.Array:
    """x_hat = s @ W_dec + b_pre."""
    return s @ params["W_dec"] + params["b_pre"]


def top_k(pre: jax.Array, k: int, *, relu: bool = False, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(values, indices) of the k largest entries of each row of `pre` (among `mask`ed latents
    when given); gradients reach `pre` only at the selected entries."""
    candidates = jax.lax.stop_gradient(pre if mask is None else jnp.where(mask, pre, -jnp.inf))
    _, indices = jax.lax.top_k(candidates, k)
    values = jnp.take_along_axis(pre, indices, axis=-1)
    return (jax.nn.relu(values) if relu else values), indices


def encode_sparse(params: Params, x: jax.Array, k: int, *, relu: bool = False) -> tuple[jax.Array, jax.Array]:
    """The same codes as `encode`, as (values (B, k), indices (B, k))."""
    return top_k(pre_activations(params, x), k, relu=relu)


def decode_sparse(params: Params, values: jax.Array, indices: jax.Array) -> jax.Array:
    """x_hat from (values, indices) by gathering the k decoder rows of each example."""
    return jnp.einsum("bk,bkd->bd", values, params["W_dec"][indices]) + params["b_pre"]


def densify(values: jax.Array, indices: jax.Array, dict_size: int) -> jax.Array:
    """(B, k) values at (B, k) indices as dense (B, F) codes."""
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], dict_size), values.dtype).at[rows, indices].set(values)


def reconstruct(
    params: Params, x: jax.Array, k: int, *, relu: bool = False, sparse: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_hat, values, indices) of already-normalized `x`, decoding by gather (`sparse`) or by
    the dense F-wide matmul of the reference."""
    values, indices = encode_sparse(params, x, k, relu=relu)
    if sparse:
        return decode_sparse(params, values, indices), values, indices
    return decode(params, densify(values, indices, params["W_dec"].shape[0])), values, indices


def auxk_loss(
    params: Params,
    x: jax.Array,
    residual: jax.Array,
    dead: jax.Array,
    k_aux: int,
    *,
    relu: bool = False,
    normalized: bool = False,
) -> jax.Array:
    """AuxK (Gao et al. 2024): reconstruct the main reconstruction's `residual` from the
    `k_aux` largest pre-activations among `dead` latents, through the decoder without bias.
    Zero when no latent is dead; `residual` should carry no gradient. `normalized`: the MSE
    divided by the residual's variance over the batch, as Gao et al.'s code (`normalized_mse`)."""
    values, indices = top_k(pre_activations(params, x), min(k_aux, dead.shape[0]), relu=relu, mask=dead)
    values = values * dead[indices]  # fewer dead latents than k_aux: the rest contribute nothing
    residual_hat = jnp.einsum("bk,bkd->bd", values, params["W_dec"][indices])
    error = jnp.mean((residual_hat - residual) ** 2)
    if normalized:
        error = error / jnp.mean((residual - residual.mean(0)) ** 2)
    return jnp.where(dead.any(), error, 0.0)
