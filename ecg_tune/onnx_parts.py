"""A model's parts that torch.onnx cannot take as they are, restated with fixed shapes for export.

This module owns the torch modules onnx_export.py puts in place of a part whose own forward does
not export, or exports to something onnxruntime computes differently, each from the fitted part's
public attributes and checked there against the part itself:

- `FourierGraph`: the Fourier magnitude with its DFT in float64. ONNX's DFT exports, but
  onnxruntime's float32 DFT of a length that is not a power of two is a direct sum (errors of 0.19
  on a 9000-sample spectrum against torch's 5e-5); in float64 it is as accurate as torch's FFT.
- `RocketGraph`: minirocket's features and head. Its forward chunks the batch in Python (a loop
  over a dynamic size) and finds runs with nonzero (a data-dependent shape); here every
  (series, dilation) is two convolutions compared with all their biases at once, and the longest
  run a scan of fixed shape.
- `SvmGraph`: cnn_svm's SVM stage, a scikit-learn Pipeline with no torch form: standard scaling,
  the RBF kernel against the support vectors, libsvm's one-vs-one decision values, scikit-learn's
  one-vs-rest votes and confidences, the temperature and the softmax, in float64 as scikit-learn
  computes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecg_tune.errors import EcgTuneError
from ecg_tune.models.minirocket import MiniRocket
from ecg_tune.models.svm import SVMStage


class ExportError(EcgTuneError):
    """A bundle that cannot be exported as ONNX: which part and why, in one line."""


class FourierGraph(nn.Module):
    """|rfft(x)| (log1p of it when `log`) as FourierTransform computes it, the DFT in float64."""

    def __init__(self, log: bool) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: Tensor) -> Tensor:
        spectrum = torch.fft.rfft(x.double(), dim=-1)
        magnitude = torch.sqrt(spectrum.real.square() + spectrum.imag.square()).float()
        return (torch.log1p(magnitude) if self.log else magnitude).unsqueeze(1)


class SvmGraph(nn.Module):
    """An `SVMStage`'s predict_proba from its fitted attributes, in float64 (see the module doc)."""

    # Buffers registered in __init__, declared for the type checker.
    place: Tensor
    mean: Tensor
    scale: Tensor
    prior: Tensor
    support: Tensor
    support_norms: Tensor
    coefficients: Tensor
    intercept: Tensor
    wins_first: Tensor
    wins_second: Tensor
    signs: Tensor

    def __init__(self, stage: SVMStage) -> None:
        super().__init__()
        if stage.pipeline is None:
            raise ExportError("the SVM stage was never fitted")
        scaler, last = stage.pipeline[0], stage.pipeline[-1]
        as64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        present = [int(c) for c in stage.classes_]
        place = np.zeros((len(present), stage.n_classes_))
        place[np.arange(len(present)), present] = 1.0  # absent classes: zero columns
        self.register_buffer("place", as64(place))
        self.register_buffer("mean", as64(scaler.mean_))
        self.register_buffer("scale", as64(scaler.scale_))
        self.constant = len(present) < 2
        if self.constant:  # a one-class fit: DummyClassifier's prior, whatever the input
            self.register_buffer("prior", as64(last.class_prior_).reshape(1, -1))
            return
        self.binary = len(present) == 2
        self.temperature = float(stage.temperature_)
        self.gamma = _rbf_gamma(last, scaler)
        support = np.asarray(last.support_vectors_, dtype=np.float64)
        self.register_buffer("support", as64(support.T))
        self.register_buffer("support_norms", as64((support ** 2).sum(axis=1)))
        coefficients, pairs_of = _pairwise(last)
        self.register_buffer("coefficients", as64(coefficients))
        self.register_buffer("intercept", as64(last.intercept_))
        for name, matrix in zip(("wins_first", "wins_second", "signs"), pairs_of, strict=True):
            self.register_buffer(name, as64(matrix))

    def forward(self, features: Tensor) -> Tensor:
        x = (features.double() - self.mean) / self.scale
        if self.constant:
            return (x[:, :1] * 0.0 + self.prior) @ self.place
        distances = ((x * x).sum(dim=1, keepdim=True) + self.support_norms - 2.0 * (x @ self.support)).clamp(min=0.0)
        decision = torch.exp(-self.gamma * distances) @ self.coefficients + self.intercept
        if self.binary:  # scikit-learn's one value per row, positive for the second class
            scores = torch.cat([torch.zeros_like(decision), decision], dim=1)
        else:  # _ovr_decision_function: votes, plus confidences squashed below one vote
            votes = (decision >= 0).double() @ self.wins_first + (decision < 0).double() @ self.wins_second
            confidence = decision @ self.signs
            scores = votes + confidence / (3.0 * (confidence.abs() + 1.0))
        return torch.softmax(scores / self.temperature, dim=1) @ self.place


def _rbf_gamma(svc: Any, scaler: Any) -> float:
    """The RBF gamma the SVC was fitted with, from public attributes: a number as given; "auto"
    1 / features; "scale" 1 / (features x the variance of the scaled training rows), which the
    scaler's per-feature variances give (every scaled feature has mean 0)."""
    gamma, n_features = svc.gamma, int(svc.n_features_in_)
    if gamma == "auto":
        return 1.0 / n_features
    if gamma == "scale":
        variance = float(np.mean(np.asarray(scaler.var_) / np.asarray(scaler.scale_) ** 2))
        return 1.0 / (n_features * variance) if variance != 0 else 1.0
    return float(gamma)


