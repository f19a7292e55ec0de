"""The formulas of docs/method.md written directly in PyTorch, as the reference code would: dense
`topk` + `scatter` SAE codes and the SAE-FT regularizers. The benchmarks time them; the tests
use them as the independent reference for `saeft_jax.regularizers`."""

from __future__ import annotations

import torch


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


def sae_codes(sae: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """Dense Top-K codes: the k largest of (x - b_pre) @ W_enc kept, the rest zero."""
    pre = (x - sae["b_pre"]) @ sae["W_enc"]
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def regularizer(
    name: str,
    f: torch.Tensor,
    f0: torch.Tensor,
    sae: dict[str, torch.Tensor],
    k: int,
    normalize: bool = True,
    lambda_add: float = 10.0,
    lambda_remove: float = 0.02,
) -> torch.Tensor:
    """R for `none`, `mse`, `l1`, `sae_add_remove`, `sae_mask`, `sae_sparse` or `sae_kl`."""
    f0 = f0.detach()
    if name == "none":
        return f.sum() * 0
    if name == "mse":
        return ((f - f0) ** 2).mean()
    if name == "l1":
        return (f - f0).abs().mean()
    if normalize:
        f, f0 = unit(f), unit(f0)
    st, s0 = sae_codes(sae, f, k), sae_codes(sae, f0, k).detach()
    m0 = (s0 != 0).to(st.dtype)
    residual = (((f - f0) - (st - s0) @ sae["W_dec"]) ** 2).mean()
    if name in ("sae_add_remove", "sae_mask"):
        remove = (m0 * torch.relu(s0 - st)).mean() if name == "sae_add_remove" else 0.0
        return lambda_add * ((1 - m0) * st.abs()).mean() + lambda_remove * remove + residual
    sparse = 1e-3 * (st - s0).abs().mean() + residual
    if name == "sae_sparse":
        return sparse
    if name == "sae_kl":
        p0 = s0.abs() / (s0.abs().sum(-1, keepdim=True) + 1e-8)
        pt = st.abs() / (st.abs().sum(-1, keepdim=True) + 1e-8)
        return sparse + 0.1 * (p0 * ((p0 + 1e-8).log() - (pt + 1e-8).log())).sum(-1).mean()
    raise ValueError(f"no PyTorch reference for regularizer {name!r}")


def sinkhorn_distance(
    p0: torch.Tensor, p1: torch.Tensor, cost: torch.Tensor, epsilon: float = 0.05, iterations: int = 50
) -> torch.Tensor:
    """The reference's entropic Wasserstein distance per row, with the plan formed explicitly."""
    p0 = p0 / (p0.sum(-1, keepdim=True) + 1e-8)
    p1 = p1 / (p1.sum(-1, keepdim=True) + 1e-8)
    kernel = torch.exp(-cost / epsilon)
    kernel = kernel / (kernel.sum(-1, keepdim=True) + 1e-8)
    u, v = torch.ones_like(p0), torch.ones_like(p1)
    for _ in range(iterations):
        u = p0 / (kernel @ v.unsqueeze(-1)).squeeze(-1)
        v = p1 / (kernel.T @ u.unsqueeze(-1)).squeeze(-1)
    plan = u.unsqueeze(-1) * kernel * v.unsqueeze(-2)
    return (plan * cost).sum((-2, -1))


def matrix_regularizer(name: str, f: torch.Tensor, f0: torch.Tensor, c: float = 10.0) -> torch.Tensor:
    """`nuclear` and `quadratic_nuclear`: torch.linalg's nuclear norm of the batch's change."""
    norm = torch.linalg.matrix_norm(f - f0.detach(), ord="nuc")
    return norm if name == "nuclear" else torch.relu(norm - c) ** 2


def sae_w(
    f: torch.Tensor,
    f0: torch.Tensor,
    sae: dict[str, torch.Tensor],
    k: int,
    lambda_l1: float = 1e-3,
    lambda_wass: float = 0.1,
    mu: float = 1.0,
) -> torch.Tensor:
    """The reference's `sae_w` on unit-norm inputs: sparse change + residual + Sinkhorn term."""
    f, f0 = unit(f), unit(f0.detach())
    st, s0 = sae_codes(sae, f, k), sae_codes(sae, f0, k).detach()
    residual = (((f - f0) - (st - s0) @ sae["W_dec"]) ** 2).mean()
    atoms = sae["W_dec"] / sae["W_dec"].norm(dim=-1, keepdim=True)
    cost = (1.0 - atoms @ atoms.T).clamp(min=0)
    wass = sinkhorn_distance(torch.relu(s0), torch.relu(st), cost).mean()
    return lambda_l1 * (st - s0).abs().mean() + mu * residual + lambda_wass * wass


def pca_penalty(
    f: torch.Tensor, f0: torch.Tensor, basis: torch.Tensor, lambda_l1: float = 1e-3, mu: float = 1.0
) -> torch.Tensor:
    """The reference's `pca` on unit-norm inputs: codes x @ basis (d, n), no centring, decoded by basis.T."""
    f, f0 = unit(f), unit(f0.detach())
    st, s0 = f @ basis, f0 @ basis
    residual = ((f - f0) - (st @ basis.T - s0 @ basis.T)) ** 2
    return lambda_l1 * (st - s0).abs().mean(dim=-1).mean() + mu * residual.mean()
