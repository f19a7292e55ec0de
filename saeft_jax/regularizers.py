"""The SAE-FT penalty and its baselines (METHOD.md section 3), selected by name.

Each regularizer compares the current embeddings `f` with the frozen zero-shot ones `f0` on
the same batch and returns `(R, metrics)`; the trainer adds `reg_lambda * R` to the
cross-entropy. `f0`, the SAE parameters and the zero-shot codes carry no gradient.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from saeft_jax.models import sae

Metrics = dict[str, jax.Array]


def sae_codes(f: jax.Array, f0: jax.Array, sae_params: dict, k: int, normalize: bool, relu: bool = False):
    """(f, f0, st, s0) as the regularizers see them: both normalized when `normalize`, dense
    Top-K codes of each (`s0` and the SAE without gradient)."""
    sae_params = jax.lax.stop_gradient(sae_params)
    f0 = jax.lax.stop_gradient(f0)
    if normalize:
        f, f0 = sae.unit_norm(f), sae.unit_norm(f0)
    st = sae.encode(sae_params, f, k, relu=relu)
    s0 = jax.lax.stop_gradient(sae.encode(sae_params, f0, k, relu=relu))
    return f, f0, st, s0


def _residual(f, f0, st, s0, sae_params) -> jax.Array:
    """mean over B x d of ((f - f0) - (st - s0) @ W_dec)^2: change the dictionary does not explain."""
    r = (f - f0) - (st - s0) @ jax.lax.stop_gradient(sae_params["W_dec"])
    return jnp.mean(r ** 2)


def _support_changes(st: jax.Array, s0: jax.Array) -> Metrics:
    active, active0 = st != 0, s0 != 0
    return {"added_per_image": jnp.mean(jnp.sum(active & ~active0, -1).astype(jnp.float32)),
            "removed_per_image": jnp.mean(jnp.sum(active0 & ~active, -1).astype(jnp.float32))}


def sae_add_remove(f: jax.Array, f0: jax.Array, sae_params: dict, *, k: int, lambda_add: float = 10.0,
                   lambda_remove: float = 0.02, mu: float = 1.0, normalize: bool = True,
                   relu: bool = False) -> tuple[jax.Array, Metrics]:
    """SAE-FT: penalise features that appear (add), weaken or vanish (remove), and change
    outside the dictionary (residual)."""
    f, f0, st, s0 = sae_codes(f, f0, sae_params, k, normalize, relu)
    m0 = (s0 != 0).astype(st.dtype)
    add = jnp.mean((1 - m0) * jnp.abs(st))
    remove = jnp.mean(m0 * jax.nn.relu(s0 - st))
    residual = _residual(f, f0, st, s0, sae_params)
    total = lambda_add * add + lambda_remove * remove + mu * residual
    return total, {"add": add, "remove": remove, "residual": residual, **_support_changes(st, s0)}


def sae_mask(f: jax.Array, f0: jax.Array, sae_params: dict, *, k: int, lambda_add: float = 10.0,
             mu: float = 1.0, normalize: bool = True, relu: bool = False) -> tuple[jax.Array, Metrics]:
    """`sae_add_remove` without the removal term (the reference README's "main method")."""
    return sae_add_remove(f, f0, sae_params, k=k, lambda_add=lambda_add, lambda_remove=0.0, mu=mu,
                          normalize=normalize, relu=relu)


def _sparse_terms(f, f0, st, s0, sae_params, lambda_l1: float, mu: float) -> tuple[jax.Array, Metrics]:
    l1 = jnp.mean(jnp.abs(st - s0))
    residual = _residual(f, f0, st, s0, sae_params)
    return lambda_l1 * l1 + mu * residual, {"l1": l1, "residual": residual, **_support_changes(st, s0)}


def sae_sparse(f: jax.Array, f0: jax.Array, sae_params: dict, *, k: int, lambda_l1: float = 1e-3,
               mu: float = 1.0, normalize: bool = True, relu: bool = False) -> tuple[jax.Array, Metrics]:
    """lambda_l1 * mean|st - s0| + mu * residual."""
    f, f0, st, s0 = sae_codes(f, f0, sae_params, k, normalize, relu)
    return _sparse_terms(f, f0, st, s0, sae_params, lambda_l1, mu)


def sae_kl(f: jax.Array, f0: jax.Array, sae_params: dict, *, k: int, lambda_l1: float = 1e-3,
           lambda_kl: float = 0.1, mu: float = 1.0, normalize: bool = True,
           relu: bool = False) -> tuple[jax.Array, Metrics]:
    """`sae_sparse` + lambda_kl * KL(p0 || pt), p = |codes| renormalised to sum 1 per example
    (magnitudes, since Top-K codes without ReLU can be negative)."""
    f, f0, st, s0 = sae_codes(f, f0, sae_params, k, normalize, relu)
    total, metrics = _sparse_terms(f, f0, st, s0, sae_params, lambda_l1, mu)
    eps = 1e-8
    p0 = jnp.abs(s0) / (jnp.sum(jnp.abs(s0), -1, keepdims=True) + eps)
    pt = jnp.abs(st) / (jnp.sum(jnp.abs(st), -1, keepdims=True) + eps)
    kl = jnp.mean(jnp.sum(p0 * (jnp.log(p0 + eps) - jnp.log(pt + eps)), -1))
    return total + lambda_kl * kl, {**metrics, "kl": kl}


def mse(f: jax.Array, f0: jax.Array) -> tuple[jax.Array, Metrics]:
    """mean (f - f0)^2: the L2 feature-distance baseline."""
    value = jnp.mean((f - jax.lax.stop_gradient(f0)) ** 2)
    return value, {"mse": value}


def l1(f: jax.Array, f0: jax.Array) -> tuple[jax.Array, Metrics]:
    """mean |f - f0|."""
    value = jnp.mean(jnp.abs(f - jax.lax.stop_gradient(f0)))
    return value, {"l1": value}


def ldifs(tokens: Sequence[jax.Array], tokens0: Sequence[jax.Array]) -> tuple[jax.Array, Metrics]:
    """LDIFS: mean squared distance of L2-normalized token features of the current and frozen
    encoders, averaged over tokens and over the tapped layers (see `ldifs_taps`)."""
    distances = [jnp.mean(jnp.sum((sae.unit_norm(t) - jax.lax.stop_gradient(sae.unit_norm(t0))) ** 2, -1))
                 for t, t0 in zip(tokens, tokens0, strict=True)]
    value = jnp.mean(jnp.stack(distances))
    return value, {"ldifs": value}


def ldifs_taps(num_layers: int) -> tuple[int, ...]:
    """The stem (0) and the output after each quarter of the blocks."""
    return tuple(sorted({0, *(round(num_layers * q / 4) for q in (1, 2, 3, 4))}))


SAE_BASED = {"sae_add_remove": sae_add_remove, "sae_mask": sae_mask, "sae_sparse": sae_sparse, "sae_kl": sae_kl}
FEATURE_BASED = {"mse": mse, "l1": l1}
NAMES = ("none", *FEATURE_BASED, "ldifs", *SAE_BASED)


def make_regularizer(name: str, **hparams: Any) -> Callable[..., tuple[jax.Array, Metrics]]:
    """`R(f, f0, *, sae_params=None, tokens=None, tokens0=None) -> (R, metrics)` for `name`,
    with its hyperparameters bound (unknown ones rejected by name)."""
    if name not in NAMES:
        raise ValueError(f"unknown regularizer {name!r}; known: {', '.join(NAMES)}")
    if name in SAE_BASED:
        fn = SAE_BASED[name]
        _check_hparams(name, fn, hparams)
        return lambda f, f0, *, sae_params, tokens=None, tokens0=None: fn(f, f0, sae_params, **hparams)
    if hparams:
        raise TypeError(f"regularizer {name!r} takes no hyperparameters; got {sorted(hparams)}")
    if name == "ldifs":
        return lambda f, f0, *, sae_params=None, tokens, tokens0: ldifs(tokens, tokens0)
    if name == "none":
        return lambda f, f0, **_: (jnp.zeros((), f.dtype), {})
    return lambda f, f0, **_: FEATURE_BASED[name](f, f0)


def _check_hparams(name: str, fn: Callable, hparams: dict[str, Any]) -> None:
    accepted = {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise TypeError(f"regularizer {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    if "k" not in hparams:
        raise TypeError(f"regularizer {name!r} needs k, the SAE's Top-K")
