"""`benchmark quality`: how good the searched model is, told against what else one could run.

On the test records of one finished `full` search (its split.csv; the search is run first, within
a stated budget, unless `--run` names one):
- duration-only baselines: logistic regression on the recording length alone (plain and with
  balanced class weights), fitted on train + val: what the length shortcut is worth;
- MiniRocket (aeon) + ridge on records fitted to the best config's input length (zero-padded at
  the end or centre-trimmed, as the seed did): its test score, its wall time, and the search's
  best validation score at that same wall time (beside MiniRocket's own validation score);
- zero-padding against random-crop training for the best config: the refit repeated with the
  other `fit` (record-level windowed evaluation both ways);
- the anchors table: the search's test report against the published figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecg_tune.runs import RunFolder
from ecg_tune.training.metrics import better

if TYPE_CHECKING:
    from ecg_tune.data import Dataset
    from ecg_tune.refit import RefitSetup

# Published CinC 2017 figures (see the project's notes): not measured here, quoted.
ANCHORS = [
    ("2017 challenge winners, hidden test set (published)", 0.83),
    ("34-layer 1-D ResNet, random 10 % dev split (Hannun/Rajpurkar, published)", 0.866),
]


def _headline(test: dict) -> dict:
    """The figures the benchmark keeps of a test report (report.py's test_metrics)."""
    return {k: test[k] for k in ("accuracy", "macro_f1", "cinc_f1", "n_records", "ci95") if k in test}


def _scores(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], seed: int) -> dict:
    from ecg_tune.reporting.evaluation import test_metrics

    return _headline(test_metrics(truth, probabilities, classes, seed=seed))


def duration_baselines(dataset: Dataset, train_index: np.ndarray, test_index: np.ndarray, seed: int = 0) -> dict:
    """Classifiers that see only each record's length, fitted on train_index, scored on test_index.

    Features: log(length) and whether the length is the training records' most common one (69 %
    of CinC 2017 is exactly 30 s, and the classes differ in how often). Logistic regression, plain
    and with balanced class weights, and a balanced depth-3 tree on the length.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    lengths = dataset.tensors.lengths.astype(float)
    values, counts = np.unique(lengths[train_index], return_counts=True)
    modal = values[np.argmax(counts)]
    features = np.column_stack([np.log(lengths), lengths == modal]).astype(float)
    labels = dataset.tensors.labels
    assert labels is not None  # a prepared dataset is labelled
    classes = list(dataset.records.classes)
    models = {
        "logistic regression": LogisticRegression(max_iter=1000),
        "logistic regression, balanced": LogisticRegression(class_weight="balanced", max_iter=1000),
        "depth-3 tree, balanced": DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=seed),
    }
    result = {}
    for name, model in models.items():
        model.fit(features[train_index], labels[train_index])
        probabilities = np.zeros((len(test_index), len(classes)))
        probabilities[:, model.classes_] = model.predict_proba(features[test_index])
        result[name] = _scores(labels[test_index], probabilities, classes, seed)
    return result


def fitted_matrix(dataset: Dataset, index: np.ndarray, input_length: int) -> np.ndarray:
    """Records at `index` zero-padded at the end or centre-trimmed to input_length, as (n, 1, L)."""
    from ecg_tune.signal.augment import fit_to_length

    signals, lengths, _ = dataset.tensors.torch_views()
    rows = []
    for begin in range(0, len(index), 512):
        chunk = np.asarray(index[begin:begin + 512])
        rows.append(fit_to_length(signals[chunk], lengths[chunk], input_length).numpy())
    return np.concatenate(rows)[:, None, :].astype(np.float64)


def aeon_minirocket() -> type:
    """aeon's MiniRocket transform, or a one-line error saying how to install it (checked before a
    search, not after it: the baseline is the benchmark's last step)."""
    try:
        from aeon.transformations.collection.convolution_based import MiniRocket
    except ImportError:
        from ecg_tune.errors import EcgTuneError

        raise EcgTuneError("MiniRocket needs aeon: pip install -e '.[benchmark]'") from None
    return MiniRocket


def minirocket(dataset: Dataset, train_index: np.ndarray, val_index: np.ndarray, test_index: np.ndarray,
               input_length: int, n_kernels: int = 10_000, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """MiniRocket features + RidgeClassifierCV: validation score of a train fit (with its wall
    time), and test score of a train + val fit."""
    MiniRocket = aeon_minirocket()
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ecg_tune.training.evaluate import softmax
    from ecg_tune.training.metrics import classification_metrics

    labels = dataset.tensors.labels
    assert labels is not None  # a prepared dataset is labelled
    classes = list(dataset.records.classes)
    jobs = os.cpu_count() or 1

    def ridge():
        return make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))

    started = time.perf_counter()
    transform = MiniRocket(n_kernels=n_kernels, n_jobs=jobs, random_state=seed)
    train_x = transform.fit_transform(fitted_matrix(dataset, train_index, input_length))
    classifier = ridge().fit(train_x, labels[train_index])
    train_seconds = time.perf_counter() - started
    val_x = transform.transform(fitted_matrix(dataset, val_index, input_length))
    val_pred = classifier.predict(val_x)
    validation = classification_metrics(labels[val_index], val_pred, classes)
    log(f"MiniRocket: fitted on {len(train_index)} train records in {train_seconds:.0f} s; validation "
        + ", ".join(f"{k} {v:.3f}" for k, v in validation.items() if isinstance(v, float)))
    # The test model: the kernels' biases stay fitted on train; the ridge sees train + val features.
    both = np.concatenate([train_index, val_index])
    classifier = ridge().fit(np.concatenate([train_x, val_x]), labels[both])
    test_x = transform.transform(fitted_matrix(dataset, test_index, input_length))
    test = _scores(labels[test_index], softmax(classifier.decision_function(test_x)), classes, seed)
    return {"n_kernels": n_kernels, "input_length": input_length, "jobs": jobs,
            "train_wall_s": train_seconds, "total_wall_s": time.perf_counter() - started,
            "validation": {k: v for k, v in validation.items() if isinstance(v, float)}, "test": test}


