"""The contract every registered model keeps, checked for every name in `MODELS` (as aeon's
estimator checks do): nothing here lists the shipped models, so a model added to the registry is
checked without a change to this file. A toy model registered by this module shows that: it is
checked like the shipped ones, and its fitted head (a nearest-centroid head kept in a file of its
own) goes through the training loop, the checkpoint and the bundle, none of which names it.

Each model is checked with its default options and with every other value of each of its
yes/no and one-of-a-list options (minirocket's `rocket_head: ridge` declares a fitted head only
then): it builds; its forward and features have the right shapes on its shortest input and a
longer one, with one channel and with several; it refuses a shorter input; a fitted head, when it
declares one, keeps the `FittedHead` contract (models/head.py); its state dict round-trips.
"""

from __future__ import annotations

import io
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from ecg_tune.bundle import load_bundle, save_bundle
from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS, EcgModel, build_model
from ecg_tune.models.calibrate import softmax
from ecg_tune.models.head import HeadFit
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.loop import fit

N_CLASSES = 3
ROWS = 4  # inputs per forward check
HEAD_ROWS = 24  # inputs a head is fitted on: 8 of each class, enough for its calibration folds


# ------------------------------------------------------------------ a toy model, registered here


class CentroidHead:
    """A fitted head kept apart: class centroids of the features, probabilities from distances."""

    name = "centroid head"
    fit_when = HeadFit.EVERY_EPOCH
    max_records = 20
    file = "centroids.json"

    def __init__(self) -> None:
        self.centroids = np.zeros((0, 0))

    def fit(self, features: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
            weights: np.ndarray | None = None, seed: int | None = None) -> CentroidHead:
        k = n_classes if n_classes is not None else int(labels.max()) + 1
        self.centroids = np.stack([features[labels == c].mean(axis=0) for c in range(k)]).astype(np.float64)
        return self

    def summary(self) -> dict[str, float]:
        return {"centroid_spread": float(self.centroids.std())}

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(-((features[:, None, :] - self.centroids[None]) ** 2).sum(axis=-1))

    def to_bytes(self) -> bytes:
        return json.dumps(self.centroids.tolist()).encode()

    def load_bytes(self, blob: bytes) -> CentroidHead:
        try:
            centroids = np.asarray(json.loads(blob), dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"not a centroid head ({exc})") from None
        if centroids.ndim != 2:
            raise ValueError("not a centroid head (expected a matrix)")
        head = CentroidHead()
        head.centroids = centroids
        return head


class ToyModel(EcgModel):
    """A convolution, mean-pooled over time, then Linear; any input length from 3 samples."""

    min_input_length: ClassVar[int] = 3

    def __init__(self, in_channels: int, input_length: int, n_classes: int) -> None:
        super().__init__(in_channels, input_length, n_classes)
        self.conv = nn.Conv1d(in_channels, 4, 3)
        self.feature_dim = 4
        self.head = nn.Linear(4, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, fixed_length=False)
        return torch.relu(self.conv(x)).mean(dim=-1)

    def fitted_head(self) -> CentroidHead:
        return CentroidHead()


TOY = "contract_toy"


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> Iterator[None]:
    """The toy is a registered model while this module's tests run (and while they are listed)."""
    MODELS.register(TOY)(ToyModel)
    yield
    MODELS.unregister(TOY)


def _variants(name: str) -> list[dict[str, Any]]:
    """The default options ({}), then each other value of each yes/no or one-of-a-list option."""
    variants: list[dict[str, Any]] = [{}]
    for key, info in MODELS.options_class(name).model_fields.items():
        values: tuple[Any, ...] = (True, False) if info.annotation is bool else (
            typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ())
        variants += [{key: value} for value in values if value != info.default]
    return variants


def _cases() -> list[Any]:
    """(name, options) for every registered model, the toy's included, and its variants."""
    MODELS.register(TOY)(ToyModel)
    try:
        return [pytest.param(name, options, id="-".join([name, *(f"{k}={v}" for k, v in options.items())]))
                for name in MODELS.names() for options in _variants(name)]
    finally:
        MODELS.unregister(TOY)


CASES = _cases()


def _build(name: str, channels: int, length: int, options: dict[str, Any], seed: int = 0) -> EcgModel:
    torch.manual_seed(seed)
    model = build_model(name, channels, length, N_CLASSES, **options)
    if model.needs_data_init:
        model.initialise(_inputs(channels, length))
    return model.eval()


def _inputs(channels: int, length: int, rows: int = ROWS) -> torch.Tensor:
    return torch.randn(rows, channels, length, generator=torch.Generator().manual_seed(length + channels))


def _lengths(name: str) -> tuple[int, int]:
    """The model's shortest input and a longer one."""
    shortest = MODELS.get(name).min_input_length
    return shortest, 2 * shortest + 30


# ------------------------------------------------------------------ the checks


@pytest.mark.parametrize("name,options", CASES)
def test_builds_and_runs_on_its_shortest_and_a_longer_input(name: str, options: dict[str, Any]) -> None:
    for channels in (1, 3):
        for length in _lengths(name):
            model = _build(name, channels, length, options)
            assert isinstance(model, EcgModel) and model.feature_dim > 0
            assert (model.in_channels, model.input_length, model.n_classes) == (channels, length, N_CLASSES)
            x = _inputs(channels, length)
            with torch.no_grad():
                logits, features = model(x), model.features(x)
            assert logits.shape == (ROWS, N_CLASSES) and torch.isfinite(logits).all(), (channels, length)
            assert features.shape == (ROWS, model.feature_dim), (channels, length)


