"""The table of reported keys (training/reported.py): every key a trial reports is declared, and
the table's decisions (trials.csv columns, MLflow metrics, folding, early stopping) are the ones
the search made before the table existed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecg_tune.config import make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.search.trainable import report_metrics
from ecg_tune.training.folds import choose_validation, fit_folds
from ecg_tune.training.loop import fit
from ecg_tune.training.metrics import direction, validation_metrics
from ecg_tune.training.reported import (
    BF16,
    TRAINING_ITERATION,
    EarlyStop,
    combine_folds,
    describe_key,
    exported,
    is_metric,
    spread_of,
    tracked,
)

# What a search's results held besides the trainable's report (a stored result.json of Ray 2.60)
# and the fields tracking.py's deny-list named.
TUNE_RESULT = {TRAINING_ITERATION: 1, "timestamp": 1796419437, "checkpoint_dir_name": "checkpoint_000000",
               "should_checkpoint": True, "done": False, "trial_id": "0d362b34", "date": "2026-12-04_21-23-57",
               "time_this_iter_s": 0.12, "time_total_s": 0.12, "pid": 3132, "hostname": "vm",
               "node_ip": "127.0.0.1", "config": {"model": "cnn_svm"}, "time_since_restore": 0.12,
               "iterations_since_restore": 1, "timesteps_total": None, "timesteps_since_restore": 0,
               "episodes_total": None, "experiment_tag": "1_model=cnn_svm"}
# tracking.py's list of Tune's bookkeeping before the table (MLflow logged every other number).
NOT_TRACKED_BEFORE = {TRAINING_ITERATION, "time_this_iter_s", "timestamp", "pid", "time_since_restore",
                      "iterations_since_restore", "timesteps_total", "timesteps_since_restore", "episodes_total",
                      "done"}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """The CinC classes (N, A, O, ~): every key a validation reports, cinc_f1 and `val_f1_~` too."""
    return prepare("synthetic:60", progress=False)


ROCKET = {"model": "minirocket", "rocket_features": 504, "rocket_max_dilations": 4}
MODELS = [  # a small instance of each kind of model: trained, with an SVM stage, with a closed-form head
    {"model": "simple_cnn"},
    {"model": "cnn_svm", "svm_max_train": 40},
    ROCKET,
    {**ROCKET, "rocket_head": "ridge"},
]


@pytest.fixture(scope="module")
def reported(dataset: Dataset) -> list[dict]:
    """Every result the loop yields for each model (two epochs), and a 2-fold lockstep's."""
    results = []
    for options in MODELS:
        config = make_config({"input_length": 512, "batch_size": 16, "epochs": 2, "augmentation": "none", **options})
        results += [r.metrics for r in fit(config, dataset.tensors, dataset.index("train"), dataset.index("val"),
                                           device="cpu")]
    config = make_config({"model": "simple_cnn", "input_length": 512, "batch_size": 16, "epochs": 2,
                          "augmentation": "none"})
    folds = choose_validation(dataset, 2, seed=0).folds
    results += [r.metrics for r in fit_folds(config, dataset.tensors, folds, device="cpu")]
    return results


def test_every_reported_key_is_declared(reported: list[dict]) -> None:
    keys = {key for metrics in reported for key in report_metrics(metrics, epoch=1)} | set(TUNE_RESULT)
    assert not {key for key in keys if describe_key(key) is None}, "declare them in training/reported.py"
    # what the table covers was reported: the closed-form head's figures, the spreads, the CinC score
    assert {"ridge_alpha", "ridge_temperature", "val_loss_std", "val_f1_~_std", "val_cinc_f1"} <= keys


def _exported_before(key: str, value: object) -> bool:
    """export.py before the table: a metric (any split) or a metric's `_std`, with numbers."""
    return (is_metric(key) or spread_of(key) is not None) and _number(value)


