"""`ecg-tune benchmark portfolio`: candidate start points of the `full` space, each trained alone
for the same wall-clock budget, so that `full`'s `start:` list is chosen by measurement and can be
rebuilt (docs/benchmarks.md, "portfolio").

    python scripts/benchmark.py portfolio --data D [--candidates FILE] [--budget S] [--seeds N]
    python scripts/benchmark.py portfolio --summarise benchmarks/results/portfolio-A.json ...

Candidates: by default the `start:` list of the shipped `full` space; or a YAML file

    candidates:
      - {name: A, model: resnet1d, width: 16, depth: 4, lr: 0.002}   # name: optional, for tables
      - {model: minirocket, rocket_features: 10000, input_length: 3000}

Every candidate must be a start point `full` accepts (keys of its parameters, values they can
take), checked by the space itself: the winners are meant to be copied into its `start:` list.
On the data a candidate is fitted as the search fits a start point (search/adapt.py caps
input_length at the longest record of short-record data; the samplers' `clamped_to_limits` caps the
wavelet's levels at what that length allows). Keys it leaves out take `full`'s constants (as
every trial does, e.g. early_stop_patience) and otherwise the TrainConfig default, never a
sampled value: the measurement is deterministic, where a search would sample them.

Each candidate runs through the one training loop (`training.loop.fit`) on the split's train
part, validated on its val part every epoch, on ONE torch thread (as a trial of a 2-core search
runs), until the epoch that crosses `budget` seconds, at most `max_epochs` epochs (default:
`full`'s `search: max_epochs`, the most a trial can run), or until the loop stops on its own
(early stopping, a closed-form model's single fit). `seeds` repeats it with the split and the
initialisation seeded 0..seeds-1.

Per candidate: the best value of the ranking metric (`training.metrics.ranking_metric`: CinC F1
with CinC's classes, else macro F1) and its epoch, the median seconds per epoch, the best value
reached by budget/4 and budget/2 (how fast it learns), the epochs trained, and its rank on this
data. `--summarise` joins the results of several data sets (one file each) into a mean rank.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from ecg_tune.benchmarks.common import value_at
from ecg_tune.config import TrainConfig, default_value, make_config
from ecg_tune.data import Dataset
from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.parameters import Constant
from ecg_tune.search.samplers import clamped_to_limits
from ecg_tune.search.space import SearchSpace, space_error, yaml_type
from ecg_tune.search.space_file import load_space, parse_yaml
from ecg_tune.training.metrics import best_index, direction, ranking_metric, running_best

__all__ = ["Candidates", "load_candidates", "measure", "run_portfolio_benchmark", "summarise", "summarise_files",
           "summary_table", "table"]

# The space whose start points the portfolio is; candidates are checked against it.
SPACE = "full"
DEFAULT_BUDGET = 120.0
Log = Callable[[str], None]


def _print(text: str) -> None:
    print(text, flush=True)


class Candidates:
    """Candidate start points: `space` is `full` with them as its `start:` (so the space has
    checked them), `names` labels them in tables, `where` names their file in errors."""

    def __init__(self, space: SearchSpace, names: list[str], where: str) -> None:
        self.space, self.names, self.where = space, names, where

    @property
    def points(self) -> list[dict[str, Any]]:
        return [dict(point) for point in self.space.start]


def load_candidates(path: Path | None = None) -> Candidates:
    """The candidates file's list (or `full`'s `start:` when None), checked; ConfigError naming
    the file and the key otherwise."""
    full = load_space(SPACE)
    if path is None:
        if not full.start:
            raise ConfigError(f"{full.where}: has no start: list to measure; give --candidates FILE")
        return Candidates(full, [f"#{n}" for n in range(1, len(full.start) + 1)], full.where)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: candidates file not found")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"), where)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read candidates file ({exc})") from None
    if not isinstance(raw, dict) or "candidates" not in raw:
        raise ConfigError(f"{where}: expected `candidates:` with a list of partial configs")
    for key in raw:
        if key != "candidates":
            raise ConfigError(f"{where}: {key}: unknown key; a candidates file holds only `candidates:`")
    entries = raw["candidates"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: candidates: expected a list of partial configs, got {yaml_type(entries)}")
    names: list[str] = []
    points: list[dict[str, Any]] = []
    for number, entry in enumerate(entries, 1):
        at = f"{where}: candidates: {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected a mapping of config keys, got {yaml_type(entry)}")
        point = dict(entry)
        name = point.pop("name", f"#{number}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}: name: expected text, got {yaml_type(name)}")
        if name in names:
            raise ConfigError(f"{at}: name: {name!r} is also candidate {names.index(name) + 1}'s")
        make_config(point, where=at)  # unknown keys and wrong types, in TrainConfig's words
        if point in points:
            raise ConfigError(f"{at}: the same config as candidate {points.index(point) + 1}")
        names.append(name)
        points.append(point)
    try:
        # `full` itself checks them as its start points: its keys, values it can take.
        space = SearchSpace(parameters=full.parameters, search=full.search, start=tuple(points),
                            description=full.description, name=full.name, where=where, shipped=full.shipped)
    except ValidationError as exc:
        message = re.sub(r"^start: (\d+):", r"candidates: \1:", space_error(exc, full.parameters))
        raise ConfigError(f"{where}: {message} (a candidate must be a start point of {full.where})") from None
    return Candidates(space, names, where)


def describe(point: dict[str, Any]) -> str:
    """A candidate's config as given, `key=value` in its own order."""
    return " ".join(f"{key}={value}" for key, value in point.items())


