"""`benchmark steadiness`: is a trial's epoch score a property of its configuration?

A trial is ranked by its best epoch. When the validation score swings by 0.1 from one epoch to the
next (CinC 2017, a constant learning rate), the best epoch is partly the luck of the last few
minibatches, and the refit replays that lucky epoch count. This benchmark trains the gradient-trained
start points of `full` (adapted to the data, as a search runs them) with each training variant and
several seeds, validated as a search validates (training/folds.choose_validation: K-fold
cross-validation on small data), and reports per variant:

- the best validation score and its spread over seeds (what a search ranks by),
- the mean of the last epochs (what the configuration is worth once trained),
- the mean absolute change between consecutive epochs over the second half (the swing),
- the gap between the best epoch and the last epochs' mean (how much of the best is luck),
- seconds per epoch (what the variant costs).

Variants (TrainConfig keys, training/loop.py): `constant` (today's default), `cosine` (the rate
annealed over the epoch cap), `ema` (validation on an exponential moving average of the weights,
half-life EMA_HALF_LIFE epochs), `cosine_ema` (both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ecg_tune.data import Dataset
from ecg_tune.training.metrics import best_index, better

# An EMA half-life measured in epochs, so that the same setting means the same averaging whatever
# the data's size: decay per step = 0.5 ** (1 / (half-life x steps per epoch)).
EMA_HALF_LIFE = 0.5
VARIANTS: dict[str, dict[str, Any]] = {
    "constant": {},
    "cosine": {"lr_scheduler": "cosine"},
    "ema": {"ema": True},
    "cosine_ema": {"lr_scheduler": "cosine", "ema": True},
}
TAIL = 5  # epochs at the end whose mean is "what the configuration is worth once trained"


def ema_decay(half_life_epochs: float, steps_per_epoch: int) -> float:
    """The per-step EMA decay whose half-life is `half_life_epochs` epochs."""
    return float(0.5 ** (1.0 / max(1e-9, half_life_epochs * max(1, steps_per_epoch))))


def run_steadiness_benchmark(dataset: Dataset, epochs: int = 20, seeds: int = 3, starts: list[int] | None = None,
                             variants: list[str] | None = None, log: Callable[[str], None] = print,
                             on_run: Callable[[dict], None] | None = None) -> dict:
    """Every start point x variant x seed (seeds innermost per start point and variant interleaved,
    so load changes fall on every variant alike); `on_run` gets the result so far after each run."""
    from ecg_tune.config import make_config
    from ecg_tune.search.adapt import DataFacts, adapt
    from ecg_tune.search.space_file import load_space
    from ecg_tune.training.folds import choose_validation, fit_folds
    from ecg_tune.training.metrics import ranking_metric

    facts = DataFacts.from_dataset(dataset)
    space = adapt(load_space("full"), facts)
    metric = ranking_metric(dataset.records.classes)
    validation = choose_validation(dataset, "auto", seed=0)
    points = [(i, p) for i, p in enumerate(space.start) if p.get("model") != "minirocket"]  # minirocket: no epochs
    if starts is not None:
        points = [(i, p) for i, p in points if i in starts]
    variants = variants or list(VARIANTS)
    runs: list[dict] = []
    for index, point in points:
        for seed in range(seeds):
            for name in variants:
                keys = dict(VARIANTS[name])
                base = {**point, "epochs": epochs, "seed": seed, "early_stop_patience": 0}
                if keys.pop("ema", False):
                    train_records = len(validation.folds[0][0])
                    steps = math.ceil(train_records / int(make_config(base).batch_size))
                    keys["ema_decay"] = ema_decay(EMA_HALF_LIFE, steps)
                config = make_config({**base, **keys})
                started, curve, seconds = time.perf_counter(), [], []
                for result in fit_folds(config, dataset.tensors, validation.folds):
                    curve.append(float(result.metrics[metric]))
                    seconds.append(float(result.metrics.get("epoch_seconds", math.nan)))
                runs.append({"start": index, "model": point.get("model"), "variant": name, "seed": seed,
                             "metric": metric, "curve": curve, "epoch_seconds": seconds,
                             "ema_decay": config.to_dict().get("ema_decay"),
                             "wall_s": time.perf_counter() - started, **describe_curve(metric, curve)})
                log(f"start {index} ({point.get('model')}) {name} seed {seed}: best {runs[-1]['best']:.4f} "
                    f"at epoch {runs[-1]['best_epoch']}, last {TAIL} {runs[-1]['tail_mean']:.4f}, "
                    f"swing {runs[-1]['swing']:.4f}, {runs[-1]['wall_s']:.0f} s")
                if on_run is not None:
                    on_run(_result(runs, epochs, seeds, validation.description, complete=False))
    return _result(runs, epochs, seeds, validation.description, complete=True)


def describe_curve(metric: str, curve: list[float]) -> dict[str, float]:
    """Best value and its epoch, the mean of the last TAIL epochs, the mean absolute change between
    consecutive epochs over the second half (the swing), and best minus tail mean (the luck)."""
    values = np.asarray(curve, dtype=float)
    at = best_index(metric, values)
    tail = float(np.mean(values[-TAIL:]))
    half = values[len(values) // 2:]
    swing = float(np.mean(np.abs(np.diff(half)))) if len(half) > 1 else math.nan
    gap = float(values[at] - tail) if better(metric, 1.0, 0.0) else float(tail - values[at])
    return {"best": float(values[at]), "best_epoch": at + 1, "tail_mean": tail, "swing": swing, "luck": gap}


def _result(runs: list[dict], epochs: int, seeds: int, validation: str, complete: bool) -> dict:
    return {"epochs": epochs, "seeds": seeds, "validation": validation, "complete": complete, "runs": runs,
            "summary": summarise(runs)}


def summarise(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per start point and variant: means over seeds (and the seeds' spread of the best)."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(f"{run['start']}/{run['variant']}", []).append(run)
    summary = {}
    for key, group in groups.items():
        best = [r["best"] for r in group]
        summary[key] = {"start": group[0]["start"], "model": group[0]["model"], "variant": group[0]["variant"],
                        "seeds": len(group), "best_mean": float(np.mean(best)), "best_std": float(np.std(best)),
                        "tail_mean": float(np.mean([r["tail_mean"] for r in group])),
                        "swing": float(np.mean([r["swing"] for r in group])),
                        "luck": float(np.mean([r["luck"] for r in group])),
                        "epoch_s": float(np.nanmean([s for r in group for s in r["epoch_seconds"]]))}
    return summary


def table(result: dict) -> str:
    head = ("| start (model) | variant | seeds | best (mean ± sd over seeds) | last 5 epochs | swing | "
            "best - last 5 | s/epoch |\n|---|---|---:|---|---|---|---|---:|")
    rows = [f"| {s['start']} ({s['model']}) | {s['variant']} | {s['seeds']} | "
            f"{s['best_mean']:.3f} ± {s['best_std']:.3f} | {s['tail_mean']:.3f} | {s['swing']:.3f} | "
            f"{s['luck']:.3f} | {s['epoch_s']:.1f} |"
            for s in result["summary"].values()]
    return "\n".join([head, *rows])
