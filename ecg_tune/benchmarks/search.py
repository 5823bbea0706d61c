"""`benchmark search`: search strategies at the same wall-clock budget on the same data and split.

Strategies (each a real `run_search` on the shipped spaces, so the numbers are the product's):
- seed_grid: the notebook's 72-config 1-epoch grid (`seed_grid` space, FIFO);
- random_fifo: random search over `full`, every trial trained to max_epochs;
- random_asha: random search over `full` with ASHA early stopping;
- optuna_asha: Optuna TPE over `full` with ASHA (the default of `scripts/search.py`);
- optuna_asha_complete: the same, but the trials ASHA stopped reach TPE as COMPLETE with their
  last value, as Ray 2.60's OptunaSearch tells them (what the PRUNED state changes);
- optuna_asha_auroc: the same as optuna_asha, but ASHA's rungs rank by the validation AUROC
  (search/rungs.py), which moves before the arg-max does, while TPE and the best trial keep the metric.
Runs are interleaved (seed 0 of every strategy, then seed 1, ...) so that a change in the shared
machine's load falls on all strategies alike. The figure of merit is the best validation score
any trial had reported by each moment of the run.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ecg_tune.benchmarks.common import best_so_far, value_at
from ecg_tune.data import Dataset
from ecg_tune.training.metrics import best_value, better

STRATEGIES: dict[str, dict] = {
    "seed_grid": {"space": "seed_grid", "searcher": "optuna", "scheduler": "fifo",
                  "label": "seed grid (72 configs, 1 epoch, FIFO)"},
    "random_fifo": {"space": "full", "searcher": "random", "scheduler": "fifo", "label": "random + FIFO (full)"},
    "random_asha": {"space": "full", "searcher": "random", "scheduler": "asha", "label": "random + ASHA (full)"},
    "optuna_asha": {"space": "full", "searcher": "optuna", "scheduler": "asha", "label": "Optuna TPE + ASHA (full)"},
    # As optuna_asha, but ASHA-stopped trials reach TPE as COMPLETE with their last value (Ray
    # 2.60's OptunaSearch): what telling them PRUNED changes.
    "optuna_asha_complete": {"space": "full", "searcher": "optuna", "scheduler": "asha", "pruned_as_complete": True,
                             "label": "Optuna TPE + ASHA, stopped trials told COMPLETE (Ray's default)"},
    "optuna_asha_auroc": {"space": "full", "searcher": "optuna", "scheduler": "asha", "rung_metric": "val_auroc",
                          "label": "Optuna TPE + ASHA, rungs ranked by val_auroc"},
}
CHECKPOINTS = 10  # points of the summary table across the budget


def run_search_benchmark(dataset: Dataset, runs_dir: Path, budget: float = 300.0, seeds: int = 3,
                         strategies: list[str] | None = None, log: Callable[[str], None] = print,
                         on_run: Callable[[dict], None] | None = None) -> dict:
    """Every strategy x seed, interleaved; `on_run` gets the result so far after each run (so that a
    session cut in the middle of an hours-long benchmark keeps the runs that finished)."""
    import ray

    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions
    from ecg_tune.search.tuner import start_ray

    strategies = strategies or list(STRATEGIES)
    runs: list[dict] = []
    start_ray(SearchOptions(out=runs_dir))  # one local cluster for every run
    for seed in range(seeds):
        for name in strategies:
            strategy = STRATEGIES[name]
            options = SearchOptions(out=runs_dir / f"{name}-seed{seed}", searcher=strategy["searcher"],
                                    scheduler=strategy["scheduler"], time_budget=budget, seed=seed,
                                    pruned_as_complete=strategy.get("pruned_as_complete", False),
                                    rung_metric=strategy.get("rung_metric"))
            log(f"--- {strategy['label']}, seed {seed}, budget {budget:g} s")
            started = time.time()
            # The split is saved with each run, so any run can be refitted later.
            result = run_pipeline(PipelineOptions(search=options, space=strategy["space"], refit=None),
                                  dataset=dataset, log=log)
            wall = time.time() - started
            histories = result.run.histories()
            metric = result.plan.metric
            times, best = best_so_far(histories, metric, started)
            runs.append({"strategy": name, "seed": seed, "wall_s": wall, "metric": metric,
                         "trials": len(histories), "epochs": int(sum(len(h) for h in histories.values())),
                         "curve_s": times.tolist(), "curve_best": best.tolist(),
                         "final_best": value_at(times, best, budget), "folder": str(result.run.path),
                         "first_rung": result.plan.grace_period if result.plan.scheduler == "asha" else 0,
                         "floor": majority_floor(dataset, metric),
                         # each trial's epochs and best value: which trials a rung stopped, and how good
                         "per_trial": [{"trial": trial, "epochs": len(history),
                                        "best": best_value(metric, history[metric])}
                                       for trial, history in histories.items() if metric in history]})
            log(f"{name} seed {seed}: best {runs[-1]['final_best']:.4f} after {wall:.0f} s, "
                f"{runs[-1]['trials']} trials, {runs[-1]['epochs']} epochs")
            if on_run is not None:
                on_run(_result(runs, budget, seeds, strategies, complete=False))
    ray.shutdown()
    return _result(runs, budget, seeds, strategies, complete=True)


def _result(runs: list[dict], budget: float, seeds: int, strategies: list[str], complete: bool) -> dict:
    first_rung = first_rung_outcomes(runs, runs[0]["first_rung"], runs[0]["floor"]) if runs else {}
    return {"budget_s": budget, "seeds": seeds, "strategies": {n: STRATEGIES[n]["label"] for n in strategies},
            "complete": complete, "runs": runs, "summary": summarise(runs, budget), "first_rung": first_rung}


def summarise(runs: list[dict], budget: float) -> dict:
    """Per strategy: best-so-far at CHECKPOINTS moments (mean, min, max over seeds), trials, epochs,
    and the time each seed took to reach the seed grid's mean final score."""
    at = [budget * (k + 1) / CHECKPOINTS for k in range(CHECKPOINTS)]
    by_strategy: dict[str, list[dict]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], []).append(run)
    grid_final = [r["final_best"] for r in by_strategy.get("seed_grid", [])]
    target = float(np.nanmean(grid_final)) if grid_final else None
    summary = {}
    for name, group in by_strategy.items():
        values = np.array([[value_at(np.array(r["curve_s"]), np.array(r["curve_best"]), t) for t in at]
                           for r in group])
        reach = [_time_to(r, target) for r in group] if target is not None else []
        summary[name] = _spread(values, at, group, reach)
    return summary


