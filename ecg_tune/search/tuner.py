"""The search: searcher, scheduler, resources, storage and resume around the trainable.

`SearchOptions` is the validated set of command-line choices; `run_search` starts (or attaches
to) Ray, puts the dataset in the object store once, runs Tune with Optuna TPE (or random, or the
grid of a grid space) and ASHA (or FIFO), and writes the results (search/export.py).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ecg_tune.data import Dataset
from ecg_tune.errors import ConfigError
from ecg_tune.search.space import DataFacts, SearchSpace, define_by_run, grid
from ecg_tune.search.trainable import GRID_KEY
from ecg_tune.training.metrics import ranking_metric

# A trial that raises is retried from its checkpoint this many times before it counts as errored.
MAX_TRIAL_FAILURES = 2


@dataclass
class SearchOptions:
    out: Path
    num_samples: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    reduction_factor: int | None = None
    time_budget: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 0.25 when the cluster has GPUs, else 0
    max_concurrent: int | None = None
    searcher: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: str | None = None
    seed: int = 0
    address: str | None = None
    storage: str | None = None
    optuna_storage: str | None = None
    keep_checkpoints: int = 1
    max_failures: int = MAX_TRIAL_FAILURES
    # A trial reuses a finished trial's worker process instead of starting (and importing torch
    # in) a new one: measured by `benchmark overhead`, see docs/benchmarks.md.
    reuse_actors: bool = True
    dashboard: bool = False
    resume: bool = False
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        for key in ("num_samples", "max_epochs", "grace_period", "max_concurrent", "keep_checkpoints"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
        if self.reduction_factor is not None and self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be at least 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must not be negative, got {self.gpus_per_trial}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be positive, got {self.time_budget}")


@dataclass
class Plan:
    """What a search will do, derived once from options, space and cluster (shown by --dry-run)."""

    metric: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    searcher: str
    scheduler: str
    time_budget: float | None = None

    def describe(self) -> str:
        gpu = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ", no GPU"
        schedule = (f"ASHA (max_t {self.max_epochs}, grace {self.grace_period}, reduction {self.reduction_factor})"
                    if self.scheduler == "asha" else f"FIFO ({self.max_epochs} epochs each)")
        budget = f"; time budget {self.time_budget:g} s" if self.time_budget else ""
        return (f"{self.num_samples} trials by {self.searcher}, {schedule}, ranked by {self.metric}; "
                f"each trial {self.cpus_per_trial:g} CPU{gpu}; up to {self.max_concurrent} at once{budget}")


def data_facts(dataset: Dataset) -> DataFacts:
    lengths = dataset.records.lengths[dataset.index("train")]
    all_lengths = dataset.records.lengths
    return DataFacts(n_records=len(dataset.records), min_length=int(all_lengths.min()),
                     median_length=int(np.median(lengths)), max_length=int(all_lengths.max()),
                     classes=list(dataset.records.classes))


def make_plan(options: SearchOptions, space: SearchSpace, facts: DataFacts, cluster_cpus: float,
              cluster_gpus: float) -> Plan:
    """Resources and schedule from the options, the space's settings and the cluster's size."""
    settings = space.settings
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
    grid_size = len(grid(space, facts)) if settings.searcher == "grid" else None
    num_samples = options.num_samples or grid_size or settings.num_samples
    metric = options.metric or ranking_metric(facts.classes)
    max_epochs = options.max_epochs or settings.max_epochs
    return Plan(
        metric=metric,
        num_samples=num_samples,
        max_epochs=max_epochs,
        grace_period=min(options.grace_period or settings.grace_period, max_epochs),
        reduction_factor=options.reduction_factor or settings.reduction_factor,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        max_concurrent=max(1, min(options.max_concurrent or fits, fits, num_samples)),
        searcher="grid" if settings.searcher == "grid" else options.searcher,
        scheduler="fifo" if settings.searcher == "grid" else options.scheduler,
        time_budget=options.time_budget or settings.time_budget,
    )


def start_ray(options: SearchOptions) -> None:
    """Attach to `--address`, or start a local cluster (with the dashboard on 127.0.0.1 if asked)."""
    import ray

    # Checkpointing every epoch is the point (nothing finished is lost): Tune's warning that
    # frequent experiment snapshots may be a bottleneck is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    # Trial stdout (checkpoint notices) would drown the progress lines; errors are reported by
    # SearchProgress and kept in each trial's error.txt.
    kwargs: dict = {"include_dashboard": options.dashboard, "log_to_driver": False}
    if options.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    context = ray.init(address=options.address, **kwargs)
    if options.dashboard and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url} (token: ~/.ray/auth_token)", flush=True)


def run_search(options: SearchOptions, space: SearchSpace, dataset: Dataset):
    """Run (or resume) the search; returns Tune's ResultGrid and the plan it ran with."""
    import ray
    from ray import tune

    from ecg_tune.search.progress import SearchProgress
    from ecg_tune.search.trainable import train_trial  # imports ray.tune

    options.check()
    out = options.out.resolve()
    facts = data_facts(dataset)
    start_ray(options)
    resources = ray.cluster_resources()
    plan = make_plan(options, space, facts, resources.get("CPU", 1.0), resources.get("GPU", 0.0))
    print(f"search: {plan.describe()}", flush=True)
    print(f"results: {out}", flush=True)

    trainable = tune.with_parameters(
        train_trial, data=dataset.tensors, train_index=dataset.index("train"),
        val_index=dataset.index("val"), max_epochs=plan.max_epochs, seed=options.seed)
    trainable = tune.with_resources(trainable, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})

    storage = options.storage or str(out)
    if "://" not in storage:
        storage = str(Path(storage).resolve())  # Ray refuses relative storage paths
    experiment = f"{storage.rstrip('/')}/experiment"
    if options.resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(experiment):
            raise ConfigError(f"--resume: no search to resume in {experiment}")
        tuner = Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        if Path(experiment).exists() and "://" not in experiment:
            raise ConfigError(f"{out}: holds a search already; use --resume to continue it or another --out")
        # A grid space runs its expanded points as one grid_search over whole configs (a grid
        # over each key would ignore the space's conditions); the trainable unwraps them.
        param_space = {GRID_KEY: tune.grid_search(grid(space, facts))} if plan.searcher == "grid" else None
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=plan.metric, mode="max",
                num_samples=1 if plan.searcher == "grid" else plan.num_samples,
                search_alg=_searcher(plan, options, space, facts, out),
                scheduler=_scheduler(plan),
                max_concurrent_trials=plan.max_concurrent,
                time_budget_s=plan.time_budget,
                reuse_actors=options.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name="experiment",
                storage_path=storage,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=options.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                callbacks=[SearchProgress(plan.metric, plan.max_epochs, _trial_count(plan, space, facts))],
                verbose=0,  # SearchProgress prints the progress instead
            ),
        )
    started = time.perf_counter()
    results = tuner.fit()
    print(f"search finished in {time.perf_counter() - started:.0f} s", flush=True)
    return results, plan


def _trial_count(plan: Plan, space: SearchSpace, facts: DataFacts) -> int:
    return len(grid(space, facts)) if plan.searcher == "grid" else plan.num_samples


def _searcher(plan: Plan, options: SearchOptions, space: SearchSpace, facts: DataFacts, out: Path):
    if plan.searcher == "grid":
        return None  # Tune's default generator runs the param_space grid
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        # multivariate + group: TPE models parameters jointly and copes with conditional ones.
        sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True)
    kwargs = {}
    if options.optuna_storage:
        kwargs = {"storage": optuna.storages.RDBStorage(options.optuna_storage),
                  "study_name": f"ecg-tune-{out.name}"}
    return OptunaSearch(space=define_by_run(space, facts), metric=plan.metric, mode="max",
                        sampler=sampler, **kwargs)


def _scheduler(plan: Plan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=plan.max_epochs,
                         grace_period=plan.grace_period, reduction_factor=plan.reduction_factor)
