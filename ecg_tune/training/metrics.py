"""Classification metrics: accuracy, macro F1, the CinC 2017 score, per-class F1, confusion matrix;
and the one table of which way each metric improves.

The CinC 2017 score is the mean F1 of the classes N, A and O (noise is not scored); it exists only
when the dataset has those three classes. Every place that ranks by a metric (the tuner, the
export of the best trial, the progress lines, the report's curves, the benchmarks) asks
`direction` here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

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


def ranking_metric(classes: list[str]) -> str:
    """The default validation metric that ranks configurations."""
    return "val_cinc_f1" if has_cinc_classes(classes) else "val_macro_f1"


Direction = Literal["max", "min"]
# Metric names without their split prefix (val_, train_, test_). Per-class F1 is `f1_<class>`.
DIRECTIONS: dict[str, Direction] = {"loss": "min", "accuracy": "max", "macro_f1": "max", "cinc_f1": "max"}
_SPLITS = ("val_", "train_", "test_")


def _base(metric: str) -> str:
    for prefix in _SPLITS:
        if metric.startswith(prefix):
            return metric[len(prefix):]
    return metric


# Reported with every epoch: True when the run ends after it by itself (its last epoch, early
# stopping, a closed-form fit), so that a trial the scheduler stopped can be told from one that
# finished (training/loop.py sets it; the searcher, the exports and the progress read it).
# A test report's headline figures, in this order (the refit's line, report.html, MLflow).
HEADLINE_METRICS = ("accuracy", "macro_f1", "cinc_f1")
FINISHED = "finished"


def finished(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last reported result says its run ended by itself."""
    return result is not None and bool(result.get(FINISHED, False))


# A cross-validated trial also reports each validation metric's spread over its folds as
# `<metric>_std` (training/folds.py): a figure to read beside the mean, never one to rank by.
SPREAD_SUFFIX = "_std"


def spread_of(key: str) -> str | None:
    """The metric whose spread over folds `key` is (`val_loss_std` -> `val_loss`), else None."""
    if key.endswith(SPREAD_SUFFIX) and is_metric(key[:-len(SPREAD_SUFFIX)]):
        return key[:-len(SPREAD_SUFFIX)]
    return None


def direction(metric: str) -> Direction:
    """"max" if a higher `metric` is better, "min" if lower (losses). Unknown names and spreads
    (`<metric>_std`, which have no better way): ValueError."""
    if spread_of(metric) is not None:
        raise ValueError(f"{metric!r} is a spread over folds, not a ranked metric")
    base = _base(metric)
    if base.startswith("f1_"):
        return "max"
    if base not in DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r}")
    return DIRECTIONS[base]


def is_metric(metric: str) -> bool:
    """Whether `metric` is one of the table's metrics (with any split prefix)."""
    try:
        direction(metric)
    except ValueError:
        return False
    return True


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
    """The validation metrics a trial reports for these classes (what --metric may name)."""
    names = ["val_accuracy", "val_macro_f1"] + (["val_cinc_f1"] if has_cinc_classes(classes) else [])
    return names + ["val_loss"] + [f"val_f1_{c}" for c in classes]