def candidate_configs(candidates: Candidates, dataset: Dataset, seed: int, max_epochs: int) -> list[TrainConfig]:
    """Each candidate as the TrainConfig a search would run for it on this data (see the module
    docstring), with `max_epochs` epochs and `seed`."""
    space = adapt(candidates.space, DataFacts.from_dataset(dataset))
    configs = []
    for number, point in enumerate(space.start, 1):
        point = dict(point)
        constants = {key: p.value for key, p in space.parameters.items() if isinstance(p, Constant)
                     and p.active({ref: point.get(ref, default_value(ref)) for ref in p.when})}
        values = {**constants, **point, **clamped_to_limits(point, space.facts, space.min_input),
                  "epochs": max_epochs, "seed": seed}
        configs.append(make_config(values, where=f"{candidates.where}: candidate {number}"))
    return configs


def measure(config: TrainConfig, dataset: Dataset, metric: str, budget: float,
            device: str | None = None) -> dict[str, Any]:
    """Train `config` through the loop until the epoch that crosses `budget` seconds (or the
    loop ends); the figures of one candidate on one seed."""
    from ecg_tune.models.head import HeadFit
    from ecg_tune.training.loop import fit

    train, val = dataset.index("train"), dataset.index("val")
    times: list[float] = []
    values: list[float] = []
    epoch_seconds: list[float] = []
    one_fit = False
    # From before the first epoch: building the network and a model's data init count too.
    started = time.perf_counter()
    for result in fit(config, dataset.tensors, train, val, device=device):
        times.append(time.perf_counter() - started)
        values.append(float(result.metrics[metric]))
        epoch_seconds.append(float(result.metrics["epoch_seconds"]))
        head = result.network.model.fitted_head()
        one_fit = head is not None and head.fit_when is HeadFit.ONLY_EPOCH
        if times[-1] >= budget:
            break
    epochs = len(values)
    if times[-1] >= budget and epochs < config.epochs and not one_fit:
        stopped = "budget"
    elif one_fit:
        stopped = "one fit"
    elif epochs == config.epochs:
        stopped = "max_epochs"
    else:
        stopped = "early stop"
    best = best_index(metric, values)
    running, at = running_best(metric, np.asarray(values)), np.asarray(times)
    return {"seed": config.seed, "best": values[best], "best_epoch": best + 1, "seconds_to_best": times[best],
            "seconds_per_epoch": float(np.median(epoch_seconds)), "epoch_seconds": epoch_seconds,
            "at_quarter": value_at(at, running, budget / 4), "at_half": value_at(at, running, budget / 2),
            "epochs": epochs, "seconds": times[-1], "stopped": stopped,
            "curve_s": times, "curve": values}


