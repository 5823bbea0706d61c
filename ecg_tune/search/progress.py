"""Live progress of a search on the console: a line per trial epoch and a table of all trials.

Tune's own console output prints a large box per result without the ranking metric in its table;
this callback prints what a user of the search wants to watch instead: each trial's epochs and its
best score, the best trial so far, and a table of every trial when one ends.

Tune also logs every failed attempt of a trial with the traceback of Ray's wrapper around the
error. For this project's own errors, which say in one line what went wrong and what to change
(a CUDA out-of-memory: training/device.py), `OneLineTrialErrors` cuts that record to the line;
any other error keeps its traceback, which is what one needs to find a bug.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from ecg_tune.errors import EcgTuneError
from ecg_tune.search.trainable import sampled_values
from ecg_tune.training.metrics import best_index, better, direction
from ecg_tune.training.reported import TRAINING_ITERATION, finished

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class SearchProgress(Callback):
    def __init__(self, metric: str, max_epochs: int, total: int | None) -> None:
        # total None: no cap on the trials (a time budget ends the search).
        self.metric = metric
        self.max_epochs = max_epochs
        self.total = total
        self.started = time.perf_counter()
        self.trials: dict[str, dict] = {}

    def _print(self, text: str) -> None:
        # sys.stdout looked up at each call: Tune pickles callbacks with the experiment state,
        # and a stream object cannot be pickled.
        print(text, file=sys.stdout, flush=True)

    def _clock(self) -> str:
        seconds = int(time.perf_counter() - self.started)
        return f"{seconds // 60:3d}:{seconds % 60:02d}"

    def _row(self, trial: Trial) -> dict:
        return self.trials.setdefault(trial.trial_id, {"epoch": 0, "best": None, "last": None,
                                                       "status": "running",
                                                       "config": sampled_values(trial.config)})

    # Tune saves and restores callback state with the experiment: a resumed search's table keeps
    # the trials that finished before the interruption.
    def get_state(self) -> dict | None:
        return {"trials": self.trials}

    def set_state(self, state: dict) -> None:
        self.trials = dict(state.get("trials", {}))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict,
                        **info: Any) -> None:
        row = self._row(trial)
        epoch = int(result.get(TRAINING_ITERATION, row["epoch"]))
        if 0 < epoch <= row["epoch"]:
            self._print(f"{self._clock()} trial {trial.trial_id} went back to epoch {epoch} (its checkpoint was "
                        f"unreadable; see restore_warnings.txt in its folder)")
        row["epoch"] = epoch
        value = result.get(self.metric)
        if value is not None:
            row["last"] = value
            if row["best"] is None or better(self.metric, value, row["best"]):
                row["best"] = value
        leader = self._leader()
        lead = f" | best {leader[1]['best']:.4f} ({leader[0]})" if leader else ""
        shown = f"{value:.4f}" if value is not None else "n/a"
        self._print(f"{self._clock()} trial {trial.trial_id} epoch {row['epoch']}/{self.max_epochs} "
                    f"{self.metric} {shown}{lead}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "done" if row["epoch"] >= self.max_epochs or finished(trial.last_result) else "stopped"
        self._table()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._row(trial)["status"] = "errored"
        self._print(f"{self._clock()} trial {trial.trial_id} raised an error (retried from its checkpoint "
                    "until the retry limit; see its error.txt in experiment/)")

    def _leader(self) -> tuple[str, dict] | None:
        scored = [(tid, row) for tid, row in self.trials.items() if row["best"] is not None]
        return scored[best_index(self.metric, [row["best"] for _, row in scored])] if scored else None

    def _table(self) -> None:
        finished = sum(r["status"] != "running" for r in self.trials.values())
        of = f"/{self.total}" if self.total else ""
        self._print(f"{self._clock()} {finished}{of} trials finished")
        sign = 1.0 if direction(self.metric) == "min" else -1.0
        ranked = sorted(self.trials.items(),
                        key=lambda item: (item[1]["best"] is None, sign * (item[1]["best"] or 0.0)))
        for trial_id, row in ranked:
            best = f"{row['best']:.4f}" if row["best"] is not None else "   n/a"
            keys = ("model", "transform", "wavelet", "levels", "augmentation", "input_length")
            summary = ", ".join(f"{k}={row['config'][k]}" for k in keys if k in row["config"])
            self._print(f"      {trial_id}  {row['status']:8s} epochs {row['epoch']:2d}  "
                        f"best {self.metric} {best}  {summary}")


# The logger Tune reports a failed trial attempt on ("Trial task failed for trial ...").
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


class OneLineTrialErrors(logging.Filter):
    """A failed attempt whose error is an EcgTuneError logged as its one line, without Ray's
    traceback; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        cause = getattr(error, "cause", None) or error
        if isinstance(cause, EcgTuneError):
            record.msg = f"{record.getMessage()}: {type(cause).__name__}: {cause}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


@contextmanager
def one_line_trial_errors() -> Iterator[None]:
    """`OneLineTrialErrors` on Tune's trial-failure logger while the search runs."""
    logger, quiet = logging.getLogger(TUNE_CONTROLLER_LOGGER), OneLineTrialErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
