"""The refit: the search's best config retrained on train + validation, evaluated once on the test
records, exported as a model bundle, with report.json and pictures.

It reuses the training loop (replaying the learning rate the best trial used at each epoch, since
no validation data is left for ReduceLROnPlateau) and the network building of the trainable. The
training runs as a Ray task with the trials' resource rules, so it also works on a remote cluster;
its progress lines come back through a Ray queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.errors import EcgTuneError


def trial_history(run_dir: Path, trial_id: str) -> pd.DataFrame | None:
    """The per-epoch results a trial reported (its result.json under experiment/)."""
    matches = sorted((run_dir / "experiment").glob(f"*{trial_id}*/result.json"))
    if not matches:
        return None
    rows = [json.loads(line) for line in matches[0].read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows) if rows else None


def all_histories(run_dir: Path) -> dict[str, pd.DataFrame]:
    histories = {}
    for path in (run_dir / "experiment").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            histories[str(rows[0].get("trial_id", path.parent.name))] = pd.DataFrame(rows)
    return histories


def _refit_task(config_values: dict, tensors, train_index, test_index, lr_schedule, queue, threads: int) -> dict:
    """Train, then predict the test records; runs where Ray places it, on `threads` CPU threads."""
    import torch

    torch.set_num_threads(threads)  # a pooled worker keeps the thread count of its last task
    from ecg_tune.training.device import pick_device
    from ecg_tune.training.evaluate import record_probabilities
    from ecg_tune.training.loop import fit

    config = make_config(config_values, where="best config")
    device = pick_device()
    history, last = [], None
    for result in fit(config, tensors, train_index, None, device=device, lr_schedule=lr_schedule,
                      svm_last_epoch_only=True):
        history.append(result.metrics)
        last = result
        queue.put(f"refit epoch {result.epoch}/{len(lr_schedule)}  train_loss {result.metrics['train_loss']:.4f}  "
                  f"lr {result.metrics['lr']:.2g}  {result.metrics['epoch_seconds']:.1f} s")
    if last.svm is not None:
        queue.put("refit: SVM stage fitted on all training features")
    probabilities, _ = record_probabilities(last.network, last.svm, tensors, test_index, config.normalisation,
                                            config.window_overlap, device)
    return {
        "history": history,
        "state": {k: v.detach().cpu() for k, v in last.network.state_dict().items()},
        "input_length": last.network.input_length,
        "svm": last.svm.to_bytes() if last.svm is not None else None,
        "probabilities": probabilities,
    }


def train_and_predict(config: TrainConfig, dataset: Dataset, train_index: np.ndarray, test_index: np.ndarray,
                      lr_schedule: list[float], cpus: float = 1.0, gpus: float | None = None) -> dict:
    """Train `config` on `train_index` as a Ray task (progress printed here), then predict `test_index`.

    Returns the task's output: history, network state, input length, SVM bytes, test probabilities.
    """
    import ray
    from ray.util.queue import Queue

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    if gpus is None:
        gpus = 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    queue = Queue()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_refit_task)
    pending = task.remote(config.to_dict(), dataset.tensors, train_index, test_index, lr_schedule, queue,
                          max(1, int(cpus)))
    while True:
        done, _ = ray.wait([pending], timeout=0.5)
        while not queue.empty():
            print(queue.get(), flush=True)
        if done:
            break
    output = ray.get(pending)
    while not queue.empty():
        print(queue.get(), flush=True)
    return output


def lr_schedule_of(run_dir: Path, best: dict) -> list[float]:
    """The learning rate the best trial used at each epoch up to its peak (constant if unknown)."""
    epochs = int(best["epoch"])
    history = trial_history(run_dir, best["trial_id"])
    if history is not None and "lr" in history:
        return [float(v) for v in history.sort_values("training_iteration")["lr"].tolist()[:epochs]]
    return [float(best["config"].get("lr", 1e-3))] * epochs


@dataclass
class RefitSetup:
    """What a refit of a finished search trains and tests."""

    best: dict  # best_config.json
    config: TrainConfig
    dataset: Dataset
    train_index: np.ndarray  # train + val
    test_index: np.ndarray
    lr_schedule: list[float]  # one rate per epoch, up to the best trial's peak


def refit_setup(run_dir: Path) -> RefitSetup:
    """The best config of the search in `run_dir`, its data and split, and the epochs to train."""
    best_path = run_dir / "best_config.json"
    if not best_path.is_file():
        raise EcgTuneError(f"{run_dir}: no best_config.json (is this a finished search folder?)")
    best = json.loads(best_path.read_text())
    lr_schedule = lr_schedule_of(run_dir, best)
    config = make_config({**best["config"], "epochs": len(lr_schedule)}, where=str(best_path))
    dataset = prepare(best["data"], split_file=run_dir / "split.csv", seed=config.seed)
    train_index, test_index = dataset.index("train", "val"), dataset.index("test")
    # The SVM stage is fitted on all the refit's training records, not a subsample.
    config = config.with_updates(svm_max_train=max(config.value("svm_max_train"), len(train_index)))
    return RefitSetup(best, config, dataset, train_index, test_index, lr_schedule)


def run_refit(run_dir: Path, cpus: float = 1.0, gpus: float | None = None) -> dict:
    """Refit the best config of the search in `run_dir`; write report, pictures and model/."""
    from ecg_tune.bundle import save_bundle
    from ecg_tune.models.svm import SVMStage
    from ecg_tune.report import plot_confusion, plot_search_overview, plot_training_curves, test_metrics, write_report
    from ecg_tune.training.network import build_network

    run_dir = Path(run_dir).resolve()
    setup = refit_setup(run_dir)
    best, config, dataset, lr_schedule = setup.best, setup.config, setup.dataset, setup.lr_schedule
    train_index, test_index = setup.train_index, setup.test_index
    epochs = len(lr_schedule)
    history = trial_history(run_dir, best["trial_id"])
    print(f"refit: {best['trial_id']}'s config for {epochs} epochs on {len(train_index)} train+val records; "
          f"test: {len(test_index)} records", flush=True)

    output = train_and_predict(config, dataset, train_index, test_index, lr_schedule, cpus, gpus)

    classes = dataset.records.classes
    truth = dataset.tensors.labels[test_index]
    test = test_metrics(truth, output["probabilities"], classes, seed=config.seed)
    validation = best.get("metrics", {})
    report = write_report(run_dir / "report.json", test, validation, config.to_dict(), epochs)
    network = build_network(config, output["input_length"], len(classes))
    network.load_state_dict(output["state"])
    svm = SVMStage.from_bytes(output["svm"]) if output["svm"] else None
    save_bundle(run_dir / "model", network, svm, config, classes, dataset.records.fs)
    pd.DataFrame({"record": [dataset.records.record_ids[i] for i in test_index],
                  "true": [classes[i] for i in truth],
                  "predicted": [classes[i] for i in output["probabilities"].argmax(axis=1)],
                  **{f"p_{c}": output["probabilities"][:, k] for k, c in enumerate(classes)}}
                 ).to_csv(run_dir / "test_predictions.csv", index=False)

    metric = best.get("metric", "val_macro_f1")
    histories = all_histories(run_dir)
    plot_confusion(test["confusion_matrix"], classes, run_dir / "confusion_matrix.png")
    plot_training_curves(output["history"], history, histories, metric, run_dir / "training_curves.png")
    trials_path = run_dir / "trials.csv"
    trials = pd.read_csv(trials_path) if trials_path.is_file() else pd.DataFrame()
    plot_search_overview(trials, histories, metric, run_dir / "search_overview.png")
    headline = " ".join(f"{k} {test[k]:.3f} [{test['ci95'][k][0]:.3f}, {test['ci95'][k][1]:.3f}]"
                        for k in ("accuracy", "macro_f1", "cinc_f1") if k in test)
    print(f"test ({test['n_records']} records, once): {headline}", flush=True)
    print(f"refit results in {run_dir}: report.json, confusion_matrix.png, training_curves.png, "
          f"search_overview.png, test_predictions.csv, model/", flush=True)
    return report