def search_curve(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The search's best-so-far curve, timed from its first trial's start (Ray's own start-up,
    some seconds, is not counted), and its number of trials."""
    from ecg_tune.benchmarks.common import best_so_far

    histories = RunFolder(run_dir).histories()
    return (*best_so_far(histories, metric), len(histories))


def pad_versus_crop(run_dir: Path, setup: RefitSetup, cpus: float = 1.0, log: Callable[[str], None] = print) -> dict:
    """Test scores of the best config trained with fit=pad and fit=crop (the refit's own report is
    reused for the fit the search chose; the other is refitted the same way)."""
    from ecg_tune.refit import train_and_predict

    report = RunFolder(run_dir).report()
    chosen = setup.config.fit
    classes = list(setup.dataset.records.classes)
    assert setup.dataset.tensors.labels is not None  # a prepared dataset is labelled
    truth = setup.dataset.tensors.labels[setup.test_index]
    result: dict[str, dict] = {chosen: _headline(report["test"])}
    other = "crop" if chosen == "pad" else "pad"
    log(f"pad vs crop: the search chose fit={chosen}; refitting with fit={other}")
    output = train_and_predict(setup.config.with_updates(fit=other), setup.dataset, setup.train_index,
                               setup.test_index, setup.lr_schedule, cpus=cpus)
    result[other] = _scores(truth, output.probabilities, classes, setup.config.seed)
    return {"chosen_by_search": chosen, "epochs": len(setup.lr_schedule), **result}


def run_quality_benchmark(run_dir: Path, n_kernels: int = 10_000, cpus: float = 1.0,
                          log: Callable[[str], None] = print) -> dict:
    """Every figure of the module docstring for the finished (and refitted) search in run_dir."""
    from ecg_tune.benchmarks.common import value_at
    from ecg_tune.refit import refit_setup

    run = RunFolder(run_dir)
    report = run.report()  # says to refit first if there is no report
    setup = refit_setup(run)
    dataset, best = setup.dataset, setup.best
    train, val, test = dataset.index("train"), dataset.index("val"), dataset.index("test")
    input_length = setup.config.input_length or int(np.median(dataset.tensors.lengths[train]))

    duration = duration_baselines(dataset, np.concatenate([train, val]), test, seed=setup.config.seed)
    for name, scores in duration.items():
        log(f"duration-only ({name}): test "
            + ", ".join(f"{k} {scores[k]:.3f}" for k in ("accuracy", "macro_f1", "cinc_f1") if k in scores))
    rocket = minirocket(dataset, train, val, test, input_length, n_kernels=n_kernels, seed=setup.config.seed, log=log)
    metric = best.metric
    times, curve, trials = search_curve(run_dir, metric)
    rocket["search_best_val_at_same_wall_time"] = value_at(times, curve, rocket["train_wall_s"])
    rocket["search_seconds_to_beat_minirocket_val"] = next(
        (float(t) for t, v in zip(times, curve, strict=False)
         if metric.removeprefix("val_") in rocket["validation"]
         and better(metric, v, rocket["validation"][metric.removeprefix("val_")])),
        None)
    padcrop = pad_versus_crop(run_dir, setup, cpus=cpus, log=log)
    return {
        "run": str(run_dir), "data": best.data, "metric": metric,
        "search": {"best_config": best.config, "best_epoch": best.epoch, "val": best.metrics.get(metric),
                   "trials": trials, "last_improvement_s": float(times[-1]) if len(times) else None,
                   "test": _headline(report["test"]),
                   # A team (--ensemble K): its members and the single best trial's own test figures.
                   "ensemble": report.get("ensemble"), "refit_seconds": report.get("refit_seconds")},
        "duration_baseline": duration, "minirocket": rocket, "pad_vs_crop": padcrop,
        "anchors": [{"what": what, "cinc_f1": value} for what, value in ANCHORS],
    }


def table(result: dict, seed_grid: float | None = None) -> str:
    """The anchors table (CinC F1 where the data has the CinC classes, else macro F1)."""
    key = "cinc_f1" if "cinc_f1" in result["search"]["test"] else "macro_f1"

    def cell(scores: dict) -> str:
        low, high = scores["ci95"][key]
        return f"{scores[key]:.3f} [{low:.3f}, {high:.3f}]"

    rows = [("this project: `full` search + refit, test records", cell(result["search"]["test"]))]
    team = result["search"].get("ensemble")
    if team:
        rows.append((f"the single best trial alone ({team['single_best']['trial_id']}), test",
                     cell(team["single_best"]["test"])))
    for fit in ("pad", "crop"):
        chosen = " (the search's choice)" if result["pad_vs_crop"]["chosen_by_search"] == fit else ""
        rows.append((f"best config trained with fit={fit}{chosen}, test", cell(result["pad_vs_crop"][fit])))
    rows.append((f"MiniRocket ({result['minirocket']['n_kernels']} kernels) + ridge, test",
                 cell(result["minirocket"]["test"])))
    for name, scores in result["duration_baseline"].items():
        rows.append((f"duration only: {name}, test", cell(scores)))
    if seed_grid is not None:
        rows.append(("seed notebook's grid (1 epoch per config) in the `search` benchmark, validation",
                     f"{seed_grid:.3f}"))
    if key == "cinc_f1":
        rows += [(what, f"{value:.3f}") for what, value in ANCHORS]
    return "\n".join([f"| model | {key} [95 % interval] |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
