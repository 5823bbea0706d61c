"""A finished search's results as run-folder records: one `TrialRecord` per trial, the `BestConfig`.

A trial's score is its best epoch for the ranking metric, in the metric's own direction (ASHA
may stop it later, and a model is delivered from its best epoch), so the best config records the
epoch where the winner peaked. Under cross-validation the metrics are fold means and their
spreads (`<metric>_std`) come along: a spread's "best" is its value at the epoch where its
metric was best. Which reported keys become columns is training/reported.py's `exported`. The
best config holds the precision the winner's steps ran in (reported as `bf16`), not the `auto` it
may have asked for, so that `ecg-tune train --config best_config.json` repeats the trial. The
files are written by ecg_tune/runs.py.

The best trial is chosen among the feasible ones: a trial that reported `feasible` 0.0 (it broke
a cost limit: its latency above --max-latency-ms, its SVM stage above --max-params) cannot win;
with no feasible trial the search ends in one line. Its device costs (`n_params`, `macs`,
`latency_ms`, `feasible`: their final values) join the best config's metrics. In a
multi-objective search the best is still the first objective's (the search's metric).

Every trial with a best epoch also gets its validation predictions there (predictions/<trial>),
read from its latest checkpoint on the experiment's storage (search/trainable.py keeps the best
epoch's in each), and only when they are of that best epoch.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ecg_tune.errors import EcgTuneError
from ecg_tune.runs import BestConfig, RunFolder, TrialPredictions, TrialRecord, TrialStatus
from ecg_tune.search.trainable import PREDICTIONS_FILE, read_predictions, sampled_values, trial_config
from ecg_tune.training.metrics import best_index, best_value
from ecg_tune.training.precision import reported_precision
from ecg_tune.training.reported import (
    BF16,
    COST_KEYS,
    FEASIBLE,
    TRAINING_ITERATION,
    exported,
    finished,
    is_metric,
    spread_of,
)

logger = logging.getLogger(__name__)


def error_line(error: BaseException) -> str:
    """One line for trials.csv's `error` column: our own error where the chain holds one (Ray wraps
    a trial's exception in its task error, whose text is a whole traceback), else the last line."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        inner = getattr(found, "cause", None)  # Ray's task error: also an instance of its cause's class
        if isinstance(inner, BaseException):
            found = inner
            continue
        if isinstance(found, EcgTuneError):
            return f"{type(found).__name__}: {found}"
        found = found.__cause__ or found.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


# A Tune trial folder's name: `<trainable>_<8-hex trial id>_<trial index>_<tag>_<date>`.
_TRIAL_FOLDER = re.compile(r"_([0-9a-f]{8})_\d+(?:_|$)")


def trial_records(results: Any, metric: str, max_epochs: int) -> list[TrialRecord]:
    """One record per trial of Tune's ResultGrid."""
    records = []
    for result in results:
        history = result.metrics_dataframe
        trial_id, metrics, config = _own_result(result, history)
        epochs = 0 if history is None or history.empty else int(history[TRAINING_ITERATION].max())
        status: TrialStatus
        if result.error is not None:
            status = "errored"
        elif epochs >= max_epochs or finished(metrics):  # ran out its epochs, or ended by itself
            status = "completed"
        else:
            status = "stopped"
        record = TrialRecord(trial_id=trial_id, status=status, epochs=epochs, config=sampled_values(config),
                             error=None if result.error is None else error_line(result.error))
        if epochs:
            numeric = [c for c in history.columns if exported(c) and pd.api.types.is_numeric_dtype(history[c])]
            ranked = [c for c in numeric if is_metric(c) or spread_of(c) is not None]  # others: final only
            last = history.iloc[-1]
            for column in numeric:
                record.final[column] = float(last[column])
            for column in ranked:
                of = spread_of(column)
                if of is None:
                    record.best[column] = best_value(column, history[column])
                elif of in history.columns and history[of].notna().any():
                    record.best[column] = float(history[column].iloc[best_index(of, history[of].to_numpy(float))])
            if metric in history.columns and history[metric].notna().any():
                peak = history.iloc[best_index(metric, history[metric].to_numpy(float))]
                record.best_epoch = int(peak[TRAINING_ITERATION])
                record.peak_metrics = {c: float(peak[c]) for c in ranked}
        records.append(record)
    return records


