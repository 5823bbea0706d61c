"""The Tune function trainable: one trial = the core training loop on one sampled config.

The dataset reaches every trial through Ray's object store (`tune.with_parameters`), once for the
whole search; the trial builds its config, resumes from `tune.get_checkpoint()` when Tune restarts
it, and reports every epoch's validation metrics with a checkpoint of the loop's state. Under
cross-validation the trial trains its folds in lockstep (training/folds.py) and reports their
means; the checkpoint then holds every fold's state.

A checkpoint that cannot be read (truncated, corrupt, its state file missing) must not cost the
trial: Tune would restore the same checkpoint on every retry and the trial would end errored.
The trial warns, naming it (in the worker's log and in `restore_warnings.txt` in the trial's
folder), then resumes from the newest older checkpoint Tune still keeps (`--keep-checkpoints`
above 1), else starts again from epoch 1. Each result carries its epoch as `training_iteration`
so ASHA's rungs, Optuna's steps and the exported best epoch stay the loop's epochs after such a
step back (Tune's own counter would continue from the lost checkpoint's epoch).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from ray import tune

from ecg_tune.config import make_config
from ecg_tune.data.tensors import TensorData
from ecg_tune.training.folds import Fold, fit_folds
from ecg_tune.training.reported import TRAINING_ITERATION

STATE_FILE = "state.pt"
WARNINGS_FILE = "restore_warnings.txt"  # in the trial's folder, beside Tune's error.txt
# Tune's names for a trial's checkpoint folders (ray.train._internal.storage): the index grows.
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
# A grid space's trials carry their whole point under this key (see search/tuner.py).
GRID_KEY = "grid_point"

logger = logging.getLogger(__name__)


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
    resume = restore_state(tune.get_checkpoint(), len(folds))
    for result in fit_folds(train_config, data, folds, resume=resume):
        with tempfile.TemporaryDirectory() as folder:
            torch.save(result.state(), Path(folder) / STATE_FILE)
            tune.report(report_metrics(result.metrics, result.epoch),
                        checkpoint=tune.Checkpoint.from_directory(folder))


def report_metrics(metrics: dict, epoch: int | None = None) -> dict:
    """Metrics as Tune stores them: numbers, with the confusion matrix as a JSON string; `epoch`
    becomes the result's training_iteration (Tune only fills it in when it is absent)."""
    reported = {key: json.dumps(value) if isinstance(value, list) else value for key, value in metrics.items()}
    if epoch is not None:
        reported[TRAINING_ITERATION] = int(epoch)
    return reported


def restore_state(checkpoint: tune.Checkpoint | None, n_folds: int) -> dict[str, Any] | None:
    """The loop state to resume from: `checkpoint`'s, else the newest readable older checkpoint
    of the same trial, else None (the trial starts again); every unreadable one is warned of."""
    if checkpoint is None:
        return None
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            return _load_state(candidate, n_folds)
        except Exception as exc:  # anything unreadable: a truncated zip, a missing file, bad content
            _warn(checkpoint, f"checkpoint {candidate.path} is unreadable ({type(exc).__name__}: "
                              f"{_first_line(exc)})")
    _warn(checkpoint, f"no readable checkpoint left: the trial starts again from epoch 1 "
                      f"(latest was {checkpoint.path})")
    return None


def _load_state(checkpoint: tune.Checkpoint, n_folds: int) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    # A state that loads but is not what fit_folds wrote is as unusable as an unreadable one.
    if not isinstance(state, dict) or not isinstance(state.get("folds"), list) or len(state["folds"]) != n_folds:
        raise ValueError(f"not a {n_folds}-fold loop state")
    epochs = {fold.get("epoch") if isinstance(fold, dict) else None for fold in state["folds"]}
    if len(epochs) != 1 or not isinstance(next(iter(epochs)), int):
        raise ValueError(f"fold states at epochs {sorted(map(str, epochs))}")
    logger.info("trial resumes after epoch %s from %s", next(iter(epochs)), checkpoint.path)
    return state


def _older_checkpoints(checkpoint: tune.Checkpoint) -> Iterator[tune.Checkpoint]:
    """The trial's other checkpoints with a lower index than `checkpoint`, newest first: those
    Tune keeps (CheckpointConfig.num_to_keep). A higher index is a checkpoint whose result Tune
    never registered (the worker died before the driver saw it): not used."""
    from pyarrow import fs

    path, filesystem = PurePosixPath(checkpoint.path), checkpoint.filesystem
    current = _CHECKPOINT_NAME.fullmatch(path.name)
    if current is None or filesystem is None:
        return
    try:
        siblings = filesystem.get_file_info(fs.FileSelector(str(path.parent)))
    except Exception as exc:  # an unlistable folder only means no fallback
        logger.warning("cannot list %s for older checkpoints: %s", path.parent, exc)
        return
    older = []
    for info in siblings:
        match = _CHECKPOINT_NAME.fullmatch(PurePosixPath(info.path).name)
        if info.type == fs.FileType.Directory and match and int(match[1]) < int(current[1]):
            older.append((int(match[1]), info.path))
    for _, older_path in sorted(older, reverse=True):
        yield tune.Checkpoint(older_path, filesystem=filesystem)


def _warn(checkpoint: tune.Checkpoint, message: str) -> None:
    """Log `message` and append it to the trial folder's WARNINGS_FILE (best effort: storage
    that refuses the write must not fail the trial)."""
    logger.warning(message)
    target, filesystem = str(PurePosixPath(checkpoint.path).parent / WARNINGS_FILE), checkpoint.filesystem
    if filesystem is None:
        return
    try:
        try:
            with filesystem.open_input_stream(target) as stream:
                before = stream.read()
        except FileNotFoundError:
            before = b""
        with filesystem.open_output_stream(target) as stream:
            stream.write(before + message.encode() + b"\n")
    except Exception as exc:
        logger.warning("could not write %s: %s", target, exc)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The start of an error's message (torch's unreadable-zip error runs to 400 characters)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= limit else line[: limit - 3] + "..."
