"""The refit: the search's best config retrained on train + validation, evaluated once on the test
records, exported as a model bundle, with report.json and pictures.

It reuses the training loop (replaying the learning rate the best trial used at each epoch, since
no validation data is left for ReduceLROnPlateau) and the network building of the trainable. A
cross-validated search's trial reported the fold mean per epoch: the refit trains for the epoch
where that mean peaked, replaying the median rate of the folds (training/folds.py). The
training runs as a Ray task with the trials' resource rules, so it also works on a remote cluster;
its progress lines come back through a Ray queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.runs import BestConfig, RunFolder
from ecg_tune.training.reported import TRAINING_ITERATION


class RefitOptions(BaseModel):
    """Resources of the refit task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, gt=0)
    gpus: float | None = Field(None, ge=0)  # None: 0.25 when the cluster has GPUs, else 0
    address: str | None = None  # a Ray cluster to run on (None: the search's, or a local one)
    connect_timeout: float = Field(30.0, gt=0)


@dataclass
class TrainedModel:
    """What the refit task returns: the training history, the trained parts, test probabilities."""

    history: list[dict[str, Any]]
    state: dict[str, Any]  # the network's state dict, on the CPU
    input_length: int
    head: bytes | None  # the model's fitted head (FittedHead.to_bytes, models/head.py) if it has one
    probabilities: np.ndarray  # per test record


@dataclass
class RefitResult:
    """A finished refit: the test report (as written to report.json) and where it went."""

    run: RunFolder
    report: dict[str, Any]
    epochs: int

    @property
    def test(self) -> dict[str, Any]:
        return dict(self.report["test"])


def _refit_task(config_values: dict[str, Any], tensors: Any, train_index: np.ndarray, test_index: np.ndarray,
                lr_schedule: list[float], queue: Any, threads: int) -> TrainedModel:
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
                      head_last_epoch_only=True):
        history.append(result.metrics)
        last = result
        queue.put(f"refit epoch {result.epoch}/{len(lr_schedule)}  train_loss {result.metrics['train_loss']:.4f}  "
                  f"lr {result.metrics['lr']:.2g}  {result.metrics['epoch_seconds']:.1f} s")
    assert last is not None, "the refit trains at least one epoch"
    if last.head is not None:
        queue.put(f"refit: {last.head.name} fitted on all training features")
    probabilities, _ = record_probabilities(last.network, last.head, tensors, test_index, config.normalisation,
                                            config.window_overlap, device)
    return TrainedModel(history=history,
                        state={k: v.detach().cpu() for k, v in last.network.state_dict().items()},
                        input_length=last.network.input_length,
                        head=last.head.to_bytes() if last.head is not None else None,
                        probabilities=probabilities)


def train_and_predict(config: TrainConfig, dataset: Dataset, train_index: np.ndarray, test_index: np.ndarray,
                      lr_schedule: list[float], cpus: float = 1.0, gpus: float | None = None,
                      address: str | None = None, connect_timeout: float = 30.0) -> TrainedModel:
    """Train `config` on `train_index` as a Ray task (progress printed here), then predict `test_index`."""
    import ray
    from ray.util.queue import Queue

    from ecg_tune.search.cluster import connect

    connect(address, connect_timeout)  # no-op inside a search, which is connected already
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
    output: TrainedModel = ray.get(pending)
    while not queue.empty():
        print(queue.get(), flush=True)
    return output


def lr_schedule_of(run: RunFolder, best: BestConfig) -> list[float]:
    """The learning rate the best trial used at each epoch up to its peak (constant if unknown)."""
    history = run.history(best.trial_id)
    if history is not None and "lr" in history:
        return [float(v) for v in history.sort_values(TRAINING_ITERATION)["lr"].tolist()[:best.epoch]]
    return [float(best.config.get("lr", 1e-3))] * best.epoch