def run_portfolio_benchmark(load: Callable[[int], Dataset], candidates: Candidates, *, budget: float = DEFAULT_BUDGET,
                            seeds: int = 1, max_epochs: int | None = None, device: str | None = None,
                            log: Log = _print) -> dict[str, Any]:
    """Measure every candidate on the data `load(seed)` gives for seeds 0..seeds-1.

    One torch thread throughout (restored afterwards): a trial of a search on 2 cores has one.
    """
    import torch

    from ecg_tune.training.device import pick_device

    max_epochs = max_epochs or candidates.space.search.max_epochs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs: list[list[dict[str, Any]]] = [[] for _ in candidates.names]
    fitted: list[dict[str, Any]] = [{} for _ in candidates.names]
    metric = summary = ""
    try:
        for seed in range(seeds):
            dataset = load(seed)
            metric, summary = ranking_metric(dataset.tensors.classes), dataset.summary()
            log(f"seed {seed}: {summary}")
            configs = candidate_configs(candidates, dataset, seed, max_epochs)
            for index, (name, point, config) in enumerate(zip(candidates.names, candidates.points, configs,
                                                              strict=True)):
                # What fitting to the data changed (e.g. input_length capped on short records).
                fitted[index] = {key: config.value(key) for key in point if config.value(key) != point[key]}
                run = measure(config, dataset, metric, budget, device=device)
                runs[index].append(run)
                log(f"{name} seed {seed}: {metric} best {run['best']:.3f} at epoch {run['best_epoch']}, "
                    f"{run['seconds_per_epoch']:.2f} s/epoch, {run['epochs']} epochs in {run['seconds']:.0f} s "
                    f"({run['stopped']})")
    finally:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    for name, point, changed, measured in zip(candidates.names, candidates.points, fitted, runs, strict=True):
        rows.append({"name": name, "config": point, "description": describe(point), "fitted": changed,
                     "best": _mean(r["best"] for r in measured),
                     "best_epoch": _mean(r["best_epoch"] for r in measured),
                     "seconds_to_best": _mean(r["seconds_to_best"] for r in measured),
                     "seconds_per_epoch": float(np.median([s for r in measured for s in r["epoch_seconds"]])),
                     "at_quarter": _mean(r["at_quarter"] for r in measured),
                     "at_half": _mean(r["at_half"] for r in measured),
                     "epochs": _mean(r["epochs"] for r in measured),
                     "best_spread": float(np.std([r["best"] for r in measured])),
                     "runs": measured})
    for row, rank in zip(rows, _ranks([row["best"] for row in rows], metric), strict=True):
        row["rank"] = rank
    return {"benchmark": "portfolio", "metric": metric, "data_summary": summary, "budget_s": budget,
            "max_epochs": max_epochs, "seeds": seeds, "threads": 1,
            "device": str(pick_device(device)), "candidates_file": candidates.where, "candidates": rows}


def _mean(values: Any) -> float:
    array = np.asarray(list(values), dtype=float)
    return float(np.nanmean(array)) if np.isfinite(array).any() else float("nan")


def _ranks(values: Sequence[float], metric: str) -> list[float]:
    """1 = best in the metric's direction; ties share their mean rank; a missing value is last."""
    ranked = pd.Series(values, dtype=float).rank(ascending=direction(metric) == "min", method="average",
                                                 na_option="bottom")
    return [float(r) for r in ranked]


