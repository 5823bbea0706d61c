"""`benchmark resample`: the product's test figure over re-splits of a UCR train/test pair.

One official split of 100 test records (ECG200) has a standard error of about 3 points of
accuracy, more than the leading configurations differ. The UCR bake-offs resample instead: pool
TRAIN and TEST, draw a new split of the same sizes and class proportions per seed, run the
method on each. Here each resample is a whole `scripts/search.py` run (the `full` space, the
time budget, `--ensemble K`, then the refit, tested once on the resample's test records), and
the result is the delivered model's test figures per resample beside the single best trial's
(report.json's `ensemble.single_best`), with their means over resamples.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_tune.data import Dataset
from ecg_tune.errors import DataError


def resampled(dataset: Dataset, seed: int) -> Dataset:
    """The dataset with its train and test parts pooled and re-drawn: per class, as many test
    records as the original test part had of that class (so the sizes and proportions are the
    official split's), chosen at random with `seed`; a val part is then carved from the new train
    part as `prepare` carves it (data/split.make_split)."""
    from ecg_tune.data.split import make_split

    records = dataset.records
    if records.split is None or "test" not in set(records.split):
        raise DataError(f"{records.source or 'data'}: resampling needs a train/test pair (e.g. *_TRAIN and "
                        f"*_TEST files) whose test part sets the size of each re-drawn test part")
    assert records.labels is not None  # a prepared dataset is labelled
    official = np.asarray(records.split, dtype=object)
    rng = np.random.default_rng(seed)
    drawn = np.full(len(records), "train", dtype=object)
    for label in np.unique(records.labels):
        members = np.flatnonzero(records.labels == label)
        n_test = int(np.sum(official[members] == "test"))
        drawn[rng.permutation(members)[:n_test]] = "test"
    redrawn = dataclasses.replace(records, split=list(drawn))
    return Dataset(records=redrawn, tensors=dataset.tensors, split=make_split(redrawn, seed=seed))


def run_resample_benchmark(dataset: Dataset, runs_dir: Path, resamples: int = 5, budget: float = 420.0,
                           ensemble: int = 5, first_seed: int = 0, cpus: float = 1.0,
                           log: Callable[[str], None] = print,
                           on_run: Callable[[dict], None] | None = None) -> dict:
    """A `full` search with refit on each resample (seeds first_seed...); `on_run` gets the result
    so far after each one (an interrupted benchmark keeps what finished)."""
    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.refit import RefitOptions
    from ecg_tune.search.plan import SearchOptions

    runs: list[dict] = []
    for seed in range(first_seed, first_seed + resamples):
        data = resampled(dataset, seed)
        log(f"--- resample {seed}: {data.summary()}")
        options = SearchOptions(out=runs_dir / f"resample{seed}", time_budget=budget, ensemble=ensemble, seed=seed)
        started = time.time()
        result = run_pipeline(PipelineOptions(search=options, space="full", refit=RefitOptions(cpus=cpus)),
                              dataset=data, log=log)
        report = json.loads((result.run.path / "report.json").read_text())
        team = report.get("ensemble") or {}
        single = (team.get("single_best") or {}).get("test") or report["test"]
        runs.append({"seed": seed, "wall_s": time.time() - started, "folder": str(result.run.path),
                     "delivered": _headline(report["test"]), "single_best": _headline(single),
                     "members": len(team.get("members", [])) or 1,
                     "trials": len(pd.read_csv(result.run.path / "trials.csv"))})
        log(f"resample {seed}: delivered accuracy {runs[-1]['delivered']['accuracy']:.3f}, single best "
            f"{runs[-1]['single_best']['accuracy']:.3f}, {runs[-1]['members']} member(s)")
        if on_run is not None:
            on_run(_result(runs, budget, ensemble, complete=False))
    return _result(runs, budget, ensemble, complete=True)


def _headline(test: dict) -> dict[str, float]:
    return {key: float(test[key]) for key in ("accuracy", "macro_f1", "cinc_f1") if key in test}


def _result(runs: list[dict], budget: float, ensemble: int, complete: bool) -> dict:
    summary = {}
    for which in ("delivered", "single_best"):
        for key in runs[0][which] if runs else ():
            values = [run[which][key] for run in runs]
            summary[f"{which}_{key}_mean"] = float(np.mean(values))
            summary[f"{which}_{key}_std"] = float(np.std(values))
    return {"budget_s": budget, "ensemble": ensemble, "complete": complete, "runs": runs, "summary": summary}


def table(result: dict) -> str:
    keys = list(result["runs"][0]["delivered"]) if result["runs"] else []
    head = ("| resample | " + " | ".join(f"delivered {k} | single best {k}" for k in keys) + " | members |\n|---|"
            + "---|---|" * len(keys) + "---:|")
    rows = [f"| {run['seed']} | " + " | ".join(f"{run['delivered'][k]:.3f} | {run['single_best'][k]:.3f}" for k in keys)
            + f" | {run['members']} |" for run in result["runs"]]
    s = result["summary"]
    mean = ("| mean ± sd | " + " | ".join(
        f"{s[f'delivered_{k}_mean']:.3f} ± {s[f'delivered_{k}_std']:.3f} | "
        f"{s[f'single_best_{k}_mean']:.3f} ± {s[f'single_best_{k}_std']:.3f}" for k in keys) + " | |")
    return "\n".join([head, *rows, mean])
