"""OptunaSearch that tells Optuna which trials the scheduler cut short (issue 15, item 3a).

Why: Ray 2.60's `OptunaSearch.on_trial_complete` tells every trial that has a result as
COMPLETE with the metric of its LAST result, including a trial ASHA stopped at a low rung, so
TPE ranks a 1-epoch score with the finished ones. Ray also skips `on_trial_result` for the
result the scheduler answers STOP to (TuneController._process_trial_result), so the epoch a
trial ends on never reaches Optuna as an intermediate value.

Here every epoch's metric is reported as an intermediate value (step = training_iteration,
the stopping epoch included), and on completion a trial is told:
- PRUNED when the scheduler stopped it: it reported fewer than `max_epochs` iterations and
  its last result does not say `finished` (Optuna keeps its last intermediate value as its
  value; TPE ranks pruned trials after the complete ones, deeper steps first, then by that
  value);
- COMPLETE with its best epoch's value in the searcher's mode when it ran all `max_epochs` or
  ended by itself before (early stopping, minirocket's one closed-form fit: the loop marks
  that epoch `finished`), the way search/export.py ranks trials (FAIL if it has no finite
  value);
- FAIL when it errored.
Repeats: on a space of mostly discrete choices TPE, once it has found a configuration with no
continuous parameter (a minirocket fit), proposes exactly it again and again (measured: 594
of 760 trials of a 7-minute ECG200 search were one such configuration). Trials are seeded, so
a repeat would train to the result its twin already reported: `suggest` answers such a
proposal from memory (Optuna is told COMPLETE with the twin's value, user attribute
`repeat_of`) and asks again, up to `MAX_REPEATS` times before it lets a repeat run (the space
may be exhausted). Only COMPLETE trials are remembered: a pruned one's value is partial.

The Tune trial id is stored as the Optuna trial's user attribute `tune_trial_id`. Single
objective only; with a list of metrics the base class's behaviour is kept. The state lives in
`__dict__`, which the base class pickles in `save` and restores in `restore` (--resume).

Lost suggestions: Tune saves the searcher together with the experiment, 10 s or more apart (and
after every trial checkpoint when one checkpoint is kept). A driver that dies after a
suggestion but before the next save leaves a study in a database (--optuna-storage) with that
trial RUNNING for good: Tune never learns of it, and TPE's constant liar keeps counting it as
running (measured: SIGKILL of the driver as a trial started left it RUNNING after the resumed
search ended). Every trial carries the user attribute `search_id` (the searcher's own, pickled
with it), and `restore` tells FAIL, with user attribute `lost`, each RUNNING trial of this search
the restored state does not know. An in-memory study is restored from the same save as Tune's
trials, so it holds none.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any, cast

import optuna
from ray.tune.search.optuna import OptunaSearch

from ecg_tune.training.metrics import finished

TRAINING_ITERATION = "training_iteration"
TUNE_TRIAL_ID = "tune_trial_id"
REPEAT_OF = "repeat_of"
SEARCH_ID = "search_id"
LOST = "lost"
MAX_REPEATS = 16

logger = logging.getLogger(__name__)


class PruningAwareOptunaSearch(OptunaSearch):
    """`OptunaSearch` whose trials stopped before `max_epochs` reach Optuna as PRUNED."""

    def __init__(self, *args: Any, max_epochs: int, pruned_as_complete: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        # True: stopped trials are told COMPLETE with their last value (Ray's own behaviour), kept
        # so that `benchmark search` can measure what telling them PRUNED changes.
        self._pruned_as_complete = pruned_as_complete
        self._reported: dict[str, dict[int, float]] = {}  # Tune trial id -> {step: metric}
        # Parameters of every COMPLETE trial -> (its value, its Tune trial id).
        self._finished: dict[tuple, tuple[float, str]] = {}
        # Tells this search's trials from another's in a shared study (see `restore`).
        self._search_id = uuid.uuid4().hex

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        for _ in range(MAX_REPEATS):
            twin = self._twin(trial_id)
            if config is None or twin is None:
                break
            value, twin_id = twin
            repeat = self._ot_trials.pop(trial_id)
            repeat.set_user_attr(REPEAT_OF, twin_id)
            cast(optuna.Study, self._ot_study).tell(repeat, value, state=optuna.trial.TrialState.COMPLETE)
            config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
            self._ot_trials[trial_id].set_user_attr(SEARCH_ID, self._search_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_lost_trials()

    def _fail_lost_trials(self) -> None:
        """Tell FAIL this search's RUNNING trials that the restored state does not know: they
        were suggested after Tune's last save, and no trial of the experiment will report them."""
        study = cast(optuna.Study | None, self._ot_study)
        search_id = getattr(self, "_search_id", None)  # absent from a state saved before it existed
        if study is None or search_id is None:
            return
        known = {ot_trial.number for ot_trial in self._ot_trials.values()}
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get(SEARCH_ID) != search_id or frozen.number in known:
                continue
            optuna.trial.Trial(study, frozen._trial_id).set_user_attr(
                LOST, "suggested after the experiment's last save before its driver stopped; never ran")
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            logger.warning("Optuna trial %s (Tune trial %s) was lost with the stopped driver: told FAIL",
                           frozen.number, frozen.user_attrs.get(TUNE_TRIAL_ID))

    def _twin(self, trial_id: str) -> tuple[float, str] | None:
        """The value and id of a COMPLETE trial with exactly the parameters just proposed."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else self._finished.get(_params_key(ot_trial.params))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list):
            return super().on_trial_result(trial_id, result)
        if trial_id in self._completed_trials:
            logger.warning("Result for trial %s after it finished: ignored", trial_id)
            return
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        if result and not error:
            self._report(trial_id, result)  # the stopping result never came through on_trial_result
        history = self._reported.pop(trial_id, {})
        finite = [v for v in history.values() if not math.isnan(v)]
        value: float | None = None
        if error:
            state = optuna.trial.TrialState.FAIL
        elif history and (max(history) >= self._max_epochs or finished(result)):
            if finite:
                state, value = optuna.trial.TrialState.COMPLETE, (max if self.mode == "max" else min)(finite)
            else:
                state = optuna.trial.TrialState.FAIL
        elif history and self._pruned_as_complete:
            # Ray's OptunaSearch: COMPLETE with the stopping result's value (the last epoch's).
            state, value = optuna.trial.TrialState.COMPLETE, history[max(history)]
        else:
            state = optuna.trial.TrialState.PRUNED  # value: Optuna takes the last intermediate one
        ot_trial = self._ot_trials[trial_id]
        try:
            study = cast(optuna.Study, self._ot_study)  # set up by the base class once it has a space
            study.tell(ot_trial, value, state=state)
        except Exception as exc:  # as the base class: a bad value must not end the search
            logger.warning(exc)
        else:
            if state == optuna.trial.TrialState.COMPLETE and value is not None:
                self._finished.setdefault(_params_key(ot_trial.params), (value, trial_id))
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        """Record and report the result's metric at its training_iteration, once per step."""
        metric, step = result.get(self.metric), result.get(TRAINING_ITERATION)
        if metric is None or step is None:
            return
        history = self._reported.setdefault(trial_id, {})
        if int(step) not in history:  # a trial restarted from a checkpoint repeats epochs
            history[int(step)] = float(metric)
            self._ot_trials[trial_id].report(float(metric), int(step))


def _params_key(params: dict[str, Any]) -> tuple:
    """A hashable form of an Optuna trial's parameters."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))
