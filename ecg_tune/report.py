"""The refit's report: test-set scores with bootstrap intervals, `report.json`, and its pictures.

Owns the per-record scoring of the held-out test split (`test_metrics`), the three PNGs a search
folder ends with (`confusion_matrix.png`, `training_curves.png`, `search_overview.png`) and the
writing of `report.json`. It knows nothing about models or Ray: callers hand it labels,
probabilities, histories and the `trials.csv` table, so it stays light to import and to test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

# The object-oriented Figure API renders through Agg on savefig without touching pyplot's global
# backend or figure registry: safe headless, inside Ray workers and in long-lived processes.
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_fscore_support

from ecg_tune.training.metrics import (
    CINC_CLASSES,
    HEADLINE_METRICS,
    best_index,
    best_value,
    classification_metrics,
    direction,
    has_cinc_classes,
    running_best,
)

# Resampled labels are processed in chunks of about this many entries, so that a large test set
# with many resamples does not build one huge index matrix.
_BOOT_CHUNK_ENTRIES = 4_000_000
_NO_DATA = "no data"


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------

def test_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], *,
                 n_boot: int = 1000, seed: int = 0) -> dict:
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

    result: dict = {
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


# --------------------------------------------------------------------------------------------
# report.json
# --------------------------------------------------------------------------------------------

def write_report(path: Path, test: dict, validation: dict, config: dict, epochs: int) -> dict:
    """Write `report.json` (at `path`, or inside it when `path` is a folder) and return its content.

    numpy values become plain Python ones and NaN/inf become null, so the file is strict JSON and
    the returned dict equals what a reader loads back.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    report = _plain({"test": test, "validation": validation, "config": config,
                     "epochs": int(epochs)})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed into place, so an interrupted run never leaves half a report.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)
    return report


