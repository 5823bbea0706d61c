"""The one contract of a classifier head that is fitted rather than trained by gradient steps.

Two heads fit it: cnn_svm's SVM stage (models/svm.py: an RBF SVC on the extractor's features,
refitted after every epoch, kept in a file of its own) and minirocket's ridge head
(models/ridge.py: solved in closed form into the model's last Linear layer, the run's one
"epoch"). A model declares its head by returning a new one from `EcgModel.fitted_head()`; the
training loop, the record-level evaluation, the refit and the bundle then handle every such head
the same way, through `FittedHead` alone:

- the loop asks `fit_when` when to fit it, fits it on the features of (at most `max_records`)
  training records' windows with `fit`, adds its `summary()` to the epoch's metrics, and keeps
  `to_bytes()` in the checkpoint (`EcgModel.restore_head` reads them back on resume);
- evaluation scores records with `predict_proba` of a head kept apart (`file` set); a head in the
  model (`file` None) is what the model's own forward already computes;
- the bundle writes a head kept apart as `file` beside the weights and loads it back through the
  model's `restore_head`; a head in the model travels in the weights.

This module also holds `stratified_subsample`, how such a head's training rows are thinned.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

import numpy as np

__all__ = ["FittedHead", "HeadFit", "stratified_subsample"]


class HeadFit(Enum):
    """When the training loop fits a model's `FittedHead`."""

    # After each epoch's gradient steps, on that epoch's features; the epoch is validated with
    # the head's probabilities (cnn_svm's SVM stage: a search ranks what the refit will deliver).
    EVERY_EPOCH = "every epoch"
    # After the last epoch's gradient steps only. What the loop does with an EVERY_EPOCH head when
    # its caller validates nothing and needs only the final head (the refit); epochs before the
    # last are validated with the model's own output.
    LAST_EPOCH = "last epoch"
    # Instead of gradient steps: the fit is the run's one epoch (minirocket's ridge head, whose
    # features are fixed, so nothing is left to train after it).
    ONLY_EPOCH = "only epoch"


class FittedHead(Protocol):
    """A head fitted on a model's `features` (n, feature_dim) rather than trained by gradient.

    Read-only members (a head is new from `EcgModel.fitted_head()`, fitted, then only read):
        name: what messages call it ("SVM stage").
        fit_when: when the training loop fits it.
        max_records: fit on the windows of a stratified subsample of at most this many training
            records, drawn anew each epoch (None: every training record).
        file: the bundle file of a head kept apart from the model, written with `to_bytes`
            ("svm.skops"); its probabilities then replace the model's own. None for a head that
            is part of the model: its fit writes the model's own parameters, so the model's
            forward already applies it and its state dict (checkpoint, weights.pt) carries it.
    """

    @property
    def name(self) -> str: ...

    @property
    def fit_when(self) -> HeadFit: ...

    @property
    def max_records(self) -> int | None: ...

    @property
    def file(self) -> str | None: ...

    def fit(self, features: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
            weights: np.ndarray | None = None, seed: int | None = None) -> FittedHead:
        """Fit on features (n, F) and integer labels (n,) in 0..n_classes-1 (n_classes defaults
        to max(label) + 1), with optional row weights (n,) (the loop's `class_weighting`; a head
        may document that it does not use them) and a seed for any subsampling; returns itself."""
        ...

    def summary(self) -> dict[str, float]:
        """Figures of the last fit worth reporting beside the epoch's metrics (e.g. the penalty
        chosen); empty when there are none."""
        ...

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, n_classes) class probabilities of features (n, F), column j for label j."""
        ...

    def to_bytes(self) -> bytes:
        """The fitted state, loadable by `load_bytes` with no arbitrary code run."""
        ...

    def load_bytes(self, blob: bytes) -> FittedHead:
        """The head `to_bytes` saved (this one, or a new object in its place); raises ValueError
        with a one-line reason for bytes that are not such output."""
        ...


def stratified_subsample(labels: np.ndarray, max_rows: int, seed: int = 0,
                         min_per_class: int = 3) -> np.ndarray:
    """Sorted row indices of at most `max_rows` rows, class shares kept, every class kept.

    Each class gets its proportional share (largest remainders fill the rest) but at least
    min(its count, `min_per_class`) rows, so a rare class survives and the calibration folds
    can still stratify. Returns all rows when there are no more than `max_rows`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= max_rows:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) > max_rows:
        raise ValueError(f"max_train={max_rows} is below the number of classes ({len(classes)})")
    floor = np.minimum(counts, min(min_per_class, max_rows // len(classes)))
    share = counts * (max_rows / n)
    take = np.maximum(np.floor(share).astype(int), floor)
    # Trim the classes that gained from the floor's top-up, largest first, down to max_rows.
    while take.sum() > max_rows:
        i = int(np.argmax(take - floor))
        take[i] -= 1
    # Hand out what is left by largest remainder, never more than a class has.
    remainder = share - np.floor(share)
    for i in np.argsort(-remainder, kind="stable"):
        if take.sum() >= max_rows:
            break
        if take[i] < counts[i]:
            take[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, take, strict=False)]
    return np.sort(np.concatenate(picked))
