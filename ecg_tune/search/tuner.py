"""The search: searcher, scheduler, resources, storage and resume around the trainable.

`SearchOptions` is the validated set of choices a search is run with (the command line parses
into it; its bounds are declared here and, for the settings a space also has, in
search/space.py); `make_plan` combines them with the space's settings and the cluster's size;
`run_search` starts (or attaches to) Ray, puts the dataset in the object store once and runs
Tune with Optuna TPE (or random, or the grid of a grid space) and ASHA (or FIFO), ranking by
the metric in its own direction (training/metrics.py). The pipeline (ecg_tune/pipeline.py)
writes the results.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecg_tune.data import Dataset
from ecg_tune.errors import ConfigError, SearchInterrupted
from ecg_tune.runs import RunFolder
from ecg_tune.search.adapt import DataFacts
from ecg_tune.search.cluster import DEFAULT_CONNECT_TIMEOUT, check_storage_shared, connect
from ecg_tune.search.samplers import define_by_run, grid
from ecg_tune.search.space import GracePeriod, MaxEpochs, NumSamples, ReductionFactor, SearchSpace, TimeBudget
from ecg_tune.search.trainable import GRID_KEY
from ecg_tune.storage import EXPERIMENT, ExperimentStorage
from ecg_tune.training.folds import CvOption, Validation, choose_validation
from ecg_tune.training.metrics import Direction, direction, ranking_metric, validation_metrics

# A trial that raises is retried from its checkpoint this many times before it counts as errored.
MAX_TRIAL_FAILURES = 2


class SearchOptions(BaseModel):
    """How to run a search; None means the space's setting (or the cluster's resources)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path
    num_samples: NumSamples | None = None
    max_epochs: MaxEpochs | None = None
    grace_period: GracePeriod | None = None
    reduction_factor: ReductionFactor | None = None
    time_budget: TimeBudget | None = None
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float | None = Field(None, ge=0)  # None: 0.25 when the cluster has GPUs, else 0
    max_concurrent: int | None = Field(None, ge=1)
    searcher: Literal["optuna", "random"] = "optuna"
    # Tell Optuna the trials ASHA stopped as COMPLETE with their last value, as Ray 2.60's
    # OptunaSearch does, instead of PRUNED: only for `benchmark search` to measure the difference.
    pruned_as_complete: bool = False
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: str | None = None  # None: val_cinc_f1 with the CinC classes, else val_macro_f1
    # K-fold cross-validation ranks trials (1: the split's val part; auto: K folds below a val
    # size, see training/folds.py)
    cv: CvOption = "auto"
    seed: int = 0
    address: str | None = None
    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)  # seconds to reach --address
    storage: str | None = None  # None: <out>/experiment (one machine only)
    optuna_storage: str | None = None
    # custom Ray resources each trial also asks for, e.g. {"gpu_node": 0.01} to keep trials on the
    # nodes that declare that resource (`ray start --resources '{"gpu_node": 1}'`)
    trial_resources: dict[str, float] = Field(default_factory=dict)
    keep_checkpoints: int = Field(1, ge=1)
    # a search on a local storage stops (resumably) when less than this is free (storage_guard.py)
    min_free_mb: float = Field(256.0, ge=0)
    max_failures: int = Field(MAX_TRIAL_FAILURES, ge=0)
    # A trial reuses a finished trial's worker process instead of starting (and importing torch
    # in) a new one: measured by `benchmark overhead`, see docs/benchmarks.md.
    reuse_actors: bool = True
    dashboard: bool = False
    resume: bool = False
    # MLflow tracking URI ("default": sqlite:///<out>/mlflow.db); None: not tracked (ecg_tune/tracking.py)
    mlflow: str | None = None

    @field_validator("trial_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name.lower() in {"cpu", "gpu", "memory"}:
                raise ValueError(f"{name}: use --cpus-per-trial / --gpus-per-trial for it")
            if not amount > 0:
                raise ValueError(f"{name}={amount:g}: an amount must be above 0")
        return value

    @field_validator("cv")
    @classmethod
    def _folds(cls, value: CvOption) -> CvOption:
        if value != "auto" and value < 1:
            raise ValueError(f"must be at least 1 (1: the split's val part, K >= 2: K folds), got {value}")
        return value


@dataclass
class Plan:
    """What a search will do, derived once from options, space and cluster (shown by --dry-run)."""

    metric: str
    mode: Direction
    num_samples: int | None  # None: no cap, trials keep starting until the time budget is spent
    max_epochs: int
    grace_period: int
    reduction_factor: float
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    searcher: str
    scheduler: str
    time_budget: float | None = None
    startup_trials: int = 10  # TPE's random start-up trials (start points count among them)
    fidelity: str = "epochs"  # ASHA's clock: "epochs" or "time" (seconds of training)
    grace_seconds: float = 60.0  # time fidelity: the first rung
    folds: int = 1  # cross-validation folds per trial (1: the split's val part)
    validation: str = ""  # how trials are validated, in words

    def describe(self) -> str:
        gpu = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ", no GPU"
        if self.scheduler != "asha":
            schedule = f"FIFO ({self.max_epochs} epochs each)"
        elif self.fidelity == "time":
            schedule = (f"ASHA on training time (grace {self.grace_seconds:g} s, reduction {self.reduction_factor:g}; "
                        f"at most {self.max_epochs} epochs a trial)")
        else:
            schedule = f"ASHA (max_t {self.max_epochs}, grace {self.grace_period}, reduction {self.reduction_factor:g})"
        best = "lowest" if self.mode == "min" else "highest"
        validation = f"; validation: {self.validation}" if self.validation else ""
        return (f"{self.limits()}; by {self.searcher}, {schedule}, ranked by {self.metric} ({best} wins); "
                f"each trial {self.cpus_per_trial:g} CPU{gpu}; up to {self.max_concurrent} at once{validation}")

    def limits(self) -> str:
        """Which limits end the search."""
        if self.time_budget and self.num_samples is None:
            return f"trials until the time budget of {self.time_budget:g} s is spent"
        if self.time_budget:
            return f"at most {self.num_samples} trials or {self.time_budget:g} s, whichever comes first"
        return f"{self.num_samples} trials (no time budget)"


def make_plan(options: SearchOptions, space: SearchSpace, facts: DataFacts, cluster_cpus: float,
              cluster_gpus: float, validation: Validation | None = None) -> Plan:
    """Resources and schedule from the options, the space's settings and the cluster's size;
    `validation` (training/folds.choose_validation) is described in the plan."""
    settings = space.search
    metric = options.metric or ranking_metric(facts.classes)
    if metric not in validation_metrics(facts.classes):
        choices = ", ".join(validation_metrics(facts.classes))
        raise ConfigError(f"--metric {metric}: not reported; choose one of {choices}")
    if options.gpus_per_trial is None:
        gpus = 0.25 if cluster_gpus > 0 else 0.0
    else:
        gpus = options.gpus_per_trial
        if gpus > 0 and cluster_gpus <= 0:
            # Ray would keep such trials pending forever on a cluster without GPUs.
            raise ConfigError(f"--gpus-per-trial {gpus:g}: the cluster has no GPU")
    cpus = options.cpus_per_trial
    if cpus > cluster_cpus:
        raise ConfigError(f"--cpus-per-trial {cpus:g}: the cluster has only {cluster_cpus:g} CPUs")
    fits = math.floor(cluster_cpus / cpus)
    if gpus > 0:
        fits = min(fits, math.floor(cluster_gpus / gpus + 1e-9))
    time_budget = options.time_budget or settings.time_budget
    num_samples: int | None
    if space.is_grid:
        num_samples = options.num_samples or len(grid(space, facts))
    elif time_budget:
        # A budget is a budget: the space's num_samples does not end a search early; only an
        # explicit --num-samples caps it.
        num_samples = options.num_samples
    else:
        num_samples = options.num_samples or settings.num_samples
    max_epochs = options.max_epochs or settings.max_epochs
    return Plan(
        metric=metric,
        mode=direction(metric),
        num_samples=num_samples,
        max_epochs=max_epochs,
        grace_period=min(options.grace_period or settings.grace_period, max_epochs),
        reduction_factor=options.reduction_factor or settings.reduction_factor,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        max_concurrent=max(1, min(options.max_concurrent or fits, fits, num_samples or fits)),
        searcher="grid" if space.is_grid else options.searcher,
        scheduler="fifo" if space.is_grid else options.scheduler,
        time_budget=time_budget,
        startup_trials=settings.startup_trials or _startup_trials(num_samples),
        fidelity=settings.fidelity,
        grace_seconds=float(settings.grace_seconds or _grace_seconds(time_budget)),
        folds=validation.k if validation else 1,
        validation=validation.description if validation else "",
    )


def _grace_seconds(time_budget: float | None) -> float:
    """The first rung of time-fidelity ASHA: a 24th of the budget (rungs at 1/24, 1/8, 3/8 of
    it with reduction 3), within 5-120 s; 60 s without a budget."""
    return 60.0 if not time_budget else min(120.0, max(5.0, round(time_budget / 24)))


# Under a time budget the number of trials is unknown: on long records a laptop's 4 minutes
# start about 5-10 (docs/benchmarks.md, `search`), so TPE must begin modelling after a few.
_STARTUP_UNDER_BUDGET = 5


def _startup_trials(num_samples: int | None) -> int:
    """TPE's random start-up count for a search of `num_samples` trials (None: budget-driven)."""
    if num_samples is None:
        return _STARTUP_UNDER_BUDGET
    return max(2, min(10, num_samples // 4))


def start_ray(options: SearchOptions) -> None:
    """Attach to `--address` within `--connect-timeout`, or start a local cluster on 127.0.0.1 (with
    the dashboard if asked): search/cluster.py."""
    # Checkpointing every epoch is the point (nothing finished is lost): Tune's warning that
    # frequent experiment snapshots may be a bottleneck is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connect(options.address, options.connect_timeout, options.dashboard)


def run_search(options: SearchOptions, space: SearchSpace, dataset: Dataset,
               storage: ExperimentStorage | None = None) -> tuple[Any, Plan]:
    """Run (or resume) the search; returns Tune's ResultGrid and the plan it ran with. `storage`:
    where the experiment is (default: from --storage and --out, see ecg_tune/storage.py)."""
    import ray
    from ray import tune

    from ecg_tune.search.interrupts import InterruptWatch, start_watching, storage_guard, was_interrupted
    from ecg_tune.search.progress import SearchProgress
    from ecg_tune.search.trainable import train_trial  # imports ray.tune

    out = options.out.resolve()
    facts = DataFacts.from_dataset(dataset)
    start_ray(options)
    storage = storage or ExperimentStorage.for_search(options.storage, out)
    check_storage_shared(storage, given=storage.run_name is not None)  # None: the --out default
    resources = ray.cluster_resources()
    validation = choose_validation(dataset, options.cv, options.seed)
    plan = make_plan(options, space, facts, resources.get("CPU", 1.0), resources.get("GPU", 0.0), validation)
    print(f"search: {plan.describe()}", flush=True)
    print(f"results: {out}", flush=True)

    trainable = tune.with_parameters(
        train_trial, data=dataset.tensors, folds=validation.folds, max_epochs=plan.max_epochs, seed=options.seed)
    trainable = tune.with_resources(
        trainable, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial, **options.trial_resources})

    print(f"experiment: {storage.describe()}", flush=True)
    where = {"storage_filesystem": storage.filesystem}
    if options.resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(storage.experiment_path, **where):
            raise ConfigError(f"--resume: no search to resume in {storage.describe()}")
        tuner = Tuner.restore(storage.experiment_path, trainable=trainable, resume_errored=True, **where)
        if options.mlflow:
            from ecg_tune.tracking import reopen_search

            reopen_search(RunFolder(out))  # the restored experiment's own TrialTracker logs the trials
    else:
        if storage.exists():
            raise ConfigError(f"{storage.describe()}: holds a search already; use --resume to continue it "
                              f"or another --out")
        # A grid space runs its expanded points as one grid_search over whole configs (a grid
        # over each key would ignore the space's conditions); the trainable unwraps them.
        points = grid(space, facts) if plan.searcher == "grid" else None
        param_space = {GRID_KEY: tune.grid_search(points)} if points is not None else None
        tracker = None
        if options.mlflow:
            from ecg_tune.tracking import search_params, start_search

            tracker = start_search(RunFolder(out), options.mlflow,
                                   search_params(plan, space.name, dataset.records.source, options.seed))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=plan.metric, mode=plan.mode,
                # -1: Tune keeps starting trials until time_budget_s ends the search.
                num_samples=1 if plan.searcher == "grid" else (plan.num_samples or -1),
                search_alg=_searcher(plan, options, space, facts, out),
                scheduler=_scheduler(plan),
                max_concurrent_trials=plan.max_concurrent,
                time_budget_s=plan.time_budget,
                reuse_actors=options.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage.storage_path,
                storage_filesystem=storage.filesystem,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=options.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                callbacks=[SearchProgress(plan.metric, plan.max_epochs,
                                          len(points) if points is not None else plan.num_samples),
                           InterruptWatch(), *filter(None, [storage_guard(storage), tracker])],
                verbose=0,  # SearchProgress prints the progress instead
            ),
        )
    started = time.perf_counter()
    start_watching(int(options.min_free_mb * 2**20))
    try:
        results = tuner.fit()
    except Exception as exc:
        _raise_if_full(storage, exc)
        raise
    if was_interrupted():
        # Ctrl-C, SIGUSR1 or the storage guard: Tune saved the experiment and returned early.
        raise SearchInterrupted(f"the search stopped before its end, its state saved ({len(results)} trials "
                                f"started); continue it with --resume --out {out}")
    print(f"search finished in {time.perf_counter() - started:.0f} s", flush=True)
    return results, plan


