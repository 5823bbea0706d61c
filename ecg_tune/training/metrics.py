"""Classification metrics: accuracy, macro F1, the CinC 2017 score, per-class F1, confusion matrix.

The CinC 2017 score is the mean F1 of the classes N, A and O (noise is not scored); it exists only
when the dataset has those three classes.
"""

from __future__ import annotations

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
    for name, value in zip(classes, per_class):
        result[f"{prefix}f1_{name}"] = float(value)
    result[f"{prefix}confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return result


def ranking_metric(classes: list[str]) -> str:
    """The default validation metric that ranks configurations."""
    return "val_cinc_f1" if has_cinc_classes(classes) else "val_macro_f1"
