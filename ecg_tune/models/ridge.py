"""Closed-form ridge classification: the head `minirocket` is fitted with (`rocket_head: ridge`).

`RidgeHead` is that head as a `FittedHead` (models/head.py): fitted once, as the run's only epoch,
on the features of every training window, straight into the model's last Linear layer (so the
model's forward applies it and its state dict carries it). `fit_ridge` is the solver:

The method of scikit-learn's RidgeClassifierCV, which MiniRocket's authors pair it with, written
in torch so that it runs on the trial's threads (numpy's BLAS would take every core of a machine
that Ray shares out one CPU per trial):

- Targets: +1 for a row's class, -1 for the others (one-vs-rest, all classes in one solve).
- Intercept: features and targets are centred first (weighted), so the intercept is not
  penalised. Row weights (class_weighting "balanced") scale each centred row by sqrt(weight).
- Penalty: alpha from `ALPHAS` (RidgeClassifierCV's default grid, 1e-3..1e3) by exact
  leave-one-out squared error (the intercept refitted without the row too), read off the
  eigendecomposition of the rows' Gram matrix: one decomposition serves every alpha.
- Cost: eigh of an n x n matrix is O(n^3) and slow (measured on one core: 2,000 rows 1.8 s,
  4,000 rows 18 s, 6,000 rows 69 s), so alpha is chosen on at most `SELECT_ROWS` rows (a
  stratified subsample), and the final weights for that alpha are one Cholesky solve over all
  the rows given, in the dual (n x n) or the primal (p x p), whichever is smaller.
- Probabilities: softmax(scores / T), with the temperature T fitted on the leave-one-out scores
  (ridge scores are differences well below 1: a plain softmax of them is nearly uniform).

Everything runs in float64 on the CPU: the Gram matrix's condition number reaches 1e10 at the
smallest alpha, beyond float32 (and MPS has no float64).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ecg_tune.models.calibrate import fit_temperature, softmax
from ecg_tune.models.head import HeadFit, stratified_subsample

__all__ = ["ALPHAS", "SELECT_ROWS", "RidgeFit", "RidgeHead", "fit_ridge", "loo_errors"]

ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 3, 10))
SELECT_ROWS = 3000


@dataclass(frozen=True)
class RidgeFit:
    """A fitted ridge classifier: logits = features @ weight.T + bias, already divided by T."""

    weight: Tensor  # (n_classes, n_features) float32
    bias: Tensor  # (n_classes,) float32
    alpha: float
    temperature: float
    loo_error: float  # mean squared leave-one-out residual at alpha (on the selection rows)


def _targets(labels: np.ndarray, n_classes: int) -> Tensor:
    y = -torch.ones(len(labels), n_classes, dtype=torch.float64)
    y[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.int64)] = 1.0
    return y


def loo_errors(x: Tensor, y: Tensor, root: Tensor, alphas: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Exact leave-one-out residuals of weighted ridge with an unpenalised intercept.

    x (n, p), y (n, k): rows centred by their weighted mean, then scaled by root = sqrt(weight)
    (n,). Returns (mean squared residual per alpha, the residuals (A, n, k), the dual solution
    c = G^-1 y (A, n, k)), where K = x x^T = Q diag(l) Q^T and G = K + alpha I.

    Why c_i / d_i: the fitted values are y - alpha c, and the hat matrix is
    I - alpha G^-1 + u u^T with u = root / |root| (the intercept's direction, which centring
    put in K's null space, so G^-1 u = u / alpha). The left-out residual (y - fit)_i / (1 - H_ii)
    is then c_i / d_i with d_i = (G^-1)_ii - u_i^2 / alpha: G^-1's diagonal without the
    intercept's direction (scikit-learn's _RidgeGCV drops that eigenvector for the same reason).
    """
    eigenvalues, q = torch.linalg.eigh(x @ x.T)
    qty = q.T @ y
    alpha = torch.tensor(alphas, dtype=x.dtype)
    inverse = 1.0 / (eigenvalues.clamp(min=0.0)[None, :] + alpha[:, None])  # (A, n)
    dual = torch.einsum("ij,aj,jk->aik", q, inverse, qty)
    u_squared = root.pow(2) / root.pow(2).sum()
    diagonal = inverse @ (q * q).T - u_squared[None, :] / alpha[:, None]  # (A, n)
    residuals = dual / diagonal[:, :, None]
    return residuals.pow(2).mean(dim=(1, 2)), residuals, dual


