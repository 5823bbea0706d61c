"""The Tune function trainable: one trial = the core training loop on one sampled config.

The dataset reaches every trial through Ray's object store (`tune.with_parameters`), once for the
whole search; the trial builds its config, resumes from `tune.get_checkpoint()` when Tune restarts
it, and reports every epoch's validation metrics with a checkpoint of the loop's state. Under
cross-validation the trial trains its folds in lockstep (training/folds.py) and reports their
means; the checkpoint then holds every fold's state.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from ray import tune

from ecg_tune.config import make_config
from ecg_tune.data.tensors import TensorData
from ecg_tune.training.folds import Fold, fit_folds

STATE_FILE = "state.pt"
# A grid space's trials carry their whole point under this key (see search/tuner.py).
GRID_KEY = "grid_point"


def sampled_values(config: dict) -> dict:
    """The values a trial's config holds for the space's parameters."""
    return dict(config[GRID_KEY]) if GRID_KEY in config else dict(config)


def trial_config(config: dict, max_epochs: int, seed: int) -> dict:
    """The full config a trial trains: the sampled values plus the search's epochs and seed."""
    return {**sampled_values(config), "epochs": max_epochs, "seed": seed}


def train_trial(config: dict, data: TensorData, folds: Sequence[Fold], max_epochs: int, seed: int) -> None:
    """Tune function trainable (bind data and folds with `tune.with_parameters`); `folds`: the
    (train, val) index pairs of `Validation.folds`, one pair for the split's own parts."""
    train_config = make_config(trial_config(config, max_epochs, seed), where="trial config")
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    for result in fit_folds(train_config, data, folds, resume=resume):
        with tempfile.TemporaryDirectory() as folder:
            torch.save(result.state(), Path(folder) / STATE_FILE)
            tune.report(report_metrics(result.metrics), checkpoint=tune.Checkpoint.from_directory(folder))


def report_metrics(metrics: dict) -> dict:
    """Metrics as Tune stores them: numbers, with the confusion matrix as a JSON string."""
    return {key: json.dumps(value) if isinstance(value, list) else value for key, value in metrics.items()}