@pytest.mark.parametrize("name,options", CASES)
def test_refuses_an_input_shorter_than_its_shortest(name: str, options: dict[str, Any]) -> None:
    shortest = MODELS.get(name).min_input_length
    if shortest == 1:
        pytest.skip("any length builds")
    with pytest.raises(ConfigError, match=f"needs inputs of at least {shortest} samples"):
        build_model(name, 1, shortest - 1, N_CLASSES, **options)


@pytest.mark.parametrize("name,options", CASES)
def test_state_dict_round_trips(name: str, options: dict[str, Any]) -> None:
    length = _lengths(name)[0]
    model = _build(name, 3, length, options)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    twin = _build(name, 3, length, options, seed=1)  # other random weights until loaded
    twin.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    x = _inputs(3, length)
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,options", CASES)
def test_a_fitted_head_keeps_the_contract(name: str, options: dict[str, Any]) -> None:
    length = _lengths(name)[0]
    model = _build(name, 3, length, options)
    head = model.fitted_head()
    if head is None:
        assert model.restore_head(b"anything") is None
        pytest.skip("every part is trained by gradient")
    assert model.fitted_head() is not head  # a new one each time: a fit never changes an earlier head
    assert isinstance(head.fit_when, HeadFit) and head.name
    assert head.max_records is None or head.max_records >= 1
    assert head.file is None or (head.file and "/" not in head.file)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _inputs(3, length, HEAD_ROWS)
    with torch.no_grad():
        features = model.features(x).numpy()
    labels = np.arange(HEAD_ROWS) % N_CLASSES
    assert head.fit(features, labels, n_classes=N_CLASSES, weights=np.ones(HEAD_ROWS), seed=3) is head
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in head.summary().items())
    probabilities = head.predict_proba(features)
    assert probabilities.shape == (HEAD_ROWS, N_CLASSES) and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    if head.file is None:  # part of the model: its forward is the head
        with torch.no_grad():
            np.testing.assert_allclose(probabilities, softmax(model(x).numpy()), rtol=1e-5, atol=1e-6)
    # Its bytes restore it on a model that has only the state from before the fit.
    twin = _build(name, 3, length, options, seed=1)
    twin.load_state_dict(before)
    restored = twin.restore_head(head.to_bytes())
    assert restored is not None
    np.testing.assert_array_equal(restored.predict_proba(features), probabilities)
    assert twin.restore_head(None) is None
    with pytest.raises(ValueError):
        twin.restore_head(b"not what to_bytes gives")


# ------------------------------------------------------------------ the toy's head, end to end


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:60", progress=False)


def test_a_registered_models_head_goes_through_loop_checkpoint_and_bundle(dataset, tmp_path: Path) -> None:
    config = make_config({"model": TOY, "input_length": 300, "batch_size": 16, "epochs": 2})
    train, val, test = dataset.index("train"), dataset.index("val"), dataset.index("test")
    checkpoint = io.BytesIO()
    results = []
    for result in fit(config, dataset.tensors, train, val, device="cpu"):
        if result.epoch == 1:  # saved as it comes: the state holds the live network's tensors
            torch.save(result.state(), checkpoint)
        results.append(result)
    first, last = results
    assert isinstance(last.head, CentroidHead) and last.head is not first.head  # refitted each epoch
    assert "centroid_spread" in last.metrics
    # The epoch is scored by the head's probabilities, its loss by the network's own.
    probabilities, own = record_probabilities(last.network, last.head, dataset.tensors, val, "zscore",
                                              config.window_overlap, torch.device("cpu"))
    assert not np.allclose(probabilities, own)
    assert last.metrics["val_accuracy"] == pytest.approx(
        float((probabilities.argmax(axis=1) == dataset.tensors.labels[val]).mean()))
    # Resuming from epoch 1's checkpoint repeats epoch 2, head included.
    state = torch.load(io.BytesIO(checkpoint.getvalue()), weights_only=True)
    (again,) = fit(config, dataset.tensors, train, val, device="cpu", resume=state)
    assert again.metrics["val_loss"] == pytest.approx(last.metrics["val_loss"], rel=1e-6)
    np.testing.assert_allclose(again.head.centroids, last.head.centroids, rtol=1e-6)
    # Asked for the last epoch only (the refit), the head is fitted once, at the end.
    refit = list(fit(config, dataset.tensors, train, None, device="cpu", head_last_epoch_only=True))
    assert [r.head is None for r in refit] == [True, False]
    # The bundle keeps the head in its own file and predicts with it.
    folder = save_bundle(tmp_path / "model", last.network, last.head, config, dataset.records.classes, 300.0,
                         onnx=False)
    assert sorted(p.name for p in folder.iterdir()) == ["centroids.json", "config.json", "weights.pt"]
    assert json.loads((folder / "config.json").read_text())["svm"] is True
    expected, _ = record_probabilities(last.network, last.head, dataset.tensors, test, "zscore",
                                       config.window_overlap, torch.device("cpu"))
    bundle = load_bundle(folder, device="cpu")
    assert isinstance(bundle.head, CentroidHead)
    np.testing.assert_allclose(bundle.predict(dataset.records.subset(test)), expected, rtol=1e-6)
    (folder / "centroids.json").write_text("[1, 2")
    with pytest.raises(Exception, match="centroids.json: not a centroid head"):
        load_bundle(folder, device="cpu")
