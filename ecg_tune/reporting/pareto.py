"""The Pareto front of a search's trials, as plain data: no drawing, no HTML, no files.

Owns which trials are non-dominated (`non_dominated`) and the front table of a run
(`pareto_front`): every trial with its figures for the search's objectives, whether it met the
run's constraints (`feasible`), whether it is on the front (`on_front`, feasible trials only) and
on each of the two 2-D fronts the report draws (the metric against `latency_ms` and against
`n_params`), what each halving of a cost costs in the metric (`halvings`) and the area a front
dominates (`hypervolume`, to compare searches). pareto.csv
(`ParetoFront.csv_rows`, written through `RunFolder.write_pareto`) is the front's rows; the
report's Pareto plots and tables are figures.py's and pareto_section.py's.

The objectives are the search's own (`--objectives`, recorded in space.json's `search` block:
`recorded_objectives`), else the search's metric, `latency_ms` and `n_params`. Each objective's
direction is the reported-keys table's (training/metrics.direction); a cost the table gives no
direction (`COSTS`: parameters, multiply-accumulates, latency) is minimised, as a device wants it
smaller. A trial's figure for an objective is its best over its epochs for a metric (what ranked
it: at its best epoch for the search's metric) and its final value for anything else (a cost is
measured once per trial). An objective that trials.csv has no column for (a run from before the
cost keys) is left out, and `notes` says so: the front is then over the objectives that exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ecg_tune.errors import ConfigError, EcgTuneError
from ecg_tune.runs import RunFolder, TrialTable
from ecg_tune.training.metrics import direction
from ecg_tune.training.reported import COST_KEYS, FEASIBLE, LATENCY_MS, N_PARAMS
from ecg_tune.training.reported import MACS as MACS_KEY

# The cost keys every trial reports, all minimised (declared in training/reported.py); the report
# draws the metric against the latency and against the parameter count.
LATENCY, PARAMS, MACS = LATENCY_MS, N_PARAMS, MACS_KEY
COSTS = COST_KEYS
# Config keys pareto.csv and the report's table show beside the figures.
CONFIG_KEYS = ("model", "transform")
# Rows compared at once by `non_dominated`: a block of this many rows against all n rows holds
# about 2 * _BLOCK * n booleans per objective.
_BLOCK = 512


def non_dominated(values: np.ndarray, maximise: Sequence[bool]) -> np.ndarray:
    """Indices (ascending) of the rows of `values` (rows: points, columns: objectives) that no
    other row dominates. A row dominates another when it is at least as good in every objective
    and better in one, each objective in its direction (`maximise[k]`). Equal rows do not
    dominate one another, so duplicates of a front point are all kept; a row with a NaN takes no
    part (neither on the front nor dominating)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"values must be a 2-D table (points x objectives), got shape {array.shape}")
    if len(maximise) != array.shape[1]:
        raise ValueError(f"{len(maximise)} directions for {array.shape[1]} objectives")
    valid = np.flatnonzero(~np.isnan(array).any(axis=1))
    # All minimised: a maximised objective negated.
    points = array[valid] * np.where(np.asarray(maximise, dtype=bool), -1.0, 1.0)
    dominated = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), _BLOCK):
        block = points[start:start + _BLOCK]  # (b, m): is each of these dominated by any row?
        no_worse = (points[None, :, :] <= block[:, None, :]).all(axis=2)  # (b, n)
        better = (points[None, :, :] < block[:, None, :]).any(axis=2)
        dominated[start:start + len(block)] = np.any(no_worse & better, axis=1)
    return valid[~dominated]


def objective_direction(key: str) -> bool:
    """Whether `key` is maximised: a metric's direction from the reported-keys table, a cost
    (`COSTS`) minimised; any other key is a ConfigError (it has no better way)."""
    try:
        return direction(key) == "max"
    except ValueError:
        if key in COSTS:
            return False
        raise ConfigError(f"objective {key!r}: not a metric or a cost (n_params, macs, latency_ms); "
                          f"it has no direction to optimise") from None


def default_objectives(metric: str) -> tuple[str, ...]:
    """A search without --objectives: its metric, the latency and the parameter count."""
    return (metric, LATENCY, PARAMS)


