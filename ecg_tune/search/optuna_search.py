"""The Optuna searcher of a search: Tune's `Searcher` interface over Optuna's ask/tell API, telling
Optuna which trials the scheduler cut short (issue 15, item 3a; issue 23).

It owns the Optuna study of a search (created or, with a storage, reopened), how Tune's trials
map onto Optuna's, what Optuna is told about each, and its state across Tune's save and restore.
It uses only the public APIs of both: `ray.tune.search.Searcher`, and Optuna's `create_study`,
`Study.enqueue_trial` / `ask` / `tell`, `Trial.report` / `set_user_attr` and the storage's
public methods; reading a state saved before issue 23 is search/upstream.py's.

Why not Ray's OptunaSearch: Ray 2.60's `OptunaSearch.on_trial_complete` tells every trial that
has a result as COMPLETE with the metric of its LAST result, including a trial ASHA stopped at a
low rung, so TPE ranks a 1-epoch score with the finished ones. Ray also skips `on_trial_result`
for the result the scheduler answers STOP to, so the epoch a trial ends on never reaches Optuna
as an intermediate value. Changing that by subclassing meant using OptunaSearch's private
attributes; this class is written on the public interfaces instead, and asks Optuna exactly
what OptunaSearch asked, in the same order, so a seed gives the same proposals
(tests/test_upstream.py compares the two).

The space is a define-by-run function (search/samplers.py's DefineByRun): it calls
`trial.suggest_*` and may return a dict of constants; a trial's config is the values the
suggest calls returned, with the constants over them. Start points (`points_to_evaluate`) are
enqueued in the study when the searcher is built: the first trials asked are theirs, a suggest
call for a key a point sets returns its value, and the keys it leaves out are sampled.

Every epoch's metric is reported as an intermediate value (step = training_iteration, the
stopping epoch included), and on completion a trial is told:
- PRUNED when the scheduler stopped it: it reported fewer than `max_epochs` iterations and
  its last result does not say `finished` (Optuna keeps its last intermediate value as its
  value; TPE ranks pruned trials after the complete ones, deeper steps first, then by that
  value);
- COMPLETE with its best epoch's value in the searcher's mode when it ran all `max_epochs` or
  ended by itself before (early stopping, minirocket's one closed-form fit: the loop marks
  that epoch `finished`), the way search/export.py ranks trials (FAIL if it has no finite
  value);
- FAIL when it errored.
`pruned_as_complete=True` tells a stopped trial COMPLETE with its last value instead, as Ray's
OptunaSearch does: kept so that `benchmark search` can measure what telling PRUNED changes.

Repeats: on a space of mostly discrete choices TPE, once it has found a configuration with no
continuous parameter (a minirocket fit), proposes exactly it again and again (measured: 594
of 760 trials of a 7-minute ECG200 search were one such configuration). Trials are seeded, so
a repeat would train to the result its twin already reported: `suggest` answers such a
proposal from memory (Optuna is told COMPLETE with the twin's value, user attribute
`repeat_of`) and asks again, up to `MAX_REPEATS` times before it lets a repeat run (the space
may be exhausted). Only COMPLETE trials are remembered: a pruned one's value is partial.

Cost limits (issue 26): with a `cost_check` (search/samplers.CostCheck), a configuration whose
estimated parameters or MACs break the limits never reaches Tune: Optuna is told it PRUNED with
its constraints set (`Trial.set_constraint`: each limit's relative excess; user attribute
`infeasible`), so TPE counts it among the poor trials, and the searcher asks again, at most
`MAX_INFEASIBLE` times in a row before it ends the search with one error line (a start point that
breaks them is skipped with a warning). A trial that ran gets its constraints from its last result
(the latency too, which only it measures) before it is told.

Several objectives: with `objectives` (the first is `metric`) the study is multi-objective. Optuna
takes no intermediate values there: a trial that ran out its epochs or ended by itself is told
COMPLETE with every objective at its best epoch for the first (export.py's), a stopped one PRUNED.

The Tune trial id is stored as the Optuna trial's user attribute `tune_trial_id`. What the searcher
learns while the search runs is one `SearcherState`, which `save` pickles and `restore` reads back
(--resume); Tune also pickles the whole searcher with the Tuner (tuner.pkl) and restores the state
onto that copy.

Lost suggestions: Tune saves the searcher together with the experiment, 10 s or more apart (and
after every trial checkpoint when one checkpoint is kept). A driver that dies after a
suggestion but before the next save leaves a study in a database (--optuna-storage) with that
trial RUNNING for good: Tune never learns of it, and TPE's constant liar keeps counting it as
running (measured: SIGKILL of the driver as a trial started left it RUNNING after the resumed
search ended). Every trial carries the user attribute `search_id` (the searcher's own, saved
with its state), and `restore` tells FAIL, with user attribute `lost`, each RUNNING trial of
this search the restored state does not know. An in-memory study is restored from the same save
as Tune's trials, so it holds none.

Parallel trials (issue 25, item 3): TPE is built by `tpe_sampler`, with Optuna's constant liar:
a trial suggested but not yet told counts, for every proposal made meanwhile, among the poor
results (TPE's "bad" group), so trials started together are pushed apart instead of all landing
on the current best region (tests/test_searcher_scaling.py measures the spread). Optuna 5
already defaults to it; the search now asks for it by name.

Thousands of trials: TPE rebuilds its model from the study's trials for every proposal, in
Python loops over each trial and each group of parameters that appear together (the `full`
space has about nine), so its cost per proposal grows with the study (`benchmark overhead`,
docs/benchmarks.md). An in-memory study (the default) shows TPE a window of its finished trials
once it has more than `MODEL_WINDOW` + `MODEL_BEST` of them: the `MODEL_WINDOW` most recent and
the `MODEL_BEST` best completed, with every running or waiting trial (`WindowedMemoryStorage`).
Below that size nothing changes: the same trials, in the same order, the same proposals. A study
in a database (--optuna-storage) is not windowed: Optuna's cache of such a study is private to it.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import uuid
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from ecg_tune.search.samplers import quiet_optuna
from ecg_tune.search.upstream import LEGACY_ONLY, legacy_searcher_state
from ecg_tune.training.reported import TRAINING_ITERATION, finished

if TYPE_CHECKING:
    from ecg_tune.search.samplers import CostCheck

TUNE_TRIAL_ID = "tune_trial_id"
REPEAT_OF = "repeat_of"
SEARCH_ID = "search_id"
LOST = "lost"
INFEASIBLE = "infeasible"
MAX_REPEATS = 16
# Configurations in a row that break the cost limits before the searcher gives up (an estimate
# costs tens of ms; plan.py has found feasible ones among random draws before the search).
MAX_INFEASIBLE = 200
# The study's name when none is given (tuner.py names every database study): Ray's OptunaSearch's.
DEFAULT_STUDY_NAME = "optuna"
# TPE's view of a large in-memory study (see the module's docstring and `benchmark overhead`):
# the most recent finished trials it models, and the best completed ones kept beside them. TPE's
# "good" group holds at most 25 trials (Optuna's default gamma), so the 25 best stay in view
# however old. With 300 recent ones a proposal on `full` costs what it costs at 325 trials,
# however large the study grows: 26-30 ms from 300 to 1,000 trials, against 61 ms at 1,000
# (and growing ~6 ms per 100 trials) without the window (docs/benchmarks.md, `overhead`).
MODEL_WINDOW = 300
MODEL_BEST = 25
# The trial states TPE models (a FAIL trial is never read; running ones are the constant liar's).
MODELLED = (TrialState.COMPLETE, TrialState.PRUNED)

# The define-by-run function: suggests a trial's parameters, returns constants (or None).
SpaceFunction = Callable[[optuna.trial.Trial], "dict[str, Any] | None"]

logger = logging.getLogger(__name__)


@dataclass
class SearcherState:
    """What the searcher learns while a search runs; saved with every experiment checkpoint."""

    study: optuna.Study
    # The storage the study was opened in, when one was given (None: in memory): lost trials
    # are marked through its public methods.
    storage: BaseStorage | None = None
    trials: dict[str, optuna.trial.Trial] = field(default_factory=dict)  # Tune trial id -> Optuna trial
    completed: set[str] = field(default_factory=set)  # Tune trial ids Optuna was told the end of
    reported: dict[str, dict[int, float]] = field(default_factory=dict)  # Tune trial id -> {step: metric}
    # Parameters of every COMPLETE trial -> (its value, or its values in a multi-objective study; its
    # Tune trial id).
    finished: dict[tuple, tuple[float | list[float], str]] = field(default_factory=dict)
    # Tells this search's trials from another's in a shared study (see `restore`); None in a
    # state saved before it existed.
    search_id: str | None = field(default_factory=lambda: uuid.uuid4().hex)
    # Multi-objective: Tune trial id -> {step: every objective's value}.
    objective_values: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    rejected: int = 0  # configurations that broke the cost limits before training, never run

    def __setstate__(self, saved: dict[str, Any]) -> None:
        # A state pickled before the fields added since has them at their defaults.
        self.__dict__.update({"objective_values": {}, "rejected": 0, **saved})

    @classmethod
    def read(cls, saved: object) -> SearcherState:
        """A state as `save` wrote it, or as the searcher before issue 23 did."""
        if isinstance(saved, cls):
            return saved
        legacy = legacy_searcher_state(saved) if isinstance(saved, dict) else None
        if legacy is None:
            raise ValueError(f"not a saved Optuna searcher state: {type(saved).__name__}")
        return cls(**{"search_id": None, **legacy})


def tpe_sampler(seed: int | None, startup_trials: int) -> optuna.samplers.TPESampler:
    """TPE as a search runs it: multivariate with groups, so that parameters are modelled jointly
    and conditional ones (present in some trials only) too; constant liar, so that trials running
    at once get proposals apart from each other; `startup_trials` random trials first."""
    with quiet_optuna():  # `group` and `constant_liar` are marked experimental: chosen knowingly
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=startup_trials)


class WindowedMemoryStorage(InMemoryStorage):
    """Optuna's in-memory storage, whose trial listings (what TPE models its proposals on) hold,
    once a study has more than `recent + best` finished (COMPLETE or PRUNED) trials, the `recent`
    most recent of them and the `best` best completed, with every trial in another state, in trial
    order. Below that every listing is Optuna's own. Counts and the best trial are the whole study's."""

    def __init__(self, recent: int, best: int = MODEL_BEST) -> None:
        if recent < 1 or best < 0:
            raise ValueError(f"a window of at least 1 recent trial is needed, got recent={recent}, best={best}")
        super().__init__()
        self.recent, self.best = recent, best
        # study id -> (finished trials counted, the numbers of those in the window): the window
        # changes only when a trial finishes, and a proposal lists the trials a dozen times.
        self._windows: dict[int, tuple[int, frozenset[int]]] = {}

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = super().get_all_trials(study_id, deepcopy=False, states=states)
        window = self._window(study_id)
        if window is not None:
            trials = [t for t in trials if t.number in window or t.state not in MODELLED]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        states = (state,) if isinstance(state, TrialState) else state
        return len(super().get_all_trials(study_id, deepcopy=False, states=states))

    def _window(self, study_id: int) -> frozenset[int] | None:
        """The numbers of the finished trials in view (None: the study is small, all are)."""
        finished = super().get_all_trials(study_id, deepcopy=False, states=MODELLED)
        if len(finished) <= self.recent + self.best:
            return None
        counted, window = self._windows.get(study_id, (-1, frozenset()))
        if counted != len(finished):
            # The best by the first objective (a multi-objective study's trials have several values).
            sign = -1.0 if self.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE else 1.0
            complete = [t for t in finished if t.state == TrialState.COMPLETE and t.values]
            best = sorted(complete, key=lambda t: (sign * t.values[0], t.number))[:self.best]
            recent = sorted(finished, key=lambda t: t.number)[-self.recent:]
            window = frozenset(t.number for t in [*recent, *best])
            self._windows[study_id] = (len(finished), window)
        return window


def saved_state(path: str | Path) -> SearcherState:
    """The searcher state in one of Tune's `searcher-state-*.pkl` files of an experiment."""
    with open(path, "rb") as stream:
        return SearcherState.read(pickle.load(stream))


