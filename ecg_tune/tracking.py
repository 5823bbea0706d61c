"""MLflow tracking of a search (`--mlflow [URI]`): one parent run per search, one nested child run per
Tune trial, and the refit's test report logged to the parent.

This module owns everything that talks to MLflow:

* `SearchTracking`: what the pipeline holds for one search: opened from `--mlflow` (a no-op
  without it), it hands the tuner its Tune callbacks and logs the search's end;
* `resolve_uri` / `check_available`: the tracking URI a search logs to (default
  `sqlite:///<out>/mlflow.db`) and the one-line error when MLflow is not installed;
* `start_search` / `reopen_search`: the parent run (experiment "ecg-tune", named after the --out
  folder, the search's settings as params), recorded in the run folder's mlflow.json (through
  `RunFolder`) so that a later refit and `--resume` find it;
* `TrialTracker`: the Tune callback that logs each trial as a child run (tag
  `mlflow.parentRunId`): its sampled configuration as params, every reported metric per epoch;
* `log_search_end`, `log_refit`, `end_search`: the best validation metrics, the test metrics
  (interval bounds as separate metrics), the pictures, report.html and model/ on the parent.

MLflow is an optional extra (`pip install "ecg-tune[tracking]"`): this module imports it only
inside the functions that log, so a search without --mlflow never loads it.

Ray's `MLflowLoggerCallback` was checked first: its `tags` argument can carry
`mlflow.parentRunId` and so nest trial runs, but it writes one metric per database call (with a
`get_run` before each), logs Tune's bookkeeping (pid, timestamps) as metrics, and keys its
trial -> run map by Trial objects that a `--resume` replaces, so a resumed trial would start a
second run. `TrialTracker` writes one batch per epoch and keeps its map across a resume.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from ecg_tune.errors import ConfigError
from ecg_tune.runs import RunFolder, TrackingRecord
from ecg_tune.search.trainable import sampled_values
from ecg_tune.training.metrics import HEADLINE_METRICS
from ecg_tune.training.reported import TRAINING_ITERATION, tracked

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    from ecg_tune.runs import BestConfig
    from ecg_tune.search.plan import Plan

EXPERIMENT_NAME = "ecg-tune"
DEFAULT_URI = "default"  # --mlflow without a URI: sqlite:///<out>/mlflow.db
PARENT_TAG = "mlflow.parentRunId"  # the tag MLflow's UI nests a run under its parent by
INSTALL_HINT = 'pip install "ecg-tune[tracking]"'


def check_available() -> None:
    """A one-line error, before any data is read, when MLflow is not installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"--mlflow: MLflow is not installed; {INSTALL_HINT}")


def resolve_uri(uri: str, run: RunFolder) -> str:
    """The tracking URI of `--mlflow [URI]`: the run folder's own SQLite file by default (MLflow's
    current default kind of store), as an absolute path so that it names the same file from
    wherever a later refit runs."""
    return f"sqlite:///{run.mlflow_db_path.resolve()}" if uri == DEFAULT_URI else uri


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return str(experiment.experiment_id)
    # With a SQLite store MLflow would put artifacts under ./mlruns of whatever folder the
    # command ran in; beside the database file they stay with the run (a server decides its own).
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(EXPERIMENT_NAME, artifact_location=location))


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    # MLflow keeps params as text; None (a setting left to the space) is left out.
    return [Param(str(key), str(value)) for key, value in values.items() if value is not None]


def search_params(plan: Plan, space: str, data: str, seed: int) -> dict[str, Any]:
    """What the parent run shows of a search: its space, data, ranking and budget."""
    return {"space": space, "data": data, "metric": plan.metric, "mode": plan.mode, "num_samples": plan.num_samples,
            "time_budget": plan.time_budget, "max_epochs": plan.max_epochs, "searcher": plan.searcher,
            "scheduler": plan.scheduler, "folds": plan.folds, "seed": seed}


