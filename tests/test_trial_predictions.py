"""Every trial keeps its predictions (issue 24, item 3): the validation probabilities of the epoch
the export ranks it by, saved in each checkpoint by the trainable (search/trainable.py) and copied
into the run folder by the export (search/export.py), ASHA-stopped trials included; a resumed
trial keeps the best it had. The --cv search's out-of-fold predictions are tested in test_cv.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ray import tune

from ecg_tune.data import Dataset, prepare
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.runs import RunFolder, TrialRecord
from ecg_tune.search import trainable
from ecg_tune.search.export import trial_records, write_trial_predictions
from ecg_tune.search.plan import SearchOptions
from ecg_tune.search.trainable import PREDICTIONS_FILE, BestPredictions, read_predictions, train_trial
from ecg_tune.training.folds import choose_validation
from ecg_tune.training.metrics import classification_metrics
from ecg_tune.training.reported import TRAINING_ITERATION


@pytest.fixture(scope="module")
def small() -> Dataset:
    return prepare("synthetic:80", progress=False)


class Trial:
    """Tune's two calls as one trial sees them, without a cluster: each checkpoint copied into
    the trial folder as checkpoint_<index> (Tune's layout), results kept in order."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch, restore_from: str | None = None) -> None:
        self.folder, self.results = folder, []
        folder.mkdir(parents=True, exist_ok=True)
        restored = None if restore_from is None else tune.Checkpoint.from_directory(str(folder / restore_from))
        monkeypatch.setattr(tune, "get_checkpoint", lambda: restored)
        monkeypatch.setattr(tune, "report", self.report)

    def report(self, metrics: dict, checkpoint: tune.Checkpoint | None = None) -> None:
        assert checkpoint is not None
        shutil.copytree(checkpoint.path, self.folder / f"checkpoint_{len(self.checkpoints()):06d}")
        self.results.append(metrics)

    def checkpoints(self) -> list[Path]:
        return sorted(self.folder.glob("checkpoint_*"))

    def saved(self, checkpoint: Path) -> tuple[int, str, float]:
        """(epoch, metric, value) of the predictions a checkpoint holds."""
        predictions, metric, value = read_predictions((checkpoint / PREDICTIONS_FILE).read_bytes(), "t", "test")
        return predictions.epoch, metric, value


# the trainable, with the loop played by a script ------------------------------------------------


@dataclass
class _Epoch:
    """What the trainable reads of a fit_folds epoch: metrics, a state, the predictions, and each
    fold's network and head (what its costs are measured on: stubbed by `_scripted`)."""

    epoch: int
    metrics: dict[str, Any]
    data: Any
    folds: tuple[Any, ...] = (SimpleNamespace(network=None, head=None),)

    def state(self) -> dict[str, Any]:
        return {"folds": [{"epoch": self.epoch}]}

    def validation_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(3)
        probabilities = np.full((3, len(self.data.classes)), 0.0, dtype=np.float64)
        probabilities[:, self.epoch % len(self.data.classes)] = 1.0  # tells the epochs apart
        return index, probabilities


def _scripted(monkeypatch: pytest.MonkeyPatch, values: list[float], metric: str) -> None:
    def fake_fit_folds(config, data, folds, *, device=None, resume=None):
        start = resume["folds"][0]["epoch"] if resume else 0
        for epoch in range(start + 1, config.epochs + 1):
            yield _Epoch(epoch, {"epoch": epoch, metric: values[epoch - 1]}, data)

    monkeypatch.setattr(trainable, "fit_folds", fake_fit_folds)
    # No network to measure: the trial's costs are given (tests/test_costs.py measures real ones).
    monkeypatch.setattr(trainable.TrialCosts, "measure", classmethod(lambda cls, *args: cls(1, 1, 1.0)))


def _train(small: Dataset, epochs: int, metric: str | None = None) -> None:
    train_trial({"model": "simple_cnn"}, small.tensors, choose_validation(small, 1, 0).folds, max_epochs=epochs,
                seed=0, metric=metric)


@pytest.mark.parametrize(("metric", "values", "best"), [
    ("val_macro_f1", [0.5, 0.7, 0.7, float("nan"), 0.6], 2),  # the first of equal bests; NaN never better
    ("val_loss", [1.0, 0.8, 0.9, 0.8, 0.85], 2),  # a loss: the lowest
    ("val_macro_f1", [float("nan"), 0.2, 0.1, 0.1, 0.1], 2),
])
def test_every_checkpoint_holds_the_best_epoch_so_far(monkeypatch: pytest.MonkeyPatch, small: Dataset,
                                                      tmp_path: Path, metric: str, values: list[float],
                                                      best: int) -> None:
    _scripted(monkeypatch, values, metric)
    trial = Trial(tmp_path / "trial", monkeypatch)
    _train(small, 5, metric)
    kept = [trial.saved(c) if (c / PREDICTIONS_FILE).exists() else None for c in trial.checkpoints()]
    expected = [None if np.isnan(values[0]) else (1, metric, values[0])]
    for epoch in range(2, 6):
        scored = [(e, v) for e, v in enumerate(values[:epoch], 1) if not np.isnan(v)]
        first = min(scored, key=lambda ev: (ev[1] if metric == "val_loss" else -ev[1], ev[0]))
        expected.append((first[0], metric, first[1]))
    assert kept == expected and kept[-1][0] == best
    saved, _, _ = read_predictions((trial.checkpoints()[-1] / PREDICTIONS_FILE).read_bytes(), "t", "test")
    assert saved.record_ids == tuple(small.tensors.record_ids[:3])
    assert saved.classes == tuple(small.tensors.classes) and saved.probabilities.dtype == np.float32
    assert saved.probabilities[:, best % 4].tolist() == [1.0, 1.0, 1.0]


def test_a_resumed_trial_keeps_the_best_it_had(monkeypatch: pytest.MonkeyPatch, small: Dataset,
                                              tmp_path: Path) -> None:
    # The best (epoch 2) comes before the checkpoint the trial resumes from (epoch 3); the epochs
    # after it are worse: the latest checkpoint still holds epoch 2's predictions.
    values = [0.5, 0.9, 0.6, 0.7, 0.8]
    _scripted(monkeypatch, values, "val_macro_f1")
    folder = tmp_path / "trial"
    Trial(folder, monkeypatch)
    _train(small, 3, "val_macro_f1")
    resumed = Trial(folder, monkeypatch, restore_from="checkpoint_000002")
    _train(small, 5, "val_macro_f1")
    assert [r[TRAINING_ITERATION] for r in resumed.results] == [4, 5]
    assert [resumed.saved(c) for c in resumed.checkpoints()[3:]] == [(2, "val_macro_f1", 0.9)] * 2
    # Predictions ranked by another metric are not carried on: the resumed trial starts its best again.
    _scripted(monkeypatch, values, "val_loss")
    other = Trial(folder, monkeypatch, restore_from="checkpoint_000002")
    _train(small, 4, "val_loss")
    assert other.saved(other.checkpoints()[-1])[:2] == (4, "val_loss")


def test_a_checkpoint_without_predictions_still_resumes(monkeypatch: pytest.MonkeyPatch, small: Dataset,
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _scripted(monkeypatch, [0.9, 0.5, 0.6], "val_macro_f1")
    folder = tmp_path / "trial"
    Trial(folder, monkeypatch)
    _train(small, 2, "val_macro_f1")
    (folder / "checkpoint_000001" / PREDICTIONS_FILE).write_bytes(b"not parquet")  # unreadable
    caplog.set_level(logging.WARNING, logger="ecg_tune.search.trainable")
    resumed = Trial(folder, monkeypatch, restore_from="checkpoint_000001")
    _train(small, 3, "val_macro_f1")
    assert [r[TRAINING_ITERATION] for r in resumed.results] == [3]  # the state was good
    assert "its predictions are unreadable" in caplog.text
    assert resumed.saved(resumed.checkpoints()[-1])[0] == 3  # the best of what came after


def test_the_real_loop_resumed_saves_what_the_uninterrupted_run_saves(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    dataset = prepare("synthetic:60", progress=False)
    config = {"model": "simple_cnn", "input_length": 600, "batch_size": 16, "lr": 0.003}
    folds = choose_validation(dataset, 1, 0).folds

    def last_saved(folder: Path, epochs: int, restore_from: str | None = None) -> Any:
        trial = Trial(folder, monkeypatch, restore_from)
        train_trial(config, dataset.tensors, folds, max_epochs=epochs, seed=0, metric="val_loss")
        return read_predictions((trial.checkpoints()[-1] / PREDICTIONS_FILE).read_bytes(), "t", "test")

    straight, _, value = last_saved(tmp_path / "straight", 3)
    last_saved(tmp_path / "resumed", 2)
    resumed, _, resumed_value = last_saved(tmp_path / "resumed", 3, restore_from="checkpoint_000001")
    assert resumed.epoch == straight.epoch and resumed_value == pytest.approx(value, rel=1e-5)
    assert resumed.record_ids == tuple(dataset.tensors.record_ids[i] for i in dataset.index("val"))
    np.testing.assert_allclose(resumed.probabilities, straight.probabilities, rtol=1e-4, atol=1e-6)


# the export ------------------------------------------------------------------------------------


@dataclass
class _Result:
    path: str


def test_the_export_takes_the_newest_checkpoint_of_the_best_epoch(tmp_path: Path, small: Dataset,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    run = RunFolder(tmp_path / "run")
    experiment = run.path / "experiment"

    def checkpoint(trial: str, index: int, epoch: int, value: float) -> None:
        result = _Epoch(epoch, {"val_macro_f1": value}, small.tensors)
        best = BestPredictions.keep(None, "val_macro_f1", result, small.tensors)  # type: ignore[arg-type]
        assert best is not None
        folder = experiment / f"train_trial_{trial}" / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True)
        (folder / PREDICTIONS_FILE).write_bytes(best.content)

    # a: a checkpoint newer than the last result Tune registered holds a later best (epoch 4)
    checkpoint("a", 0, 2, 0.5)
    checkpoint("a", 1, 4, 0.6)
    checkpoint("b", 0, 3, 0.5)  # b's best epoch is 2: its only checkpoint is of another epoch
    records = [TrialRecord(trial_id=t, status="stopped", epochs=3, config={}, best_epoch=2) for t in "abc"]
    records.append(TrialRecord(trial_id="d", status="errored", epochs=0, config={}))  # never reported
    results = [_Result(str(experiment / f"train_trial_{t}")) for t in "abcd"]
    caplog.set_level(logging.WARNING, logger="ecg_tune.search.export")
    assert write_trial_predictions(results, records, run) == 1
    saved = run.trial_predictions()
    assert list(saved) == ["a"] and saved["a"].epoch == 2 and saved["a"].trial_id == "a"
    assert "no validation predictions at the best epoch for 2 trial(s): b, c" in caplog.text


# a real search ---------------------------------------------------------------------------------


def test_every_trial_of_a_search_keeps_its_predictions_at_its_best_epoch(ray_cluster, small: Dataset,
                                                                        tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("model: simple_cnn\ninput_length: 600\nbatch_size: 16\naugmentation: none\n"
                     "lr: {type: float, low: 0.0001, high: 0.01, log: true}\n"
                     "search: {max_epochs: 4, grace_period: 1, reduction_factor: 2}\n")
    result = run_pipeline(PipelineOptions(search=SearchOptions(
        out=tmp_path / "out", num_samples=6, cpus_per_trial=1, max_concurrent=2, cv=1), space=space, refit=None),
        dataset=small)
    run: RunFolder = result.run
    trials = pd.read_csv(run.path / "trials.csv").set_index("trial_id")
    assert (trials["status"] == "stopped").any()  # ASHA stopped some: they keep theirs too
    saved = run.trial_predictions()
    assert set(saved) == set(trials.index[trials["best_epoch"].notna()]) == set(trials.index)
    val = small.index("val")
    for trial_id, predictions in saved.items():
        assert predictions.epoch == trials.loc[trial_id, "best_epoch"]
        assert predictions.record_ids == tuple(small.tensors.record_ids[i] for i in val)
        # what the trial was scored on at that epoch
        history = run.history(trial_id).set_index(TRAINING_ITERATION)
        scored = classification_metrics(small.tensors.labels[val], predictions.probabilities.argmax(axis=1),
                                        small.tensors.classes)
        assert scored["cinc_f1"] == pytest.approx(history.loc[predictions.epoch, "val_cinc_f1"])
        assert scored["confusion"] == json.loads(history.loc[predictions.epoch, "val_confusion"])


def test_a_trial_handed_another_trials_last_result_is_exported_as_itself() -> None:
    """Ray 2.60 with reused actors: a trial started as the time budget ends can come back with the
    previous trial's last result (its id, metrics and config) and no history of its own. It is
    exported under its own id (its folder's name) with no metrics or config, and a trial whose
    own history exists keeps its history's id and config."""
    def history(trial_id: str, epochs: int) -> pd.DataFrame:
        return pd.DataFrame({TRAINING_ITERATION: range(1, epochs + 1), "trial_id": trial_id,
                             "val_macro_f1": np.linspace(0.5, 0.7, epochs), "config/model": "simple_cnn",
                             "config/lr": 0.01})
    first = {"trial_id": "0696298c", "val_macro_f1": 0.7, "config": {"model": "cnn_svm", "lr": 0.5}}
    folder = "/x/experiment/train_trial_{}_{}_augmentation=none,model=cnn_svm_2026-12-05_21-57-34"
    results = [
        SimpleNamespace(metrics=first, metrics_dataframe=history("0696298c", 3), error=None,
                        path=folder.format("0696298c", 317), config=first["config"]),
        SimpleNamespace(metrics=first, metrics_dataframe=None, error=None,  # never reported
                        path=folder.format("7b60250b", 320), config=first["config"]),
        SimpleNamespace(metrics=first, metrics_dataframe=history("aa11bb22", 2), error=None,  # reported, then handed
                        path=folder.format("aa11bb22", 318), config=first["config"]),
    ]
    records = trial_records(results, "val_macro_f1", max_epochs=54)
    assert [r.trial_id for r in records] == ["0696298c", "7b60250b", "aa11bb22"]
    assert records[0].config == {"model": "cnn_svm", "lr": 0.5} and records[0].best_epoch == 3
    assert records[1].epochs == 0 and records[1].config == {} and records[1].best == {}
    assert records[2].config == {"model": "simple_cnn", "lr": 0.01} and records[2].epochs == 2

