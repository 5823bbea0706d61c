"""Cross-validated trials: which records validate a search's trials, and K fits in lockstep.

A validation part of 15 records cannot rank 40 trials: one record is 7 points of accuracy, so
the winner is mostly the luckiest. Below `AUTO_BELOW` validation records a search therefore
validates each trial by record-level K-fold cross-validation over the train + val records
(`--cv auto`, the default: `AUTO_FOLDS` folds, or as many as the rarest class allows); `--cv K`
asks for K folds, `--cv 1` for the split's val part alone. The folds are dealt by
data/split.make_folds from the saved split and the seed, so a resume and the refit see the same.

`fit_folds` runs the one training loop (training/loop.fit) once per fold and advances the K runs
together, epoch by epoch, yielding what a single run yields under the same keys, so that the
ranking metric, ASHA, the progress and the exports need no change:

* every validation metric (`val_*`): the mean over the folds, its spread (the population
  standard deviation of the K values, as `numpy.std` gives) as `<key>_std`;
* `val_confusion`: summed over the folds (every train + val record predicted once);
* `lr`: the median over the folds of the rate each used. With a plateau scheduler each fold
  lowers its rate on its own validation loss; the refit, which has no validation data, replays
  this per-epoch median: a rate most folds were at, and non-increasing as each fold's is;
* `epoch_seconds`: the sum (the wall time the trial spent on the epoch); other numbers: the mean;
* the validation probabilities (`FoldsEpoch.validation_predictions`, not reported): each fold's
  val records as that fold's model scored them, so every train + val record once (out of fold).

Each key's rule is its `folds` entry in training/reported.py's table (`combine_folds`).

Early stopping (`early_stop_patience`) is decided on the fold mean of `val_loss`, so that all
folds stop at the same epoch and every reported mean is over all K folds. Every fold uses the
input length the refit will (the config's, else the median over all train + val records), so
that the K models and the refit are the same network.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ecg_tune.config import TrainConfig
from ecg_tune.data import Dataset
from ecg_tune.data.split import make_folds, most_folds
from ecg_tune.data.tensors import TensorData
from ecg_tune.training.device import pick_device
from ecg_tune.training.loop import EpochResult, fit, resolve_input_length
from ecg_tune.training.precision import reported_precision
from ecg_tune.training.reported import BF16, FINISHED, EarlyStop, combine_folds, finished

# Below this many validation records the split's val part ranks trials by noise: at 100 records
# a two-class accuracy has a standard error of about 5 points (sqrt(0.5 * 0.5 / 100)), the size
# of the gaps between a search's leading trials; at 15 (ECG200) it is 13 points. K-fold
# cross-validation ranks on all train + val records instead, at K times a trial's cost, which is
# cheap exactly when the data is this small.
AUTO_BELOW = 100
AUTO_FOLDS = 5

CvOption = int | Literal["auto"]  # --cv: K folds (1: the split's val part) or automatic
Fold = tuple[np.ndarray, np.ndarray]  # (train index, val index)


@dataclass(frozen=True)
class Validation:
    """How a search validates its trials: one (train, val) pair per fold; a single pair is the
    split's own train and val parts."""

    folds: tuple[Fold, ...]
    description: str  # for the plan line, e.g. "5-fold cross-validation over 100 ..."

    @property
    def k(self) -> int:
        """The number of folds; 1: no cross-validation."""
        return len(self.folds)


def choose_validation(dataset: Dataset, cv: CvOption, seed: int) -> Validation:
    """The validation of a search on `dataset` for `--cv` (see the module docstring)."""
    split = dataset.split
    n_val = int((split == "val").sum())
    reason = ""
    if cv != "auto":
        k = cv
    else:
        most, rarest = most_folds(dataset.records, split)
        if n_val >= AUTO_BELOW:
            k, reason = 1, f"; cross-validation is automatic below {AUTO_BELOW}"
        elif most < 2:
            k, reason = 1, f"; too few of class {rarest} for cross-validation"
        else:
            k = min(AUTO_FOLDS, most)
            reason = f"; automatic: the val part has {n_val} < {AUTO_BELOW} records"
            if k < AUTO_FOLDS:
                reason += f"; {k} folds as class {rarest} has {most}"
    if k == 1:
        single = (dataset.index("train"), dataset.index("val"))
        return Validation((single,), f"the split's val part ({n_val} records{reason or '; --cv 1'})")
    fold = make_folds(dataset.records, split, k, seed)
    folds = tuple((np.flatnonzero((fold >= 0) & (fold != f)), np.flatnonzero(fold == f)) for f in range(k))
    sizes = sorted(len(val) for _, val in folds)
    per = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    return Validation(folds, f"{k}-fold cross-validation over {int((fold >= 0).sum())} train+val records "
                             f"({per} per fold{reason}); a trial trains {k} models in lockstep and reports "
                             f"their mean")