@dataclass
class RefitSetup:
    """What a refit of a finished search trains and tests."""

    best: BestConfig
    config: TrainConfig
    dataset: Dataset
    train_index: np.ndarray  # train + val
    test_index: np.ndarray
    lr_schedule: list[float]  # one rate per epoch, up to the best trial's peak


def refit_setup(run: RunFolder) -> RefitSetup:
    """The best config of the search in `run`, its data and split, and the epochs to train."""
    best = run.best()
    lr_schedule = lr_schedule_of(run, best)
    config = make_config({**best.config, "epochs": len(lr_schedule)}, where=str(run.best_config_path))
    dataset = prepare(best.data, split_file=run.split_path, seed=config.seed, split_digest=best.split_digest)
    train_index, test_index = dataset.index("train", "val"), dataset.index("test")
    from ecg_tune.models import MODELS

    # A part that learns from a subsample of records per epoch (cnn_svm's SVM stage: its
    # svm_max_train) learns from every training record in the refit.
    config = config.with_updates(**{key: max(config.value(key), len(train_index)) for key in MODELS.record_caps()})
    return RefitSetup(best, config, dataset, train_index, test_index, lr_schedule)


def run_refit(run: RunFolder, options: RefitOptions | None = None) -> RefitResult:
    """Refit the best config of the search in `run`; write report, pictures and model/."""
    options = options or RefitOptions()
    run = RunFolder(run.path.resolve())
    with run.lock():  # not while a search (or another refit) writes to the folder
        return _refit(run, options)


def _refit(run: RunFolder, options: RefitOptions) -> RefitResult:
    from ecg_tune.bundle import save_bundle
    from ecg_tune.reporting.evaluation import headline, test_metrics
    from ecg_tune.reporting.page import write_html_report
    from ecg_tune.reporting.pictures import write_pictures
    from ecg_tune.training.network import build_network

    setup = refit_setup(run)
    best, config, dataset, lr_schedule = setup.best, setup.config, setup.dataset, setup.lr_schedule
    train_index, test_index = setup.train_index, setup.test_index
    epochs = len(lr_schedule)
    peak = f" (where the mean of its {best.cv} folds peaked)" if best.cv > 1 else ""
    print(f"refit: {best.trial_id}'s config for {epochs} epochs{peak} on {len(train_index)} train+val records; "
          f"test: {len(test_index)} records", flush=True)

    output = train_and_predict(config, dataset, train_index, test_index, lr_schedule, options.cpus, options.gpus,
                               options.address, options.connect_timeout)

    classes = dataset.records.classes
    assert dataset.tensors.labels is not None  # data.prepare refuses unlabelled data
    truth = dataset.tensors.labels[test_index]
    test = test_metrics(truth, output.probabilities, classes, seed=config.seed)
    report = run.write_report(test, best.metrics, config.to_dict(), epochs)
    network = build_network(config, output.input_length, len(classes))
    network.load_state_dict(output.state)
    head = network.model.restore_head(output.head)
    save_bundle(run.model_dir, network, head, config, classes, dataset.records.fs)
    run.write_predictions(pd.DataFrame({
        "record": [dataset.records.record_ids[i] for i in test_index],
        "true": [classes[i] for i in truth],
        "predicted": [classes[i] for i in output.probabilities.argmax(axis=1)],
        **{f"p_{c}": output.probabilities[:, k] for k, c in enumerate(classes)}}))

    histories = run.histories()
    pictures = write_pictures(run, best, test, output.history, histories)
    html = write_html_report(run, histories)
    print(f"test ({test['n_records']} records, once): {headline(test)}", flush=True)
    print(f"refit results in {run.path}: report.json, report.html, confusion_matrix.png, training_curves.png, "
          f"search_overview.png, test_predictions.csv, model/", flush=True)
    from ecg_tune.tracking import log_refit  # does nothing (imports no MLflow) unless --mlflow

    log_refit(run, test, [*pictures, html.path])
    return RefitResult(run=run, report=report, epochs=epochs)
