"""What every benchmark shares: the machine description, a smaller dataset for `--quick`, and a
best-score-so-far curve from a search folder's per-epoch results."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from ecg_tune.data import Dataset
from ecg_tune.data.split import UNUSED
from ecg_tune.training.metrics import running_best


def machine_info() -> dict:
    import ray
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def thin(dataset: Dataset, keep: int, seed: int = 0) -> Dataset:
    """The same dataset with only about `keep` records in play (stratified by split and class).

    The others are marked unused: `Dataset.index` never returns them, so every stage sees a
    smaller problem while tensors and record order stay as they are.
    """
    if keep >= len(dataset.split):
        return dataset
    rng = np.random.default_rng(seed)
    split = np.full(len(dataset.split), UNUSED, dtype=object)
    labels = dataset.tensors.labels
    assert labels is not None  # a prepared (split) dataset is labelled
    fraction = keep / len(dataset.split)
    for part in ("train", "val", "test"):
        for label in np.unique(labels):
            members = np.flatnonzero((dataset.split == part) & (labels == label))
            chosen = rng.permutation(members)[: max(1, round(fraction * len(members)))]
            split[chosen] = part
    return Dataset(records=dataset.records, tensors=dataset.tensors, split=split.astype(str))


def best_so_far(histories: dict, metric: str, started: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since `started` (default: the first trial's start) and the best `metric` any trial
    had reported by then (in the metric's direction), one point per report that improved it.

    `histories` maps trial ids to their per-epoch result frames (Tune's result.json rows).
    """
    from ecg_tune.reporting.analysis import timed_reports

    events = timed_reports(histories, metric, started)
    if events is None:
        return np.array([]), np.array([])
    times, values = events
    running = running_best(metric, values)
    raised = np.r_[True, running[1:] != running[:-1]]
    return times[raised], running[raised]


def value_at(times: np.ndarray, best: np.ndarray, at: float) -> float:
    """The best-so-far curve's value at `at` seconds (NaN before the first report)."""
    reached = np.flatnonzero(times <= at)
    return float(best[reached[-1]]) if len(reached) else float("nan")


def results_path(out: Path, name: str, stamp: str, suffix: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}-{stamp}{suffix}"