@dataclass
class FoldsEpoch:
    """One epoch of every fold: the combined metrics, each fold's own result, a resumable state,
    and the validation probabilities of the epoch (`validation_predictions`)."""

    epoch: int
    metrics: dict[str, Any]
    folds: list[EpochResult]
    _state: dict[str, Any] = field(repr=False, default_factory=dict)
    val_indices: tuple[np.ndarray, ...] = ()  # each fold's val part, in the order of `folds`

    def state(self) -> dict[str, Any]:
        """Every fold's state, and the fold-mean early stopping's (pass back as `resume`)."""
        return self._state

    def validation_predictions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(record indices into the data, class probabilities per record) of this epoch's
        validation, in record order: the val part's records, or under cross-validation every
        fold's val records scored by that fold's model (out of fold: the folds' val parts
        partition train + val, so each of those records once). None if the epoch was not
        validated. Assembled on demand: a trial asks only at an epoch it may keep."""
        parts = list(zip(self.val_indices, (r.val_probabilities for r in self.folds), strict=True))
        if not parts or any(probabilities is None for _, probabilities in parts):
            return None
        index = np.concatenate([val for val, _ in parts])
        probabilities = np.concatenate([p for _, p in parts if p is not None])
        order = np.argsort(index, kind="stable")
        return index[order], probabilities[order]


def fit_folds(config: TrainConfig, data: TensorData, folds: Sequence[Fold], *,
              device: torch.device | str | None = None, resume: dict[str, Any] | None = None
              ) -> Iterator[FoldsEpoch]:
    """Train `config` on every fold in lockstep; one `FoldsEpoch` per epoch. A single fold is
    the plain loop, its metrics passed on unchanged."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    states = list(resume["folds"]) if resume else [None] * len(folds)
    val_indices = tuple(np.asarray(val, dtype=np.int64) for _, val in folds)
    if len(folds) == 1:
        train, val = folds[0]
        for result in fit(config, data, train, val, device=device, resume=states[0]):
            yield FoldsEpoch(result.epoch, result.metrics, [result], {"folds": [result.state()]}, val_indices)
        return
    early = EarlyStop.resumed(config.early_stop_patience, resume)
    every = np.unique(np.concatenate([np.concatenate(fold) for fold in folds]))
    # Early stopping moves here (on the mean); the input length is the refit's (module docstring).
    config = config.with_updates(input_length=resolve_input_length(config, data, every), early_stop_patience=0)
    runs = _fold_runs(config, data, folds, states, device)
    for results in zip(*runs, strict=True):  # each fold one epoch further, in turn
        metrics = combine_folds([r.metrics for r in results])
        early.update(metrics)
        state = {"folds": [r.state() for r in results], **early.state()}
        # Finished when every fold is (the folded `finished`), or when the mean stops early.
        metrics[FINISHED] = finished(metrics) or early.stop
        yield FoldsEpoch(results[0].epoch, metrics, list(results), state, val_indices)
        if early.stop:
            return


def _fold_runs(config: TrainConfig, data: TensorData, folds: Sequence[Fold], states: Sequence[dict | None],
               device: torch.device) -> list[Iterator[EpochResult]]:
    """One training run per fold. `precision: auto` is resolved once, by the first fold (its
    first epoch measures, training/precision.py), and the others take what it chose: K separate
    measurements would cost K times as much and could disagree within their noise, leaving a
    trial that is part bf16 for the refit to replay. A resumed trial's folds keep their own."""
    first: Iterator[EpochResult] = fit(config, data, *folds[0], device=device, resume=states[0])
    rest = config
    if config.precision == "auto" and states[0] is None:
        opening = next(first, None)
        if opening is not None:
            rest = config.with_updates(precision=reported_precision(opening.metrics[BF16]))
            first = itertools.chain([opening], first)
    return [first] + [fit(rest, data, train, val, device=device, resume=state)
                      for (train, val), state in zip(folds[1:], states[1:], strict=True)]
