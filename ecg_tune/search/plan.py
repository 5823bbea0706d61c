"""What a search will do, decided before Ray runs anything: the options and the plan.

`SearchOptions` is the validated set of choices a search is run with (the command line parses
into it; its bounds are declared here and, for the settings a space also has, in
search/space.py). `make_plan` combines them with the adapted space's settings and the cluster's
size into a `Plan`: the ranking metric and its direction, the budget, the searcher, ASHA's
schedule (the rules for its grace period and TPE's start-up trials live here only), resources
per trial and, for a grid space, its configs. Pure: no Ray; `--dry-run` and the tuner both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import AdaptedSpace
from ecg_tune.search.cluster import DEFAULT_CONNECT_TIMEOUT
from ecg_tune.search.samplers import grid
from ecg_tune.search.space import GracePeriod, MaxEpochs, NumSamples, ReductionFactor, TimeBudget
from ecg_tune.training.folds import CvOption, Validation
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
    rung_metric: str | None = None  # None: the space's search.rung_metric, else the metric
    # K-fold cross-validation ranks trials (1: the split's val part; auto: K folds below a val
    # size, see training/folds.py)
    cv: CvOption = "auto"
    # At most this many distinct trials in the team chosen after the search from their saved
    # validation predictions (search/ensemble.py); 1: the single best trial, no ensemble.json.
    ensemble: int = Field(1, ge=1)
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
    rung_metric: str = ""  # what ASHA's rungs rank by ("": the metric)
    folds: int = 1  # cross-validation folds per trial (1: the split's val part)
    validation: str = ""  # how trials are validated, in words
    points: list[dict[str, Any]] | None = None  # a grid space's configs, each run once (samplers.grid)

    def describe(self) -> str:
        gpu = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ", no GPU"
        if self.scheduler != "asha":
            schedule = f"FIFO ({self.max_epochs} epochs each)"
        elif self.fidelity == "time":
            schedule = (f"ASHA on training time (grace {self.grace_seconds:g} s, reduction {self.reduction_factor:g}; "
                        f"at most {self.max_epochs} epochs a trial)")
        else:
            schedule = f"ASHA (max_t {self.max_epochs}, grace {self.grace_period}, reduction {self.reduction_factor:g})"
        if self.scheduler == "asha" and self.rung_metric and self.rung_metric != self.metric:
            schedule += f" with rungs ranked by {self.rung_metric}"
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


def make_plan(options: SearchOptions, space: AdaptedSpace, cluster_cpus: float, cluster_gpus: float,
              validation: Validation | None = None) -> Plan:
    """Resources and schedule from the options, the adapted space's settings and the cluster's
    size; `validation` (training/folds.choose_validation) is described in the plan."""
    settings, facts = space.search, space.facts
    metric = options.metric or ranking_metric(facts.classes)
    if metric not in validation_metrics(facts.classes):
        choices = ", ".join(validation_metrics(facts.classes))
        raise ConfigError(f"--metric {metric}: not reported; choose one of {choices}")
    rung_metric = options.rung_metric or settings.rung_metric or metric
    if rung_metric not in validation_metrics(facts.classes):
        choices = ", ".join(validation_metrics(facts.classes))
        raise ConfigError(f"rung_metric {rung_metric}: not reported; choose one of {choices}")
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
    points = grid(space) if space.is_grid else None
    if points is not None:
        num_samples = options.num_samples or len(points)
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
        rung_metric=rung_metric,
        points=points,
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