def _plain(value):
    """A JSON-ready copy: numpy scalars and arrays as Python values, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------

def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    """Counts and row-normalised confusion matrices side by side; rows true, columns predicted."""
    counts = np.asarray(confusion, dtype=float).reshape(len(classes), len(classes))
    row_sums = counts.sum(axis=1, keepdims=True)
    # A class with no true records has an empty row: show zeros rather than NaN.
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)

    size = max(3.5, 0.9 * len(classes) + 2.0)
    fig = Figure(figsize=(2 * size + 1.0, size), layout="constrained")
    ax_counts, ax_norm = fig.subplots(1, 2)
    if not classes:
        for ax in (ax_counts, ax_norm):
            _no_data(ax)
    else:
        _confusion_panel(fig, ax_counts, counts, classes, "Counts",
                         [[f"{int(v)}" for v in row] for row in counts], vmax=None)
        _confusion_panel(fig, ax_norm, normalised, classes, "Row-normalised (recall on diagonal)",
                         [[f"{v:.2f}" for v in row] for row in normalised], vmax=1.0)
    _save(fig, path)


def _confusion_panel(fig: Figure, ax: Axes, values: np.ndarray, classes: list[str], title: str,
                     text: list[list[str]], vmax: float | None) -> None:
    top = vmax if vmax is not None else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            # Light text on dark cells keeps every annotation readable.
            colour = "white" if values[i, j] > 0.6 * top else "black"
            ax.text(j, i, text[i][j], ha="center", va="center", color=colour, fontsize=9)


def plot_training_curves(refit_history: list[dict], best_trial: pd.DataFrame | None,
                         trials: dict[str, pd.DataFrame], metric: str, path: Path) -> None:
    """Refit training loss, the best trial's validation curves, and every trial's metric curve."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_refit, ax_best, ax_all = fig.subplots(1, 3)

    # Panel 1: the refit has no validation data, so its training loss is what there is to show.
    refit = pd.DataFrame(list(refit_history or []))
    if "train_loss" in refit.columns and refit["train_loss"].notna().any():
        x = refit["epoch"] if "epoch" in refit.columns else pd.Series(np.arange(1, len(refit) + 1))
        ax_refit.plot(x, refit["train_loss"], marker="o", markersize=3, color="tab:blue",
                      label="train loss")
        ax_refit.set_xlabel("epoch")
        ax_refit.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_refit.set_ylabel("training loss")
        if "lr" in refit.columns and refit["lr"].notna().any():
            # The replayed learning-rate schedule explains steps in the loss curve.
            ax_lr = ax_refit.twinx()
            ax_lr.plot(x, refit["lr"], color="tab:gray", linestyle=":", label="learning rate")
            ax_lr.set_ylabel("learning rate")
            ax_lr.set_yscale("log")
    else:
        _no_data(ax_refit)
    ax_refit.set_title("Refit on train + validation")

    # Panel 2: the winner's validation metric and loss; scales differ, hence two y axes.
    best = metric_curve(best_trial, metric)
    if best is not None:
        epochs, values = best
        ax_best.plot(epochs, values, marker="o", markersize=3, color="tab:orange", label=metric)
        ax_best.set_xlabel("epoch")
        ax_best.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_best.set_ylabel(metric)
        peak = best_index(metric, values)
        # The refit trains for the epoch count at which the trial peaked: show where that is.
        ax_best.axvline(epochs[peak], color="tab:orange", linestyle="--", linewidth=1,
                        label=f"best epoch {epochs[peak]:g}")
        handles, labels = ax_best.get_legend_handles_labels()
        loss = metric_curve(best_trial, "val_loss")
        if loss is not None and metric != "val_loss":
            ax_loss = ax_best.twinx()
            ax_loss.plot(loss[0], loss[1], color="tab:red", linestyle="-.", label="val_loss")
            ax_loss.set_ylabel("val_loss")
            more_handles, more_labels = ax_loss.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax_best.legend(handles, labels, loc="best", fontsize=8)
    else:
        _no_data(ax_best)
    ax_best.set_title("Best trial, validation")

    # Panel 3: the whole search at a glance; the winner drawn last so it stays on top.
    drawn = 0
    for history in (trials or {}).values():
        if history is best_trial:
            continue
        curve = metric_curve(history, metric)
        if curve is not None:
            ax_all.plot(curve[0], curve[1], color="0.6", linewidth=0.8, alpha=0.7)
            drawn += 1
    if best is not None:
        ax_all.plot(best[0], best[1], color="tab:orange", linewidth=2.0, label="best trial")
        ax_all.legend(loc="best", fontsize=8)
        drawn += 1
    if drawn:
        ax_all.set_xlabel("epoch")
        ax_all.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_all.set_ylabel(metric)
    else:
        _no_data(ax_all)
    ax_all.set_title(f"All trials ({drawn})")
    _save(fig, path)


def plot_search_overview(trials: pd.DataFrame, histories: dict[str, pd.DataFrame], metric: str,
                         path: Path) -> None:
    """Best-so-far `metric` against time (or trial order), and the metric per model/transform/augmentation."""
    trials = trials if trials is not None else pd.DataFrame()
    score_column = f"best/{metric}"
    groups = []
    if score_column in trials.columns:
        for key in ("model", "transform", "augmentation"):
            column = f"config/{key}"
            if column in trials.columns:
                both = trials[[column, score_column]].copy()
                both[score_column] = pd.to_numeric(both[score_column], errors="coerce")
                both = both[both[score_column].notna() & both[column].notna()]
                if not both.empty:
                    groups.append((key, both[column].map(str), both[score_column]))

    fig = Figure(figsize=(max(10, 4.5 * len(groups)), 8 if groups else 4.5), layout="constrained")
    grid = fig.add_gridspec(2 if groups else 1, max(1, len(groups)))
    ax_time = fig.add_subplot(grid[0, :])
    _best_so_far_panel(ax_time, trials, histories or {}, metric)
    for i, (key, values, scores) in enumerate(groups):
        _per_value_panel(fig.add_subplot(grid[1, i]), key, values, scores, metric)
    _save(fig, path)


