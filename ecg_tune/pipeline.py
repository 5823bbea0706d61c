"""The pipeline behind every command: data -> split -> search -> export -> refit -> report.

Each entry point parses its arguments into typed options and calls one function here:

* `run_pipeline(PipelineOptions)`: the `search` command and the search benchmarks; the data, the
  split (saved, or the run's own on --resume), the search, the exported results and, unless told
  not to, the refit with its test report and model bundle; a `PipelineResult` says what came out.
* `run_refit(run, RefitOptions)` (ecg_tune/refit.py): the refit stage alone, for a finished run.
* `run_train(TrainOptions)`: one configuration on the same data and split stages, without Ray;
  `train_options` reads a search's best_config.json so that its trial is repeated exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecg_tune.config import TrainConfig, load_config, make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.data.sources import LabelColumn
from ecg_tune.data.split import split_digest
from ecg_tune.errors import ConfigError, SearchInterrupted
from ecg_tune.refit import RefitOptions, RefitResult, run_refit
from ecg_tune.runs import BestConfig, RunFolder, is_best_config, read_best_config
from ecg_tune.search.adapt import AdaptedSpace, DataFacts, adapt
from ecg_tune.search.plan import Plan, SearchOptions, make_plan
from ecg_tune.search.space import SearchSpace
from ecg_tune.search.space_file import load_space
from ecg_tune.storage import ExperimentStorage

__all__ = ["DataOptions", "PipelineOptions", "PipelineResult", "RefitOptions", "TrainOptions",
           "run_pipeline", "run_refit", "run_train", "train_options"]

Log = Callable[[str], None]


def _print(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class DataOptions:
    """Where the records come from and how they are split."""

    source: str = "synthetic"
    label_column: LabelColumn | None = None
    split_file: Path | None = None  # a split.csv to use instead of a new split
    seed: int = 0
    split_digest: str | None = None  # what split_file must hold (a search's split, as recorded)

    def load(self) -> Dataset:
        return prepare(self.source, label_column=self.label_column, split_file=self.split_file, seed=self.seed,
                       split_digest=self.split_digest)


@dataclass(frozen=True)
class PipelineOptions:
    """A search from data to report. `refit=None` stops after the exported results."""

    search: SearchOptions
    space: str | Path | SearchSpace = "full"
    data: DataOptions = field(default_factory=DataOptions)
    refit: RefitOptions | None = field(default_factory=RefitOptions)
    dry_run: bool = False  # validate data and space, show the plan, train nothing


@dataclass
class PipelineResult:
    run: RunFolder
    space: AdaptedSpace
    plan: Plan
    best: BestConfig | None = None  # None on a dry run
    refit: RefitResult | None = None


def run_pipeline(options: PipelineOptions, dataset: Dataset | None = None, log: Log = _print) -> PipelineResult:
    """Run the search pipeline (see the module docstring). `dataset`: records already loaded and
    split (the benchmarks' subsets); otherwise `options.data` is loaded."""
    # A bad space file fails before any data is read.
    space = options.space if isinstance(options.space, SearchSpace) else load_space(options.space)
    search = options.search
    run = RunFolder(search.out.resolve())
    if search.resume and not run.path.is_dir():
        raise ConfigError(f"--resume: {run.path} does not exist; give the --out folder of the search to continue")
    if search.mlflow and not options.dry_run:
        from ecg_tune.tracking import check_available

        check_available()  # a missing MLflow fails before the data is read
    resumed_split = search.resume and run.split_path.is_file()
    if search.address and not options.dry_run:
        from ecg_tune.search.tuner import start_ray

        start_ray(search)  # an address where no cluster answers fails now, not after the data is read
    if dataset is None:
        data = options.data
        if resumed_split:
            data = DataOptions(data.source, data.label_column, run.split_path, data.seed)
        dataset = data.load()
    adapted = adapt(space, DataFacts.from_dataset(dataset))  # the one adaptation of this search
    log(f"data: {dataset.summary()}")
    if options.dry_run:
        from ecg_tune.search.describe import describe
        from ecg_tune.training.folds import choose_validation

        log(describe(adapted))
        cpus, gpus = _local_resources()
        plan = make_plan(search, adapted, cpus, gpus, choose_validation(dataset, search.cv, search.seed))
        where = f"the cluster at {search.address}" if search.address else "this machine"
        log(f"plan on {where} ({cpus:g} CPUs, {gpus:g} GPUs): {plan.describe()}")
        log(f"results would go to {run.path}")
        return PipelineResult(run=run, space=adapted, plan=plan)

    with run.lock():  # a second search on the same --out is refused before it writes anything
        return _search_and_refit(options, run, adapted, dataset, resumed_split, log)


def _space_record(space: AdaptedSpace, plan: Plan) -> dict[str, Any]:
    """space.json's content, with the objectives and cost limits the search ran under (the command
    line's over the space file's), so that a report rebuilt later draws the same front."""
    record = space.to_record()
    limits = plan.limits
    record["search"].update({"objectives": list(plan.objectives) or record["search"].get("objectives"),
                             "max_params": limits.max_params, "max_macs": limits.max_macs,
                             "max_latency_ms": limits.max_latency_ms})
    return record


def _search_and_refit(options: PipelineOptions, run: RunFolder, space: AdaptedSpace, dataset: Dataset,
                      resumed_split: bool, log: Log) -> PipelineResult:
    from ecg_tune.search.export import write_results
    from ecg_tune.search.tuner import prepare_search, run_search
    from ecg_tune.tracking import SearchTracking, search_params  # MLflow itself only for a tracked run

    search = options.search
    storage = _storage(search, run)
    plan, validation = prepare_search(search, space, dataset, storage)
    if not resumed_split:
        run.write_split(dataset)
    run.write_storage(storage)
    run.write_space(_space_record(space, plan))
    tracking = SearchTracking.open(run, search.mlflow, resume=search.resume,
                                   params=search_params(plan, space.name, dataset.records.source, search.seed))
    try:
        results = run_search(search, space, dataset, plan, validation, storage, callbacks=tracking.callbacks)
    except SearchInterrupted:
        tracking.end("KILLED")  # --resume marks it running again
        raise
    best = write_results(results, run, plan.metric, plan.max_epochs, search.seed, dataset.records.source,
                         threads=max(1, int(plan.cpus_per_trial)), cv=plan.folds,
                         split_digest=split_digest(dataset.records, dataset.split))
    spread = f" (mean of {best.cv} folds, std {best.spread:.4f})" if best.spread is not None else ""
    log(f"best {plan.metric} {best.score:.4f}{spread} at epoch {best.epoch} (trial {best.trial_id}): "
        f"{_json(best.config)}")
    if search.ensemble > 1:
        from ecg_tune.search.ensemble import choose_for_run, describe

        team = choose_for_run(run, dataset.records, dataset.split, plan.metric, search.ensemble, search.seed)
        log(describe(team))
    tracking.search_end(best)
    from ecg_tune.reporting.pareto import describe as describe_front
    from ecg_tune.reporting.pareto import run_front

    # Every search, one objective or several. The plan's objectives once searches have them
    # (--objectives); else space.json's, else the metric, latency and parameters.
    front = run_front(run, getattr(plan, "objectives", None))
    run.write_pareto(front.csv_rows())
    log(describe_front(front))
    log(f"results in {run.path}: best_config.json, trials.csv, trials.parquet, pareto.csv, split.csv, space.json, "
        f"predictions/ (each trial's validation probabilities){', ensemble.json' if search.ensemble > 1 else ''}; "
        f"Tune's experiment: {storage.describe()}")
    from ecg_tune.reporting.page import write_html_report  # plotly: only once a search has results

    log(write_html_report(run).summary())
    refit = None
    if options.refit is not None:
        gpus = options.refit.gpus if options.refit.gpus is not None else plan.gpus_per_trial
        refit = run_refit(run, options.refit.model_copy(update={"gpus": gpus}))  # ends the MLflow run
    else:
        tracking.end()
    return PipelineResult(run=run, space=space, plan=plan, best=best, refit=refit)


def _storage(search: SearchOptions, run: RunFolder) -> ExperimentStorage:
    """--storage; on --resume without it, the storage the search recorded; else <out>/experiment."""
    if search.storage is None and search.resume:
        return run.storage()
    return ExperimentStorage.for_search(search.storage, run.path)


def _local_resources() -> tuple[float, float]:
    import torch

    return float(os.cpu_count() or 1), float(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _json(values: dict[str, Any]) -> str:
    import json

    return json.dumps(values, default=str)


# ----------------------------------------------------------------------------------------------
# One configuration, without Ray


@dataclass(frozen=True)
class TrainOptions:
    config: TrainConfig
    data: DataOptions = field(default_factory=DataOptions)
    out: Path | None = None  # split.csv, config.json, history.json, checkpoint.pt
    device: str | None = None
    threads: int | None = None  # torch's CPU threads (None: torch's default)


def train_options(config_file: str | None, overrides: dict[str, Any], source: str | None,
                  label_column: LabelColumn | None = None, split_file: str | None = None,
                  threads: int | None = None, out: Path | None = None, device: str | None = None,
                  log: Log = _print) -> TrainOptions:
    """The options of `ecg-tune train`: a config file (or --set values) with overrides.

    A search's best_config.json repeats its trial: on its data and split (unless others are
    given) and with the trial's thread count.
    """
    config = load_config(config_file, overrides) if config_file else make_config(overrides, where="--set")
    seed = config.seed
    digest = None
    if config_file and is_best_config(config_file):
        best = read_best_config(Path(config_file))
        source = source or best.data
        sibling = Path(config_file).parent / "split.csv"
        if split_file is None and sibling.is_file() and source == best.data:
            split_file, digest = str(sibling), best.split_digest
            log(f"using the search's split {split_file}")
        if threads is None and best.threads:
            threads = best.threads
            log(f"using {threads} thread(s), as the trial did")
        if best.cv > 1:
            log(f"the search scored this config by {best.cv}-fold cross-validation; train runs the "
                f"split's train and val parts once")
    data = DataOptions(source or "synthetic", label_column, Path(split_file) if split_file else None, seed, digest)
    return TrainOptions(config=config, data=data, out=out, device=device, threads=threads)


def run_train(options: TrainOptions) -> list[dict[str, Any]]:
    """Train one configuration, printing a line per epoch; returns the per-epoch metrics."""
    from ecg_tune.training.run import train_one

    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    return train_one(options.config, options.data.load(), out=options.out, device=options.device)