def _tracked_before(key: str, value: object) -> bool:
    """tracking.py before the table: any number not in Tune's bookkeeping."""
    return key not in NOT_TRACKED_BEFORE and _number(value)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def test_exported_and_tracked_keys_are_what_they_were(reported: list[dict]) -> None:
    results = [{**report_metrics(metrics, epoch=1), **TUNE_RESULT} for metrics in reported]
    for result in results:
        for key, value in result.items():
            assert (tracked(key) and _number(value)) == _tracked_before(key, value), key
            if key != BF16:  # new with the precision option (issue 25): a column of its own
                assert (exported(key) and _number(value)) == _exported_before(key, value), key
    columns = {key for result in results for key, value in result.items() if exported(key) and _number(value)}
    assert columns == {"train_loss", BF16, *validation_metrics(["N", "A", "O", "~"]),
                       *(f"{metric}_std" for metric in validation_metrics(["N", "A", "O", "~"]))}
    assert tracked("time_total_s") and tracked("lr") and tracked("epoch_seconds") and tracked("epoch")
    assert not tracked(TRAINING_ITERATION) and not exported("lr") and not exported("epoch_seconds")
    assert tracked("a_key_nobody_declared") and not exported("a_key_nobody_declared")


def test_patterns_prefixes_classes_and_spreads() -> None:
    assert direction("val_loss") == direction("train_loss") == direction("loss") == "min"
    assert direction("test_cinc_f1") == direction("val_f1_~") == direction("f1_A") == "max"
    assert spread_of("val_f1_N_std") == "val_f1_N" and describe_key("val_f1_N_std").kind == "spread"
    assert spread_of("val_confusion_std") is None and describe_key("val_confusion_std") is None
    assert describe_key("train_samples_per_s").kind == "cost" and describe_key("pid").kind == "bookkeeping"
    assert validation_metrics(["N", "A", "O"])[:4] == ["val_accuracy", "val_macro_f1", "val_cinc_f1", "val_loss"]
    assert validation_metrics(["a", "b"]) == ["val_accuracy", "val_macro_f1", "val_loss", "val_auroc", "val_f1_a",
                                              "val_f1_b"]


def test_folds_combine_by_each_keys_rule() -> None:
    per_fold = [{"epoch": 2, "train_loss": 0.5, "lr": 0.1, "val_loss": 0.3, "val_confusion": [[1, 2], [3, 4]],
                 "epoch_seconds": 1.5, "finished": False, "ridge_alpha": 3.0},
                {"epoch": 2, "train_loss": 0.7, "lr": 0.3, "val_loss": 0.5, "val_confusion": [[0, 2], [3, 1]],
                 "epoch_seconds": 2.5, "finished": True, "ridge_alpha": 5.0}]
    assert combine_folds(per_fold) == {
        "epoch": 2, "train_loss": pytest.approx(0.6), "lr": pytest.approx(0.2), "val_loss": pytest.approx(0.4),
        "val_loss_std": pytest.approx(0.1), "val_confusion": [[1, 4], [6, 5]], "epoch_seconds": 4.0,
        "finished": False, "ridge_alpha": 4.0}
    with pytest.raises(ValueError, match="time_total_s"):
        combine_folds([{"time_total_s": 1.0}])


def test_early_stop_counts_stale_epochs_and_resumes_from_its_state() -> None:
    early = EarlyStop(patience=2)
    for loss in (1.0, 0.8, 0.8 - 1e-7, 0.9):  # an improvement under 1e-6 is none
        assert not early.stop
        early.update({"val_loss": loss})
    assert early.stop and early.state() == {"best_loss": 0.8, "stale": 2}
    early.update({"train_loss": 0.1})  # an epoch without validation is not counted
    assert early.stale == 2
    resumed = EarlyStop.resumed(2, {"best_loss": 0.8, "stale": 1, "epoch": 3})
    assert (resumed.best_loss, resumed.stale, resumed.stop) == (0.8, 1, False)
    assert not EarlyStop(patience=0, stale=99).stop and EarlyStop.resumed(3, None).best_loss == np.inf