def recorded_objectives(space_record: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The objectives a search recorded in space.json's `search` block (a list, or text such as
    "val_cinc_f1,latency_ms"), else None (a single-metric search, or an older run)."""
    settings = (space_record or {}).get("search")
    given = settings.get("objectives") if isinstance(settings, Mapping) else None
    if isinstance(given, str):
        given = [part.strip() for part in given.split(",")]
    if not isinstance(given, (list, tuple)):
        return None
    names = tuple(str(name) for name in given if str(name))
    return names or None


@dataclass(frozen=True)
class ParetoFront:
    """Every trial of a run against the objectives (`table`, one row per trial, index: trial id):
    `trial_id`, `feasible` (bool), `on_front`, a figure column per objective and per cost the
    table has, the metric, the `CONFIG_KEYS` the trials set, and `on_front_<cost>` per 2-D front
    (the metric against that cost, feasible trials only)."""

    table: pd.DataFrame
    metric: str
    objectives: tuple[str, ...]  # the ones the front is over (those with a column)
    maximise: tuple[bool, ...]  # per objective
    missing: tuple[str, ...] = ()  # asked-for objectives trials.csv has no column for
    costs: tuple[str, ...] = ()  # the cost keys the table has (`COSTS` order)
    feasibility_known: bool = False  # trials.csv has the feasible column
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def front(self) -> pd.DataFrame:
        """The non-dominated feasible trials, the best metric first."""
        rows = self.table[self.table["on_front"]]
        if self.metric in rows:
            ascending = not objective_direction(self.metric)
            rows = rows.sort_values(self.metric, ascending=ascending, na_position="last", kind="stable")
        return rows

    @property
    def has_costs(self) -> bool:
        """Whether the trials report a cost the report can draw the metric against."""
        return any(self.table[c].notna().any() for c in (LATENCY, PARAMS) if c in self.table)

    def csv_rows(self) -> pd.DataFrame:
        """pareto.csv's rows: the front's trials with trial_id, feasible, the objectives, the costs,
        the metric and the config keys (no flags: every row is on the front)."""
        columns = ["trial_id", FEASIBLE, *dict.fromkeys([*self.objectives, *self.costs, self.metric])]
        columns += [c for c in CONFIG_KEYS if c in self.table]
        rows = self.front.reindex(columns=[c for c in columns if c in self.table]).reset_index(drop=True)
        for column in (PARAMS, MACS, FEASIBLE):  # counts and the flag as whole numbers: 90000, not 90000.0
            if column in rows and rows[column].dropna().map(lambda v: float(v).is_integer()).all():
                rows[column] = rows[column].astype(float).astype("Int64")
        return rows


def pareto_front(table: TrialTable, metric: str, objectives: Sequence[str] | None = None) -> ParetoFront:
    """The front of a run's trials (`table`: trials.csv's parts) over `objectives` (None or empty:
    `default_objectives(metric)`); see the module docstring for the figures and directions."""
    asked = tuple(dict.fromkeys(objectives or default_objectives(metric)))
    maximise_of = {key: objective_direction(key) for key in asked}  # an unknown objective fails here
    figures = {key: _figure(table, key) for key in dict.fromkeys([*asked, *COSTS, metric])}
    present = {key: values for key, values in figures.items() if values is not None}
    used = tuple(key for key in asked if key in present)
    missing = tuple(key for key in asked if key not in present)
    costs = tuple(key for key in COSTS if key in present)

    frame = pd.DataFrame({"trial_id": table.ids}, index=table.info.index)
    feasible_values = _figure(table, FEASIBLE, final_only=True)
    feasibility_known = feasible_values is not None
    # Without the column every trial counts as feasible: a run without constraints (or from before
    # them) has no trial that broke one.
    frame[FEASIBLE] = True if feasible_values is None else (feasible_values.fillna(0.0) > 0.5)
    for key, values in present.items():
        frame[key] = values
    for key in CONFIG_KEYS:
        if key in table.config:
            frame[key] = table.config[key]

    frame["on_front"] = _flags(frame, used, [maximise_of[k] for k in used])
    if metric in present:
        for cost in (LATENCY, PARAMS):
            if cost in present:
                frame[f"on_front_{cost}"] = _flags(frame, (metric, cost), [objective_direction(metric), False])

    notes = []
    if missing:
        notes.append(f"trials.csv has no {', '.join(missing)} (a run from before the cost keys): the front is over "
                     + (", ".join(used) if used else "nothing"))
    broke = 0 if feasible_values is None else int((feasible_values == 0.0).sum())  # NaN: never measured
    if broke:
        notes.append(f"{broke} trial(s) broke the run's constraints: shown, never on the front")
    return ParetoFront(table=frame, metric=metric, objectives=used, maximise=tuple(maximise_of[k] for k in used),
                       missing=missing, costs=costs, feasibility_known=feasibility_known, notes=tuple(notes))


def _figure(table: TrialTable, key: str, final_only: bool = False) -> pd.Series | None:
    """Each trial's figure for `key` (see the module docstring), or None when trials.csv has no
    column for it."""
    for part, name in ((table.final, key),) if final_only else ((table.best, key), (table.final, key)):
        if name in part.columns:
            return pd.to_numeric(part[name], errors="coerce").astype(float)
    return None


def _flags(frame: pd.DataFrame, keys: Sequence[str], maximise: Sequence[bool]) -> np.ndarray:
    """Whether each row is non-dominated in `keys` among the feasible rows (no keys: no front)."""
    flags = np.zeros(len(frame), dtype=bool)
    if not keys or frame.empty:
        return flags
    feasible = np.flatnonzero(frame[FEASIBLE].to_numpy(bool))
    values = frame[list(keys)].to_numpy(float)[feasible]
    flags[feasible[non_dominated(values, maximise)]] = True
    return flags


def run_front(run: RunFolder, objectives: Sequence[str] | None = None) -> ParetoFront:
    """The front of the search in `run` (read through its `RunFolder`): over `objectives`, else
    those the search recorded (`recorded_objectives`), else the defaults for its metric."""
    try:
        record = run.space_record()
    except EcgTuneError:
        record = None  # a damaged space.json costs the recorded objectives only (the page says it is damaged)
    return pareto_front(run.trial_table(), run.best().metric, objectives or recorded_objectives(record))


def halvings(front: ParetoFront, cost: str = LATENCY) -> pd.DataFrame:
    """What each halving of `cost` costs in the metric: from the best feasible trial (step 0, its
    cost the budget), the best feasible trial within half that budget, a quarter, ... until no
    trial is that cheap. Columns: step, budget, trial_id, the metric, the cost, `change` (the
    metric against step 0's). Empty without the cost or the metric."""
    columns = ["step", "budget", "trial_id", front.metric, cost, "change"]
    table = front.table
    if cost not in table or front.metric not in table:
        return pd.DataFrame(columns=columns)
    usable = table[table[FEASIBLE] & table[front.metric].notna() & table[cost].notna()]
    if usable.empty:
        return pd.DataFrame(columns=columns)
    higher = objective_direction(front.metric)
    ranked = usable.sort_values(front.metric, ascending=not higher, kind="stable")
    top = ranked.iloc[0]
    rows, budget, step = [], float(top[cost]), 0
    while True:
        within = ranked[ranked[cost] <= budget]
        if within.empty:
            break
        best = within.iloc[0]
        rows.append([step, budget, best["trial_id"], float(best[front.metric]), float(best[cost]),
                     float(best[front.metric]) - float(top[front.metric])])
        step, budget = step + 1, budget / 2
    return pd.DataFrame(rows, columns=columns)


def hypervolume(front: ParetoFront, cost: str, floor: float, ceiling: float) -> float:
    """The area the feasible trials dominate in (log2 `cost`, metric) within the box from `floor`
    (the metric's worst end: a majority-class score, say) to `ceiling` (the largest cost that
    counts): one number to compare two searches' fronts by, on the same box. The metric is
    turned so that higher is better; each halving of the cost is worth the same width."""
    table = front.table
    if cost not in table or front.metric not in table or ceiling <= 0:
        return 0.0
    sign = 1.0 if objective_direction(front.metric) else -1.0
    rows = table[table[FEASIBLE] & table[front.metric].notna() & table[cost].notna()]
    points = sorted((float(c), sign * float(m)) for c, m in zip(rows[cost], rows[front.metric], strict=True)
                    if 0 < c < ceiling and sign * m > sign * floor)
    area, best = 0.0, sign * floor
    edges = [c for c, _ in points] + [ceiling]
    for (low, score), high in zip(points, edges[1:], strict=True):
        best = max(best, score)  # the best metric at this cost or less: the front's step
        area += (np.log2(high) - np.log2(low)) * (best - sign * floor)
    return float(area)


def describe(front: ParetoFront) -> str:
    """What the pipeline prints after writing pareto.csv."""
    over = ", ".join(front.objectives) or "no objective"
    text = f"pareto.csv: {len(front.front)} non-dominated trial(s) of {len(front.table)} over {over}"
    return "; ".join([text, *front.notes])