class SearchTracking:
    """The MLflow side of one search, held by the pipeline; every method is a no-op when the
    search is not tracked (no `--mlflow`, or a resumed search that was started without it)."""

    def __init__(self, run: RunFolder, callbacks: list[Callback] | None = None) -> None:
        self.run = run
        self.callbacks = list(callbacks or [])  # for the tuner: Tune callbacks that log the trials

    @classmethod
    def open(cls, run: RunFolder, uri: str | None, *, resume: bool, params: dict[str, Any]) -> SearchTracking:
        """Start the parent run of a new search (`uri` from --mlflow; None: not tracked), or mark a
        resumed one running again; Tune restores a resumed search's own TrialTracker."""
        if uri is None:
            return cls(run)
        if resume:
            reopen_search(run)
            return cls(run)
        return cls(run, [start_search(run, uri, params)])

    def search_end(self, best: BestConfig) -> None:
        log_search_end(self.run, best)

    def end(self, status: str = "FINISHED") -> None:
        """The parent run ended (KILLED: the search was interrupted and may be resumed)."""
        end_search(self.run, status)


def start_search(run: RunFolder, uri: str, params: dict[str, Any]) -> TrialTracker:
    """Create the parent run of a new search, record it in mlflow.json, and return the callback
    that logs its trials under it."""
    uri = resolve_uri(uri, run)
    client = _client(uri)
    experiment_id = _experiment_id(client, uri)
    parent = client.create_run(experiment_id, run_name=run.path.name,
                               tags={"run_folder": str(run.path.resolve()), "kind": "search"})
    client.log_batch(parent.info.run_id, params=_params(params))
    record = TrackingRecord(tracking_uri=uri, parent_run_id=parent.info.run_id, experiment_id=experiment_id)
    run.write_tracking(record)
    print(f"mlflow: run {record.parent_run_id} in {uri} (mlflow ui --backend-store-uri {uri})", flush=True)
    return TrialTracker(record)


def reopen_search(run: RunFolder) -> TrackingRecord:
    """On --resume --mlflow: the search's parent run, marked running again. Tune restores the
    search's own TrialTracker with the experiment, so the trials continue their child runs."""
    record = run.tracking()
    if record is None:
        raise ConfigError("--resume --mlflow: this search was started without --mlflow, and Tune resumes a "
                          "search with the callbacks it started with; run it again with --mlflow to track it")
    _client(record.tracking_uri).update_run(record.parent_run_id, status="RUNNING")
    print(f"mlflow: continuing run {record.parent_run_id} in {record.tracking_uri}", flush=True)
    return record


