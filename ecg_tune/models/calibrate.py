"""Scores -> probabilities: `softmax`, and temperature scaling: one float T that turns a
classifier's scores into probabilities, softmax(scores / T), fitted on out-of-sample scores by
minimising their log loss.

Shared by the heads that are not trained on a log loss (the SVM stage of cnn_svm, the ridge head
of minirocket): their raw scores would otherwise give far too flat or too sharp probabilities.
Scaling never changes the argmax.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# Temperatures searched, as log(T): wide enough for vote-count scores (differences of 1..K)
# and for ridge scores (one-vs-rest targets of +-1, differences well below 1).
LOG_T_BOUNDS = (-7.0, 7.0)


def fit_temperature(scores: np.ndarray, target: np.ndarray) -> float:
    """The T minimising the mean log loss of softmax(scores / T) at column `target` of each row;
    `scores` must be out of sample (scores of training rows are overconfident)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(target))

    def nll(log_t: float) -> float:
        return float(-log_softmax(scores / np.exp(log_t), axis=1)[rows, target].mean())

    return float(np.exp(minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded").x))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) scores, in their dtype (the network's heads and the ridge head's
    training loss share it, so both give the same probabilities from the same logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
