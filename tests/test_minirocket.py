"""The `minirocket` model (ecg_tune.models.minirocket) and the training loop's data-init hook.

The random-kernel features are checked against a plain numpy reference written here with loops
(kernels, dilations, padding, biases from quantiles, PPV and MultiRocket's operators, one and
several channels, the first-difference series). Inputs are small integers, so every convolution
output is exact in float32 and PPV, the run lengths and the indices must agree exactly.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_tune.bundle import load_bundle, save_bundle
from ecg_tune.config import PART_KEYS, make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS, EcgModel, build_model
from ecg_tune.models.minirocket import MiniRocket, RocketOptions, fit_dilations
from ecg_tune.models.ridge import ALPHAS
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.loop import fit

# ------------------------------------------------------------------ the numpy reference


def ref_kernels() -> np.ndarray:
    kernels = []
    for taps in itertools.combinations(range(9), 3):
        kernels.append([2.0 if p in taps else -1.0 for p in range(9)])
    return np.array(kernels)


def ref_dilations(length: int, per_kernel: int, max_dilations: int) -> tuple[list[int], list[int]]:
    n = min(per_kernel, max_dilations)
    top = np.log2((length - 1) / 8)
    exponents = [top * i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    merged: dict[int, int] = {}
    for e in exponents:
        d = int(np.floor(2.0 ** e))
        merged[d] = merged.get(d, 0) + 1
    dilations = sorted(merged)
    counts = [int(np.floor(merged[d] * per_kernel / n)) for d in dilations]
    i = 0
    while sum(counts) < per_kernel:
        counts[i % len(counts)] += 1
        i += 1
    return dilations, counts


def ref_conv(series: np.ndarray, kernel: np.ndarray, dilation: int, channels: np.ndarray) -> np.ndarray:
    """'Same' convolution (zero padding) of the chosen channels of `series` (C, L), summed."""
    length = series.shape[1]
    out = np.zeros(length)
    for t in range(length):
        for p in range(9):
            s = t + (p - 4) * dilation
            if 0 <= s < length:
                out[t] += kernel[p] * series[channels, s].sum()
    return out


def ref_pool(z: np.ndarray, multi: bool) -> list[float]:
    """PPV (and MPV, MIPV, LSPV) of z = output - bias."""
    positive = z > 0
    values = [positive.mean()]
    if multi:
        idx = np.flatnonzero(positive)
        longest = run = 0
        for flag in positive:
            run = run + 1 if flag else 0
            longest = max(longest, run)
        values += [z[positive].mean() if len(idx) else 0.0, idx.mean() if len(idx) else -1.0, float(longest)]
    return values


def ref_series(model: MiniRocket, x: np.ndarray, name: str) -> np.ndarray:
    scaled = x * model.channel_scale.numpy().astype(np.float64)[None, :, None]
    return np.diff(scaled, axis=-1) if name == "diff" else scaled


def ref_biases(model: MiniRocket, x: np.ndarray, name: str) -> np.ndarray:
    series = ref_series(model, x, name)
    dilations = getattr(model, f"{name}_dilations").tolist()
    counts = getattr(model, f"{name}_counts").tolist()
    masks = getattr(model, f"{name}_channels").numpy()
    picks = model.bias_examples[name].numpy()
    total = 84 * sum(counts)
    levels = [(i * (np.sqrt(5) + 1) / 2) % 1 for i in range(1, total + 1)]
    kernels, biases = ref_kernels(), []
    for j, (d, n) in enumerate(zip(dilations, counts, strict=True)):
        for k in range(84):
            out = ref_conv(series[picks[j, k]], kernels[k], d, np.flatnonzero(masks[j, k]))
            for _ in range(n):
                biases.append(np.quantile(out, levels[len(biases)]))
    return np.array(biases)


def ref_features(model: MiniRocket, x: np.ndarray) -> np.ndarray:
    multi = len(model.operators) > 1
    kernels, rows = ref_kernels(), []
    for example in range(len(x)):
        row: list[float] = []
        for s in model.series:
            series = ref_series(model, x, s.name)[example]
            masks = getattr(model, f"{s.name}_channels").numpy()
            biases = getattr(model, f"{s.name}_biases").numpy().astype(np.float64)
            blocks: list[list[float]] = [[] for _ in model.operators]
            f = 0
            for j, (d, n) in enumerate(zip(s.dilations, s.counts, strict=True)):
                for k in range(84):
                    out = ref_conv(series, kernels[k], d, np.flatnonzero(masks[j, k]))
                    if (j + k) % 2 == 1:
                        out = out[4 * d:len(out) - 4 * d]
                    for _ in range(n):
                        for block, value in zip(blocks, ref_pool(out - biases[f], multi), strict=True):
                            block.append(value)
                        f += 1
            for block in blocks:
                row += block
        rows.append(row)
    return np.array(rows)


def integer_inputs(n: int, channels: int, length: int, seed: int = 0) -> np.ndarray:
    """Small integers, the channels at different scales (as wavelet bands are)."""
    rng = np.random.default_rng(seed)
    scales = np.array([8, 1, 3, 2, 5])[:channels]
    return (rng.integers(-4, 5, size=(n, channels, length)) * scales[None, :, None]).astype(np.float32)


def built(channels: int, length: int, seed: int = 0, **options) -> MiniRocket:
    torch.manual_seed(seed)
    model = build_model("minirocket", channels, length, 3, **options)
    assert isinstance(model, MiniRocket)
    return model


# ------------------------------------------------------------------ kernels, dilations, sizes


def test_the_84_kernels():
    model = built(1, 40, rocket_features=84)
    weights = model.kernels.numpy()
    assert weights.shape == (84, 9)
    np.testing.assert_array_equal(weights, ref_kernels())
    assert set(np.unique(weights)) == {-1.0, 2.0}
    assert (weights == 2).sum(axis=1).tolist() == [3] * 84 and np.all(weights.sum(axis=1) == 0)
    assert len({tuple(w) for w in weights}) == 84


@pytest.mark.parametrize("length", [10, 40, 96, 143, 1200, 3000, 9000])
@pytest.mark.parametrize("per_kernel,max_dilations", [(1, 32), (5, 32), (119, 32), (119, 8), (40, 64)])
def test_dilations_match_the_reference(length: int, per_kernel: int, max_dilations: int):
    dilations, counts = fit_dilations(length, per_kernel, max_dilations)
    assert (dilations, counts) == ref_dilations(length, per_kernel, max_dilations)
    assert sum(counts) == per_kernel and len(dilations) <= max_dilations
    assert dilations[0] == 1 and 8 * dilations[-1] <= length - 1  # every kernel fits


def test_feature_counts_follow_rocket_features():
    assert built(1, 96).feature_dim == 9996  # aeon's MiniRocket(n_kernels=10_000) gives 9996 too
    assert built(1, 96, rocket_pooling="multi", rocket_difference=True).feature_dim == 84 * 14 * 8
    assert built(3, 96, rocket_features=840).feature_dim == 840
    assert built(1, 96, rocket_features=100).feature_dim == 84  # at least one bias per kernel
    model = built(1, 3000, rocket_max_dilations=4)
    assert len(model.series[0].dilations) == 4


def test_min_input_length_is_honest():
    assert MiniRocket.min_input_length == 10
    with pytest.raises(ConfigError, match="at least 10"):
        build_model("minirocket", 1, 9, 2)
    model = built(2, 10, rocket_features=84 * 8, rocket_pooling="multi", rocket_difference=True)
    model.initialise(torch.randn(4, 2, 10))
    assert torch.isfinite(model(torch.randn(3, 2, 10))).all()


def test_options_are_new_keys_of_this_model_only():
    keys = set(RocketOptions.model_fields)
    assert keys == {"rocket_features", "rocket_max_dilations", "rocket_pooling", "rocket_difference", "rocket_head"}
    for family, registry in PART_KEYS.items():
        for name in registry.names():
            if (family, name) != ("model", "minirocket"):
                assert not keys & set(registry.options_class(name).model_fields), (family, name)
    config = make_config({"model": "minirocket", "rocket_pooling": "multi", "rocket_features": 2000})
    assert config.part_options("model")["rocket_pooling"] == "multi"
    with pytest.raises(ConfigError):
        make_config({"model": "minirocket", "rocket_pooling": "max"})
    with pytest.raises(ConfigError):
        make_config({"model": "minirocket", "rocket_features": 10})


def test_channel_masks():
    assert torch.equal(built(1, 64).raw_channels, torch.ones(built(1, 64).raw_channels.shape))
    masks = built(5, 64).raw_channels
    per_combination = masks.sum(-1)
    assert masks.shape[1:] == (84, 5) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert per_combination.min() >= 1 and per_combination.max() <= 5
    assert len(per_combination.unique()) > 2  # subsets of several sizes, not one fixed choice
    assert torch.equal(built(5, 64, seed=3).raw_channels, built(5, 64, seed=3).raw_channels)


# ------------------------------------------------------------------ against the reference

CASES = [
    pytest.param(1, 40, {}, id="C1-ppv"),
    pytest.param(3, 36, {}, id="C3-ppv"),
    pytest.param(1, 33, {"rocket_pooling": "multi", "rocket_difference": True}, id="C1-multi-diff"),
    pytest.param(4, 30, {"rocket_pooling": "multi"}, id="C4-multi"),
    pytest.param(2, 28, {"rocket_difference": True}, id="C2-ppv-diff"),
]


@pytest.mark.parametrize("channels,length,options", CASES)
def test_biases_are_the_reference_quantiles(channels: int, length: int, options: dict):
    model = built(channels, length, rocket_features=84 * 6, **options)
    x = integer_inputs(7, channels, length)
    model.initialise(torch.from_numpy(x))
    scale = model.channel_scale.numpy()
    assert np.all(np.log2(scale) == np.round(np.log2(scale)))  # powers of two
    std = x.transpose(1, 0, 2).reshape(channels, -1).std(axis=1, ddof=1)
    assert np.all(np.abs(np.log2(std * scale)) <= 0.5 + 1e-6)  # about unit spread
    for s in model.series:
        assert model.bias_examples[s.name].shape == (len(s.dilations), 84)
        np.testing.assert_allclose(getattr(model, f"{s.name}_biases").numpy(), ref_biases(model, x, s.name),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,length,options", CASES)
def test_features_match_the_reference(channels: int, length: int, options: dict):
    model = built(channels, length, rocket_features=84 * 6, **options)
    model.initialise(torch.from_numpy(integer_inputs(9, channels, length, seed=1)))
    x = integer_inputs(3, channels, length, seed=2)
    ours = model.rocket_features(torch.from_numpy(x)).double().numpy()
    expected = ref_features(model, x)
    assert ours.shape == expected.shape == (3, model.feature_dim)
    n = sum(s.n_biases for s in model.series)
    blocks = np.split(np.arange(model.feature_dim), len(model.series) * len(model.operators))
    operators = [op for _ in model.series for op in model.operators]
    assert all(len(b) == n // len(model.series) for b in blocks)
    for op, cols in zip(operators, blocks, strict=True):
        if op == "mpv":  # a sum of non-integers: float32 against float64
            np.testing.assert_allclose(ours[:, cols], expected[:, cols], rtol=1e-5, atol=1e-5, err_msg=op)
        else:  # PPV (count / length), mean index, longest run: exact
            np.testing.assert_allclose(ours[:, cols], expected[:, cols], rtol=1e-6, atol=0, err_msg=op)
    assert 0 < ours[:, blocks[0]].mean() < 1


def plain_longest_run(row: np.ndarray) -> int:
    longest = run = 0
    for value in row:
        run = run + 1 if value > 0 else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("shape,density", [((1, 1), 0.5), ((2, 3, 1), 1.0), ((3, 7), 0.0), ((3, 7), 1.0),
                                           ((4, 2, 17), 0.5), ((5, 64), 0.9), ((2, 3, 301), 0.2)])
def test_longest_run_matches_a_plain_loop(shape: tuple[int, ...], density: float):
    """The run-length operator alone, including rows of no, one and only positive values and
    runs that touch either end."""
    from ecg_tune.models.minirocket import _longest_run

    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    positive = (rng.random(shape) < density).astype(np.float32)
    positive.reshape(-1, shape[-1])[0, :] = 1.0 if density > 0 else 0.0  # a row that is one run (or none)
    ours = _longest_run(torch.from_numpy(positive))
    assert ours.shape == shape[:-1] and ours.dtype == torch.float32
    expected = np.array([plain_longest_run(r) for r in positive.reshape(-1, shape[-1])]).reshape(shape[:-1])
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_padding_alternates_between_kernels_and_dilations():
    # A constant series: 'same' outputs differ from the constant interior near the ends only,
    # so the two readings of one kernel differ exactly where the reference says they should.
    model = built(1, 50, rocket_features=84 * 3)
    model.initialise(torch.ones(2, 1, 50) + torch.arange(2.0).view(2, 1, 1))
    x = np.ones((1, 1, 50), dtype=np.float32)
    np.testing.assert_allclose(model.rocket_features(torch.from_numpy(x)).numpy(), ref_features(model, x),
                               rtol=1e-6, atol=0)


def test_features_are_standardised_and_batch_independent():
    model = built(3, 64, rocket_features=84 * 4)
    x = torch.randn(40, 3, 64)
    model.initialise(x)
    f = model.features(x).double()
    varying = model.feature_scale != 1
    assert varying.sum() > 0.5 * model.feature_dim
    torch.testing.assert_close(f.mean(0), torch.zeros_like(f[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(f[:, varying].std(0, unbiased=False), torch.ones_like(f[0, varying]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(model.features(x[:1]), model.features(x)[:1])


def test_only_the_head_is_trained_and_state_dict_restores_everything():
    model = built(2, 48, rocket_features=84 * 4, rocket_pooling="multi", rocket_difference=True)
    x = torch.randn(20, 2, 48)
    model.initialise(x)
    assert [name for name, _ in model.named_parameters()] == ["head.weight", "head.bias"]
    model(x).sum().backward()
    assert model.head.weight.grad is not None
    with torch.no_grad():
        model.head.weight.normal_()
    names = set(model.state_dict())
    for buffer in ("kernels", "channel_scale", "feature_mean", "feature_scale", "raw_dilations",
                   "raw_counts", "raw_channels", "raw_biases", "diff_biases", "diff_channels"):
        assert buffer in names, buffer
    other = built(2, 48, seed=7, rocket_features=84 * 4, rocket_pooling="multi", rocket_difference=True)
    assert not torch.equal(other(x), model(x))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


# ------------------------------------------------------------------ through the loop and the bundle


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:60", progress=False)


TRANSFORMS = [
    pytest.param({"transform": "none"}, id="none"),
    pytest.param({"transform": "wavelet", "levels": 3}, id="wavelet-approx"),
    pytest.param({"transform": "wavelet", "levels": 3, "wavelet_output": "bands"}, id="wavelet-bands"),
]


def loop_config(**values):
    return make_config({"model": "minirocket", "input_length": 1200, "batch_size": 16, "epochs": 2,
                        "rocket_features": 84 * 12, "lr": 1e-3, **values})


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_trains_through_the_loop(dataset, transform: dict):
    config = loop_config(rocket_head="gradient", **transform)
    results = list(fit(config, dataset.tensors, dataset.index("train"), dataset.index("val"), device="cpu"))
    assert [r.epoch for r in results] == [1, 2]
    for r in results:
        assert np.isfinite(r.metrics["train_loss"]) and np.isfinite(r.metrics["val_loss"])
    model = results[-1].network.model
    assert isinstance(model, MiniRocket)
    assert torch.count_nonzero(model.raw_biases) > 0.9 * model.raw_biases.numel()  # initialised
    assert model.in_channels == (4 if transform.get("wavelet_output") == "bands" else 1)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_the_ridge_head_is_one_closed_form_fit(dataset, transform: dict):
    config = loop_config(epochs=5, class_weighting="balanced", rocket_head="ridge", **transform)
    results = list(fit(config, dataset.tensors, dataset.index("train"), dataset.index("val"), device="cpu"))
    assert [r.epoch for r in results] == [1]  # nothing left to learn after the fit
    metrics = results[0].metrics
    assert metrics["ridge_alpha"] in ALPHAS and metrics["ridge_temperature"] > 0
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    # The head really is the ridge solution: not the zeros it was built with, and its training
    # predictions beat always guessing one class.
    model = results[0].network.model
    assert torch.count_nonzero(model.head.weight) > 0
    assert metrics["val_accuracy"] > 0.5


def test_initialise_runs_once_and_not_on_resume(dataset, monkeypatch):
    calls = []
    original = MiniRocket.initialise

    def spy(self, inputs):
        calls.append(tuple(inputs.shape))
        return original(self, inputs)

    monkeypatch.setattr(MiniRocket, "initialise", spy)
    config = loop_config(epochs=3, rocket_head="gradient")
    args = (config, dataset.tensors, dataset.index("train"), dataset.index("val"))
    straight = [r.metrics for r in fit(*args, device="cpu")]
    assert calls == [(len(dataset.index("train")), 1, 1200)]
    first = next(iter(fit(*args, device="cpu")))
    assert len(calls) == 2
    resumed = [r.metrics for r in fit(*args, device="cpu", resume=first.state())]
    assert len(calls) == 2  # the biases come from the checkpoint
    np.testing.assert_allclose([m["val_loss"] for m in resumed], [m["val_loss"] for m in straight[1:]],
                               rtol=1e-5)


def test_models_without_data_init_are_untouched(dataset, monkeypatch):
    def refuse(self, inputs):
        raise AssertionError("initialise called on a model that does not need it")

    monkeypatch.setattr(EcgModel, "initialise", refuse)
    assert [n for n in MODELS.names() if MODELS.get(n).needs_data_init] == ["minirocket"]
    config = make_config({"model": "simple_cnn", "input_length": 1200, "batch_size": 16, "epochs": 1})
    (result,) = fit(config, dataset.tensors, dataset.index("train"), None, device="cpu")
    assert np.isfinite(result.metrics["train_loss"])


def test_bundle_round_trip_predicts_identically(dataset, tmp_path: Path):
    config = loop_config(transform="wavelet", levels=3, wavelet_output="bands", rocket_pooling="multi",
                         rocket_difference=True)
    *_, result = fit(config, dataset.tensors, dataset.index("train"), None, device="cpu")
    test = dataset.index("test")
    expected, _ = record_probabilities(result.network, None, dataset.tensors, test, "zscore", 0.5,
                                       torch.device("cpu"))
    save_bundle(tmp_path / "model", result.network, None, config, dataset.records.classes, 300.0, onnx=False)
    bundle = load_bundle(tmp_path / "model", device="cpu")
    loaded = bundle.network.model.state_dict()
    for name, value in result.network.model.state_dict().items():
        assert torch.equal(loaded[name], value), name
    np.testing.assert_array_equal(bundle.predict(dataset.records.subset(test)), expected)