class TrialTracker(Callback):
    """Each trial as a child run of the search's parent run (see the module docstring).

    Runs on the driver, so trials on other nodes need no access to the tracking store. Tune
    pickles callbacks with the experiment state: the client is made again after unpickling, and
    the class stays at this module path.
    """

    def __init__(self, record: TrackingRecord) -> None:
        self.record = record
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self._mlflow: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mlflow": None}  # a client holds a database engine

    @property
    def client(self) -> MlflowClient:
        if self._mlflow is None:
            self._mlflow = _client(self.record.tracking_uri)
        return self._mlflow

    # Tune saves callback state with each experiment snapshot: a resumed trial logs on to its run.
    def get_state(self) -> dict | None:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))

    def _run_of(self, trial: Trial) -> str:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            run = self.client.create_run(self.record.experiment_id, run_name=trial.trial_id,
                                         tags={PARENT_TAG: self.record.parent_run_id, "trial_id": trial.trial_id,
                                               "kind": "trial"})
            run_id = self.runs[trial.trial_id] = run.info.run_id
            self.client.log_batch(run_id, params=_params(sampled_values(trial.config)))
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._run_of(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict,
                        **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get(TRAINING_ITERATION, 0))
        stamp = int(float(result.get("timestamp", time.time())) * 1000)
        metrics = [Metric(metric_name(key), float(value), stamp, step) for key, value in result.items()
                   if tracked(key) and _is_number(value)]
        if metrics:
            self._safely(lambda: self.client.log_batch(self._run_of(trial), metrics=metrics))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._safely(lambda: self.client.set_terminated(self._run_of(trial), "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._safely(lambda: self.client.set_terminated(self._run_of(trial), "FAILED"))

    def _safely(self, log: Callable[[], object]) -> None:
        # An exception in a callback ends Tune's whole search: a tracking store that is down or
        # refuses a value costs that record, with a warning, never the search.
        try:
            log()
        except Exception as exc:  # noqa: BLE001 - MlflowException, database and network errors alike
            warnings.warn(f"mlflow: not logged ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          stacklevel=2)


def metric_name(key: str) -> str:
    """A metric's name with the characters MLflow refuses as `_` (CinC's noise class is "~")."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def log_search_end(run: RunFolder, best: BestConfig) -> None:
    """The best trial's validation metrics (at its best epoch) and its id on the parent run."""
    record = run.tracking()
    if record is None:
        return
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(f"best_{key}"), float(value), now, best.epoch) for key, value in best.metrics.items()
               if _is_number(value)]
    _client(record.tracking_uri).log_batch(record.parent_run_id, metrics=metrics,
                                           tags=[RunTag("best_trial_id", best.trial_id)])


def end_search(run: RunFolder, status: str = "FINISHED") -> None:
    """Mark the parent run ended (FINISHED, or KILLED when the search was interrupted)."""
    record = run.tracking()
    if record is not None:
        _client(record.tracking_uri).set_terminated(record.parent_run_id, status)


def log_refit(run: RunFolder, test: dict[str, Any], files: list[Path], *, ensemble: dict[str, Any] | None = None,
              refit_seconds: float | None = None) -> None:
    """The refit's test metrics (each 95 % interval as `<name>_ci_low` / `_ci_high`), `files` (the
    pictures, report.html) and the model bundle, on the search's parent run; nothing when the
    search was not tracked. With an ensemble (report.json's `ensemble`), the test metrics are the
    ensemble's and the single best trial's headline figures come beside them as
    `test_single_best_<name>` (with its interval bounds), with `ensemble_members`; and the refit's
    wall time as `refit_seconds`."""
    record = run.tracking()
    if record is None:
        return
    from mlflow.entities import Metric

    client = _client(record.tracking_uri)
    now = int(time.time() * 1000)
    metrics = test_metrics_flat(test)
    if ensemble is not None:
        single = test_metrics_flat(ensemble["single_best"]["test"])
        metrics.update({key.replace("test_", "test_single_best_", 1): value for key, value in single.items()})
        metrics["ensemble_members"] = float(len(ensemble["members"]))
    if refit_seconds is not None:
        metrics["refit_seconds"] = float(refit_seconds)
    client.log_batch(record.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    for path in files:
        if path.is_file():
            client.log_artifact(record.parent_run_id, str(path))
    if run.model_dir.is_dir():
        client.log_artifacts(record.parent_run_id, str(run.model_dir), artifact_path="model")
    client.set_terminated(record.parent_run_id, "FINISHED")
    print(f"mlflow: test metrics and artifacts logged to run {record.parent_run_id}", flush=True)


def test_metrics_flat(test: dict[str, Any]) -> dict[str, float]:
    """report.py's test report as MLflow metric names: test_<name>, its interval bounds, the
    weighted and per-class figures (`metric_name`)."""
    flat = {f"test_{key}": float(test[key]) for key in (*HEADLINE_METRICS, "n_records")
            if key in test}
    for key, (low, high) in test.get("ci95", {}).items():
        flat[f"test_{key}_ci_low"], flat[f"test_{key}_ci_high"] = float(low), float(high)
    for key, value in test.get("weighted", {}).items():
        flat[f"test_weighted_{key}"] = float(value)
    for name, figures in test.get("per_class", {}).items():
        for key in ("precision", "recall", "f1"):
            flat[metric_name(f"test_class_{name}_{key}")] = float(figures[key])
    return flat


# pytest would collect a module-level function named test_* from a test module that imports it.
test_metrics_flat.__test__ = False  # type: ignore[attr-defined]
