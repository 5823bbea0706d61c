"""The one table of the keys a trial reports, and every rule that depends on a key's name.

A trial's result for an epoch holds what the loop reports (training/loop.fit: epoch, losses, the
validation metrics, the confusion matrix, lr, costs, `finished`, a closed-form head's figures, the
precision its steps ran in), under cross-validation each validation metric's spread over the folds
(training/folds.py), and Tune's bookkeeping (training_iteration, time_total_s, pid, ...). `TABLE`
declares each of them once, as a `ReportedKey`:

* `kind`: what the value is (a metric, a fold spread, a cost, Tune's bookkeeping, ...);
* `direction`: for a metric, which way it improves (training/metrics.direction reads it, and
  with it everything that ranks); a device cost (parameters, MACs, latency) has one too, "min",
  for a search that takes it as an objective (`--objectives val_cinc_f1,latency_ms`);
* `folds`: how a cross-validated trial combines its folds' values into one report
  (`combine_folds`, called by training/folds.py);
* `exported`: a column of trials.csv, as its final and best value (search/export.py; a key that
  is not a metric has no best: its final value only);
* `tracked`: logged to MLflow with every epoch when it is a number (`tracked`, for tracking.py).

Keys are patterns, not only names: `{split}` is an optional split prefix (`val_`, `train_`,
`test_`, or none: the test report's own names), `{class}` a class name (`val_f1_<class>`), and
`{metric}_std` the spread of any key the table calls a metric. A key no row describes is
undeclared: tests/test_reported.py runs the loop and fails on one, so a new key is declared here
before anything ships it. Until then it keeps the behaviour every key had before this table:
tracked, not exported, folded by `_UNDECLARED_FOLDS`.

`EarlyStop` is the early-stopping rule on `val_loss` shared by the loop and the fold lockstep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from numbers import Real
from typing import Any, Literal

import numpy as np

# Tune's count of a trial's reports; the trainable reports each epoch's result with its epoch as
# this value, so it is the trial's epoch everywhere (ASHA's clock, the histories, the exports).
TRAINING_ITERATION = "training_iteration"

# Reported with every epoch: True when the run ends after it by itself (its last epoch, early
# stopping, a closed-form fit), so that a trial the scheduler stopped can be told from one that
# finished (training/loop.py sets it; the searcher, the exports and the progress read it).
FINISHED = "finished"

# Reported with every epoch: 1.0 when the run's training steps ran under bf16 autocast, 0.0 in fp32
# (training/precision.py; over folds, the share that did): what the refit replays. A number, so
# that MLflow logs it and trials.csv has it (its final value).
BF16 = "bf16"

# Reported with every epoch by the trainable (search/trainable.py; training/costs.py measures them):
# what the trial's network costs on a device, each minimised when it is an objective.
N_PARAMS, MACS, LATENCY_MS = "n_params", "macs", "latency_ms"
COST_KEYS = (N_PARAMS, MACS, LATENCY_MS)
# Reported with the costs: 1.0 when the trial met the search's limits (--max-params, --max-macs,
# --max-latency-ms; always with none), else 0.0. The best trial and an ensemble are feasible ones.
FEASIBLE = "feasible"

# A cross-validated trial also reports each validation metric's spread over its folds as
# `<metric>_std` (training/folds.py): a figure to read beside the mean, never one to rank by.
SPREAD_SUFFIX = "_std"

# The split prefix of validation keys: the metrics a search ranks by and whose spread folds report.
VALIDATION = "val_"
_SPLITS = (VALIDATION, "train_", "test_")

Direction = Literal["max", "min"]
Kind = Literal[
    "metric",       # a score of the model on a split, with a direction: ranks trials
    "spread",       # a metric's population standard deviation over the folds
    "matrix",       # the confusion matrix (a list of lists; a JSON string in Tune's results)
    "schedule",     # the learning rate the epoch used: what the refit replays
    "fit",          # what a closed-form head chose (minirocket's ridge penalty, its temperature)
    "execution",    # how the run computed, as resolved at its start (bf16: its steps' precision)
    "cost",         # time and throughput; the network's size, MACs and latency (training/costs.py)
    "limit",        # whether the trial met the search's cost limits
    "progress",     # the loop's own epoch count
    "status",       # whether the run ended by itself after this epoch
    "bookkeeping",  # Tune's own fields of every result
]
FoldRule = Literal[
    "first",            # the same in every fold (the epoch)
    "mean",
    "mean_and_spread",  # the mean, and the spread as `<key>_std`
    "median",           # lr: a rate most folds were at (module docstring of training/folds.py)
    "sum",              # epoch_seconds: the wall time the trial spent on the epoch
    "elementwise_sum",  # the confusion matrix: every train + val record predicted once
    "all",              # finished: the trial ends when every fold has
    "min",              # feasible: a trial is feasible when every fold is
    "not_folded",       # never in a fold's own result (made by the folding, or by Tune)
]


@dataclass(frozen=True)
class ReportedKey:
    """One row of the table: the keys matching `pattern` and what is done with them."""

    pattern: str  # a key, or a pattern with {split}, {class} or {metric} (module docstring)
    kind: Kind
    folds: FoldRule
    exported: bool  # a trials.csv column (final and best value)
    tracked: bool  # logged to MLflow when the value is a number
    direction: Direction | None = None  # metrics, and the costs a search may minimise
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        directed = self.direction is not None
        if (self.kind == "metric" and not directed) or (directed and self.kind not in ("metric", "cost")):
            raise ValueError(f"{self.pattern}: a metric has a direction, and only a metric or a cost has one")
        object.__setattr__(self, "_regex", _compile(self.pattern))

    def matches(self, name: str) -> bool:
        found = self._regex.fullmatch(name)
        # A spread's stem must itself be a metric: `val_confusion_std` is no key at all.
        return found is not None and ("metric" not in found.groupdict() or is_metric(found["metric"]))

    def expand(self, classes: Sequence[str]) -> list[str]:
        """The key, or one key per class for a per-class pattern."""
        if "{class}" in self.pattern:
            return [self.pattern.replace("{class}", name) for name in classes]
        return [self.pattern]


_PLACEHOLDERS = {"{split}": "(?:" + "|".join(_SPLITS) + ")?", "{class}": ".*", "{metric}": "(?P<metric>.+)"}


def _compile(pattern: str) -> re.Pattern[str]:
    pieces = re.split(r"(\{\w+\})", pattern)
    return re.compile("".join(_PLACEHOLDERS.get(piece, re.escape(piece)) for piece in pieces), re.DOTALL)


def _metric(base: str, direction: Direction) -> tuple[ReportedKey, ReportedKey]:
    """A metric's rows: its validation key (folded with a spread, as a search ranks by it), then
    the same metric on any other split or none (averaged over folds: train_loss)."""
    return (ReportedKey(VALIDATION + base, "metric", "mean_and_spread", True, True, direction),
            ReportedKey("{split}" + base, "metric", "mean", True, True, direction))


def _tune(name: str, tracked: bool = False) -> ReportedKey:
    """One of Tune's fields: not the trial's metrics (the epoch is MLflow's step; the loop times
    its epochs itself)."""
    return ReportedKey(name, "bookkeeping", "not_folded", False, tracked)


# Columns: pattern, kind, folds, exported, tracked[, direction]. First match wins: spreads before
# the per-class pattern (`val_f1_N_std` is a spread, not the F1 of a class "N_std"), a metric's
# validation row before its other splits'. The validation rows' order is validation_metrics'
# (what `--metric` lists).
TABLE: tuple[ReportedKey, ...] = (
    ReportedKey("{metric}" + SPREAD_SUFFIX, "spread", "not_folded", True, True),
    *_metric("accuracy", "max"),
    *_metric("macro_f1", "max"),
    *_metric("cinc_f1", "max"),  # only with the classes N, A and O (training/metrics.py)
    *_metric("loss", "min"),
    *_metric("auroc", "max"),  # threshold-free: what early ASHA rungs can rank by (search/rungs.py)
    *_metric("f1_{class}", "max"),
    ReportedKey("{split}confusion", "matrix", "elementwise_sum", False, False),
    ReportedKey("epoch", "progress", "first", False, True),
    ReportedKey("lr", "schedule", "median", False, True),
    ReportedKey("train_samples_per_s", "cost", "mean", False, True),
    ReportedKey("epoch_seconds", "cost", "sum", False, True),
    # Measured once per trial by the trainable, after the folding (so in no fold's own result; a
    # fold's would be averaged); final values in trials.csv (pareto.csv reads them).
    *(ReportedKey(key, "cost", "mean", True, True, "min") for key in COST_KEYS),
    ReportedKey(FEASIBLE, "limit", "min", True, True),
    ReportedKey(FINISHED, "status", "all", False, False),  # a bool: MLflow takes numbers only
    ReportedKey("ridge_alpha", "fit", "mean", False, True),
    ReportedKey("ridge_temperature", "fit", "mean", False, True),
    ReportedKey(BF16, "execution", "mean", True, True),
    # Tune's; time_total_s is tracked: the trial's training time so far.
    _tune(TRAINING_ITERATION), _tune("time_this_iter_s"), _tune("time_total_s", tracked=True),
    _tune("timestamp"), _tune("pid"), _tune("time_since_restore"), _tune("iterations_since_restore"),
    _tune("timesteps_total"), _tune("timesteps_since_restore"), _tune("episodes_total"), _tune("done"),
    _tune("trial_id"), _tune("date"), _tune("hostname"), _tune("node_ip"), _tune("config"),
    _tune("experiment_tag"), _tune("checkpoint_dir_name"), _tune("should_checkpoint"),
)


@cache
def describe_key(name: str) -> ReportedKey | None:
    """The table's row for a reported key, or None when the key is undeclared."""
    return next((row for row in TABLE if row.matches(name)), None)


