"""The fine-tuning regularizers: the SAE-FT penalty and its baselines (docs/method.md, "The
fine-tuning objective"), one registry entry each.

An entry is a function `penalty(f, f0, *, <inputs>, <hyperparameters>) -> (R, metrics)`
registered with `register`. Its keyword-only arguments with defaults are its hyperparameters;
`needs` declares what else it takes:

- "f0": the frozen zero-shot embeddings of the batch (the teacher cache can supply them);
- "sae": the run's `FrozenSAE` (argument `sae`); every such entry also gets the hyperparameter
  `reference_raw_inputs`, which feeds it raw embeddings as the reference code does;
- "tokens": the token features of both encoders at the layers `taps(num_layers)` names
  (arguments `tokens`, `tokens0`); the teacher cache cannot supply these.

The trainer adds `reg_lambda * R` to the cross-entropy; `f0`, the SAE and the zero-shot codes
carry no gradient. Adding a regularizer is one decorated function here; nothing else in the
package looks at a regularizer's name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from saeft_jax.sae.frozen import FrozenSAE
from saeft_jax.sae.model import unit_norm

Metrics = dict[str, jax.Array]
Penalty = Callable[..., tuple[jax.Array, Metrics]]
NEEDS = ("f0", "sae", "tokens")
_INPUT_ARGUMENTS = {"sae": ("sae",), "tokens": ("tokens", "tokens0")}
SAE_HPARAMS = {"reference_raw_inputs": False}


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """One registry entry: the penalty, its hyperparameters with their defaults, what it needs."""

    name: str
    penalty: Penalty
    hparams: Mapping[str, Any]
    needs: frozenset[str]
    taps: Callable[[int], tuple[int, ...]] | None = None
    sae_kind: str = "topk"  # the kind of `config.saes` entry an SAE-reading penalty takes
    batch_mean: bool = True  # a mean over the batch's rows, so micro-batches may average it

    @property
    def uses_sae(self) -> bool:
        return "sae" in self.needs

    @property
    def penalizes(self) -> bool:
        """False for plain fine-tuning, whose penalty compares nothing."""
        return bool(self.needs)

    @property
    def teacher_cache(self) -> bool:
        """Whether the teacher cache (the features stage's f0) can stand in for the frozen encoder."""
        return "f0" in self.needs and "tokens" not in self.needs

    def bind(self, hparams: Mapping[str, Any]) -> Callable:
        """`R(f, f0, *, sae=None, tokens=None, tokens0=None) -> (R, metrics)` with `hparams`
        (defaults for the missing ones) bound; the SAE and the tokens come with each call, as
        arguments of the jit program rather than constants inside it."""
        unknown = sorted(set(hparams) - set(self.hparams))
        if unknown:
            raise TypeError(f"regularizer {self.name!r} does not take {unknown}; it takes {sorted(self.hparams)}")
        values = {**self.hparams, **hparams}
        raw = values.pop("reference_raw_inputs", False)

        def penalty(f, f0, *, sae: FrozenSAE | None = None, tokens=None, tokens0=None):
            inputs: dict[str, Any] = {}
            if self.uses_sae:
                if sae is None:
                    raise TypeError(f"regularizer {self.name!r} needs the run's SAE")
                inputs["sae"] = sae.reference_raw_inputs() if raw else sae
            if "tokens" in self.needs:
                inputs.update(tokens=tokens, tokens0=tokens0)
            return self.penalty(f, f0, **inputs, **values)

        return penalty


REGISTRY: dict[str, Regularizer] = {}


def register(
    name: str | None = None,
    *,
    needs: Sequence[str] = ("f0",),
    taps: Callable[[int], tuple[int, ...]] | None = None,
    sae_kind: str = "topk",
    batch_mean: bool = True,
) -> Callable[[Penalty], Penalty]:
    """Registers the decorated penalty as regularizer `name` (default: the function's name);
    `sae_kind` is the kind of SAE it reads ("topk", or "pca" for a PCA basis); `batch_mean=False`
    for a penalty of the batch as a whole (a matrix norm), which gradient accumulation would
    change, since it averages the penalty over micro-batches."""
    needs = frozenset(needs)
    if needs - set(NEEDS):
        raise ValueError(f"unknown needs {sorted(needs - set(NEEDS))}; known: {NEEDS}")
    if ("tokens" in needs) != (taps is not None):
        raise ValueError("a regularizer that needs tokens says where to tap them (`taps`), and only then")

    def add(penalty: Penalty) -> Penalty:
        entry_name = name or penalty.__name__
        if entry_name in REGISTRY:
            raise ValueError(f"regularizer {entry_name!r} is registered already")
        keyword = {p.name: p for p in inspect.signature(penalty).parameters.values() if p.kind is p.KEYWORD_ONLY}
        inputs = {argument for need in needs for argument in _INPUT_ARGUMENTS.get(need, ())}
        if not inputs <= set(keyword):
            raise ValueError(f"regularizer {entry_name!r} needs {sorted(needs)} but does not take {sorted(inputs)}")
        hparams = {n: p.default for n, p in keyword.items() if n not in inputs}
        undeclared = [n for n, default in hparams.items() if default is inspect.Parameter.empty]
        if undeclared:
            raise ValueError(f"regularizer {entry_name!r}: hyperparameters {undeclared} need defaults")
        if "sae" in needs:
            hparams = {**hparams, **SAE_HPARAMS}
        REGISTRY[entry_name] = Regularizer(entry_name, penalty, hparams, needs, taps, sae_kind, batch_mean)
        return penalty

    return add


def get(name: str) -> Regularizer:
    """The registry entry `name`; an unknown name is a `KeyError` that lists the known ones."""
    if name not in REGISTRY:
        raise KeyError(f"unknown regularizer {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def sae_codes(f: jax.Array, f0: jax.Array, sae: FrozenSAE):
    """(f, f0, st, s0) as the SAE regularizers see them: inputs as the SAE takes them, dense
    Top-K codes of each (`s0` without gradient)."""
    f, f0 = sae.inputs(f), sae.inputs(jax.lax.stop_gradient(f0))
    return f, f0, sae.encode(f), jax.lax.stop_gradient(sae.encode(f0))


def _residual(f, f0, st, s0, sae: FrozenSAE) -> jax.Array:
    """mean over B x d of ((f - f0) - (st - s0) @ W_dec)^2: change the dictionary does not explain."""
    return jnp.mean(((f - f0) - (st - s0) @ sae.atoms) ** 2)


def _support_changes(st: jax.Array, s0: jax.Array) -> Metrics:
    active, active0 = st != 0, s0 != 0
    return {
        "added_per_image": jnp.mean(jnp.sum(active & ~active0, -1).astype(jnp.float32)),
        "removed_per_image": jnp.mean(jnp.sum(active0 & ~active, -1).astype(jnp.float32)),
    }


@register(needs=())
def none(f: jax.Array, f0: jax.Array) -> tuple[jax.Array, Metrics]:
    """Plain fine-tuning: no penalty."""
    return jnp.zeros((), f.dtype), {}


@register(needs=("f0", "sae"))
def sae_add_remove(
    f: jax.Array,
    f0: jax.Array,
    *,
    sae: FrozenSAE,
    lambda_add: float = 10.0,
    lambda_remove: float = 0.02,
    mu: float = 1.0,
) -> tuple[jax.Array, Metrics]:
    """SAE-FT: penalise features that appear (add), weaken or vanish (remove), and change
    outside the dictionary (residual)."""
    f, f0, st, s0 = sae_codes(f, f0, sae)
    m0 = (s0 != 0).astype(st.dtype)
    add = jnp.mean((1 - m0) * jnp.abs(st))
    remove = jnp.mean(m0 * jax.nn.relu(s0 - st))
    residual = _residual(f, f0, st, s0, sae)
    total = lambda_add * add + lambda_remove * remove + mu * residual
    return total, {"add": add, "remove": remove, "residual": residual, **_support_changes(st, s0)}


@register(needs=("f0", "sae"))
def sae_mask(
    f: jax.Array, f0: jax.Array, *, sae: FrozenSAE, lambda_add: float = 10.0, mu: float = 1.0
) -> tuple[jax.Array, Metrics]:
    """`sae_add_remove` without the removal term (the reference README's "main method")."""
    return sae_add_remove(f, f0, sae=sae, lambda_add=lambda_add, lambda_remove=0.0, mu=mu)


def _sparse_terms(f, f0, st, s0, sae: FrozenSAE, lambda_l1: float, mu: float) -> tuple[jax.Array, Metrics]:
    l1_change = jnp.mean(jnp.abs(st - s0))
    residual = _residual(f, f0, st, s0, sae)
    return lambda_l1 * l1_change + mu * residual, {"l1": l1_change, "residual": residual, **_support_changes(st, s0)}


@register(needs=("f0", "sae"))
def sae_sparse(
    f: jax.Array, f0: jax.Array, *, sae: FrozenSAE, lambda_l1: float = 1e-3, mu: float = 1.0
) -> tuple[jax.Array, Metrics]:
    """lambda_l1 * mean|st - s0| + mu * residual."""
    f, f0, st, s0 = sae_codes(f, f0, sae)
    return _sparse_terms(f, f0, st, s0, sae, lambda_l1, mu)


@register(needs=("f0", "sae"), sae_kind="pca")
def pca(
    f: jax.Array, f0: jax.Array, *, sae: FrozenSAE, lambda_l1: float = 1e-3, mu: float = 1.0
) -> tuple[jax.Array, Metrics]:
    """`sae_sparse` with a PCA basis as the dictionary (an SAE of kind "pca": the leading
    principal directions of the zero-shot training features, `saeft_jax.sae.pca`)."""
    return sae_sparse(f, f0, sae=sae, lambda_l1=lambda_l1, mu=mu)


@register(needs=("f0", "sae"))
def sae_kl(
    f: jax.Array, f0: jax.Array, *, sae: FrozenSAE, lambda_l1: float = 1e-3, lambda_kl: float = 0.1, mu: float = 1.0
) -> tuple[jax.Array, Metrics]:
    """`sae_sparse` + lambda_kl * KL(p0 || pt), p = |codes| renormalised to sum 1 per example
    (magnitudes, since Top-K codes without ReLU can be negative)."""
    f, f0, st, s0 = sae_codes(f, f0, sae)
    total, metrics = _sparse_terms(f, f0, st, s0, sae, lambda_l1, mu)
    eps = 1e-8
    p0 = jnp.abs(s0) / (jnp.sum(jnp.abs(s0), -1, keepdims=True) + eps)
    pt = jnp.abs(st) / (jnp.sum(jnp.abs(st), -1, keepdims=True) + eps)
    kl = jnp.mean(jnp.sum(p0 * (jnp.log(p0 + eps) - jnp.log(pt + eps)), -1))
    return total + lambda_kl * kl, {**metrics, "kl": kl}


SINKHORN_EPSILON, SINKHORN_ITERATIONS = 0.05, 50  # the reference's, for `sae_w`


def sinkhorn_distance(p0: jax.Array, p1: jax.Array, cost: jax.Array, *, epsilon: float, iterations: int) -> jax.Array:
    """Entropic optimal-transport cost per row between distributions p0 and p1 (B, n) over n
    points with pairwise `cost` (n, n), by `iterations` Sinkhorn updates of the row-normalised
    Gibbs kernel exp(-cost / epsilon), as the reference computes it. The plan u K v is never
    formed: its cost is sum_ij u_i K_ij C_ij v_j. A row where either side has no mass (all
    ReLU codes zero) has nothing to transport and costs 0, where the reference's 0/0 gives NaN."""
    eps = 1e-8
    has_mass = (jnp.sum(p0, -1) > 0) & (jnp.sum(p1, -1) > 0)
    uniform = jnp.full_like(p0, 1.0 / p0.shape[-1])  # stands in for an empty row, so no NaN reaches a gradient
    p0 = jnp.where(has_mass[:, None], p0, uniform)
    p1 = jnp.where(has_mass[:, None], p1, uniform)
    p0 = p0 / (jnp.sum(p0, -1, keepdims=True) + eps)
    p1 = p1 / (jnp.sum(p1, -1, keepdims=True) + eps)
    kernel = jnp.exp(-cost / epsilon)
    kernel = kernel / (jnp.sum(kernel, -1, keepdims=True) + eps)

    def update(_, scalings):
        _, v = scalings
        u = p0 / (v @ kernel.T)
        return u, p1 / (u @ kernel)

    u, v = jax.lax.fori_loop(0, iterations, update, (jnp.ones_like(p0), jnp.ones_like(p1)))
    return jnp.where(has_mass, jnp.einsum("bi,ij,bj->b", u, kernel * cost, v), 0.0)


@register(needs=("f0", "sae"))
def sae_w(
    f: jax.Array, f0: jax.Array, *, sae: FrozenSAE, lambda_l1: float = 1e-3, lambda_wass: float = 0.1, mu: float = 1.0
) -> tuple[jax.Array, Metrics]:
    """`sae_sparse` + lambda_wass * the entropic Wasserstein distance between the batch's
    normalised ReLU codes of f0 and f, moving mass between features at cost
    max(0, 1 - cosine of their decoder atoms) (`sinkhorn_distance`). Its cost matrix is
    dict_size^2: memory and time grow with the square of the dictionary."""
    f, f0, st, s0 = sae_codes(f, f0, sae)
    total, metrics = _sparse_terms(f, f0, st, s0, sae, lambda_l1, mu)
    atoms = unit_norm(jax.lax.stop_gradient(sae.atoms))
    cost = jnp.clip(1.0 - atoms @ atoms.T, 0.0)
    wass = jnp.mean(
        sinkhorn_distance(
            jax.nn.relu(s0), jax.nn.relu(st), cost, epsilon=SINKHORN_EPSILON, iterations=SINKHORN_ITERATIONS
        )
    )
    return total + lambda_wass * wass, {**metrics, "wasserstein": wass}


def nuclear_norm(x: jax.Array) -> jax.Array:
    """The sum of the singular values of the matrix `x` (computed in float32)."""
    return jnp.sum(jnp.linalg.svd(x.astype(jnp.float32), compute_uv=False))


def _change(f: jax.Array, f0: jax.Array, normalize: bool) -> jax.Array:
    """f - f0 (f0 without gradient); with `normalize`, of x / (||x|| + 1e-8) per row, as the
    reference's `--normalize` rescales both before every feature penalty."""
    f0 = jax.lax.stop_gradient(f0)
    return unit_norm(f) - unit_norm(f0) if normalize else f - f0


@register(batch_mean=False)
def nuclear(f: jax.Array, f0: jax.Array, *, normalize: bool = False) -> tuple[jax.Array, Metrics]:
    """The nuclear norm of the batch's change (f - f0), a (B, d) matrix: a low-rank change is
    cheap. It grows with the batch size (the reference's batch is 128), so its reg_lambda and
    quadratic_nuclear's c belong to one batch size. `normalize`: of unit-norm embeddings (the
    reference's `--normalize`)."""
    value = nuclear_norm(_change(f, f0, normalize))
    return value, {"nuclear": value}


@register(batch_mean=False)
def quadratic_nuclear(
    f: jax.Array, f0: jax.Array, *, c: float = 10.0, normalize: bool = False
) -> tuple[jax.Array, Metrics]:
    """relu(||f - f0||_* - c)^2: free up to a nuclear-norm budget c, quadratic beyond it
    (`normalize`: of unit-norm embeddings, the reference's `--normalize`)."""
    norm = nuclear_norm(_change(f, f0, normalize))
    return jax.nn.relu(norm - c) ** 2, {"nuclear": norm}


@register()
def mse(f: jax.Array, f0: jax.Array, *, normalize: bool = False) -> tuple[jax.Array, Metrics]:
    """mean (f - f0)^2: the L2 feature-distance baseline (`normalize`: of unit-norm embeddings,
    the reference's `--normalize`)."""
    value = jnp.mean(_change(f, f0, normalize) ** 2)
    return value, {"mse": value}


@register()
def l1(f: jax.Array, f0: jax.Array, *, normalize: bool = False) -> tuple[jax.Array, Metrics]:
    """mean |f - f0| (`normalize`: of unit-norm embeddings, the reference's `--normalize`)."""
    value = jnp.mean(jnp.abs(_change(f, f0, normalize)))
    return value, {"l1": value}


REFERENCE_LDIFS_BLOCKS = 12  # the reference slices blocks 0:3, 3:6, 6:9, 9:12 whatever the depth


def ldifs_taps(num_layers: int) -> tuple[int, ...]:
    """The reference's taps: the stem (0) and the output after blocks 3, 6, 9 and 12, also on a
    deeper tower (24 blocks: the second half is not tapped; the reference warns and does the
    same). A tower of fewer than 12 blocks, which the reference cannot slice: the stem and the
    output after each quarter of its blocks."""
    blocks = min(num_layers, REFERENCE_LDIFS_BLOCKS)
    return tuple(sorted({0, *(round(blocks * q / 4) for q in (1, 2, 3, 4))}))


@register(needs=("tokens",), taps=ldifs_taps)
def ldifs(
    f: jax.Array, f0: jax.Array, *, tokens: Sequence[jax.Array], tokens0: Sequence[jax.Array]
) -> tuple[jax.Array, Metrics]:
    """LDIFS as the reference averages it: the squared distance of L2-normalized token features
    of the current and frozen encoders, averaged over channels, tokens, the tapped layers
    (`ldifs_taps`) and the batch, so the reference's reg_lambda carries over."""
    distances = [
        jnp.mean((unit_norm(t) - jax.lax.stop_gradient(unit_norm(t0))) ** 2)
        for t, t0 in zip(tokens, tokens0, strict=True)
    ]
    value = jnp.mean(jnp.stack(distances))
    return value, {"ldifs": value}