def _figure(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "-"


def table(result: dict[str, Any]) -> str:
    """One data set's candidates as markdown, with the configs below the table."""
    metric, budget = result["metric"], result["budget_s"]
    spread = result["seeds"] > 1
    head = (f"| candidate | best {metric}{' (± sd over seeds)' if spread else ''} | at epoch | s to it | s/epoch | "
            f"best by {budget / 4:.0f} s | best by {budget / 2:.0f} s | epochs | rank |\n" + "|---" * 9 + "|")
    lines = [head]
    for row in sorted(result["candidates"], key=lambda r: r["rank"]):
        best = _figure(row["best"]) + (f" ± {row['best_spread']:.3f}" if spread else "")
        lines.append(f"| {row['name']} | {best} | {row['best_epoch']:.0f} | {row['seconds_to_best']:.1f} | "
                     f"{row['seconds_per_epoch']:.2f} | "
                     f"{_figure(row['at_quarter'])} | {_figure(row['at_half'])} | {row['epochs']:.0f} | "
                     f"{row['rank']:g} |")
    lines.append("")
    for row in result["candidates"]:
        fitted = ", ".join(f"{key} {value}" for key, value in row["fitted"].items())
        lines.append(f"- {row['name']}: `{row['description']}`" + (f" (on this data: {fitted})" if fitted else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Several data sets: the mean rank


def summarise_files(paths: Sequence[Path]) -> dict[str, Any]:
    """`summarise` over portfolio result files (one per data set); ConfigError naming a file
    that is not one."""
    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read a portfolio result ({exc})") from None
        if not isinstance(result, dict) or result.get("benchmark") != "portfolio" or "candidates" not in result:
            raise ConfigError(f"{path}: not a portfolio benchmark result (benchmarks/results/portfolio-*.json)")
        results.append({**result, "file": str(path)})
    return summarise(results)


def data_label(source: str) -> str:
    """A short name for a data source: ECG200 for .../ECG200/ECG200_TRAIN.txt, the folder name
    for a folder of records, the source itself otherwise (synthetic:1000)."""
    path = Path(source)
    if path.suffix and path.parent.name:
        return path.parent.name
    return path.name or source


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Candidates joined by config over data sets: each one's rank per data set and its mean
    rank over the data sets it was measured on (lower is better)."""
    labels: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        label = data_label(str(result.get("source", "?")))
        if label in labels:
            raise ConfigError(f"{result.get('file', label)}: a second result for {label} (also "
                              f"{labels[label]}); give one file per data set")
        labels[label] = str(result.get("file", label))
        for candidate in result["candidates"]:
            row = rows.setdefault(candidate["description"], {
                "name": candidate["name"], "config": candidate["config"], "description": candidate["description"],
                "data": {}})
            row["data"][label] = {"rank": candidate["rank"], "best": candidate["best"], "metric": result["metric"],
                                  "seconds_per_epoch": candidate["seconds_per_epoch"]}
    for row in rows.values():
        row["mean_rank"] = float(np.mean([d["rank"] for d in row["data"].values()]))
    ordered = sorted(rows.values(), key=lambda r: (r["mean_rank"], -len(r["data"])))
    return {"benchmark": "portfolio-summary", "source": list(labels), "files": list(labels.values()),
            "candidates": ordered}


def summary_table(summary: dict[str, Any]) -> str:
    data = summary["source"]
    head = ("| candidate | " + " | ".join(f"{label}: rank (best, s/epoch)" for label in data) +
            " | mean rank |\n|---|" + "---|" * (len(data) + 1))
    lines = [head]
    for row in summary["candidates"]:
        cells = []
        for label in data:
            d = row["data"].get(label)
            cells.append("not measured" if d is None else
                         f"{d['rank']:g} ({_figure(d['best'])}, {d['seconds_per_epoch']:.2f} s)")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['mean_rank']:.2f} |")
    lines.append("")
    lines.extend(f"- {row['name']}: `{row['description']}`" for row in summary["candidates"])
    return "\n".join(lines)
