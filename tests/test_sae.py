"""The Top-K SAE formulas against an independent NumPy computation; sparse vs dense paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saeft_jax.sae import model as sae

D, F, K, B = 16, 64, 4, 8


def random_params(seed: int = 0, b_enc: bool = False) -> dict:
    params = sae.init_params(jax.random.key(seed), D, F, b_enc=b_enc)
    rng = np.random.default_rng(seed)
    params["b_pre"] = jnp.asarray(rng.normal(0, 0.1, D), jnp.float32)
    if b_enc:
        params["b_enc"] = jnp.asarray(rng.normal(0, 0.1, F), jnp.float32)
    return params


def numpy_codes(params: dict, x: np.ndarray, k: int, relu: bool) -> np.ndarray:
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    pre = (x - p["b_pre"]) @ p["W_enc"] + p.get("b_enc", 0.0)
    s = np.zeros_like(pre)
    for row in range(len(x)):
        top = np.argsort(-pre[row])[:k]
        s[row, top] = np.maximum(pre[row, top], 0) if relu else pre[row, top]
    return s


def unit_batch(seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(B, D))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_init_atoms_have_unit_norm_and_tied_init_transposes():
    params = sae.init_params(jax.random.key(0), D, F, tied_init=True)
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(params["W_enc"], params["W_dec"].T)
    assert "b_enc" not in params and not np.any(params["b_pre"])


@pytest.mark.parametrize("relu,b_enc", [(False, False), (True, False), (False, True)])
def test_encode_decode_and_loss_match_numpy(relu, b_enc):
    params, x = random_params(b_enc=b_enc), unit_batch()
    expected_s = numpy_codes(params, x, K, relu)
    s = sae.encode(params, jnp.asarray(x, jnp.float32), K, relu=relu)
    np.testing.assert_allclose(s, expected_s, atol=1e-5)
    assert ((np.asarray(s) != 0).sum(-1) <= K).all()
    expected_x_hat = expected_s @ np.asarray(params["W_dec"], np.float64) + np.asarray(params["b_pre"])
    np.testing.assert_allclose(sae.decode(params, s), expected_x_hat, atol=1e-5)
    for sparse in (True, False):
        x_hat, values, indices = sae.reconstruct(params, jnp.asarray(x, jnp.float32), K, relu=relu, sparse=sparse)
        np.testing.assert_allclose(x_hat, expected_x_hat, atol=1e-5)
        np.testing.assert_allclose(sae.densify(values, indices, F), expected_s, atol=1e-5)


def test_unit_norm_matches_formula():
    x = np.random.default_rng(0).normal(size=(4, D)).astype(np.float32)
    np.testing.assert_allclose(sae.unit_norm(x), x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8), rtol=1e-6)


@pytest.mark.parametrize("relu,b_enc", [(False, False), (True, True)])
def test_sparse_and_dense_paths_agree_in_value_and_gradient(relu, b_enc):
    params, x = random_params(seed=3, b_enc=b_enc), jnp.asarray(unit_batch(4), jnp.float32)

    def loss(p, sparse):
        x_hat, _, _ = sae.reconstruct(p, x, K, relu=relu, sparse=sparse)
        return jnp.mean((x_hat - x) ** 2)

    (v_sparse, g_sparse), (v_dense, g_dense) = (jax.value_and_grad(loss)(params, s) for s in (True, False))
    np.testing.assert_allclose(v_sparse, v_dense, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(g_sparse[name], g_dense[name], atol=1e-7, err_msg=name)
    untouched = np.setdiff1d(np.arange(F), np.asarray(sae.reconstruct(params, x, K)[2]).ravel())
    assert not np.any(np.asarray(g_sparse["W_dec"])[untouched])  # only selected atoms get gradient
    assert not np.any(np.asarray(g_sparse["W_enc"])[:, untouched])


def test_auxk_loss_matches_numpy():
    params, x = random_params(seed=5), unit_batch(6)
    residual = np.random.default_rng(7).normal(0, 0.1, size=(B, D))
    dead = np.zeros(F, bool)
    dead[::3] = True
    k_aux = 5
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    pre = (x - p["b_pre"]) @ p["W_enc"]
    expected = 0.0
    for row in range(B):
        candidates = np.where(dead)[0]
        top = candidates[np.argsort(-pre[row, candidates])[:k_aux]]
        expected += np.sum((pre[row, top] @ p["W_dec"][top] - residual[row]) ** 2)
    expected /= B * D
    got = sae.auxk_loss(
        params, jnp.asarray(x, jnp.float32), jnp.asarray(residual, jnp.float32), jnp.asarray(dead), k_aux
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (
        float(
            sae.auxk_loss(
                params, jnp.asarray(x, jnp.float32), jnp.asarray(residual, jnp.float32), jnp.zeros(F, bool), k_aux
            )
        )
        == 0.0
    )