def _own_result(result: Any, history: pd.DataFrame | None) -> tuple[str, dict, dict]:
    """(trial id, last metrics, config) of a Tune result, all of its own trial.

    Ray 2.60 can hand a trial another trial's last result (the ResultGrid takes `trial.last_result`):
    in a 7-minute ECG5000 search with reused actors, a trial created as the time budget ended came
    back with the last result of one that had just finished (its id, metrics and config) and no
    history of its own: two rows with one id, on which the ensemble's ranking failed. (Restored
    from the saved experiment, the same trial has an empty last result.) So the id comes from its own
    history (its `trial_id` column), else from its folder's name (`<trainable>_<id>_<index>_...`);
    metrics naming another trial are not its own, and its config is then its history's."""
    metrics = dict(result.metrics or {})
    history = history if history is not None and not history.empty else None
    if history is not None and "trial_id" in history.columns:
        trial_id = str(history["trial_id"].iloc[-1])
    elif (named := _TRIAL_FOLDER.search(Path(result.path or "").name)) is not None:
        trial_id = named[1]
    else:
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    if str(metrics.get("trial_id", trial_id)) == trial_id:
        return trial_id, metrics, result.config or {}
    last = history.iloc[-1] if history is not None else pd.Series(dtype=object)
    config = {c.removeprefix("config/"): last[c] for c in last.index if c.startswith("config/") and pd.notna(last[c])}
    return trial_id, {}, config


def feasible(record: TrialRecord) -> bool:
    """Whether a trial met the search's cost limits (a trial from before they existed did)."""
    return record.final.get(FEASIBLE, 1.0) > 0


def pick_best(records: list[TrialRecord], metric: str, where: Path) -> TrialRecord:
    """The feasible trial with the best peak of `metric`."""
    scored = [r for r in records if r.best_epoch is not None]
    if not scored:
        raise EcgTuneError(f"{where}: no trial reported {metric}; see trials.csv and the experiment/ logs")
    allowed = [r for r in scored if feasible(r)]
    if not allowed:
        raise EcgTuneError(f"{where}: no feasible trial: all {len(scored)} broke a cost limit (--max-latency-ms, or "
                           f"--max-params with a fitted head); see trials.csv's final/{FEASIBLE} and its costs")
    return allowed[best_index(metric, [r.peak_metrics[metric] for r in allowed])]


def write_results(results: Any, run: RunFolder, metric: str, max_epochs: int, seed: int, data: str,
                  threads: int = 1, cv: int = 1, split_digest: str | None = None) -> BestConfig:
    """trials.csv/.parquet and best_config.json of a finished search; returns the best config.
    `cv`: the folds each trial was scored on (1: the split's val part)."""
    records = trial_records(results, metric, max_epochs)
    run.write_trials(records)
    winner = pick_best(records, metric, run.path)
    config = trial_config(winner.config, max_epochs, seed)
    if BF16 in winner.final:  # what its steps ran in, not what it asked (auto): train repeats the trial
        config["precision"] = reported_precision(winner.final[BF16])
    costs = {key: winner.final[key] for key in (*COST_KEYS, FEASIBLE) if key in winner.final}
    best = BestConfig(config=config, metrics={**winner.peak_metrics, **costs},
                      epoch=int(winner.best_epoch or 0), trial_id=winner.trial_id, metric=metric, data=data,
                      threads=threads, cv=cv, split_digest=split_digest)
    run.write_best(best)  # first: the predictions are extras, the best config is the search's result
    write_trial_predictions(results, records, run)
    return best


def write_trial_predictions(results: Any, records: list[TrialRecord], run: RunFolder) -> int:
    """predictions/<trial>.parquet for every trial of Tune's ResultGrid `results` (with its
    `records`, in the same order) that has a best epoch, from its newest checkpoint whose saved
    predictions are of that epoch (a checkpoint written after the last result Tune registered
    may hold a later one); returns how many were written. A trial without them (a search started
    before they were kept, a lost checkpoint) is named in a warning and left out."""
    storage = run.storage()
    written, missing = 0, []
    for result, record in zip(results, records, strict=True):
        if record.best_epoch is None or not result.path:
            continue
        try:
            saved = _saved_predictions(storage.checkpoint_files(Path(result.path).name, PREDICTIONS_FILE),
                                       record.trial_id, record.best_epoch, where=str(result.path))
        except (OSError, EcgTuneError) as exc:  # a storage that cannot be listed or read costs this trial's file
            logger.warning("%s: predictions not read (%s)", result.path, exc)
            saved = None
        if saved is None:
            missing.append(record.trial_id)
            continue
        run.write_trial_predictions(saved)
        written += 1
    if missing:
        logger.warning("no validation predictions at the best epoch for %d trial(s): %s", len(missing),
                       ", ".join(missing))
    return written


def _saved_predictions(checkpoints: Any, trial_id: str, best_epoch: int, where: str) -> TrialPredictions | None:
    """The first of a trial's checkpoint files (`(name, content)`, newest first) whose
    predictions are of `best_epoch`; an unreadable one is warned of and passed over."""
    for name, content in checkpoints:
        try:
            predictions, _, _ = read_predictions(content, trial_id, where=f"{where}/{name}/{PREDICTIONS_FILE}")
        except Exception as exc:  # pyarrow's errors or ours: the file is unusable, an older may do
            logger.warning("%s/%s/%s: unreadable (%s: %s)", where, name, PREDICTIONS_FILE, type(exc).__name__, exc)
            continue
        if predictions.epoch == best_epoch:
            return predictions
    return None
