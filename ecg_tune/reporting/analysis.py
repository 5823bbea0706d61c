"""What a finished search's records say, as plain data: no plotting, no HTML, no files.

Owns reading a run's trials for the report (the trials table's parts from `RunFolder.trial_table`,
the trials' per-epoch histories, space.json's declared parameters) into:

* `Parameter`s with their real kinds (`search_parameters`): from space.json when the run has one,
  else guessed from the values (older runs: whole numbers are ints, spread-out positive numbers are
  on a log scale);
* each trial's score (`trial_scores`) and the scores per value of a key (`score_groups`);
* learning curves (`metric_curve`, `learning_curves`), every report on the search's clock
  (`timed_reports`, `search_clock`) and the best score so far (`progress`).

The page's figures (figures.py), its text (page.py), the matplotlib pictures (pictures.py) and
the benchmarks' best-so-far curves read the search through these, so they all tell one story.
The importances are importance.py's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from ecg_tune.runs import TrialTable
from ecg_tune.search.parameters import Choice, FloatRange, IntRange
from ecg_tune.search.parameters import Parameter as DeclaredParameter
from ecg_tune.training.metrics import best_value, running_best
from ecg_tune.training.reported import TRAINING_ITERATION

Kind = Literal["categorical", "int", "float"]
NOT_APPLICABLE = "(n/a)"  # the category of a conditional parameter in trials where it is absent
# Numbers spanning this ratio or more and spread like log-uniform samples (learning rates, weight
# decays) are shown on a log scale when the run did not record its space: a linear axis would
# squeeze them into one corner.
_LOG_RATIO = 20.0


# --------------------------------------------------------------------------------------------
# The searched parameters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    """One parameter that took more than one value over the trials (a column of the trials'
    config)."""

    name: str
    kind: Kind
    values: list[Any]  # one per trial row: str (categorical), int, float; None where absent
    categories: tuple[str, ...] = ()  # categorical: the values seen, in order
    log: bool = False  # numeric: sampled on a log scale (declared in space.json, else `_log_scaled`)

    @property
    def defined(self) -> int:
        return sum(v is not None for v in self.values)

    @property
    def conditional(self) -> bool:
        return self.defined < len(self.values)

    @property
    def low(self) -> float:
        return float(min(v for v in self.values if v is not None))

    @property
    def high(self) -> float:
        return float(max(v for v in self.values if v is not None))

    def describe(self) -> str:
        """`lr 0.0001 to 0.01, log scale`, `model: simple_cnn, cnn_svm`, and where it was set."""
        if self.kind == "categorical":
            text = f"{self.name}: {', '.join(self.categories)}"
        else:
            text = f"{self.name} {fmt(self.low)} to {fmt(self.high)}" + (", log scale" if self.log else "")
        if self.conditional:
            text += f" (set in {self.defined} of {len(self.values)} trials)"
        return text


def declared_parameters(record: Mapping[str, Any] | None, where: str = "space.json") -> dict[str, DeclaredParameter]:
    """The parameters of a run's space.json (`RunFolder.space_record`) as the search sampled them
    (the space adapted to the data); empty for a run written before the space was recorded. A
    damaged record is a one-line ConfigError naming `where`."""
    if record is None:
        return {}
    # search/adapt.py reads the record it writes (it imports the parts' registries: only when a
    # run has one)
    from ecg_tune.search.adapt import AdaptedSpace

    return dict(AdaptedSpace.from_record(record, where=where).parameters)


def search_parameters(config: pd.DataFrame, declared: Mapping[str, DeclaredParameter] | None = None
                      ) -> tuple[list[Parameter], dict[str, Any]]:
    """The parameters that varied over the rows of a trials table's config part, and those held
    constant (with their value). A parameter set in only some trials (a conditional one) counts as
    varying when its set values differ; one value wherever set is a constant (its presence follows
    its parent). `declared` (`declared_parameters`) gives the kinds and log scales; a key it does
    not declare, or a value its declaration does not explain, has them guessed from the values."""
    declared = declared or {}
    varying, constant = [], {}
    for name in config.columns:
        raw = [None if missing(v) else v for v in config[name].tolist()]
        given = [v for v in raw if v is not None]
        if not given:
            continue
        kind, values = _typed(given)
        distinct = list(dict.fromkeys(values))
        if len(distinct) < 2:
            constant[str(name)] = distinct[0]
            continue
        log = kind != "categorical" and _log_scaled(values)
        kind, values, log = _as_declared(declared.get(str(name)), given) or (kind, values, log)
        typed = iter(values)
        column_values = [None if v is None else next(typed) for v in raw]
        if kind == "categorical":
            categories = tuple(_natural_order(list(dict.fromkeys(values))))
            varying.append(Parameter(str(name), kind, column_values, categories=categories))
        else:
            varying.append(Parameter(str(name), kind, column_values, log=log))
    return varying, constant


def _as_declared(declared: DeclaredParameter | None, given: list[Any]) -> tuple[Kind, list[Any], bool] | None:
    """The values typed as the space declared them (kind, values, log scale); None without a
    declaration, or when the values do not fit it (then they are guessed)."""
    if isinstance(declared, Choice):
        # Each value as the choice it is: 16.0 read back from a table with gaps is the choice 16.
        return "categorical", [_choice_text(v, declared.values) for v in given], False
    if isinstance(declared, (IntRange, FloatRange)):
        numbers = _numbers(given)
        if numbers is None:
            return None
        if isinstance(declared, FloatRange):
            return "float", numbers, declared.log
        if all(v.is_integer() for v in numbers):
            return "int", [int(v) for v in numbers], declared.log
    return None  # a Constant varies only when the space changed under the run: guess


def _choice_text(value: Any, choices: tuple[Any, ...]) -> str:
    """The choice a value read back from the trials table is, as text (a value no choice explains
    as itself)."""
    number = _numbers([value])
    for choice in choices:
        same_number = number is not None and not isinstance(choice, bool) and _numbers([choice]) == number
        if str(choice) == str(value) or same_number:
            return str(choice)
    return str(value)


def _numbers(values: list[Any]) -> list[float] | None:
    """The values as finite floats, or None if one is not a number (booleans are not)."""
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        return None
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _typed(values: list[Any]) -> tuple[Kind, list[Any]]:
    """Whole numbers as int, other numbers as float, anything else (text, booleans, numbers mixed
    with text such as svm_gamma's "scale") as categorical text."""
    numbers = _numbers(values)
    if numbers is None:
        return "categorical", [str(v) for v in values]
    if all(v.is_integer() for v in numbers):
        return "int", [int(v) for v in numbers]
    return "float", numbers


def _log_scaled(values: list[float]) -> bool:
    """Whether numbers look sampled on a log scale (learning rates, weight decays): positive,
    spanning _LOG_RATIO or more, and with their median nearer the geometric than the arithmetic
    middle of their range (a uniform 0.005 to 0.5 dropout spans 100 too, but is linear)."""
    low, high = min(values), max(values)
    if low <= 0 or high / low < _LOG_RATIO:
        return False
    median = math.log(float(np.median(values)))
    return abs(median - math.log(math.sqrt(low * high))) < abs(median - math.log((low + high) / 2))


def _natural_order(values: list[str]) -> list[str]:
    """Numbers by value, then text alphabetically: batch sizes 16, 32, 64, not 16, 64, 32."""
    def key(value: str) -> tuple[int, float, str]:
        try:
            return 0, float(value), value
        except ValueError:
            return 1, 0.0, value
    return sorted(values, key=key)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------

def trial_scores(table: TrialTable, metric: str) -> pd.Series:
    """Each trial's score (index: trial id): its best `metric` over its epochs (what ranked it),
    NaN if none."""
    if metric not in table.best.columns:
        return pd.Series(np.nan, index=table.info.index)
    return pd.to_numeric(table.best[metric], errors="coerce")


def score_groups(table: TrialTable, metric: str, keys: tuple[str, ...] = ("model", "transform", "augmentation")
                 ) -> list[tuple[str, pd.Series, pd.Series]]:
    """For each of `keys` the trials set and scored: (key, its values as text, the scores), over
    the trials that have both."""
    if metric not in table.best.columns:
        return []
    scores = trial_scores(table, metric)
    groups = []
    for key in keys:
        if key in table.config.columns:
            values = table.config[key]
            keep = scores.notna() & values.notna()
            if keep.any():
                groups.append((key, values[keep].map(str), scores[keep]))
    return groups


# --------------------------------------------------------------------------------------------
# Curves and the search's clock
# --------------------------------------------------------------------------------------------

class Curve(NamedTuple):
    """One column of a trial's history by epoch."""

    epochs: np.ndarray
    values: np.ndarray


def metric_curve(history: pd.DataFrame | None, column: str) -> Curve | None:
    """(epochs, values) of one column of a trial's history, or None when there is nothing."""
    if history is None or not isinstance(history, pd.DataFrame) or column not in history.columns:
        return None
    values = pd.to_numeric(history[column], errors="coerce").to_numpy(float)
    for name in (TRAINING_ITERATION, "epoch"):
        if name in history.columns:
            epochs = pd.to_numeric(history[name], errors="coerce").to_numpy(float)
            break
    else:
        epochs = np.arange(1, len(history) + 1, dtype=float)
    keep = np.isfinite(values) & np.isfinite(epochs)
    if not keep.any():
        return None
    return Curve(epochs[keep], values[keep])


def learning_curves(histories: Mapping[str, pd.DataFrame], metric: str, winner: str) -> list[tuple[str, Curve]]:
    """Every trial's `metric` curve, by trial id, the winner's last (drawn last, it stays on top)."""
    curves = []
    for trial_id, history in sorted(histories.items(), key=lambda item: item[0] == winner):
        curve = metric_curve(history, metric)
        if curve is not None:
            curves.append((trial_id, curve))
    return curves


def timed_reports(histories: Mapping[str, pd.DataFrame], metric: str, started: float | None = None
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


def search_clock(histories: Mapping[str, pd.DataFrame], metric: str) -> tuple[float, float] | None:
    """Unix times of the search's start (its first trial's) and of its last report; None without
    times. `timed_reports` gives each report's time since the start, and, asked to count from 0,
    its Unix time: the difference is the start."""
    since_start = timed_reports(histories, metric)
    unix = timed_reports(histories, metric, started=0.0)
    if since_start is None or unix is None or not len(unix[0]):
        return None
    return float(unix[0][0] - since_start[0][0]), float(unix[0][-1])


def per_trial_order(table: TrialTable, histories: Mapping[str, pd.DataFrame], metric: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each trial's best metric in trial order (trial numbers from 1): from the table, else from
    the histories."""
    if metric in table.best.columns:
        scores = trial_scores(table, metric).to_numpy(float)
    else:
        found = []
        for history in histories.values():
            curve = metric_curve(history, metric)
            found.append(np.nan if curve is None else best_value(metric, curve.values))
        scores = np.asarray(found, dtype=float)
    number = np.arange(1, len(scores) + 1)
    keep = np.isfinite(scores)
    return number[keep], scores[keep]


class ReportedScore(NamedTuple):
    """One reported score of the progress view."""

    x: float  # seconds since the search started, or the trial's number
    value: float
    trial: str
    epoch: int | None  # the report's epoch (None: a trial's best, epoch unknown)


@dataclass(frozen=True)
class Progress:
    """The search's scores in the order it found them, and the best so far."""

    timed: bool  # x is seconds since the search started (else: trial number, one best per trial)
    x: np.ndarray
    values: np.ndarray
    best: np.ndarray  # the best value up to each x, in the metric's direction
    reports: list[ReportedScore]  # every score with its trial, for labels (the same scores as x, values)


def progress(table: TrialTable, histories: Mapping[str, pd.DataFrame], metric: str) -> Progress:
    """Every reported `metric` against seconds since the search started; without times (older
    runs, or no per-epoch results), each trial's best in the order the table lists them (Tune's
    creation order)."""
    reports: list[ReportedScore] = []
    timed = timed_reports(histories, metric)
    if timed is not None:
        x, values = timed
        # Each trial's own reports, timed from the search's start, keep their trial's name.
        origin = (search_clock(histories, metric) or (0.0, 0.0))[0]
        for trial_id, history in histories.items():
            if history is None or metric not in history.columns:
                continue
            # The epoch is the report's own training_iteration, not its position: rows without a
            # score are left out, as timed_reports leaves them out.
            frame = history.reindex(columns=[metric, "timestamp", TRAINING_ITERATION]).apply(
                pd.to_numeric, errors="coerce").dropna(subset=[metric, "timestamp"])
            reports += [ReportedScore(float(t) - origin, float(v), trial_id, None if math.isnan(e) else int(e))
                        for t, v, e in zip(frame["timestamp"], frame[metric], frame[TRAINING_ITERATION],
                                           strict=True)]
    else:
        x, values = per_trial_order(table, histories, metric)
        ids = table.ids
        reports = [ReportedScore(float(n), float(v), ids[int(n) - 1] if int(n) - 1 < len(ids) else "?", None)
                   for n, v in zip(x, values, strict=True)]
    values = np.asarray(values, dtype=float)
    return Progress(timed=timed is not None, x=x, values=values, best=running_best(metric, values), reports=reports)


# --------------------------------------------------------------------------------------------
# Values for people
# --------------------------------------------------------------------------------------------

def missing(value: Any) -> bool:
    """Whether a table cell is empty (NaN, None, NA); a list or dict value is not."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt(value: Any) -> str:
    """A value for people: whole numbers whole, others to 4 significant digits, missing as blank."""
    if value is None or missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def epochs_text(count: Any) -> str:
    """`1 epoch`, `3 epochs`."""
    return f"{count} epoch" + ("" if int(count) == 1 else "s")
