"""The linear probe: its objective, and L-BFGS reaching scikit-learn's logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from saeft_jax.training.probe import blocks, fit_probe, probe_objective


def toy_problem(seed: int = 0, count: int = 300, width: int = 8, classes: int = 4):
    """Overlapping Gaussian classes, so the regularized optimum is finite and unique."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    features = rng.normal(size=(classes, width))[labels] + rng.normal(size=(count, width))
    return features.astype(np.float32), labels


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("l2, tolerance", [(1e-2, 2e-4), (1e-4, 1e-3)])  # weaker l2: flatter, float32 stops sooner
def test_probe_reaches_the_scikit_learn_solution(l2, tolerance):
    features, labels = toy_problem()
    # 300 examples in blocks of 64: the last block is padded, which must not count
    head, fit = fit_probe(blocks(features, labels, 64), 4, l2=l2, tolerance=1e-6, max_iterations=5000)
    reference = LogisticRegression(C=1 / (len(labels) * l2), tol=1e-12, max_iter=100000).fit(unit(features), labels)
    assert fit["converged"]
    np.testing.assert_allclose(head["W"], reference.coef_, atol=tolerance * np.abs(reference.coef_).max())
    # softmax ignores a constant added to every bias: compare them centred
    np.testing.assert_allclose(
        head["b"] - head["b"].mean(),
        reference.intercept_ - reference.intercept_.mean(),
        atol=tolerance * np.abs(reference.coef_).max(),
    )
    accuracy = lambda logits: np.mean(np.argmax(logits, -1) == labels)
    assert accuracy(unit(features) @ head["W"].T + head["b"]) == accuracy(reference.decision_function(unit(features)))


def test_objective_is_mean_cross_entropy_plus_half_l2_weight_norm():
    features, labels = toy_problem(seed=1, count=50)
    rng = np.random.default_rng(2)
    head = {"W": rng.normal(size=(4, 8)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    logits = unit(features.astype(np.float64)) @ head["W"].T + head["b"]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(50), labels].mean() + 0.5 * 0.3 * np.sum(head["W"].astype(np.float64) ** 2)
    assert float(probe_objective(head, blocks(features, labels, 16), 0.3)) == pytest.approx(expected, rel=1e-5)


def test_a_start_changes_the_path_not_the_optimum():
    features, labels = toy_problem(seed=3)
    cold, _ = fit_probe(blocks(features, labels), 4, l2=1e-3, tolerance=1e-6, max_iterations=5000)
    start = {"W": np.full((4, 8), 5.0, np.float32), "b": np.ones(4, np.float32)}
    warm, _ = fit_probe(blocks(features, labels), 4, l2=1e-3, tolerance=1e-6, max_iterations=5000, start=start)
    np.testing.assert_allclose(warm["W"], cold["W"], atol=1e-3)


def test_a_capped_fit_says_it_did_not_converge():
    features, labels = toy_problem()
    _, fit = fit_probe(blocks(features, labels), 4, l2=1e-6, tolerance=1e-9, max_iterations=3)
    assert fit["iterations"] == 3 and not fit["converged"] and fit["grad_norm"] > 1e-9


def test_a_non_positive_l2_is_refused():
    features, labels = toy_problem()
    with pytest.raises(ValueError, match="positive"):
        fit_probe(blocks(features, labels), 4, l2=0.0)


def test_the_examples_are_arguments_of_one_compiled_solver_not_constants():
    from saeft_jax.training import probe

    features, labels = toy_problem(seed=4)
    data = blocks(features, labels, 64)
    before = probe._solve._cache_size()
    for l2 in (1e-2, 1e-3, 1e-4):
        fit_probe(data, 4, l2=l2)
    assert probe._solve._cache_size() - before <= 1  # a new l2 (or new data of the same shape) does not recompile
    text = probe._solve.lower(
        {"W": np.zeros((4, 8), np.float32), "b": np.zeros(4, np.float32)},
        data,
        np.float32(1e-3),
        np.int32(10),
        np.float32(1e-6),
    ).as_text()
    assert len(text) < 200_000  # the 300 x 8 features would be a dense constant in a program that captured them
