"""The closed-form ridge head (ecg_tune/models/ridge.py) against references: scikit-learn's
RidgeClassifierCV (same alpha, same scores) and leave-one-out done the slow way (refit without
each row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeClassifierCV

from ecg_tune.models.ridge import ALPHAS, fit_ridge, loo_errors


def blobs(n: int, p: int, k: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, p))
    x[np.arange(n), y] += shift  # class j moves feature j: separable with noise
    return x, y


def scores(fit, x: np.ndarray) -> np.ndarray:
    return (torch.as_tensor(x).float() @ fit.weight.T + fit.bias).double().numpy() * fit.temperature


@pytest.mark.parametrize(("n", "p", "k", "shift", "seed"), [
    (120, 300, 3, 3.0, 0),   # more features than rows: the dual solve
    (200, 40, 4, 1.0, 1),    # more rows than features: the primal solve
    (90, 90, 2, 0.5, 2),     # weak signal: a large alpha wins
    (150, 500, 5, 6.0, 3),   # strong signal: a small alpha wins
])
def test_alpha_and_scores_match_scikit_learn(n, p, k, shift, seed):
    x, y = blobs(n, p, k, shift, seed)
    ours = fit_ridge(x, y, k)
    reference = RidgeClassifierCV(alphas=ALPHAS).fit(x, y)
    assert ours.alpha == pytest.approx(reference.alpha_)
    test_x, _ = blobs(100, p, k, shift, seed + 100)
    decision = reference.decision_function(test_x)
    decision = decision if k > 2 else np.stack([-decision, decision], axis=1)  # binary: one column
    if k > 2:
        np.testing.assert_allclose(scores(ours, test_x), decision, atol=1e-4)
    else:  # scikit-learn's binary score is half the difference of the two one-vs-rest scores
        ours_scores = scores(ours, test_x)
        np.testing.assert_allclose((ours_scores[:, 1] - ours_scores[:, 0]) / 2, decision[:, 1], atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(40, 60), (60, 20)])
def test_leave_one_out_residuals_are_exact(weighted, shape):
    n, p = shape
    x, y = blobs(n, p, 3, 2.0, seed=5)
    w = np.random.default_rng(6).uniform(0.5, 2.0, n) if weighted else np.ones(n)
    targets = -np.ones((n, 3))
    targets[np.arange(n), y] = 1.0
    x_mean, y_mean = np.average(x, axis=0, weights=w), np.average(targets, axis=0, weights=w)
    root = torch.as_tensor(np.sqrt(w))
    alphas = (0.01, 1.0, 100.0)
    errors, residuals, _ = loo_errors(torch.as_tensor(x - x_mean) * root[:, None],
                                      torch.as_tensor(targets - y_mean) * root[:, None], root, alphas)
    for a, alpha in enumerate(alphas):
        slow = np.array([
            (targets[i] - Ridge(alpha=alpha).fit(np.delete(x, i, 0), np.delete(targets, i, 0),
                                                  sample_weight=np.delete(w, i)).predict(x[i:i + 1])[0]) * np.sqrt(w[i])
            for i in range(n)])
        np.testing.assert_allclose(residuals[a].numpy(), slow, atol=1e-9)
        assert float(errors[a]) == pytest.approx(float(np.mean(slow ** 2)))


def test_selection_on_a_subsample_then_one_solve_on_every_row():
    x, y = blobs(400, 100, 3, 2.0, seed=7)
    full = fit_ridge(x, y, 3)
    sub = fit_ridge(x, y, 3, select_rows=150)
    # Same data, alpha chosen on fewer rows: the final solve still uses every row, so where the
    # alphas agree the weights are the same up to the temperature.
    if sub.alpha == full.alpha:
        np.testing.assert_allclose((sub.weight * sub.temperature).numpy(), (full.weight * full.temperature).numpy(),
                                   atol=1e-4)
    reference = Ridge(alpha=sub.alpha).fit(x, np.where(np.eye(3)[y] > 0, 1.0, -1.0))
    np.testing.assert_allclose((sub.weight * sub.temperature).numpy(), reference.coef_, atol=1e-4)


def test_temperature_makes_probabilities_sharper_than_raw_ridge_scores():
    x, y = blobs(200, 50, 3, 4.0, seed=8)
    fit = fit_ridge(x, y, 3)
    assert fit.temperature < 1.0  # ridge scores are differences below 1: a plain softmax is too flat
    probabilities = torch.softmax(torch.as_tensor(x).float() @ fit.weight.T + fit.bias, dim=1)
    assert float(probabilities.max(dim=1).values.mean()) > 0.8


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="ridge needs"):
        fit_ridge(np.zeros((1, 4)), np.zeros(1, dtype=int), 2)
