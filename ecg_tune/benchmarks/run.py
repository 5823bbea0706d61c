"""`ecg-tune benchmark KIND`: the options every benchmark takes, and running one.

`BenchmarkOptions` holds the bounds of every benchmark option (the command line parses into it);
`run_benchmark` loads the data through the pipeline's data stage, runs the benchmark, prints its
markdown table and writes its JSON (and plot) under `--out`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ecg_tune.benchmarks.common import machine_info, results_path, thin
from ecg_tune.data import Dataset
from ecg_tune.data.sources import LabelColumn
from ecg_tune.errors import EcgTuneError

Kind = Literal["pipeline", "search", "overhead", "gpu", "quality", "portfolio", "steadiness", "resample",
               "precision", "deploy", "fronts"]
# CinC 2017 where the project's shared data sits beside the checkout, as on the team's machines.
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cinc2017" / "training2017"
# Records in play for --quick: enough for every code path, small enough for minutes.
QUICK_RECORDS = 600
# `benchmark precision --quick` without --data: synthetic records (its shapes are the configs').
QUICK_PRECISION_SOURCE = f"synthetic:{QUICK_RECORDS}"


class BenchmarkOptions(BaseModel):
    """One benchmark run. Options a kind does not use are None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: Kind
    data: str | None = None  # None: CinC 2017 beside the checkout when present, else synthetic
    label_column: LabelColumn | None = None
    quick: bool = False
    out: Path = Path("benchmarks/results")
    # pipeline: training records per measurement; search: a stratified subset (0: all)
    records: int | None = Field(None, ge=0)
    rounds: int | None = Field(None, ge=1)
    budget: float | None = Field(None, gt=0)  # seconds per search run (portfolio: per candidate)
    seeds: int | None = Field(None, ge=1)
    candidates: Path | None = None  # portfolio: a candidates file (None: full's start: list)
    max_epochs: int | None = Field(None, ge=1)  # portfolio: None: full's search max_epochs
    summarise: list[Path] | None = None  # portfolio: result files to join into a mean rank
    strategies: list[str] | None = None
    tiny_trials: int | None = Field(None, ge=1)
    parts: list[Literal["trials", "memory", "searcher"]] | None = None  # overhead: None: all
    searcher_trials: int | None = Field(None, ge=1)  # overhead: in process, per searcher variant
    searcher_ray_trials: int | None = Field(None, ge=1)  # overhead: through Tune, per searcher
    run: Path | None = None  # quality, deploy: a finished, refitted search folder
    search_budget: float | None = Field(None, gt=0)
    search_trials: int | None = Field(None, ge=1)
    kernels: int | None = Field(None, ge=1)
    starts: list[int] | None = None  # steadiness: indices into full's start: list
    variants: list[str] | None = None  # steadiness
    resamples: int | None = Field(None, ge=1)  # resample: re-splits (seeds first_seed, first_seed + 1, ...)
    first_seed: int | None = Field(None, ge=0)
    ensemble: int | None = Field(None, ge=1)  # resample, quality: --ensemble of each search
    seed: int | None = Field(None, ge=0)  # quality: the split's and the search's seed
    accuracy: bool = False  # precision: also fp32 against bf16 best validation scores
    families: list[str] | None = None  # deploy: a subset of the model families
    runs: list[Path] | None = None  # fronts: finished search folders to compare
    test_records: int | None = Field(None, ge=1)  # deploy: test records compared per family

    @field_validator("records")
    @classmethod
    def _records(cls, value: int | None, info: ValidationInfo) -> int | None:
        # The search's 0 means all records; the pipeline's counts training records per measurement.
        if info.data.get("benchmark") == "pipeline" and value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("summarise")
    @classmethod
    def _files(cls, value: list[Path] | None) -> list[Path] | None:
        for path in value or ():
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
        return value

    @field_validator("runs")
    @classmethod
    def _folders(cls, value: list[Path] | None) -> list[Path] | None:
        for path in value or ():
            if not path.is_dir():
                raise ValueError(f"{path}: no such folder")
        return value

    @field_validator("run")
    @classmethod
    def _a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value}: no such folder")
        return value

    @property
    def source(self) -> str:
        return self.data or (str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else "synthetic")


