"""Every regularizer against an independent PyTorch (autograd) computation: values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_reference
from saeft_jax import regularizers
from saeft_jax.sae import model as sae
from saeft_jax.sae.frozen import FrozenSAE

B, D, F, K = 6, 16, 64, 4


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = {n: np.asarray(v) for n, v in sae.init_params(jax.random.key(1), D, F).items()}
    params["b_pre"] = rng.normal(0, 0.05, D).astype(np.float32)
    f0 = rng.normal(size=(B, D)).astype(np.float32)
    f = (f0 + 0.3 * rng.normal(size=(B, D))).astype(np.float32)  # fine-tuning moved the embeddings
    return params, f, f0


@pytest.mark.parametrize("name", ["sae_add_remove", "sae_mask", "sae_sparse", "sae_kl"])
@pytest.mark.parametrize("normalize", [True, False])
def test_sae_regularizers_match_pytorch(setup, name, normalize):
    """`normalize=False` is the reference's raw inputs, named as such (`reference_raw_inputs`)."""
    params, f, f0 = setup
    reg = regularizers.get(name).bind({"reference_raw_inputs": not normalize})
    frozen = FrozenSAE(params, K)
    value, grad = jax.value_and_grad(lambda f: reg(f, jnp.asarray(f0), sae=frozen)[0])(jnp.asarray(f))
    f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    sae_t = {n: torch.tensor(v, dtype=torch.float64) for n, v in params.items()}
    expected = torch_reference.regularizer(name, f_t, torch.tensor(f0, dtype=torch.float64), sae_t, K, normalize)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(grad)).max() > 0


def test_add_remove_metrics_are_the_unweighted_terms_and_support_changes(setup):
    params, f, f0 = setup
    total, metrics = regularizers.sae_add_remove(
        jnp.asarray(f), jnp.asarray(f0), sae=FrozenSAE(params, K), lambda_add=2.0, lambda_remove=3.0, mu=5.0
    )
    np.testing.assert_allclose(total, 2 * metrics["add"] + 3 * metrics["remove"] + 5 * metrics["residual"], rtol=1e-6)
    unit = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)
    st = np.asarray(sae.encode(params, jnp.asarray(unit(f)), K)) != 0
    s0 = np.asarray(sae.encode(params, jnp.asarray(unit(f0)), K)) != 0
    assert float(metrics["added_per_image"]) == pytest.approx((st & ~s0).sum(-1).mean())
    assert float(metrics["removed_per_image"]) == pytest.approx((s0 & ~st).sum(-1).mean())
    zero, same = regularizers.sae_add_remove(jnp.asarray(f0), jnp.asarray(f0), sae=FrozenSAE(params, K))
    assert float(zero) == 0.0 and float(same["added_per_image"]) == 0.0  # unchanged model: no penalty


def test_feature_baselines_match_numpy_and_pytorch(setup):
    _, f, f0 = setup
    for name, formula in (("mse", lambda a, b: ((a - b) ** 2).mean()), ("l1", lambda a, b: (a - b).abs().mean())):
        reg = regularizers.get(name).bind({})
        value, grad = jax.value_and_grad(lambda x, reg=reg: reg(x, jnp.asarray(f0))[0])(jnp.asarray(f))
        f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
        expected = formula(f_t, torch.tensor(f0, dtype=torch.float64))
        expected.backward()
        np.testing.assert_allclose(value, expected.item(), rtol=1e-6)
        np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-5, atol=1e-9)
    assert float(regularizers.get("none").bind({})(jnp.asarray(f), jnp.asarray(f0))[0]) == 0.0


def test_ldifs_matches_the_references_averaging_in_pytorch():
    """The reference: per tap, mean over channels then tokens; stacked (B, taps); mean over taps, then batch."""
    rng = np.random.default_rng(3)
    tokens = [rng.normal(size=(2, 5, 8)).astype(np.float32) for _ in range(3)]
    tokens0 = [rng.normal(size=(2, 5, 8)).astype(np.float32) for _ in range(3)]
    reg = regularizers.get("ldifs").bind({})
    frozen = [jnp.asarray(t) for t in tokens0]
    value, grads = jax.value_and_grad(lambda ts: reg(None, None, tokens=ts, tokens0=frozen)[0])(
        [jnp.asarray(t) for t in tokens]
    )
    current = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in tokens]
    unit = lambda x: x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    per_tap = [
        ((unit(torch.tensor(b, dtype=torch.float64)) - unit(a)) ** 2).mean(-1).mean(-1)
        for a, b in zip(current, tokens0)
    ]
    expected = torch.stack(per_tap, dim=1).mean(-1).mean(0)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-6)
    for grad, tensor in zip(grads, current):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-4, atol=1e-8)
    # the reference's ImageEncoderAugmented slices blocks [0:3], [3:6], [6:9], [9:12] at any depth
    assert regularizers.ldifs_taps(12) == (0, 3, 6, 9, 12) and regularizers.ldifs_taps(24) == (0, 3, 6, 9, 12)
    assert regularizers.ldifs_taps(3) == (0, 1, 2, 3)  # too shallow for the reference: quarters