def _raise_if_full(storage: ExperimentStorage, error: BaseException) -> None:
    """A full disk under the experiment as a one-line error (Tune fails in many places when it is)."""
    import errno

    chain: BaseException | None = error
    seen, full = 0, False
    while chain is not None and seen < 20:
        full = full or getattr(chain, "errno", None) == errno.ENOSPC or "No space left on device" in str(chain)
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    free = storage.free_bytes()
    full = full or (free is not None and free < 2**20)
    if full:
        raise ConfigError(f"{storage.describe()}: no space left on the device; free space, then continue with "
                          f"--resume (a trial interrupted by it continues from its last checkpoint)") from None


def _searcher(plan: Plan, options: SearchOptions, space: SearchSpace, facts: DataFacts, out: Path) -> Any:
    if plan.searcher == "grid":
        return None  # Tune's default generator runs the param_space grid
    import optuna

    from ecg_tune.search.optuna_search import PruningAwareOptunaSearch

    sampler: optuna.samplers.BaseSampler
    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        # multivariate + group: TPE models parameters jointly and copes with conditional ones.
        sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True,
                                             n_startup_trials=plan.startup_trials)
    kwargs: dict[str, Any] = {}
    if options.optuna_storage:
        kwargs = {"storage": optuna.storages.RDBStorage(options.optuna_storage),
                  "study_name": f"ecg-tune-{out.name}"}
    # ASHA-stopped trials reach Optuna as PRUNED, not COMPLETE (see search/optuna_search.py).
    # Start points are enqueued in the study: the define-by-run function's suggest_* calls return
    # their values, and the keys they leave out are sampled (tests/test_search.py checks they run
    # as given).
    return PruningAwareOptunaSearch(space=define_by_run(space, facts), metric=plan.metric, mode=plan.mode,
                                    sampler=sampler, max_epochs=plan.max_epochs,
                                    pruned_as_complete=options.pruned_as_complete,
                                    points_to_evaluate=[dict(p) for p in space.start] or None, **kwargs)


def _scheduler(plan: Plan) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "fifo":
        return FIFOScheduler()
    if plan.fidelity == "time":
        # max_t only bounds the rungs: max_epochs (the trainable's) or the budget ends a trial.
        return ASHAScheduler(time_attr="time_total_s", max_t=int(max(plan.time_budget or 0.0, 24 * 3600.0)),
                             grace_period=max(1, round(plan.grace_seconds)), reduction_factor=plan.reduction_factor)
    return ASHAScheduler(time_attr="training_iteration", max_t=plan.max_epochs,
                         grace_period=plan.grace_period, reduction_factor=plan.reduction_factor)