def is_metric(name: str) -> bool:
    """Whether `name` is a metric (with any split prefix): it has a direction and ranks."""
    row = describe_key(name)
    return row is not None and row.kind == "metric"


def spread_of(name: str) -> str | None:
    """The metric whose spread over folds `name` is (`val_loss_std` -> `val_loss`), else None."""
    row = describe_key(name)
    return name[:-len(SPREAD_SUFFIX)] if row is not None and row.kind == "spread" else None


def exported(name: str) -> bool:
    """Whether `name` is a column of trials.csv (metrics, their spreads, bf16, the device costs and
    feasible; undeclared: no)."""
    row = describe_key(name)
    return row is not None and row.exported


def tracked(name: str) -> bool:
    """Whether MLflow logs `name` each epoch when its value is a number: all but Tune's
    bookkeeping (undeclared keys too, as MLflow logged every number before this table)."""
    row = describe_key(name)
    return row is None or row.tracked


def finished(result: Mapping[str, Any] | None) -> bool:
    """Whether a trial's last reported result says its run ended by itself."""
    return result is not None and bool(result.get(FINISHED, False))


# How each rule makes one value of the folds' values (mean_and_spread adds its spread itself).
_FOLDERS: dict[FoldRule, Callable[[list[Any]], Any]] = {
    "first": lambda values: values[0],
    "mean": lambda values: float(np.mean(values)),
    "mean_and_spread": lambda values: float(np.mean(values)),
    "median": lambda values: float(np.median(values)),
    "sum": lambda values: float(np.sum(values)),
    "elementwise_sum": lambda values: np.sum(np.asarray(values), axis=0).tolist(),
    "all": lambda values: all(bool(value) for value in values),
    "min": lambda values: float(np.min(values)),
}