def _best_so_far_panel(ax: Axes, trials: pd.DataFrame, histories: dict[str, pd.DataFrame],
                       metric: str) -> None:
    lower = direction(metric) == "min"
    events = timed_reports(histories, metric)
    if events is not None:
        x, y = events
        xlabel = "elapsed time (s)"
    else:
        # Without times, trials in the order the table lists them (Tune's creation order).
        x, y = per_trial_order(trials, histories, metric)
        xlabel = "trial number"
    if len(x) == 0:
        _no_data(ax)
        ax.set_title("Best so far")
        return
    best = running_best(metric, y)
    ax.scatter(x, y, s=10, color="0.6", alpha=0.6, label="reported")
    ax.step(x, best, where="post", color="tab:blue", linewidth=2,
            label=f"best so far ({best[-1]:.4g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title("Best so far")
    ax.legend(loc="lower right" if not lower else "upper right", fontsize=8)


def timed_reports(histories: dict[str, pd.DataFrame], metric: str, started: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Every epoch's metric at its wall-clock time since `started` (a Unix time; default: the
    earliest trial's start), sorted by time; None without times."""
    times, values, starts = [], [], []
    for history in histories.values():
        if history is None or metric not in history.columns:
            continue
        needed = {"timestamp", "time_total_s"}
        if not needed.issubset(history.columns):
            return None
        frame = history[[metric, "timestamp", "time_total_s"]].apply(pd.to_numeric, errors="coerce")
        frame = frame.dropna()
        if frame.empty:
            continue
        # Ray's timestamp is when an epoch was reported; minus the trial's running time it is the
        # trial's start, and the earliest start is the search's.
        starts.append(float((frame["timestamp"] - frame["time_total_s"]).min()))
        times.append(frame["timestamp"].to_numpy(float))
        values.append(frame[metric].to_numpy(float))
    if not times:
        return None
    time = np.concatenate(times) - (min(starts) if started is None else started)
    value = np.concatenate(values)
    order = np.argsort(time, kind="stable")
    return time[order], value[order]


def headline(test: dict, separator: str = " ") -> str:
    """A test report's headline figures with their 95 % intervals, e.g. `accuracy 0.861 [0.841, 0.881]`."""
    return separator.join(f"{k} {test[k]:.3f} [{test['ci95'][k][0]:.3f}, {test['ci95'][k][1]:.3f}]"
                          for k in HEADLINE_METRICS if k in test and k in test.get("ci95", {}))


def per_trial_order(trials: pd.DataFrame, histories: dict[str, pd.DataFrame], metric: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each trial's best metric in trial order: from the table, else from the histories."""
    column = f"best/{metric}"
    if column in trials.columns:
        scores = pd.to_numeric(trials[column], errors="coerce").to_numpy(float)
    else:
        scores = []
        for history in histories.values():
            curve = metric_curve(history, metric)
            scores.append(np.nan if curve is None else best_value(metric, curve[1]))
        scores = np.asarray(scores, dtype=float)
    number = np.arange(1, len(scores) + 1)
    keep = np.isfinite(scores)
    return number[keep], scores[keep]


def _per_value_panel(ax: Axes, key: str, values: pd.Series, scores: pd.Series, metric: str) -> None:
    """Box plot of trials' best metric per config value, with the trials themselves as points."""
    levels = sorted(values.unique())
    data = [scores[values == level].to_numpy(float) for level in levels]
    positions = np.arange(1, len(levels) + 1)
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    # A fixed-seed jitter keeps points from overlapping and the picture reproducible.
    rng = np.random.default_rng(0)
    for position, points in zip(positions, data, strict=False):
        ax.scatter(position + rng.uniform(-0.15, 0.15, len(points)), points, s=14,
                   color="tab:blue", alpha=0.7, zorder=3)
    ax.set_xticks(positions, levels, rotation=30 if len(levels) > 3 else 0, ha="right"
                  if len(levels) > 3 else "center")
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"By {key}")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def metric_curve(history: pd.DataFrame | None, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, values) of one column of a trial's history, or None when there is nothing."""
    if history is None or not isinstance(history, pd.DataFrame) or column not in history.columns:
        return None
    values = pd.to_numeric(history[column], errors="coerce").to_numpy(float)
    for name in ("training_iteration", "epoch"):
        if name in history.columns:
            epochs = pd.to_numeric(history[name], errors="coerce").to_numpy(float)
            break
    else:
        epochs = np.arange(1, len(history) + 1, dtype=float)
    keep = np.isfinite(values) & np.isfinite(epochs)
    if not keep.any():
        return None
    return epochs[keep], values[keep]


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, _NO_DATA, ha="center", va="center", transform=ax.transAxes,
            fontsize=12, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
