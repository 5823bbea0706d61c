"""The refit's three PNG pictures, drawn with matplotlib from analysis.py's data.

Owns `confusion_matrix.png` (counts and row shares), `training_curves.png` (the refit's training
loss, the winner's validation curves, every trial's curve) and `search_overview.png` (the best
score so far and the scores per model / transform / augmentation); `write_pictures` draws all
three for a refitted run and writes them through `RunFolder.write_picture`. The search's numbers
come from analysis.py, as the page's do, so the pictures and report.html show the same data.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The object-oriented Figure API renders through Agg on savefig without touching pyplot's global
# backend or figure registry: safe headless, inside Ray workers and in long-lived processes.
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ecg_tune.reporting.analysis import learning_curves, metric_curve, progress, score_groups
from ecg_tune.runs import BestConfig, RunFolder, TrialTable
from ecg_tune.training.metrics import best_index, direction

_NO_DATA = "no data"


def write_pictures(run: RunFolder, best: BestConfig, test: dict[str, Any], refit_history: list[dict[str, Any]],
                   histories: Mapping[str, pd.DataFrame]) -> list[Path]:
    """The three pictures of a refitted run (`test`: its test report; `refit_history`: the refit's
    per-epoch metrics; `histories`: the trials'), written into the run folder; their paths."""
    return [run.write_picture("confusion_matrix", png(confusion_picture(test["confusion_matrix"], test["classes"]))),
            run.write_picture("training_curves",
                              png(training_curves_picture(refit_history, histories, best.trial_id, best.metric))),
            run.write_picture("search_overview", png(search_overview_picture(run.trial_table(), histories,
                                                                             best.metric)))]


def png(figure: Figure) -> bytes:
    """A picture as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The confusion matrix
# --------------------------------------------------------------------------------------------

def confusion_picture(confusion: list[list[int]], classes: list[str]) -> Figure:
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
    return fig


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


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

def training_curves_picture(refit_history: list[dict[str, Any]], histories: Mapping[str, pd.DataFrame],
                            winner: str, metric: str) -> Figure:
    """Refit training loss, the winning trial's validation curves, and every trial's metric curve."""
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
    winning = histories.get(winner)
    best = metric_curve(winning, metric)
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
        loss = metric_curve(winning, "val_loss")
        if loss is not None and metric != "val_loss":
            ax_loss = ax_best.twinx()
            ax_loss.plot(loss.epochs, loss.values, color="tab:red", linestyle="-.", label="val_loss")
            ax_loss.set_ylabel("val_loss")
            more_handles, more_labels = ax_loss.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax_best.legend(handles, labels, loc="best", fontsize=8)
    else:
        _no_data(ax_best)
    ax_best.set_title("Best trial, validation")

    # Panel 3: the whole search at a glance; the winner is drawn last so it stays on top.
    curves = learning_curves(histories, metric, winner)
    for trial_id, curve in curves:
        if trial_id == winner:
            ax_all.plot(curve.epochs, curve.values, color="tab:orange", linewidth=2.0, label="best trial")
            ax_all.legend(loc="best", fontsize=8)
        else:
            ax_all.plot(curve.epochs, curve.values, color="0.6", linewidth=0.8, alpha=0.7)
    if curves:
        ax_all.set_xlabel("epoch")
        ax_all.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_all.set_ylabel(metric)
    else:
        _no_data(ax_all)
    ax_all.set_title(f"All trials ({len(curves)})")
    return fig


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

def search_overview_picture(table: TrialTable, histories: Mapping[str, pd.DataFrame], metric: str) -> Figure:
    """Best-so-far `metric` against time (or trial order), and the metric per model/transform/augmentation."""
    groups = score_groups(table, metric)
    fig = Figure(figsize=(max(10, 4.5 * len(groups)), 8 if groups else 4.5), layout="constrained")
    grid = fig.add_gridspec(2 if groups else 1, max(1, len(groups)))
    _best_so_far_panel(fig.add_subplot(grid[0, :]), table, histories, metric)
    for i, (key, values, scores) in enumerate(groups):
        _per_value_panel(fig.add_subplot(grid[1, i]), key, values, scores, metric)
    return fig


def _best_so_far_panel(ax: Axes, table: TrialTable, histories: Mapping[str, pd.DataFrame], metric: str) -> None:
    found = progress(table, histories, metric)
    ax.set_title("Best so far")
    if len(found.x) == 0:
        _no_data(ax)
        return
    ax.scatter(found.x, found.values, s=10, color="0.6", alpha=0.6, label="reported")
    ax.step(found.x, found.best, where="post", color="tab:blue", linewidth=2,
            label=f"best so far ({found.best[-1]:.4g})")
    ax.set_xlabel("elapsed time (s)" if found.timed else "trial number")
    ax.set_ylabel(metric)
    ax.legend(loc="upper right" if direction(metric) == "min" else "lower right", fontsize=8)


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


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, _NO_DATA, ha="center", va="center", transform=ax.transAxes,
            fontsize=12, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
