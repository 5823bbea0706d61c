"""Record-level k-fold cross-validation as the ranking metric: the folds, the lockstep reports, a
small real search with --cv, its exports and the refit's epoch."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from ecg_tune.cli import main, options_from_args
from ecg_tune.config import make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.data.split import make_folds
from ecg_tune.errors import DataError, EcgTuneError
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.refit import RefitOptions, refit_setup, run_refit
from ecg_tune.runs import RunFolder
from ecg_tune.search.plan import SearchOptions
from ecg_tune.training import folds as folds_module
from ecg_tune.training.folds import AUTO_BELOW, choose_validation, fit_folds
from ecg_tune.training.loop import fit
from ecg_tune.training.metrics import direction
from ecg_tune.training.reported import TRAINING_ITERATION, combine_folds, is_metric, spread_of


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks train faster on one thread than on two contended ones (as trials run)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return prepare("synthetic:80", progress=False)


@pytest.fixture(scope="module")
def beats(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Short three-class records (a UCR-style table): training on them takes milliseconds."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 96)
    rows = [np.concatenate([[1 + i % 3], np.sin(2 * np.pi * (2 + i % 3) * t + rng.uniform(0, 6))
                            + 0.5 * rng.standard_normal(96)]) for i in range(90)]
    path = tmp_path_factory.mktemp("beats") / "Beats_TRAIN.txt"
    np.savetxt(path, np.array(rows))
    return prepare(str(path), progress=False)


def _train_val(dataset: Dataset) -> np.ndarray:
    return np.isin(dataset.split, ("train", "val"))


# folds ------------------------------------------------------------------------------------------


def test_folds_are_disjoint_cover_train_and_val_and_are_stratified(small: Dataset) -> None:
    fold = make_folds(small.records, small.split, 4, seed=0)
    assert set(fold[_train_val(small)]) == {0, 1, 2, 3}  # every train/val record in exactly one fold
    assert (fold[~_train_val(small)] == -1).all()  # test records in none
    labels = small.records.labels
    for label in np.unique(labels[_train_val(small)]):
        per_fold = np.bincount(fold[_train_val(small) & (labels == label)], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    sizes = np.bincount(fold[fold >= 0])
    assert sizes.max() - sizes.min() <= 1, sizes


def test_folds_are_seeded_and_deterministic(small: Dataset) -> None:
    first = make_folds(small.records, small.split, 3, seed=5)
    assert (first == make_folds(small.records, small.split, 3, seed=5)).all()
    assert (first != make_folds(small.records, small.split, 3, seed=6)).any()


def test_a_patient_is_never_on_both_sides_of_a_fold() -> None:
    dataset = prepare("synthetic:80", progress=False)
    records = dataset.records
    # Patients of two or three records each, of the records' own class.
    records.groups = [f"{records.classes[label]}-{i // 3}" for i, label in enumerate(records.labels)]
    fold = make_folds(records, dataset.split, 3, seed=0)
    by_patient: dict[str, set[int]] = {}
    for group, f in zip(records.groups, fold, strict=True):
        if f >= 0:
            by_patient.setdefault(group, set()).add(int(f))
    assert all(len(folds) == 1 for folds in by_patient.values())
    assert len(set().union(*by_patient.values())) == 3


def test_fold_counts_out_of_reach_are_one_line_errors(small: Dataset) -> None:
    with pytest.raises(DataError, match=r"^--cv 1: cross-validation needs at least 2 folds$"):
        make_folds(small.records, small.split, 1)
    # synthetic:80 has 6 noise (~) records in train + val.
    with pytest.raises(DataError, match=r"^--cv 9: synthetic:80 has 6 train\+val records of class ~; "
                                        r"at most 6 folds are possible$"):
        make_folds(small.records, small.split, 9)


def test_auto_cross_validates_below_the_documented_val_size(small: Dataset) -> None:
    assert (small.split == "val").sum() < AUTO_BELOW
    auto = choose_validation(small, "auto", seed=0)
    assert auto.k == 5 and "5-fold cross-validation over 69 train+val records (13-14 per fold; automatic: " \
        "the val part has 11 < 100 records)" in auto.description
    for train, val in auto.folds:
        assert not set(train) & set(val) and len(train) + len(val) == 69
    single = choose_validation(small, 1, seed=0)
    assert single.k == 1 and "--cv 1" in single.description
    assert (single.folds[0][1] == small.index("val")).all()
    large = prepare("synthetic:800", progress=False)
    assert (large.split == "val").sum() >= AUTO_BELOW
    assert choose_validation(large, "auto", seed=0).k == 1


def test_the_flag_and_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--dry-run", "--space", "smoke", "--cv", "3", "--data", "synthetic:60",
                 "--out", str(tmp_path / "dry")]) == 0
    assert "validation: 3-fold cross-validation over 51 train+val records (17 per fold)" in capsys.readouterr().out
    with pytest.raises(EcgTuneError, match=r"^--cv: must be at least 1"):
        options_from_args(SearchOptions, argparse.Namespace(cv=0), out=tmp_path)
    assert main(["search", "--dry-run", "--space", "smoke", "--cv", "9", "--data", "synthetic:60"]) == 2
    assert "error: --cv 9: synthetic:60 has 5 train+val records of class ~" in capsys.readouterr().err


def test_a_spread_is_read_not_ranked() -> None:
    assert spread_of("val_cinc_f1_std") == "val_cinc_f1" and spread_of("val_f1_N_std") == "val_f1_N"
    assert spread_of("val_cinc_f1") is None and not is_metric("val_f1_N_std")
    with pytest.raises(ValueError, match="spread"):
        direction("val_loss_std")


# lockstep ---------------------------------------------------------------------------------------

TINY = {"model": "simple_cnn", "batch_size": 16, "epochs": 2, "augmentation": "none"}


def test_lockstep_reports_the_folds_mean_and_spread(beats: Dataset) -> None:
    config = make_config({**TINY, "input_length": 96})
    validation = choose_validation(beats, 3, seed=0)
    together = list(fit_folds(config, beats.tensors, validation.folds, device="cpu"))
    alone = [list(fit(config, beats.tensors, train, val, device="cpu")) for train, val in validation.folds]
    assert [r.epoch for r in together] == [1, 2]
    for epoch, report in enumerate(together):
        per_fold = [run[epoch].metrics for run in alone]
        for key in ("val_loss", "val_macro_f1", "val_accuracy", "val_f1_2"):
            values = [m[key] for m in per_fold]
            assert report.metrics[key] == pytest.approx(np.mean(values), abs=1e-6), key
            assert report.metrics[key + "_std"] == pytest.approx(np.std(values), abs=1e-6), key
        assert report.metrics["train_loss"] == pytest.approx(np.mean([m["train_loss"] for m in per_fold]), abs=1e-6)
        assert "train_loss_std" not in report.metrics
        confusion = np.sum([m["val_confusion"] for m in per_fold], axis=0)
        assert (np.asarray(report.metrics["val_confusion"]) == confusion).all()
        assert confusion.sum() == _train_val(beats).sum()  # every train + val record predicted once
        # out of fold: each fold's val records as that fold's model scored them, in record order
        index, probabilities = report.validation_predictions()
        assert (index == np.flatnonzero(_train_val(beats))).all()
        for (_, val), run in zip(validation.folds, alone, strict=True):
            np.testing.assert_allclose(probabilities[np.searchsorted(index, val)], run[epoch].val_probabilities,
                                       rtol=1e-5, atol=1e-6)


def test_a_resumed_lockstep_repeats_the_uninterrupted_one(beats: Dataset) -> None:
    config = make_config({**TINY, "epochs": 3, "lr_scheduler": "plateau", "plateau_patience": 0})
    folds = choose_validation(beats, 2, seed=0).folds
    whole = [r.metrics for r in fit_folds(config, beats.tensors, folds, device="cpu")]
    first = next(iter(fit_folds(config, beats.tensors, folds, device="cpu")))
    assert len(first.state()["folds"]) == 2
    rest = [r.metrics for r in fit_folds(config, beats.tensors, folds, device="cpu", resume=first.state())]
    assert [m["epoch"] for m in rest] == [2, 3]
    for got, expected in zip(rest, whole[1:], strict=True):
        for key in ("val_loss", "val_loss_std", "val_macro_f1", "train_loss", "lr"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@dataclass
class _Fake:
    """What the lockstep reads of a loop epoch."""

    epoch: int
    metrics: dict
    _state: dict = field(default_factory=dict)

    def state(self) -> dict:
        return self._state


def test_lr_median_and_early_stopping_on_the_fold_mean(monkeypatch: pytest.MonkeyPatch, small: Dataset) -> None:
    # Three folds whose validation losses stop improving on average after epoch 2, with rates
    # a plateau scheduler lowered at different epochs.
    losses = [[1.0, 0.8, 0.9, 0.9, 0.9], [1.0, 0.7, 0.6, 0.9, 0.9], [1.0, 0.9, 1.1, 0.9, 0.9]]
    rates = [[1e-3, 1e-3, 5e-4, 5e-4, 5e-4], [1e-3, 1e-3, 1e-3, 1e-3, 5e-4], [1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]]
    calls = iter(range(3))
    seen_configs = []

    def fake_fit(config, data, train, val, *, device=None, resume=None):
        seen_configs.append(config)
        fold = next(calls)
        for epoch in range(config.epochs):
            yield _Fake(epoch + 1, {"epoch": epoch + 1, "lr": rates[fold][epoch], "epoch_seconds": 1.0,
                                    "train_loss": 1.0, "val_loss": losses[fold][epoch], "bf16": 0.0})

    monkeypatch.setattr(folds_module, "fit", fake_fit)
    config = make_config({**TINY, "epochs": 5, "early_stop_patience": 2, "input_length": None})
    reports = [r.metrics for r in fit_folds(config, small.tensors, choose_validation(small, 3, 0).folds)]
    # mean losses 1.0, 0.8, 0.867, 0.9: best at 2, stale at 3 and 4 -> stop after epoch 4
    assert [m["epoch"] for m in reports] == [1, 2, 3, 4]
    assert [m["lr"] for m in reports] == [1e-3, 1e-3, 5e-4, 5e-4]
    assert reports[0]["epoch_seconds"] == 3.0
    # the folds run without their own early stopping, at the refit's input length (train + val median)
    assert {c.early_stop_patience for c in seen_configs} == {0}
    every = np.flatnonzero(_train_val(small))
    assert {c.input_length for c in seen_configs} == {int(np.median(small.tensors.lengths[every]))}


def test_combine_keeps_the_keys_of_a_single_run() -> None:
    per_fold = [{"epoch": 3, "lr": 0.1, "val_macro_f1": 0.5, "val_confusion": [[1, 0], [0, 1]]},
                {"epoch": 3, "lr": 0.2, "val_macro_f1": 0.7, "val_confusion": [[0, 1], [1, 0]]}]
    assert combine_folds(per_fold) == {"epoch": 3, "lr": pytest.approx(0.15), "val_macro_f1": pytest.approx(0.6),
                                       "val_macro_f1_std": pytest.approx(0.1), "val_confusion": [[1, 1], [1, 1]]}


# a real search ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_search(tmp_path_factory: pytest.TempPathFactory, beats: Dataset):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        space = tmp_path_factory.mktemp("space") / "tiny.yaml"
        space.write_text("model: simple_cnn\nbatch_size: 16\naugmentation: none\n"
                         "lr: {type: float, low: 0.0005, high: 0.005, log: true}\nsearch: {max_epochs: 3}\n")
        out = tmp_path_factory.mktemp("cv") / "run"
        result = run_pipeline(PipelineOptions(
            search=SearchOptions(out=out, num_samples=2, cv=2, scheduler="fifo", searcher="random",
                                 max_concurrent=1), space=space, refit=None), dataset=beats)
        yield result
    finally:
        ray.shutdown()


def test_a_search_with_cv_reports_fold_means_and_spreads(cv_search) -> None:
    run: RunFolder = cv_search.run
    assert cv_search.plan.folds == 2 and "2-fold cross-validation" in cv_search.plan.describe()
    for history in run.histories().values():
        assert {"val_macro_f1", "val_macro_f1_std", "val_loss_std"} <= set(history.columns)
    trials = pd.read_csv(run.path / "trials.csv")
    for column in ("best/val_macro_f1", "best/val_macro_f1_std", "final/val_loss_std", "final/train_loss"):
        assert column in trials.columns and trials[column].notna().all(), column
    saved = json.loads(run.best_config_path.read_text())
    assert saved["cv"] == 2 and run.best().spread == saved["metrics"]["val_macro_f1_std"]
    # best/<metric>_std is the spread at the epoch where the mean peaked
    winner = run.history(saved["trial_id"]).sort_values(TRAINING_ITERATION)
    peak = int(np.argmax(winner["val_macro_f1"].to_numpy()))
    assert saved["epoch"] == peak + 1
    assert saved["metrics"]["val_macro_f1"] == pytest.approx(winner["val_macro_f1"].iloc[peak])
    assert saved["metrics"]["val_macro_f1_std"] == pytest.approx(winner["val_macro_f1_std"].iloc[peak])


def test_a_search_with_cv_keeps_out_of_fold_predictions_at_the_best_epoch(cv_search, beats: Dataset) -> None:
    run: RunFolder = cv_search.run
    table = run.trial_table().info
    saved = run.trial_predictions()
    assert set(saved) == set(table.index) and len(saved) == 2
    every = [beats.tensors.record_ids[i] for i in np.flatnonzero(_train_val(beats))]
    for trial_id, predictions in saved.items():
        assert predictions.epoch == table.loc[trial_id, "best_epoch"]
        # every non-test record exactly once, no test record
        assert sorted(predictions.record_ids) == sorted(every) and len(set(predictions.record_ids)) == len(every)
        assert predictions.classes == tuple(beats.tensors.classes)
        # they are what the trial was scored on at that epoch: the folds' summed confusion
        history = run.history(trial_id).set_index(TRAINING_ITERATION)
        position = {record: i for i, record in enumerate(beats.tensors.record_ids)}
        truth = beats.tensors.labels[[position[r] for r in predictions.record_ids]]
        confusion = confusion_matrix(truth, predictions.probabilities.argmax(axis=1), labels=range(3))
        assert confusion.tolist() == json.loads(history.loc[predictions.epoch, "val_confusion"])


def test_the_refit_trains_to_the_epoch_where_the_mean_peaked(cv_search, beats: Dataset) -> None:
    run: RunFolder = cv_search.run
    setup = refit_setup(run)
    winner = run.history(setup.best.trial_id).sort_values(TRAINING_ITERATION)
    peak = int(np.argmax(winner["val_macro_f1"].to_numpy())) + 1
    assert setup.config.epochs == peak == len(setup.lr_schedule)
    assert setup.lr_schedule == pytest.approx(winner["lr"].tolist()[:peak])  # the folds' median rates
    assert len(setup.train_index) == _train_val(beats).sum()  # all train + val records
    refit = run_refit(run, RefitOptions(onnx=False))
    assert refit.epochs == peak and json.loads(run.report_path.read_text())["epochs"] == peak
