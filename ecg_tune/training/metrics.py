"""Classification metrics: accuracy, macro F1, the CinC 2017 score, per-class F1, confusion matrix,
the macro one-vs-rest AUROC of class probabilities; and ranking by them.

The CinC 2017 score is the mean F1 of the classes N, A and O (noise is not scored); it exists only
when the dataset has those three classes. Every place that ranks by a metric (the tuner, the
export of the best trial, the progress lines, the report's curves, the benchmarks) asks
`direction` here, which reads the metric's row in training/reported.py's table of reported keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

# training/reported.py owns these names; each `name as name` is kept importable from here for the
# modules that imported it from here before the table existed.
from ecg_tune.training.reported import FINISHED as FINISHED
from ecg_tune.training.reported import SPREAD_SUFFIX as SPREAD_SUFFIX
from ecg_tune.training.reported import TABLE, VALIDATION, describe_key
from ecg_tune.training.reported import Direction as Direction
from ecg_tune.training.reported import finished as finished
from ecg_tune.training.reported import is_metric as is_metric
from ecg_tune.training.reported import spread_of as spread_of

CINC_CLASSES = ("N", "A", "O")


def has_cinc_classes(classes: list[str]) -> bool:
    return all(name in classes for name in CINC_CLASSES)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str],
                           prefix: str = "") -> dict:
    """Metrics of predicted against true labels (integers indexing `classes`)."""
    labels = list(range(len(classes)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.unique(y_true)
    result = {
        f"{prefix}accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        # Macro F1 over the classes present in the truth: a class absent from a small split
        # would otherwise count as a free zero.
        f"{prefix}macro_f1": float(np.mean(per_class[present])) if len(present) else 0.0,
    }
    if has_cinc_classes(classes):
        result[f"{prefix}cinc_f1"] = float(np.mean([per_class[classes.index(c)] for c in CINC_CLASSES]))
    for name, value in zip(classes, per_class, strict=False):
        result[f"{prefix}f1_{name}"] = float(value)
    result[f"{prefix}confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return result


# A zero probability of the true class is a large loss, not an infinite one.
LOG_LOSS_FLOOR = 1e-12


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> Any:
    """Mean negative log probability of each record's true class, clipped at LOG_LOSS_FLOOR.
    `probabilities` is (records, classes), or a stack (..., records, classes) that gets one loss
    per matrix (the ensemble selection scores many candidate teams at once)."""
    true = np.asarray(probabilities)[..., np.arange(len(labels)), np.asarray(labels)]
    return np.mean(-np.log(np.clip(true, LOG_LOSS_FLOOR, None)), axis=-1)


def macro_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the one-vs-rest area under the ROC curve of the class's probability
    (ties count half), over the classes with records both in and out of the class; NaN when none.

    Threshold-free: it moves as soon as a model ranks records better, while accuracy and the F1
    scores wait for the arg-max to change, which on imbalanced data (CinC) takes CNNs several
    epochs. It is what early ASHA rungs can tell trials apart by (search/rungs.py)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    areas = []
    for cls in range(probabilities.shape[1]):
        positive = labels == cls
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        # Mann-Whitney U from average ranks: the AUROC with ties counted as half.
        ranks = _average_ranks(probabilities[:, cls])
        areas.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(areas)) if areas else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Each run of equal values gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def ranking_metric(classes: list[str]) -> str:
    """The default validation metric that ranks configurations."""
    return "val_cinc_f1" if has_cinc_classes(classes) else "val_macro_f1"


# A test report's headline figures, in this order (the refit's line, report.html, MLflow).
HEADLINE_METRICS = ("accuracy", "macro_f1", "cinc_f1")


def direction(metric: str) -> Direction:
    """"max" if a higher `metric` is better, "min" if lower (losses), as training/reported.py's
    table declares. Unknown names and spreads (`<metric>_std`, which have no better way):
    ValueError."""
    row = describe_key(metric)
    if row is not None and row.kind == "spread":
        raise ValueError(f"{metric!r} is a spread over folds, not a ranked metric")
    if row is None or row.direction is None:
        raise ValueError(f"unknown metric {metric!r}")
    return row.direction


def better(metric: str, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b` for `metric`."""
    return a < b if direction(metric) == "min" else a > b


def best_index(metric: str, values: Sequence[float] | np.ndarray) -> int:
    """Position of the best of `values` for `metric` (NaN ignored)."""
    array = np.asarray(values, dtype=float)
    return int(np.nanargmin(array) if direction(metric) == "min" else np.nanargmax(array))


def best_value(metric: str, values: Iterable[float]) -> float:
    array = np.asarray(list(values), dtype=float)
    return float(array[best_index(metric, array)])


def running_best(metric: str, values: np.ndarray) -> np.ndarray:
    """The best value so far at each position."""
    return np.minimum.accumulate(values) if direction(metric) == "min" else np.maximum.accumulate(values)


def validation_metrics(classes: list[str]) -> list[str]:
    """The validation metrics a trial reports for these classes (what --metric may name), in the
    order of training/reported.py's table."""
    names = [name for row in TABLE if row.kind == "metric" and row.pattern.startswith(VALIDATION)
             for name in row.expand(classes)]
    return [name for name in names if name != f"{VALIDATION}cinc_f1" or has_cinc_classes(classes)]