def _undeclared_folds(name: str, value: Any) -> FoldRule | None:
    """How an undeclared key is folded: as every key was before the table (a list summed, a
    number averaged, with a spread for a validation key; anything else dropped: None)."""
    if isinstance(value, list):
        return "elementwise_sum"
    if not isinstance(value, Real):
        return None
    return "mean_and_spread" if name.startswith(VALIDATION) else "mean"


def combine_folds(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One epoch's results of every fold as one result, each key by its row's `folds` rule."""
    combined: dict[str, Any] = {}
    for key, first in per_fold[0].items():
        row = describe_key(key)
        rule = row.folds if row is not None else _undeclared_folds(key, first)
        if rule is None:
            continue
        if rule == "not_folded":
            raise ValueError(f"{key}: a fold does not report this key; it is made after folding")
        values = [result[key] for result in per_fold]
        combined[key] = _FOLDERS[rule](values)
        if rule == "mean_and_spread":
            combined[key + SPREAD_SUFFIX] = float(np.std(values))
    return combined


# Early stopping ------------------------------------------------------------------------------

# The key early stopping watches, and by how much it must fall to count as an improvement (float
# noise between two equal epochs is not one).
EARLY_STOP_KEY = "val_loss"
MIN_IMPROVEMENT = 1e-6


@dataclass
class EarlyStop:
    """Stop once `val_loss` has not improved by MIN_IMPROVEMENT for `patience` epochs (0: never).

    Its state goes into the loop's checkpoints as `best_loss` and `stale` (the names older
    checkpoints have, so they resume)."""

    patience: int
    best_loss: float = math.inf
    stale: int = 0  # epochs since the last improvement

    @classmethod
    def resumed(cls, patience: int, state: Mapping[str, Any] | None) -> EarlyStop:
        """The rule continued from a checkpoint's state, or started afresh without one."""
        if not state:
            return cls(patience)
        return cls(patience, float(state["best_loss"]), int(state["stale"]))

    def update(self, result: Mapping[str, Any]) -> None:
        """Count one epoch's result; an epoch without validation is not counted."""
        if EARLY_STOP_KEY not in result:
            return
        if result[EARLY_STOP_KEY] < self.best_loss - MIN_IMPROVEMENT:
            self.best_loss, self.stale = float(result[EARLY_STOP_KEY]), 0
        else:
            self.stale += 1

    @property
    def stop(self) -> bool:
        """Whether the run stops after the epoch last counted."""
        return bool(self.patience) and self.stale >= self.patience

    def state(self) -> dict[str, float | int]:
        """What a checkpoint keeps (pass back to `resumed`)."""
        return {"best_loss": self.best_loss, "stale": self.stale}