# A trial must beat the majority-class predictor's validation score by this much to count as having
# learned something the metric sees (first_rung_outcomes).
FLOOR_MARGIN = 0.05


def majority_floor(dataset: Dataset, metric: str) -> float:
    """The validation score of always predicting the training part's most common class, plus
    FLOOR_MARGIN in the metric's better direction."""
    from ecg_tune.training.metrics import classification_metrics

    labels = dataset.tensors.labels
    assert labels is not None  # a prepared dataset is labelled
    majority = np.bincount(labels[dataset.index("train")]).argmax()
    truth = labels[dataset.index("val")]
    scores = classification_metrics(truth, np.full(len(truth), majority), dataset.records.classes, prefix="val_")
    if metric not in scores:
        return float("nan")
    return float(scores[metric]) + (FLOOR_MARGIN if better(metric, 1.0, 0.0) else -FLOOR_MARGIN)


def first_rung_outcomes(runs: list[dict], first_rung: int, floor: float, top: int = 5) -> dict[str, dict]:
    """What each strategy's first rung did, from the runs' trials.csv files.

    Seeded TPE proposes the same configurations at first in every strategy of a seed (its random
    start-up, the start points), so a configuration one strategy stopped at its first rung may
    have trained on in another: pooling a seed's runs gives each configuration the best value any
    run saw (`eventual`). Per strategy, means over seeds of: trials started; trials stopped at or
    after `first_rung` epochs; of the seed's `top` configurations by eventual value, how many the
    strategy started and then stopped at its first rung; trials whose best beat `floor` (e.g. the
    majority-class predictor's score plus a margin: a trial at or below it never learned anything
    the metric sees)."""
    import pandas as pd

    tables: dict[tuple[str, int], pd.DataFrame] = {}
    for run in runs:
        path = Path(run["folder"]) / "trials.csv"
        if path.is_file():
            table = pd.read_csv(path)
            columns = sorted(c for c in table.columns if c.startswith("config/"))
            table["key"] = [json.dumps({c: _plain_value(row[c]) for c in columns if pd.notna(row[c])}, sort_keys=True)
                            for _, row in table.iterrows()]
            tables[(run["strategy"], run["seed"])] = table
    metric = runs[0]["metric"] if runs else ""
    best_column = f"best/{metric}"
    sign = 1.0 if better(metric, 1.0, 0.0) else -1.0
    per_strategy: dict[str, list[dict]] = {}
    for seed in sorted({seed for _, seed in tables}):
        pooled = pd.concat([t for (_, s), t in tables.items() if s == seed])
        eventual = (sign * pooled.groupby("key")[best_column].max()).sort_values(ascending=False)
        leaders = set(eventual.index[:top])
        for (name, s), table in tables.items():
            if s != seed:
                continue
            # exactly at the rung: a trial the time budget cut earlier was not stopped by a rung
            early = table[(table["status"] == "stopped") & (table["epochs"] == first_rung)]
            per_strategy.setdefault(name, []).append({
                "trials": len(table), "stopped_at_first_rung": len(early),
                "top_started": int(table["key"].isin(leaders).sum()),
                "top_stopped_at_first_rung": int(early["key"].isin(leaders).sum()),
                "above_floor": int((sign * table[best_column] > sign * floor).sum())})
    return {name: {key: float(np.mean([o[key] for o in outcomes])) for key in outcomes[0]} | {"seeds": len(outcomes)}
            for name, outcomes in per_strategy.items()}