def test_the_registry_declares_hyperparameters_and_needs():
    add_remove = regularizers.get("sae_add_remove")
    assert dict(add_remove.hparams) == {
        "lambda_add": 10.0,
        "lambda_remove": 0.02,
        "mu": 1.0,
        "reference_raw_inputs": False,
    }
    assert add_remove.uses_sae and add_remove.teacher_cache and add_remove.penalizes
    assert not regularizers.get("ldifs").teacher_cache and regularizers.get("ldifs").taps(12) == (0, 3, 6, 9, 12)
    assert not regularizers.get("none").penalizes and not regularizers.get("none").teacher_cache
    assert regularizers.get("mse").teacher_cache and not regularizers.get("mse").uses_sae


def test_bad_names_and_hyperparameters_are_rejected():
    with pytest.raises(KeyError, match="unknown regularizer 'sae_addremove'; known: none, sae_add_remove"):
        regularizers.get("sae_addremove")
    with pytest.raises(TypeError, match=r"does not take \['lambda_rem'\]"):
        regularizers.get("sae_add_remove").bind({"lambda_rem": 1.0})
    with pytest.raises(TypeError, match="needs the run's SAE"):
        regularizers.get("sae_mask").bind({})(jnp.zeros((2, D)), jnp.zeros((2, D)))
    with pytest.raises(TypeError, match="does not take"):
        regularizers.get("mse").bind({"k": 16})


def test_registration_reads_the_signature_and_refuses_inconsistent_entries(monkeypatch):
    monkeypatch.setattr(regularizers, "REGISTRY", dict(regularizers.REGISTRY))

    @regularizers.register(needs=("f0", "sae"))
    def scaled_residual(f, f0, *, sae, scale: float = 2.0):
        return scale * jnp.mean((sae.inputs(f) - sae.inputs(f0)) ** 2), {}

    entry = regularizers.get("scaled_residual")
    assert dict(entry.hparams) == {"scale": 2.0, "reference_raw_inputs": False} and entry.uses_sae
    with pytest.raises(ValueError, match="registered already"):
        regularizers.register(name="scaled_residual")(scaled_residual)
    with pytest.raises(ValueError, match="does not take"):
        regularizers.register(name="no_sae_argument", needs=("f0", "sae"))(lambda f, f0: (0.0, {}))
    with pytest.raises(ValueError, match="need defaults"):

        def no_default(f, f0, *, weight):
            return weight, {}

        regularizers.register()(no_default)
    with pytest.raises(ValueError, match="says where to tap them"):
        regularizers.register(needs=("tokens",))(regularizers.ldifs)


@pytest.mark.parametrize(
    "name, hparams", [("nuclear", {}), ("quadratic_nuclear", {}), ("quadratic_nuclear", {"c": 0.5})]
)
def test_nuclear_penalties_match_pytorch(setup, name, hparams):
    _, f, f0 = setup
    reg = regularizers.get(name).bind(hparams)
    value, grad = jax.value_and_grad(lambda x, reg=reg: reg(x, jnp.asarray(f0))[0])(jnp.asarray(f))
    f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    expected = torch_reference.matrix_regularizer(name, f_t, torch.tensor(f0, dtype=torch.float64), **hparams)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    # float32 SVD against float64: on some CPUs' LAPACK one small element differs by ~3e-6
    np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    if name == "quadratic_nuclear" and not hparams:  # the change is within the budget of 10: free
        assert float(value) == 0.0 and not np.any(grad)
    else:
        assert np.abs(np.asarray(grad)).max() > 0
    _, at_start = jax.value_and_grad(lambda x: reg(x, jnp.asarray(f0))[0])(jnp.asarray(f0))
    assert np.all(np.isfinite(at_start))  # the first step, where f == f0, has a usable gradient


@pytest.mark.parametrize("name", ["mse", "l1", "nuclear", "quadratic_nuclear"])
def test_normalize_is_the_references_flag(setup, name):
    """The reference's `--normalize`: both embeddings divided by (their norm + 1e-8), then the penalty."""
    _, f, f0 = setup
    hparams = {"c": 0.5} if name == "quadratic_nuclear" else {}
    reg = regularizers.get(name).bind({"normalize": True, **hparams})
    value, grad = jax.value_and_grad(lambda x, reg=reg: reg(x, jnp.asarray(f0))[0])(jnp.asarray(f))
    f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    unit = lambda x: x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    a, b = unit(f_t), unit(torch.tensor(f0, dtype=torch.float64))
    expected = {
        "mse": lambda: ((a - b) ** 2).mean(),
        "l1": lambda: (a - b).abs().mean(),
        "nuclear": lambda: torch.linalg.norm(a - b, ord="nuc"),
        "quadratic_nuclear": lambda: torch.relu(torch.linalg.norm(a - b, ord="nuc") - 0.5) ** 2,
    }[name]()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    raw = float(regularizers.get(name).bind(hparams)(jnp.asarray(f), jnp.asarray(f0))[0])
    assert abs(raw - float(value)) > 1e-3 * abs(raw)  # the flag changes the penalty (the embeddings are not unit norm)