def run_benchmark(options: BenchmarkOptions) -> Path | None:
    """Run one benchmark; returns its JSON result file (None when it had nothing to measure)."""
    from ecg_tune.pipeline import DataOptions

    if options.benchmark == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("benchmark gpu: skipped, this machine has no CUDA device (nothing was measured)")
            return None
    source, quick = options.source, options.quick
    if options.benchmark == "precision" and quick and options.data is None:
        source = QUICK_PRECISION_SOURCE
    data_options = DataOptions(source, options.label_column, seed=options.seed or 0)

    def dataset(announce: bool = True) -> Dataset:
        data = data_options.load()
        if quick:
            data = thin(data, QUICK_RECORDS)
        if announce:  # off where a search is run on it: the search says it
            print(f"data: {data.summary()}" + (" (--quick: a subset is in play)" if quick else ""), flush=True)
        return data

    out, stamp = options.out, time.strftime("%Y%m%d-%H%M%S")
    name: str = options.benchmark  # the result file's prefix
    table = None
    result: dict[str, Any]
    if options.benchmark == "pipeline":
        from ecg_tune.benchmarks import pipeline

        records, rounds = (256, 1) if quick else (options.records or 1024, options.rounds or 3)
        result = pipeline.run_pipeline_benchmark(data_options.load(), records=records, rounds=rounds)
        pipeline.plot(result, results_path(out, "pipeline", stamp, ".png"))
        table = pipeline.table(result)
    elif options.benchmark == "search":
        from ecg_tune.benchmarks import search

        budget, seeds = (40.0, 1) if quick else (options.budget or 240.0, options.seeds or 3)
        data = dataset()
        if not quick and options.records:
            data = thin(data, options.records)
            print(f"in play: {len(data.index('train', 'val', 'test'))} records (--records {options.records}), "
                  f"train {len(data.index('train'))}, val {len(data.index('val'))}", flush=True)
        runs_dir = (Path("runs") / f"benchmark-search-{stamp}").resolve()
        partial = results_path(out, "search", stamp, ".json")

        def write_partial(so_far: dict) -> None:
            partial.write_text(json.dumps({"machine": machine_info(), "source": source, "quick": quick, **so_far},
                                          indent=2, default=_plain))
            print(f"results so far: {partial}", flush=True)

        result = search.run_search_benchmark(data, runs_dir, budget=budget, seeds=seeds,
                                             strategies=options.strategies, on_run=write_partial)
        search.plot(result, results_path(out, "search", stamp, ".png"))
        table = search.table(result)
    elif options.benchmark == "overhead":
        from ecg_tune.benchmarks.overhead import PARTS, overhead_table, run_overhead_benchmark

        result = run_overhead_benchmark(dataset(), tiny_trials=8 if quick else options.tiny_trials or 40,
                                        max_epochs=1 if quick else 2, parts=tuple(options.parts or PARTS),
                                        searcher_trials=options.searcher_trials or (60 if quick else 1000),
                                        searcher_ray_trials=options.searcher_ray_trials or (12 if quick else 200))
        table = overhead_table(result)
    elif options.benchmark == "gpu":
        from ecg_tune.benchmarks.overhead import gpu_table, run_gpu_benchmark

        result = run_gpu_benchmark(dataset(), max_epochs=1 if quick else 2)
        table = gpu_table(result)
    elif options.benchmark == "steadiness":
        from ecg_tune.benchmarks import steadiness

        data = dataset()
        if not quick and options.records:
            data = thin(data, options.records)
        partial = results_path(out, "steadiness", stamp, ".json")

        def write_steadiness(so_far: dict) -> None:
            partial.write_text(json.dumps({"machine": machine_info(), "source": source, "quick": quick, **so_far},
                                          indent=2, default=_plain))

        result = steadiness.run_steadiness_benchmark(
            data, epochs=3 if quick else options.max_epochs or 20, seeds=1 if quick else options.seeds or 3,
            starts=options.starts, variants=options.variants, on_run=write_steadiness)
        table = steadiness.table(result)
    elif options.benchmark == "deploy":
        from ecg_tune.benchmarks import deploy

        test_records = 20 if quick else options.test_records or 200
        if options.run:  # the model a refit delivered, on its search's test records
            result = deploy.run_delivered(options.run.resolve(), test_records=test_records)
        else:
            results_dir = (Path("runs") / f"benchmark-deploy-{stamp}").resolve()
            result = deploy.run_deploy_benchmark(
                dataset(), results_dir, families=options.families, epochs=1 if quick else options.max_epochs or 2,
                train_records=300 if quick else options.records or 2000, test_records=test_records, cpus=_all_cpus())
            result["bundles"] = str(results_dir)
        table = deploy.table(result)
    elif options.benchmark == "fronts":
        from ecg_tune.benchmarks import fronts

        if not options.runs:
            raise EcgTuneError("benchmark fronts: --runs needs at least one finished search folder")
        result = fronts.compare_fronts(options.runs)
        table = fronts.table(result)
    elif options.benchmark == "precision":
        from ecg_tune.benchmarks import precision

        data = dataset()
        if not quick and options.records:
            data = thin(data, options.records)
        result = precision.run_precision_benchmark(data, rounds=options.rounds or 1,
                                                   epochs=1 if quick else precision.EPOCHS)
        if options.accuracy:
            result["accuracy"] = precision.run_accuracy(data, seeds=1 if quick else options.seeds or 3,
                                                        epochs=2 if quick else options.max_epochs or 20)
        table = precision.table(result)
    elif options.benchmark == "resample":
        from ecg_tune.benchmarks import resample

        partial = results_path(out, "resample", stamp, ".json")

        def write_resample(so_far: dict) -> None:
            partial.write_text(json.dumps({"machine": machine_info(), "source": source, "quick": quick, **so_far},
                                          indent=2, default=_plain))

        result = resample.run_resample_benchmark(
            data_options.load(), (Path("runs") / f"benchmark-resample-{stamp}").resolve(),
            resamples=1 if quick else options.resamples or 5, budget=30.0 if quick else options.budget or 420.0,
            ensemble=options.ensemble or 5, first_seed=options.first_seed or 0, cpus=_all_cpus(),
            on_run=write_resample)
        table = resample.table(result)
    elif options.benchmark == "portfolio":
        from ecg_tune.benchmarks import portfolio

        if options.summarise:
            result = portfolio.summarise_files(options.summarise)
            table, name = portfolio.summary_table(result), "portfolio-summary"
        else:
            # Checked before any data is read: a bad file fails in a second.
            candidates = portfolio.load_candidates(options.candidates)

            def seeded(seed: int) -> Dataset:
                data = replace(data_options, seed=seed).load()
                return thin(data, QUICK_RECORDS) if quick else data

            result = portfolio.run_portfolio_benchmark(
                seeded, candidates, budget=10.0 if quick else options.budget or portfolio.DEFAULT_BUDGET,
                seeds=1 if quick else options.seeds or 1, max_epochs=2 if quick else options.max_epochs)
            table = portfolio.table(result)
    else:
        from ecg_tune.benchmarks import quality

        if options.run is None:
            quality.aeon_minirocket()  # a missing baseline fails now, not after the search
        run_dir = options.run.resolve() if options.run else _quality_search(
            options, dataset(announce=False), (Path("runs") / f"benchmark-quality-{stamp}").resolve())
        result = quality.run_quality_benchmark(run_dir, n_kernels=1000 if quick else options.kernels or 10_000,
                                               cpus=_all_cpus())
        result["seed_grid_val"] = _seed_grid_figure(out)
        table = quality.table(result, result["seed_grid_val"])
    result = {"machine": machine_info(), "source": source, "quick": quick, **result}
    path = results_path(out, name, stamp, ".json")
    path.write_text(json.dumps(result, indent=2, default=_plain))
    if table:
        print(table)
    print(f"results: {path}")
    return path


def _quality_search(options: BenchmarkOptions, dataset: Dataset, run_dir: Path) -> Path:
    """The `full` search (with its refit) that `benchmark quality` measures, within --search-budget."""
    from ecg_tune.pipeline import PipelineOptions, RefitOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions

    budget = 90.0 if options.quick else options.search_budget or 1500.0
    search = SearchOptions(out=run_dir, time_budget=budget, num_samples=options.search_trials or 200,
                           seed=options.seed or 0, ensemble=options.ensemble or 1)
    # The refit runs alone: all cores.
    run_pipeline(PipelineOptions(search=search, space="full", refit=RefitOptions(cpus=_all_cpus())), dataset=dataset)
    return run_dir


def _all_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0)) if ray.is_initialized() else float(os.cpu_count() or 1)


def _seed_grid_figure(folder: Path) -> float | None:
    """The seed grid's mean final validation score in the newest full `search` benchmark, if any."""
    for path in sorted(folder.glob("search-*.json"), reverse=True):
        result = json.loads(path.read_text())
        if not result.get("quick") and "seed_grid" in result.get("summary", {}):
            return float(result["summary"]["seed_grid"]["final_mean"])
    return None


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays in benchmark results."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