def _plain_value(value: object) -> object:
    """A config cell as a JSON value that compares equal across files (floats rounded)."""
    if isinstance(value, float):
        return round(value, 12)
    return value.item() if isinstance(value, np.generic) else value


def _spread(values: np.ndarray, at: list[float], group: list[dict], reach: list) -> dict:
    # NaN until every seed has a score: a mean over only the seeds that had reported would jump
    # down when a slower seed joins.
    return {
        "at_s": at,
        "mean": values.mean(axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "final_mean": float(values[:, -1].mean()),
        "final_std": float(values[:, -1].std()),
        "trials_mean": float(np.mean([r["trials"] for r in group])),
        "epochs_mean": float(np.mean([r["epochs"] for r in group])),
        "seconds_to_seed_grid_final": reach,
    }


def _time_to(run: dict, target: float) -> float | None:
    for t, value in zip(run["curve_s"], run["curve_best"], strict=False):
        if not better(run["metric"], target, value):  # as good as the target or better
            return float(t)
    return None


def table(result: dict) -> str:
    summary = result["summary"]
    at = next(iter(summary.values()))["at_s"]
    shown = [k for k in (1, 3, 5, 7, 9) if k < len(at)]
    head = "| strategy | " + " | ".join(f"best at {at[k]:.0f} s" for k in shown) + \
           " | trials | epochs | s to reach the grid's mean final (per seed) |\n|---|" + "---|" * (len(shown) + 3)
    rows = []
    for name, s in summary.items():
        cells = [f"{s['mean'][k]:.3f} ({s['min'][k]:.3f}-{s['max'][k]:.3f})" if np.isfinite(s["mean"][k])
                 else "not every seed yet" for k in shown]
        reach = ", ".join("never" if t is None else f"{t:.0f}" for t in s["seconds_to_seed_grid_final"])
        rows.append(f"| {result['strategies'][name]} | " + " | ".join(cells) +
                    f" | {s['trials_mean']:.1f} | {s['epochs_mean']:.0f} | {reach} |")
    rungs = result.get("first_rung") or {}
    if rungs:
        rows += ["", "| strategy | trials | stopped at the first rung | of the seed's top 5: started | "
                     "of those: stopped at the first rung | trials above the majority-class score + 0.05 |",
                 "|---|---|---|---|---|---|"]
        rows += [f"| {result['strategies'][name]} | {o['trials']:.1f} | {o['stopped_at_first_rung']:.1f} | "
                 f"{o['top_started']:.1f} | {o['top_stopped_at_first_rung']:.1f} | {o['above_floor']:.1f} |"
                 for name, o in rungs.items()]
    return "\n".join([head, *rows])


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = result["budget_s"]
    grid = np.linspace(0, budget, 200)
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, label in result["strategies"].items():
        curves = np.array([[value_at(np.array(r["curve_s"]), np.array(r["curve_best"]), t) for t in grid]
                           for r in result["runs"] if r["strategy"] == name])
        if not len(curves):
            continue
        with warnings.catch_warnings():  # before the first report every seed is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        # The mean is drawn once every seed has a score; the band from the first one.
        line, = axes.step(grid, curves.mean(axis=0), where="post", label=f"{label} (mean of {len(curves)})")
        axes.fill_between(grid, low, high, step="post", color=line.get_color(), alpha=0.15)
    metric = result["runs"][0]["metric"] if result["runs"] else "score"
    axes.set(xlabel="wall-clock seconds since the search started", ylabel=f"best {metric} so far",
             title="Search strategies at equal wall time (band: min-max over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