@pytest.mark.parametrize("hparams", [{}, {"lambda_l1": 0.2, "lambda_wass": 2.0, "mu": 3.0}])
def test_sae_w_matches_the_references_sinkhorn_in_pytorch(setup, hparams):
    params, f, f0 = setup
    reg = regularizers.get("sae_w").bind(hparams)
    frozen = FrozenSAE(params, K)
    (value, metrics), grad = jax.value_and_grad(lambda x: reg(x, jnp.asarray(f0), sae=frozen), has_aux=True)(
        jnp.asarray(f)
    )
    f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    sae_t = {n: torch.tensor(v, dtype=torch.float64) for n, v in params.items()}
    expected = torch_reference.sae_w(f_t, torch.tensor(f0, dtype=torch.float64), sae_t, K, **hparams)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-4)
    np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-3, atol=1e-6)
    assert float(metrics["wasserstein"]) > 0 and np.abs(np.asarray(grad)).max() > 0


def test_sinkhorn_is_zero_between_equal_distributions_and_grows_with_the_cost():
    cost = jnp.asarray([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    p = jnp.asarray([[0.5, 0.5, 0.0]])
    same = regularizers.sinkhorn_distance(p, p, cost, epsilon=0.05, iterations=50)
    moved = regularizers.sinkhorn_distance(p, jnp.asarray([[0.0, 0.5, 0.5]]), cost, epsilon=0.05, iterations=50)
    assert float(same[0]) == pytest.approx(0.0, abs=1e-3)
    assert float(moved[0]) == pytest.approx(0.5, abs=1e-2)  # half the mass moves at cost 1


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(500, D)) * np.linspace(3.0, 0.1, D)).astype(np.float32)  # distinct variances


def test_the_pca_basis_is_scikit_learns_on_unit_norm_rows(features):
    from sklearn.decomposition import PCA

    from saeft_jax.sae.pca import pca_basis

    basis = pca_basis(features, 5)
    unit = features / (np.linalg.norm(features, axis=-1, keepdims=True) + 1e-8)
    expected = PCA(5).fit(unit.astype(np.float64))
    directions = basis.params["W_enc"].T
    signs = np.sign(np.sum(directions * expected.components_, axis=1))
    np.testing.assert_allclose(directions, expected.components_ * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(basis.params["b_pre"], expected.mean_, atol=1e-6)
    codes = np.asarray(basis.encode(jnp.asarray(unit)))
    np.testing.assert_allclose(codes, expected.transform(unit) * signs, atol=1e-5)  # every direction a code
    assert basis.k == basis.dict_size == 5
    with pytest.raises(ValueError, match="1 to 16"):
        pca_basis(features, 17)


@pytest.mark.parametrize("hparams", [{}, {"lambda_l1": 0.5, "mu": 4.0}])
def test_the_pca_penalty_matches_the_references_in_pytorch(setup, features, hparams):
    from saeft_jax.sae.pca import pca_basis

    _, f, f0 = setup
    basis = pca_basis(features, 8)  # fewer directions than dimensions: the residual term counts
    reg = regularizers.get("pca").bind(hparams)
    value, grad = jax.value_and_grad(lambda x: reg(x, jnp.asarray(f0), sae=basis)[0])(jnp.asarray(f))
    f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    expected = torch_reference.pca_penalty(
        f_t, torch.tensor(f0, dtype=torch.float64), torch.tensor(basis.params["W_enc"], dtype=torch.float64), **hparams
    )
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-4)
    np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-3, atol=1e-7)
    assert regularizers.get("pca").sae_kind == "pca" and regularizers.get("sae_sparse").sae_kind == "topk"


def test_sinkhorn_rows_without_mass_cost_nothing_and_keep_gradients_finite():
    cost = jnp.asarray([[0.0, 1.0], [1.0, 0.0]])
    p0 = jnp.asarray([[1.0, 0.0], [0.0, 0.0], [0.3, 0.7]])  # the second image's ReLU codes are all zero

    def total(p1):
        return jnp.sum(regularizers.sinkhorn_distance(p0, p1, cost, epsilon=0.05, iterations=50))

    p1 = jnp.asarray([[0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    distances = regularizers.sinkhorn_distance(p0, p1, cost, epsilon=0.05, iterations=50)
    assert float(distances[0]) == pytest.approx(1.0, abs=1e-3) and float(distances[1]) == float(distances[2]) == 0.0
    assert np.all(np.isfinite(jax.grad(total)(p1)))