class _SuggestionRecorder:
    """The Optuna trial as the define-by-run function sees it, noting what each `suggest_*` call
    returned: those values make the trial's config, as Ray's OptunaSearch builds it (they can
    differ from `trial.params` in type: `suggest_int` returns an int for a start point's 3.0)."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self._trial = trial
        self.values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._trial, name)
        if not (name.startswith("suggest_") and callable(attribute)):
            return attribute

        def suggest(name: str, *args: Any, **kwargs: Any) -> Any:
            value = attribute(name, *args, **kwargs)
            self.values[name] = value
            return value

        return suggest


class PruningAwareOptunaSearch(Searcher):
    """An Optuna study behind Tune's Searcher interface whose trials stopped before `max_epochs`
    reach Optuna as PRUNED.

    The arguments before `max_epochs` are Ray's OptunaSearch's, for a define-by-run space and a
    single metric: `sampler` (default: TPE seeded with `seed`), `storage` and `study_name` (an
    existing study of that name is continued), `points_to_evaluate` (run first). Without a
    storage the study is kept in memory, shown to the sampler through a window of `model_window`
    recent trials (plus the best: `WindowedMemoryStorage`; None: every trial, as Optuna does).
    `objectives` and `modes`: a multi-objective study's keys and directions, `metric` and `mode`
    first (None: `metric` alone); `cost_check`: the limits checked before training (None: none)."""

    def __init__(self, space: SpaceFunction, metric: str, mode: str,
                 points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None, study_name: str | None = None,
                 storage: BaseStorage | None = None, seed: int | None = None, *, max_epochs: int,
                 pruned_as_complete: bool = False, model_window: int | None = MODEL_WINDOW,
                 objectives: Sequence[str] | None = None, modes: Sequence[str] | None = None,
                 cost_check: CostCheck | None = None) -> None:
        if not callable(space):
            raise TypeError(f"space: a define-by-run function is needed, got {type(space).__name__}")
        if not isinstance(metric, str) or mode not in ("min", "max"):
            raise ValueError(f"one metric and its mode ('min' or 'max') are needed, got {metric!r}, {mode!r}")
        if storage is not None and not isinstance(storage, BaseStorage):
            raise TypeError(f"storage: an optuna storage is needed, got {type(storage).__name__}")
        points = list(points_to_evaluate or ())
        if not all(isinstance(point, Mapping) for point in points):
            raise TypeError("points_to_evaluate: a list of partial configurations (dicts) is needed")
        objectives, modes = list(objectives or [metric]), list(modes or [mode])
        if objectives[0] != metric or modes[0] != mode or len(objectives) != len(modes):
            raise ValueError(f"objectives {objectives} with modes {modes}: the first must be the metric {metric!r} "
                             f"({mode}), one mode each")
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._max_epochs = max_epochs
        self._pruned_as_complete = pruned_as_complete
        self._objectives = objectives
        self._cost_check = cost_check
        self._points = [dict(point) for point in points]
        # Optuna's own pruner is never consulted (Tune's scheduler stops trials); NopPruner says so
        # in the study, as Ray's OptunaSearch did.
        in_memory = None if model_window is None else WindowedMemoryStorage(model_window)
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage or in_memory, sampler=sampler or optuna.samplers.TPESampler(seed=seed),
                pruner=optuna.pruners.NopPruner(), study_name=study_name or DEFAULT_STUDY_NAME, load_if_exists=True,
                directions=["minimize" if m == "min" else "maximize" for m in modes])
        for point in points:
            study.enqueue_trial(dict(point))
        self._state = SearcherState(study, storage)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (also what was restored, after `restore`)."""
        return self._state.study

    @property
    def max_epochs(self) -> int:
        return self._max_epochs

    @property
    def multi_objective(self) -> bool:
        return len(self._objectives) > 1

    def __setstate__(self, saved: dict[str, Any]) -> None:
        # tuner.pkl of a search started before issue 23 holds the searcher of then: its
        # attributes, Ray OptunaSearch's among them, become today's (search/upstream.py).
        if "_state" not in saved:
            state = SearcherState.read(saved)
            saved = {key: value for key, value in saved.items() if key not in LEGACY_ONLY}
            saved["_state"] = state
        # A searcher pickled before issue 26: one objective, no limits, its points already enqueued.
        saved = {"_objectives": [saved.get("_metric")], "_cost_check": None, "_points": [], **saved}
        self.__dict__.update(saved)

    # -- Tune's Searcher interface --------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        state = self._state
        trial, config = self._ask(trial_id)
        repeats = rejected = 0
        while True:
            broken = self._cost_check.broken(config) if self._cost_check is not None else ""
            if broken:
                rejected += 1
                self._reject(trial_id, trial, config, broken)
                if rejected >= MAX_INFEASIBLE:
                    logger.error("%d configurations in a row broke the cost limits (%s): no more trials are started",
                                 rejected, self._cost_check.limits.describe() if self._cost_check else "")
                    return Searcher.FINISHED  # type: ignore[return-value]  # Tune's answer for "no more trials"
                trial, config = self._ask(trial_id)
                continue
            twin = state.finished.get(_params_key(trial.params))
            if twin is None or repeats >= MAX_REPEATS:
                break
            repeats += 1
            value, twin_id = twin
            del state.trials[trial_id]
            trial.set_user_attr(REPEAT_OF, twin_id)
            state.study.tell(trial, value, state=TrialState.COMPLETE)
            trial, config = self._ask(trial_id)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        trial.set_user_attr(SEARCH_ID, state.search_id)
        return config

    def _reject(self, trial_id: str, trial: optuna.trial.Trial, config: dict[str, Any], broken: str) -> None:
        """Tell Optuna that `trial` breaks the cost limits (PRUNED, with its constraint values: TPE
        counts it among the poor trials), without Tune ever running it."""
        assert self._cost_check is not None
        state = self._state
        del state.trials[trial_id]
        for key, excess in self._cost_check.violations(config).items():
            trial.set_constraint(key, excess)
        trial.set_user_attr(INFEASIBLE, broken)
        state.study.tell(trial, state=TrialState.PRUNED)
        state.rejected += 1
        start = next((p for p in self._points if all(config.get(k) == v for k, v in p.items())), None)
        (logger.warning if start else logger.info)("%s not trained: it breaks the cost limits (%s)",
                                                   f"start point {start}" if start else "a configuration", broken)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._state.completed:
            logger.warning("Result for trial %s after it finished: ignored", trial_id)
            return
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        state = self._state
        if trial_id in state.completed:
            logger.warning("Trial %s completed again: ignored", trial_id)
            return
        trial = state.trials.get(trial_id)
        if trial is None:
            logger.warning("Trial %s completed, but this searcher never suggested it: ignored", trial_id)
            return
        if result and not error:
            self._report(trial_id, result)  # the stopping result never came through on_trial_result
        history = state.reported.pop(trial_id, {})
        values = state.objective_values.pop(trial_id, {})
        finite = [v for v in history.values() if not math.isnan(v)]
        value: float | list[float] | None = None
        if error:
            outcome = TrialState.FAIL
        elif history and (max(history) >= self._max_epochs or finished(result)):
            if finite:
                best = (max if self.mode == "max" else min)(finite)
                step = min(s for s, v in history.items() if v == best)  # the first of equal bests, as export.py
                outcome, value = TrialState.COMPLETE, values.get(step) if self.multi_objective else best
            else:
                outcome = TrialState.FAIL
        elif history and self._pruned_as_complete:
            # Ray's OptunaSearch: COMPLETE with the stopping result's value (the last epoch's).
            last = max(history)
            outcome, value = TrialState.COMPLETE, values.get(last) if self.multi_objective else history[last]
        else:
            outcome = TrialState.PRUNED  # value: Optuna takes the last intermediate one
        if outcome == TrialState.COMPLETE and value is None:  # an objective missing at the best epoch
            logger.warning("Trial %s lacks an objective (%s): told FAIL", trial_id, ", ".join(self._objectives))
            outcome = TrialState.FAIL
        if result and not error and self._cost_check is not None:
            for key, excess in self._cost_check.limits.violations(result).items():
                trial.set_constraint(key, excess)  # what the trial measured: TPE learns the latency limit too
        try:
            state.study.tell(trial, value, state=outcome)
        except Exception as exc:  # as Ray's OptunaSearch: a value Optuna refuses must not end the search
            logger.warning(exc)
        else:
            if outcome == TrialState.COMPLETE and value is not None:
                state.finished.setdefault(_params_key(trial.params), (value, trial_id))
        state.completed.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self._state, stream)

    def restore(self, checkpoint_path: str) -> None:
        self._state = saved_state(checkpoint_path)
        self._fail_lost_trials()

    # -- the study -----------------------------------------------------------------------------

    def _ask(self, trial_id: str) -> tuple[optuna.trial.Trial, dict[str, Any]]:
        """The Optuna trial of a Tune trial (asked of the study the first time) and its config."""
        trials = self._state.trials
        if trial_id not in trials:
            trials[trial_id] = self._state.study.ask()
        recorder = _SuggestionRecorder(trials[trial_id])
        constants = self._space(recorder)  # type: ignore[arg-type]  # duck-typed: a recording Trial
        if constants is not None and not (isinstance(constants, dict) and all(isinstance(k, str) for k in constants)):
            raise TypeError(f"the define-by-run space returned {type(constants).__name__}, not None or a dict "
                            f"with str keys")
        return trials[trial_id], {**recorder.values, **(constants or {})}

    def _report(self, trial_id: str, result: dict) -> None:
        """Record and report the result's metric at its training_iteration, once per step."""
        trial = self._state.trials.get(trial_id)
        metric, step = result.get(self.metric), result.get(TRAINING_ITERATION)
        if trial is None:
            logger.warning("Result for trial %s, which this searcher never suggested: ignored", trial_id)
            return
        if metric is None or step is None:
            return
        history = self._state.reported.setdefault(trial_id, {})
        if int(step) in history:  # a trial restarted from a checkpoint repeats epochs
            return
        history[int(step)] = float(metric)
        if not self.multi_objective:
            trial.report(float(metric), int(step))
            return
        # Optuna takes no intermediate values in a multi-objective study: kept here for the tell.
        found = [result.get(key) for key in self._objectives]
        numbers = [float(v) for v in found if isinstance(v, int | float) and not math.isnan(v)]
        if len(numbers) == len(found):
            self._state.objective_values.setdefault(trial_id, {})[int(step)] = numbers

    def _fail_lost_trials(self) -> None:
        """Tell FAIL this search's RUNNING trials that the restored state does not know: they
        were suggested after Tune's last save, and no trial of the experiment will report them."""
        state = self._state
        if state.storage is None or state.search_id is None:
            return  # in memory: restored with Tune's trials, nothing lost; or saved before search ids
        known = {trial.number for trial in state.trials.values()}
        study_id: int | None = None
        for frozen in state.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get(SEARCH_ID) != state.search_id or frozen.number in known:
                continue
            if study_id is None:
                study_id = state.storage.get_study_id_from_name(state.study.study_name)
            # The user attribute must be set before the tell (a finished trial takes none); the
            # storage's public methods reach a trial known only by its number.
            state.storage.set_trial_user_attr(
                state.storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number), LOST,
                "suggested after the experiment's last save before its driver stopped; never ran")
            state.study.tell(frozen.number, state=TrialState.FAIL)
            logger.warning("Optuna trial %s (Tune trial %s) was lost with the stopped driver: told FAIL",
                           frozen.number, frozen.user_attrs.get(TUNE_TRIAL_ID))


def _params_key(params: dict[str, Any]) -> tuple:
    """A hashable form of an Optuna trial's parameters."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))