def _pairwise(svc: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """libsvm's decision values as one product: (support vectors x pairs) coefficients, and the
    (pairs x classes) matrices that turn the pairs' signs and values into scikit-learn's
    one-vs-rest scores. Binary: one column, scikit-learn's own sign (dual_coef_ as given)."""
    dual = np.asarray(svc.dual_coef_, dtype=np.float64)
    n = len(svc.classes_)
    if n == 2:
        return dual.T, [np.zeros((1, 2))] * 3
    bounds = np.concatenate([[0], np.cumsum(svc.n_support_)])
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    coefficients = np.zeros((dual.shape[1], len(pairs)))
    first, second, signs = (np.zeros((len(pairs), n)) for _ in range(3))
    for p, (i, j) in enumerate(pairs):
        # Pair (i, j) weighs class i's vectors by row j - 1 and class j's by row i (libsvm's layout).
        coefficients[bounds[i]:bounds[i + 1], p] = dual[j - 1, bounds[i]:bounds[i + 1]]
        coefficients[bounds[j]:bounds[j + 1], p] = dual[i, bounds[j]:bounds[j + 1]]
        first[p, i], second[p, j] = 1.0, 1.0
        signs[p, i], signs[p, j] = 1.0, -1.0
    return coefficients, [first, second, signs]


class RocketGraph(nn.Module):
    """MiniRocket's standardised features and head with static shapes, from its buffers: per
    (series, dilation) two convolutions (kernels reading every output, kernels reading only the
    outputs clear of the padding), each compared with its biases at once."""

    channel_scale: Tensor
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, model: MiniRocket) -> None:
        super().__init__()
        self.operators = tuple(model.operators)
        self.head = model.head
        self.register_buffer("channel_scale", model.channel_scale.detach().clone().view(1, -1, 1))
        self.register_buffer("feature_mean", model.feature_mean.detach().clone())
        self.register_buffer("feature_scale", model.feature_scale.detach().clone())
        self.plans: list[tuple[bool, list[tuple[int, str]]]] = []  # (first difference?, [(dilation, prefix)])
        kernels = model.kernels.detach()
        count = kernels.shape[0]
        for series in model.series:
            masks = getattr(model, f"{series.name}_channels").detach()
            biases = getattr(model, f"{series.name}_biases").detach()
            steps, start = [], 0
            for j, (dilation, n) in enumerate(zip(series.dilations, series.counts, strict=True)):
                weights = masks[j].unsqueeze(-1) * kernels.unsqueeze(1)  # (kernels, C, 9)
                bias = biases[start:start + count * n].view(count, n)
                start += count * n
                # Kernels with (j + k) even read every output, the others only those clear of the padding.
                every, clear = list(range(j % 2, count, 2)), list(range(1 - j % 2, count, 2))
                prefix = f"{series.name}_{j}"
                self.register_buffer(f"{prefix}_w_every", weights[every].clone())
                self.register_buffer(f"{prefix}_w_clear", weights[clear].clone())
                self.register_buffer(f"{prefix}_b_every", bias[every].clone())
                self.register_buffer(f"{prefix}_b_clear", bias[clear].clone())
                self.register_buffer(f"{prefix}_order", torch.as_tensor(np.argsort(every + clear)))
                steps.append((int(dilation), prefix))
            self.plans.append((series.name == "diff", steps))

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel_scale
        found: list[Tensor] = []
        for difference, steps in self.plans:
            xs = x[..., 1:] - x[..., :-1] if difference else x
            per_operator: list[list[Tensor]] = [[] for _ in self.operators]
            for dilation, prefix in steps:
                pad = 4 * dilation
                every = F.conv1d(xs, getattr(self, f"{prefix}_w_every"), padding=pad, dilation=dilation)
                clear = F.conv1d(xs, getattr(self, f"{prefix}_w_clear"), dilation=dilation)
                pooled = [torch.cat(pair, dim=1).index_select(1, getattr(self, f"{prefix}_order")).flatten(1)
                          for pair in zip(self._pool(every, getattr(self, f"{prefix}_b_every")),
                                          self._pool(clear, getattr(self, f"{prefix}_b_clear")), strict=True)]
                for values, into in zip(pooled, per_operator, strict=True):
                    into.append(values)
            found += [torch.cat(values, dim=1) for values in per_operator]
        features = (torch.cat(found, dim=1) - self.feature_mean) / self.feature_scale
        return self.head(features)

    def _pool(self, y: Tensor, biases: Tensor) -> list[Tensor]:
        """(B, K, L) outputs against (K, n) biases: one (B, K, n) tensor per operator."""
        length = y.shape[-1]
        above = y.unsqueeze(2) - biases[None, :, :, None]
        positive = (y.unsqueeze(2) > biases[None, :, :, None]).float()
        count = positive.sum(dim=-1)
        if len(self.operators) == 1:
            return [count / length]
        some, safe = count > 0, count.clamp(min=1.0)
        index = torch.arange(length, dtype=y.dtype, device=y.device)
        return [count / length,
                torch.where(some, above.clamp(min=0.0).sum(dim=-1) / safe, 0.0),
                torch.where(some, (positive * index).sum(dim=-1) / safe, -1.0),
                _longest_run(positive, index)]


def _longest_run(positive: Tensor, index: Tensor) -> Tensor:
    """Longest run of ones along the last axis of a 0/1 tensor: max over t of t minus the last
    zero at or before t, that running maximum by log2(L) doubling steps (a scan with fixed shapes)."""
    last_zero = torch.where(positive > 0, -1.0, index)
    shift, length = 1, positive.shape[-1]
    while shift < length:
        last_zero = torch.maximum(last_zero, F.pad(last_zero[..., :-shift], (shift, 0), value=-1.0))
        shift *= 2
    return (index - last_zero).amax(dim=-1)
