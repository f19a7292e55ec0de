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
    total, metrics = regularizers.sae_add_remove(jnp.asarray(f), jnp.asarray(f0), sae=FrozenSAE(params, K),
                                                 lambda_add=2.0, lambda_remove=3.0, mu=5.0)
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
        value, grad = jax.value_and_grad(lambda x: reg(x, jnp.asarray(f0))[0])(jnp.asarray(f))
        f_t = torch.tensor(f, dtype=torch.float64, requires_grad=True)
        expected = formula(f_t, torch.tensor(f0, dtype=torch.float64))
        expected.backward()
        np.testing.assert_allclose(value, expected.item(), rtol=1e-6)
        np.testing.assert_allclose(grad, f_t.grad.numpy(), rtol=1e-5, atol=1e-9)
    assert float(regularizers.get("none").bind({})(jnp.asarray(f), jnp.asarray(f0))[0]) == 0.0


def test_ldifs_matches_numpy():
    rng = np.random.default_rng(3)
    tokens = [rng.normal(size=(2, 5, 8)).astype(np.float32) for _ in range(3)]
    tokens0 = [rng.normal(size=(2, 5, 8)).astype(np.float32) for _ in range(3)]
    unit = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)
    expected = np.mean([((unit(a) - unit(b)) ** 2).sum(-1).mean() for a, b in zip(tokens, tokens0)])
    reg = regularizers.get("ldifs").bind({})
    value, _ = reg(None, None, tokens=[jnp.asarray(t) for t in tokens], tokens0=[jnp.asarray(t) for t in tokens0])
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert regularizers.ldifs_taps(12) == (0, 3, 6, 9, 12) and regularizers.ldifs_taps(24) == (0, 6, 12, 18, 24)


def test_the_registry_declares_hyperparameters_and_needs():
    add_remove = regularizers.get("sae_add_remove")
    assert dict(add_remove.hparams) == {"lambda_add": 10.0, "lambda_remove": 0.02, "mu": 1.0,
                                        "reference_raw_inputs": False}
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