def fit_ridge(features: Tensor | np.ndarray, labels: np.ndarray, n_classes: int,
              weights: np.ndarray | None = None, alphas: tuple[float, ...] = ALPHAS,
              select_rows: int = SELECT_ROWS, seed: int = 0) -> RidgeFit:
    """Ridge classification of `labels` (n,) from `features` (n, p), alpha by leave-one-out."""
    labels = np.asarray(labels, dtype=np.int64)
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.dim() != 2 or len(x) != len(labels) or len(x) < 2:
        raise ValueError(f"ridge needs (n >= 2, p) features and n labels, got {tuple(x.shape)} and {len(labels)}")
    y = _targets(labels, n_classes)
    w = torch.ones(len(x), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    x_mean = (w[:, None] * x).sum(0) / w.sum()
    y_mean = (w[:, None] * y).sum(0) / w.sum()
    root = w.sqrt()[:, None]
    xc, yc = (x - x_mean) * root, (y - y_mean) * root

    chosen = torch.as_tensor(stratified_subsample(labels, select_rows, seed=seed))
    # The selection rows are re-centred on their own (weighted) mean: the identity behind
    # loo_errors needs the intercept's direction in the null space of their Gram matrix.
    xs, ys, ws = x[chosen], y[chosen], w[chosen]
    xs_mean, ys_mean = (ws[:, None] * xs).sum(0) / ws.sum(), (ws[:, None] * ys).sum(0) / ws.sum()
    errors, residuals, dual = loo_errors((xs - xs_mean) * root[chosen], (ys - ys_mean) * root[chosen],
                                         root[chosen, 0], alphas)
    best = int(errors.argmin())
    alpha = alphas[best]
    # Left-out scores of the selection rows, for the temperature: y - residual, undone weighting.
    loo_scores = ys - residuals[best] / root[chosen]
    temperature = fit_temperature(loo_scores.numpy(), labels[chosen.numpy()])

    n, p = xc.shape
    if len(chosen) == n:
        coef = xc.T @ dual[best]  # the selection was made on every row: reuse its solution
    elif n <= p:
        gram = xc @ xc.T
        gram.diagonal().add_(alpha)
        coef = xc.T @ torch.cholesky_solve(yc, torch.linalg.cholesky(gram))
    else:
        gram = xc.T @ xc
        gram.diagonal().add_(alpha)
        coef = torch.cholesky_solve(xc.T @ yc, torch.linalg.cholesky(gram))
    bias = y_mean - x_mean @ coef
    return RidgeFit(weight=(coef.T / temperature).float(), bias=(bias / temperature).float(),
                    alpha=alpha, temperature=temperature, loo_error=float(errors[best]))


class RidgeHead:
    """The `FittedHead` (models/head.py) that solves a model's last Linear layer by `fit_ridge`.

    Part of the model (`file` None): the fit writes the Linear's weight and bias, which the
    model's forward applies and its state dict saves. `to_bytes` / `load_bytes` carry the same
    two tensors on their own (a torch file read with weights_only, so no code runs).
    """

    name = "ridge head"
    fit_when = HeadFit.ONLY_EPOCH  # the features are fixed: nothing is left to train after it
    max_records = None  # every training window: eigh's cost is bounded by SELECT_ROWS instead
    file = None

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear
        self._summary: dict[str, float] = {}

    def fit(self, features: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
            weights: np.ndarray | None = None, seed: int | None = None) -> RidgeHead:
        """Solve the Linear layer from features (n, in_features); `n_classes` must be its
        out_features when given."""
        classes = self.linear.out_features
        if n_classes is not None and n_classes != classes:
            raise ValueError(f"the ridge head gives {classes} classes, asked for {n_classes}")
        found = fit_ridge(features, labels, classes, weights=weights, seed=0 if seed is None else seed)
        self._write(found.weight, found.bias)
        self._summary = {"ridge_alpha": found.alpha, "ridge_temperature": found.temperature}
        return self

    def summary(self) -> dict[str, float]:
        """The penalty chosen by leave-one-out and the temperature its scores were divided by."""
        return dict(self._summary)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """softmax of the Linear layer's logits, computed where the layer lives."""
        with torch.no_grad():
            logits = self.linear(torch.as_tensor(features).to(self.linear.weight.device))
        return softmax(logits.float().cpu().numpy())

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({"weight": self.linear.weight.detach().cpu(), "bias": self.linear.bias.detach().cpu()}, buffer)
        return buffer.getvalue()

    def load_bytes(self, blob: bytes) -> RidgeHead:
        """The weight and bias in `blob` written into the Linear layer (this head, returned)."""
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, ...) for other bytes
            raise ValueError(f"not a ridge head ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        want = {"weight": self.linear.weight, "bias": self.linear.bias}
        if not (isinstance(state, dict) and set(state) == set(want)
                and all(isinstance(state[k], Tensor) and state[k].shape == v.shape for k, v in want.items())):
            raise ValueError(f"not a ridge head for a Linear layer of shape {list(self.linear.weight.shape)}")
        self._write(state["weight"], state["bias"])
        return self

    def _write(self, weight: Tensor, bias: Tensor) -> None:
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
