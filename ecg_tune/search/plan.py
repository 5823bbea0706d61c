"""What a search will do, decided before Ray runs anything: the options and the plan.

`SearchOptions` is the validated set of choices a search is run with (the command line parses
into it; its bounds are declared here and, for the settings a space also has, in
search/space.py). `make_plan` combines them with the adapted space's settings and the cluster's
size into a `Plan`: the ranking metric and its direction, the budget, the searcher, ASHA's
schedule (the rules for its grace period and TPE's start-up trials live here only), resources
per trial and, for a grid space, its configs. Pure: no Ray; `--dry-run` and the tuner both use it.

Cost limits (`--max-params`, `--max-macs`, `--max-latency-ms`, over the space's `search:` ones):
the plan holds them (`CostLimits`) and, when parameters or MACs are limited, how much of the space
meets them (search/describe.feasibility: 200 random draws, or every grid point, estimated before
training). A space with no feasible draw fails here, in one line naming the limit; a grid keeps
its feasible points only.

Objectives (`--objectives val_cinc_f1,latency_ms`, or the space's): the first must be a
validation metric, and is the search's metric (what the best trial, the progress and ASHA rank
by); the others are validation metrics or device costs (training/reported.py's COST_KEYS, each
minimised). With more than one, the Optuna searcher runs a multi-objective study and the
scheduler stays ASHA on the first objective (or FIFO when asked): see `MULTI_OBJECTIVE_SCHEDULE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import AdaptedSpace
from ecg_tune.search.cluster import DEFAULT_CONNECT_TIMEOUT
from ecg_tune.search.describe import Feasibility, feasibility
from ecg_tune.search.samplers import CostCheck, grid
from ecg_tune.search.space import (
    CostCount,
    GracePeriod,
    LatencyLimit,
    MaxEpochs,
    NumSamples,
    ReductionFactor,
    TimeBudget,
    objective_names,
)
from ecg_tune.training.costs import CostLimits
from ecg_tune.training.folds import CvOption, Validation
from ecg_tune.training.metrics import Direction, direction, ranking_metric, validation_metrics
from ecg_tune.training.reported import COST_KEYS

# Why ASHA keeps ranking rungs by the first objective alone in a multi-objective search (the plan
# says it): a trial's costs are fixed by its config and known from its first epoch, so a rung
# learns nothing new about them, while accuracy is what more epochs change; Optuna cannot prune a
# multi-objective study and Tune's ASHA takes one metric. The price: a cheap, less accurate
# configuration may be stopped at a low rung (it still reports its costs, and Optuna models it
# as pruned); --scheduler fifo trains every trial out, for a fuller front at more cost per trial.
MULTI_OBJECTIVE_SCHEDULE = ("ASHA's rungs rank by the first objective only: costs are fixed from a trial's first "
                            "epoch, so a rung learns nothing new about them (--scheduler fifo trains every trial "
                            "out for a fuller front)")

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
    # Several objectives (the first: the metric), e.g. "val_cinc_f1,latency_ms"; None: the space's.
    objectives: tuple[str, ...] | None = None
    # Cost limits (training/costs.py); None: the space's search.max_params etc., else none.
    max_params: CostCount | None = None
    max_macs: CostCount | None = None
    max_latency_ms: LatencyLimit | None = None
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
    # of a running trial; an ended trial keeps its newest (search/checkpoints.py: why 3)
    keep_checkpoints: int = Field(3, ge=1)
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

    @field_validator("objectives", mode="before")
    @classmethod
    def _split_objectives(cls, value: object) -> object:
        return objective_names(value)

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
    # A multi-objective search's objectives, the first being `metric`; (): a single-objective search.
    objectives: tuple[str, ...] = ()
    limits: CostLimits = field(default_factory=CostLimits)
    # How much of the space meets the limits checkable before training (None: none set).
    feasibility: Feasibility | None = None

    @property
    def directions(self) -> list[Direction]:
        """Each objective's direction (the metric's alone for a single-objective search)."""
        return [direction(name) for name in self.objectives or (self.metric,)]

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
        ranked = f"ranked by {self.metric} ({best} wins)"
        if self.objectives:
            named = ", ".join(f"{name} ({way})" for name, way in zip(self.objectives, self.directions, strict=True))
            ranked = (f"objectives {named}: a multi-objective study, the best trial {ranked}"
                      + (f"; {MULTI_OBJECTIVE_SCHEDULE}" if self.scheduler == "asha" else ""))
        return (f"{self.budget()}; by {self.searcher}, {schedule}, {ranked}; "
                f"each trial {self.cpus_per_trial:g} CPU{gpu}; up to {self.max_concurrent} at once{validation}"
                f"{self.describe_limits()}")

    def describe_limits(self) -> str:
        """The cost limits and how they are applied ("" without any)."""
        if not self.limits:
            return ""
        parts = [f"; limits: {self.limits.describe()}"]
        if self.feasibility is not None:
            parts.append(f"{self.feasibility.describe()}; the others are not trained")
        if self.limits.max_latency_ms is not None:
            parts.append("latency is measured by each trial: one above the limit is marked infeasible and cannot "
                         "be the best")
        return "; ".join(parts)

    def budget(self) -> str:
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
    objectives = check_objectives(options.objectives or settings.objectives or (), facts.classes, options.metric)
    metric = objectives[0] if objectives else options.metric or ranking_metric(facts.classes)
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
    def given(name: str) -> Any:  # the command line's limit over the space's
        value = getattr(options, name)
        return value if value is not None else getattr(settings, name)

    limits = CostLimits(max_params=given("max_params"), max_macs=given("max_macs"),
                        max_latency_ms=given("max_latency_ms"))
    points = grid(space) if space.is_grid else None
    feasible = None
    if limits.before_training:
        check = CostCheck(space, limits)
        feasible = feasibility(space, limits, configs=points, seed=options.seed, check=check)
        if not feasible.feasible:
            raise ConfigError(feasible.none_feasible())
        if points is not None:  # a grid runs its feasible points only (the check keeps their estimates)
            points = [point for point in points if not check.broken(point)]
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
        objectives=objectives if len(objectives) > 1 else (),
        limits=limits,
        feasibility=feasible,
    )


def check_objectives(names: tuple[str, ...] | list[str], classes: list[str], metric: str | None) -> tuple[str, ...]:
    """The objectives of a search, checked (ConfigError naming the key): each a validation metric
    of these classes or a device cost, none twice, the first a validation metric (the search's
    metric: `--metric`, when also given, must be it)."""
    metrics = validation_metrics(classes)
    for name in names:
        if name not in metrics and name not in COST_KEYS:
            raise ConfigError(f"--objectives {name}: not a reported key with a direction; choose validation metrics "
                              f"({', '.join(metrics)}) or costs ({', '.join(COST_KEYS)})")
    if names and names[0] not in metrics:
        raise ConfigError(f"--objectives {names[0]}: the first objective must be a validation metric (it ranks the "
                          f"best trial and ASHA's rungs), one of {', '.join(metrics)}")
    twice = sorted({name for name in names if list(names).count(name) > 1})
    if twice:
        raise ConfigError(f"--objectives {twice[0]}: named twice")
    if names and metric is not None and metric != names[0]:
        raise ConfigError(f"--metric {metric}: a multi-objective search is ranked by its first objective "
                          f"({names[0]}); drop --metric or put it first in --objectives")
    return tuple(names)


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
