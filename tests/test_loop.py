"""The training loop, record-level evaluation and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS
from ecg_tune.models.svm import SVMStage
from ecg_tune.training.evaluate import aggregate, gather_windows, record_windows, window_starts
from ecg_tune.training.loop import _class_weights, fit
from ecg_tune.training.metrics import classification_metrics, ranking_metric


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:60", progress=False)


def run(dataset, **values) -> list:
    config = make_config({"input_length": 1200, "batch_size": 16, "epochs": 1, **values})
    return list(fit(config, dataset.tensors, dataset.index("train"), dataset.index("val"), device="cpu"))


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("transform", ["none", "wavelet", "fourier"])
def test_every_model_trains_on_every_transform(dataset, model: str, transform: str) -> None:
    (result,) = run(dataset, model=model, transform=transform, levels=4, depth=2, width=8)
    m = result.metrics
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_cinc_f1", "lr",
                "val_f1_N", "val_f1_A", "val_f1_O", "val_f1_~", "val_confusion", "epoch"):
        assert key in m, key
    assert np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"])
    assert np.array(m["val_confusion"]).sum() == len(dataset.index("val"))
    assert (result.head is not None) == (model == "cnn_svm")
    # The probabilities the metrics were scored on, one row per val record in val_index's order.
    probabilities = result.val_probabilities
    assert probabilities.shape == (len(dataset.index("val")), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    scored = classification_metrics(dataset.tensors.labels[dataset.index("val")], probabilities.argmax(axis=1),
                                    dataset.tensors.classes)
    assert scored["confusion"] == m["val_confusion"]


def test_same_seed_same_run_and_resume_repeats_it(dataset) -> None:
    config = make_config({"input_length": 1200, "batch_size": 16, "epochs": 3, "seed": 5})
    args = (config, dataset.tensors, dataset.index("train"), dataset.index("val"))
    straight = [r.metrics for r in fit(*args, device="cpu")]
    again = [r.metrics for r in fit(*args, device="cpu")]
    assert [m["train_loss"] for m in straight] == [m["train_loss"] for m in again]
    first = next(iter(fit(*args, device="cpu")))
    state = torch.load(_roundtrip(first.state()), weights_only=True)
    resumed = [r.metrics for r in fit(*args, device="cpu", resume=state)]
    assert [m["epoch"] for m in resumed] == [2, 3]
    np.testing.assert_allclose([m["train_loss"] for m in resumed], [m["train_loss"] for m in straight[1:]], rtol=1e-5)
    np.testing.assert_allclose([m["val_loss"] for m in resumed], [m["val_loss"] for m in straight[1:]], rtol=1e-5)
    other = [r.metrics for r in fit(config.with_updates(seed=6), *args[1:], device="cpu")]
    assert other[0]["train_loss"] != straight[0]["train_loss"]


def _roundtrip(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_cnn_svm_is_scored_by_its_svm_and_resumes_with_it(dataset) -> None:
    (result,) = run(dataset, model="cnn_svm")
    assert isinstance(result.head, SVMStage)
    restored = torch.load(_roundtrip(result.state()), weights_only=True)
    assert SVMStage.from_bytes(restored["svm"]).n_classes_ == 4
    from ecg_tune.training.evaluate import window_outputs

    index = dataset.index("val")
    features, owners = window_outputs(result.network, dataset.tensors, index, "zscore", 0.5,
                                      torch.device("cpu"), features=True)
    by_svm = aggregate(result.head.predict_proba(features), owners, len(index))
    np.testing.assert_allclose(result.val_probabilities, by_svm, rtol=1e-6)  # the SVM's, as delivered
    predicted = by_svm.argmax(axis=1)
    expected = classification_metrics(dataset.tensors.labels[index], predicted, dataset.tensors.classes)
    assert result.metrics["val_macro_f1"] == pytest.approx(expected["macro_f1"])


def test_lr_schedule_is_replayed_without_validation(dataset) -> None:
    config = make_config({"input_length": 1200, "batch_size": 16, "lr_scheduler": "plateau"})
    results = list(fit(config, dataset.tensors, dataset.index("train", "val"), None,
                       device="cpu", lr_schedule=[1e-3, 5e-4, 2.5e-4]))
    assert [r.metrics["lr"] for r in results] == [1e-3, 5e-4, 2.5e-4]
    assert "val_loss" not in results[-1].metrics and results[-1].val_probabilities is None


def test_early_stopping_stops_when_validation_loss_stalls(dataset) -> None:
    results = run(dataset, epochs=6, lr=1e-12, early_stop_patience=1)
    assert len(results) == 2


def test_normalisation_none_and_crop_and_balanced_weights_train(dataset) -> None:
    (result,) = run(dataset, normalisation="none", fit="crop", class_weighting="balanced",
                    augmentation="none")
    assert np.isfinite(result.metrics["train_loss"])


def test_balanced_class_weights() -> None:
    config = make_config({"class_weighting": "balanced"})
    weights = _class_weights(config, np.array([0, 0, 0, 1]), 3, torch.device("cpu"))
    np.testing.assert_allclose(weights.numpy(), [4 / 9, 4 / 3, 0.0], rtol=1e-6)
    assert _class_weights(make_config({}), np.array([0, 1]), 2, torch.device("cpu")) is None


def test_unknown_names_are_config_errors() -> None:
    for key, value in (("model", "vgg"), ("transform", "stft"), ("augmentation", "mixup"), ("wavelet", "morl")):
        with pytest.raises(ConfigError, match=key):
            make_config({key: value})
    with pytest.raises(ConfigError, match="unknown key"):
        make_config({"learning_rate": 0.1})


def test_windows_cover_each_record_whole() -> None:
    assert window_starts(500, 1000, 0.5).tolist() == [0]
    assert window_starts(1000, 1000, 0.5).tolist() == [0]
    assert window_starts(2300, 1000, 0.5).tolist() == [0, 500, 1000, 1300]
    owners, starts = record_windows(np.array([500, 2300]), 1000, 0.5)
    assert owners.tolist() == [0, 1, 1, 1, 1] and starts.tolist() == [0, 0, 500, 1000, 1300]


def test_gather_windows_matches_slicing() -> None:
    matrix = torch.arange(30, dtype=torch.float32).reshape(3, 10)
    windows = gather_windows(matrix, torch.tensor([0, 2, 1]), torch.tensor([0, 6, 2]), 6)
    np.testing.assert_array_equal(windows[0], matrix[0, :6])
    np.testing.assert_array_equal(windows[1], [26, 27, 28, 29, 0, 0])  # past the matrix: zeros
    np.testing.assert_array_equal(windows[2], matrix[1, 2:8])


def test_aggregate_averages_windows_per_record() -> None:
    probabilities = np.array([[1.0, 0.0], [0.2, 0.8], [0.4, 0.6]])
    np.testing.assert_allclose(aggregate(probabilities, np.array([0, 1, 1]), 2), [[1, 0], [0.3, 0.7]])


def test_cinc_score_and_macro_f1() -> None:
    classes = ["A", "N", "O", "~"]
    truth = np.array([1, 1, 1, 0, 0, 2, 2, 3])
    predicted = np.array([1, 1, 0, 0, 0, 2, 1, 3])
    m = classification_metrics(truth, predicted, classes, prefix="val_")
    f1_n, f1_a, f1_o = 2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1), 2 * 1 / (2 * 1 + 1)
    assert m["val_cinc_f1"] == pytest.approx((f1_n + f1_a + f1_o) / 3)
    assert m["val_macro_f1"] == pytest.approx((f1_n + f1_a + f1_o + 1.0) / 4)
    assert m["val_confusion"][1] == [1, 2, 0, 0]
    assert ranking_metric(classes) == "val_cinc_f1"
    assert ranking_metric(["-1", "1"]) == "val_macro_f1"
    assert "val_cinc_f1" not in classification_metrics(truth % 2, predicted % 2, ["-1", "1"], prefix="val_")
