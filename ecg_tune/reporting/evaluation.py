"""The test report: the refit's held-out test records scored once, with bootstrap intervals;
report.json's content; the headline line that quotes it.

Owns `test_metrics` (per-record scores of the test split and their 95 % bootstrap intervals),
`report_content` (what `RunFolder.write_report` puts in report.json), `ensemble_content` (its
`ensemble` object: each refitted member's weight, validation and test figures beside the single
best trial's) and `headline` (the refit's printed line, the page's header and MLflow quote the same
figures). It knows nothing about models, Ray or files: callers hand it labels and probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from ecg_tune.training.metrics import CINC_CLASSES, HEADLINE_METRICS, classification_metrics, has_cinc_classes

# Resampled labels are processed in chunks of about this many entries, so that a large test set
# with many resamples does not build one huge index matrix.
_BOOT_CHUNK_ENTRIES = 4_000_000


def test_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], *,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-record scores of class probabilities against true labels, with 95 % bootstrap intervals.

    `y_true` holds integers indexing `classes`; `probabilities` is (records, classes) and the
    predicted class is the row's argmax. Every value in the result is a plain Python type.
    """
    classes = [str(c) for c in classes]
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=float)
    k = len(classes)
    if probabilities.ndim != 2 or probabilities.shape[1] != k:
        raise ValueError(f"probabilities must have shape (records, {k}); got {probabilities.shape}")
    if y_true.ndim != 1 or len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} labels for {len(probabilities)} rows of probabilities")
    if len(y_true) == 0:
        raise ValueError("no test records to score")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinite values")
    y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"labels must index the {k} classes {classes}")
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    y_pred = probabilities.argmax(axis=1).astype(np.int64)

    # The headline figures come from the same function that scores validation, so test and
    # validation numbers in report.json are defined identically.
    base = classification_metrics(y_true, y_pred, classes)
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0)
    w_precision, w_recall, w_f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0)

    result: dict[str, Any] = {
        "accuracy": base["accuracy"],
        "macro_f1": base["macro_f1"],
    }
    if "cinc_f1" in base:
        result["cinc_f1"] = base["cinc_f1"]
    result["weighted"] = {"precision": float(w_precision), "recall": float(w_recall),
                          "f1": float(w_f1)}
    result["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    result["classes"] = list(classes)
    result["confusion_matrix"] = [[int(v) for v in row] for row in base["confusion"]]
    result["n_records"] = int(len(y_true))

    samples = _bootstrap_scores(y_true, y_pred, classes, n_boot, seed)
    result["ci95"] = {
        name: [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
        for name, values in samples.items()
    }
    return result


# The name starts with "test_", which pytest would otherwise collect (and fail to call) from any
# test module that imports it by name.
test_metrics.__test__ = False  # type: ignore[attr-defined]  # a plain function attribute pytest reads


def _bootstrap_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], n_boot: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 (and CinC F1) of `n_boot` resamples of the records, with replacement.

    Each resample's confusion matrix comes from one bincount over (resample, true, predicted)
    codes, so the whole bootstrap is a handful of array operations rather than a Python loop.
    """
    if n_boot == 0:
        return {}
    n, k = len(y_true), len(classes)
    rng = np.random.default_rng(seed)
    # Encoding each record once as true*k + pred lets a resample gather one array instead of two.
    pair = y_true * k + y_pred
    chunk = max(1, _BOOT_CHUNK_ENTRIES // n)
    confusions = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        index = rng.integers(0, n, size=(size, n))
        codes = np.arange(size)[:, None] * (k * k) + pair[index]
        counts = np.bincount(codes.ravel(), minlength=size * k * k)
        confusions.append(counts.reshape(size, k, k))
    confusion = np.concatenate(confusions).astype(float)

    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)        # rows are true classes
    predicted = confusion.sum(axis=1)      # columns are predicted classes
    denominator = support + predicted
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); 0 when the class is neither true
    # nor predicted, as sklearn's zero_division=0 gives.
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive),
                   where=denominator > 0)
    # Macro F1 over the classes present in each resample's truth: the definition of
    # classification_metrics, so the interval brackets the same quantity as the point estimate.
    present = support > 0
    macro = (f1 * present).sum(axis=1) / present.sum(axis=1)
    samples = {"accuracy": true_positive.sum(axis=1) / n, "macro_f1": macro}
    if has_cinc_classes(classes):
        cinc = [classes.index(c) for c in CINC_CLASSES]
        samples["cinc_f1"] = f1[:, cinc].mean(axis=1)
    return samples


def report_content(test: dict[str, Any], validation: dict[str, Any], config: dict[str, Any], epochs: int, *,
                   ensemble: dict[str, Any] | None = None, refit_seconds: float | None = None,
                   chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json's content: the delivered model's test report, the single best trial's validation
    metrics, refitted config and epochs; with an ensemble its `ensemble` object (`ensemble_content`),
    with a trial chosen by hand (`ecg-tune refit --trial`) its `chosen` object (`chosen_content`:
    then validation, config and epochs are that trial's), and the refit's wall time. numpy values
    become plain Python ones and NaN/inf become null, so the file is strict JSON and this dict
    equals what a reader loads back."""
    content: dict[str, Any] = {"test": test, "validation": validation, "config": config, "epochs": int(epochs)}
    if ensemble is not None:
        content["ensemble"] = ensemble
    if chosen is not None:
        content["chosen"] = chosen
    if refit_seconds is not None:
        content["refit_seconds"] = round(float(refit_seconds), 1)
    report: dict[str, Any] = _json_ready(content)
    return report


def chosen_content(trial_id: str, search_best: str, feasible: bool | None, config: dict[str, Any]) -> dict[str, Any]:
    """report.json's `chosen`: the trial refit as the delivered model by hand instead of the search's
    best (`search_best`), whether it met the run's constraints (None: the run recorded none) and its
    own values (the sampled ones, made complete as a best config is)."""
    return {"trial_id": trial_id, "by": "hand", "search_best": search_best, "feasible": feasible,
            "config": dict(config)}


@dataclass(frozen=True)
class ModelFigures:
    """One refitted model as the ensemble object tells it: its trial, its weight in the delivered
    model (0: the single best, refit only as the reference), its validation score on the search's
    metric, the epochs it was refit for and its own test report (`test_metrics`)."""

    trial_id: str
    weight: float
    validation: float | None
    epochs: int
    test: dict[str, Any]


def ensemble_content(models: Sequence[ModelFigures], single_best: str, metric: str, rule: str,
                     figures: dict[str, float]) -> dict[str, Any]:
    """report.json's `ensemble`: the members (weight > 0) with their validation `metric` and test
    headline figures, the single best trial's (`single_best`, among `models`) beside them, and the
    selection's `rule` and `figures` as ensemble.json gives them."""
    def described(model: ModelFigures) -> dict[str, Any]:
        return {"trial_id": model.trial_id, "validation": model.validation, "epochs": int(model.epochs),
                "test": headline_figures(model.test)}

    best = next(m for m in models if m.trial_id == single_best)
    return {"metric": metric,
            "members": [{**described(m), "weight": float(m.weight)} for m in models if m.weight > 0],
            "single_best": {**described(best), "member": best.weight > 0},
            "rule": rule, "figures": dict(figures)}


def headline_figures(test: dict[str, Any]) -> dict[str, Any]:
    """A test report's headline metrics with their 95 % intervals (`ci95`), the rest left out."""
    names = [k for k in HEADLINE_METRICS if k in test]
    return {**{k: test[k] for k in names}, "ci95": {k: test["ci95"][k] for k in names if k in test.get("ci95", {})}}


def _json_ready(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars and arrays as Python values, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_ready(v) for v in value.tolist()]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def headline(test: dict[str, Any], separator: str = " ") -> str:
    """A test report's headline figures with their 95 % intervals, e.g. `accuracy 0.861 [0.841, 0.881]`."""
    return separator.join(f"{k} {test[k]:.3f} [{test['ci95'][k][0]:.3f}, {test['ci95'][k][1]:.3f}]"
                          for k in HEADLINE_METRICS if k in test and k in test.get("ci95", {}))
