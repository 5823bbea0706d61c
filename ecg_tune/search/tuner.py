"""The search: searcher, scheduler, resources, storage and resume around the trainable.

`plan_search` sizes the plan (search/plan.py) to the running cluster; `run_search` puts the
dataset in the object store once and runs Tune with the Optuna searcher (TPE or random;
search/optuna_search.py) or the grid of a grid space, and ASHA (or FIFO), ranking by the metric
in its own direction (training/metrics.py), with the callbacks the caller passes in (tracking is
the pipeline's: this module knows no integration). The pipeline (ecg_tune/pipeline.py) writes
the results. The plan's cost limits reach the searcher (configurations above the parameter and
MAC limits are never trained) and every trial (which reports `feasible` against all of them); its
objectives make the Optuna study multi-objective, ASHA keeping to the first (search/plan.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ecg_tune.data import Dataset
from ecg_tune.errors import ConfigError, SearchInterrupted
from ecg_tune.search.adapt import AdaptedSpace
from ecg_tune.search.cluster import check_storage_shared, connect
from ecg_tune.search.plan import Plan, SearchOptions, make_plan
from ecg_tune.search.samplers import CostCheck, define_by_run
from ecg_tune.search.trainable import GRID_KEY
from ecg_tune.storage import EXPERIMENT, ExperimentStorage
from ecg_tune.training.folds import Validation, choose_validation
from ecg_tune.training.metrics import direction
from ecg_tune.training.reported import TRAINING_ITERATION

if TYPE_CHECKING:  # imports optuna and Ray's Searcher, which the tuner imports only when it runs
    from ecg_tune.search.optuna_search import PruningAwareOptunaSearch


def start_ray(options: SearchOptions) -> None:
    """Attach to `--address` within `--connect-timeout`, or start a local cluster on 127.0.0.1 (with
    the dashboard if asked): search/cluster.py."""
    # Checkpointing every epoch is the point (nothing finished is lost): Tune's warning that
    # frequent experiment snapshots may be a bottleneck is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connect(options.address, options.connect_timeout, options.dashboard)


def prepare_search(options: SearchOptions, space: AdaptedSpace, dataset: Dataset,
                   storage: ExperimentStorage) -> tuple[Plan, Validation]:
    """Connect to Ray, check the experiment's storage (seen by every node; a new search needs an
    empty one), and size the plan to the cluster; returns the plan and how trials are validated.
    Nothing is written before these checks pass."""
    import ray

    start_ray(options)
    check_storage_shared(storage, given=storage.run_name is not None)  # None: the --out default
    if not options.resume and storage.exists():
        raise ConfigError(f"{storage.describe()}: holds a search already; use --resume to continue it "
                          f"or another --out")
    resources = ray.cluster_resources()
    validation = choose_validation(dataset, options.cv, options.seed)
    plan = make_plan(options, space, resources.get("CPU", 1.0), resources.get("GPU", 0.0), validation)
    return plan, validation


def run_search(options: SearchOptions, space: AdaptedSpace, dataset: Dataset, plan: Plan, validation: Validation,
               storage: ExperimentStorage, callbacks: Sequence[Any] = ()) -> Any:
    """Run (or resume) the search `prepare_search` planned; returns Tune's ResultGrid. `storage`:
    where the experiment is (ecg_tune/storage.py); `callbacks`: Tune callbacks the caller adds (e.g.
    tracking). A resumed search runs with the callbacks it started with: Tune restores them."""
    from ray import tune

    from ecg_tune.search.checkpoints import KeepNewestOfEnded
    from ecg_tune.search.interrupts import InterruptWatch, start_watching, storage_guard, was_interrupted
    from ecg_tune.search.progress import SearchProgress, one_line_trial_errors
    from ecg_tune.search.trainable import train_trial  # imports ray.tune

    out = options.out.resolve()
    print(f"search: {plan.describe()}", flush=True)
    print(f"results: {out}", flush=True)

    trainable = tune.with_parameters(
        train_trial, data=dataset.tensors, folds=validation.folds, max_epochs=plan.max_epochs, seed=options.seed,
        metric=plan.metric, limits=plan.limits)
    trainable = tune.with_resources(
        trainable, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial, **options.trial_resources})

    print(f"experiment: {storage.describe()}", flush=True)
    where = {"storage_filesystem": storage.filesystem}
    if options.resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(storage.experiment_path, **where):
            raise ConfigError(f"--resume: no search to resume in {storage.describe()}")
        tuner = Tuner.restore(storage.experiment_path, trainable=trainable, resume_errored=True, **where)
    else:
        # A grid space runs its expanded points as one grid_search over whole configs (a grid
        # over each key would ignore the space's conditions); the trainable unwraps them.
        points = plan.points if plan.searcher == "grid" else None
        param_space = {GRID_KEY: tune.grid_search(points)} if points is not None else None
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=plan.metric, mode=plan.mode,
                # -1: Tune keeps starting trials until time_budget_s ends the search.
                num_samples=1 if plan.searcher == "grid" else (plan.num_samples or -1),
                search_alg=make_searcher(plan, options, space),
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
                           InterruptWatch(), KeepNewestOfEnded(), *filter(None, [storage_guard(storage)]),
                           *callbacks],
                verbose=0,  # SearchProgress prints the progress instead
            ),
        )
    # Tune's console output is its legacy reporter at verbose 0 (nothing): the "new output" engine
    # prints its experiment box even at verbose 0, with num_samples -1 shown as 9223372036854775807.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = time.perf_counter()
    start_watching(int(options.min_free_mb * 2**20))
    try:
        with one_line_trial_errors():
            results = tuner.fit()
    except Exception as exc:
        _raise_if_full(storage, exc)
        raise
    if was_interrupted():
        # Ctrl-C, SIGUSR1 or the storage guard: Tune saved the experiment and returned early.
        raise SearchInterrupted(f"the search stopped before its end, its state saved ({len(results)} trials "
                                f"started); continue it with --resume --out {out}")
    print(f"search finished in {time.perf_counter() - started:.0f} s", flush=True)
    return results


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


def make_searcher(plan: Plan, options: SearchOptions, space: AdaptedSpace,
                  build: Callable[..., PruningAwareOptunaSearch] | None = None) -> Any:
    """The searcher a search runs (None for a grid: Tune's generator runs the grid). `build`: the
    searcher class, or a factory taking its arguments (`benchmark overhead` passes one that times
    the searcher's calls)."""
    if plan.searcher == "grid":
        return None
    import optuna

    from ecg_tune.search.optuna_search import PruningAwareOptunaSearch, tpe_sampler

    sampler: optuna.samplers.BaseSampler
    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        sampler = tpe_sampler(options.seed, plan.startup_trials)
    kwargs: dict[str, Any] = {}
    if options.optuna_storage:
        kwargs = {"storage": optuna.storages.RDBStorage(options.optuna_storage),
                  "study_name": f"ecg-tune-{options.out.resolve().name}"}
    if plan.objectives:  # a multi-objective study (search/plan.py)
        kwargs.update(objectives=list(plan.objectives), modes=plan.directions)
    if plan.limits:  # above --max-params / --max-macs: never trained; every limit: told to Optuna as constraints
        kwargs["cost_check"] = CostCheck(space, plan.limits)
    # ASHA-stopped trials reach Optuna as PRUNED, not COMPLETE (see search/optuna_search.py).
    # Start points are enqueued in the study: the define-by-run function's suggest_* calls return
    # their values, and the keys they leave out are sampled (tests/test_search.py checks they run
    # as given).
    return (build or PruningAwareOptunaSearch)(
        space=define_by_run(space), metric=plan.metric, mode=plan.mode, sampler=sampler,
        max_epochs=plan.max_epochs, pruned_as_complete=options.pruned_as_complete,
        points_to_evaluate=[dict(p) for p in space.start] or None, **kwargs)


def _scheduler(plan: Plan) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from ecg_tune.search.rungs import RungASHA

    if plan.scheduler == "fifo":
        return FIFOScheduler()
    # The scheduler's own metric: its rungs may rank by another key than the search (search/rungs.py).
    metric = plan.rung_metric or plan.metric
    if plan.fidelity == "time":
        # max_t only bounds the rungs: max_epochs (the trainable's) or the budget ends a trial.
        return RungASHA(time_attr="time_total_s", max_t=int(max(plan.time_budget or 0.0, 24 * 3600.0)),
                        grace_period=max(1, round(plan.grace_seconds)), reduction_factor=plan.reduction_factor,
                        metric=metric, mode=direction(metric))
    return RungASHA(time_attr=TRAINING_ITERATION, max_t=plan.max_epochs,
                    grace_period=plan.grace_period, reduction_factor=plan.reduction_factor,
                    metric=metric, mode=direction(metric))
